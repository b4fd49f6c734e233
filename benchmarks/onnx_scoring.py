"""Dev-scoring throughput of one run's SST head: minbert's PyTorch path (fp32, and the
precision ``auto`` picks), its ONNX export (fp32, int8) in ONNX Runtime, and transformers'
BertModel over the same batches, in one process, rounds interleaved.

    python benchmarks/onnx_scoring.py --run RUN --onnx DIR --int8 DIR [--threads 2] [--scores]

``--scores`` also scores every task's whole dev file with each minbert path (the int8 change).

transformers runs the encoder alone (the pretrained MiniLM, the same batches, fp32, its
default attention), without the run's head or a task's own layers: a little less work than
the others, so its figure flatters it slightly.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from minbert.data.batching import encode_task, eval_batches
from minbert.data.io import read_task_file
from minbert.data.tasks import TASKS
from minbert.eval.evaluate import score as dev_score
from minbert.eval.predictor import Predictor
from minbert.model.loading import resolve_model_dir
from minbert.onnx.predictor import OnnxPredictor
from minbert.run.model_dir import load_model_dir

ROOT = Path(__file__).resolve().parents[1]


def transformers_scorer(predictor: Predictor, data) -> callable:
    from transformers import BertModel

    model = BertModel.from_pretrained(resolve_model_dir(predictor.config.model.name)).eval()
    encoded = encode_task(data, predictor.tokenizer, predictor.config.data.max_length, False)
    batches = eval_batches(encoded.lengths, predictor.config.train.eval_batch_size)

    @torch.inference_mode()
    def score(_data) -> None:
        for rows in batches:
            (segment,) = encoded.batch(rows).segments
            model(
                input_ids=segment.input_ids,
                attention_mask=segment.attention_mask,
                token_type_ids=segment.token_type_ids,
            )

    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--onnx", required=True, help="fp32 ONNX export of the run")
    parser.add_argument("--int8", required=True, help="int8 ONNX export of the run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data", default=str(ROOT / "data" / "ids-sst-dev.csv"))
    parser.add_argument("--scores", action="store_true", help="dev scores of every path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer, config = load_model_dir(args.run)
    auto = Predictor(model, tokenizer, config, "cpu")
    fp32 = Predictor(model, tokenizer, config, "cpu")
    fp32.bf16 = False
    data = read_task_file(args.data, TASKS["sst"], "dev")
    onnx = OnnxPredictor.from_dir(args.onnx, threads=args.threads)
    int8 = OnnxPredictor.from_dir(args.int8, threads=args.threads)
    scorers = {
        "minbert torch fp32": fp32.predict_data,
        f"minbert torch auto (bf16={auto.bf16})": auto.predict_data,
        "minbert ONNX fp32": onnx.predict_data,
        "minbert ONNX int8": int8.predict_data,
        "transformers BertModel fp32 (encoder only)": transformers_scorer(fp32, data),
    }
    times: dict[str, list[float]] = {name: [] for name in scorers}
    for score in scorers.values():
        score(data)  # warm-up
    load = [Path("/proc/loadavg").read_text().split()[0]]
    for _ in range(args.rounds):
        for name, score in scorers.items():
            started = time.perf_counter()
            score(data)
            times[name].append(time.perf_counter() - started)
    load.append(Path("/proc/loadavg").read_text().split()[0])
    print(f"SST dev, {len(data)} sentences, {args.threads} threads, loadavg {' -> '.join(load)}")
    print("| path | sentences/s (median of rounds) | best |\n|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {len(data) / statistics.median(ts):.0f} | {len(data) / min(ts):.0f} |")
    agree = np.mean(fp32.predict_data(data) == int8.predict_data(data))
    print(f"int8 ONNX and torch fp32 agree on {100 * agree:.1f}% of the predictions")
    if args.scores:
        paths = {"torch fp32": fp32, "torch auto": auto, "ONNX fp32": onnx, "ONNX int8": int8}
        print("| task | " + " | ".join(paths) + " |\n|---|" + "---|" * len(paths))
        for task in model.tasks:
            spec = TASKS[task]
            dev = read_task_file(Path(config.data.dir) / spec.files["dev"], spec, "dev")
            row = [
                f"{dev_score(task, p.predict_data(dev), dev.labels):.4f}" for p in paths.values()
            ]
            print(f"| {task} {spec.metric} | " + " | ".join(row) + " |")
            gap = np.abs(fp32.outputs_data(dev).outputs - onnx.outputs_data(dev).outputs).max()
            print(f"{task}: max |ONNX fp32 - torch fp32| of the head outputs, dev: {gap:.1e}")


if __name__ == "__main__":
    main()
