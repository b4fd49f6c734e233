"""How much merging requests can gain at most: the SST head's sentences/s through each
serving backend's own call (``Predictor.outputs`` and ``OnnxPredictor.outputs``, the call the
server's batcher makes), one call per batch of 1, 2, 4, ... sentences.

    python benchmarks/batch_ceiling.py --run RUN --onnx DIR [--int8 DIR] [--threads 2] [--seconds 5]

Two kinds of batches: sentences of one length (no padding: the most a merged batch can
gain) and sentences drawn at random from the dev file (what a server merges: each batch is
padded to its longest). A backend whose batch-1 rate is already near its best batched rate
cannot gain much from dynamic batching, whatever the batcher does.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import torch

from minbert.data.io import read_task_file
from minbert.data.tasks import TASKS
from minbert.eval.predictor import Predictor
from minbert.onnx.predictor import OnnxPredictor

ROOT = Path(__file__).resolve().parents[1]


def rate(call, batches, seconds: float) -> float:
    """Sentences per second of ``call`` over ``batches``, cycled for ``seconds``."""
    call(batches[0])  # the first call of a shape pays for its kernels
    done, started, i = 0, time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        call(batches[i % len(batches)])
        done += len(batches[i % len(batches)])
        i += 1
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--onnx", required=True, help="fp32 ONNX export of the run")
    parser.add_argument("--int8", help="int8 ONNX export of the run (optional)")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0, help="per batch size and backend")
    parser.add_argument("--sizes", default="1,2,4,8,16,32")
    parser.add_argument("--data", default=str(ROOT / "data" / "ids-sst-dev.csv"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch_backend = Predictor.from_run(args.run, device="cpu", pad_multiple=16)
    backends = {} if args.skip_torch else {"torch": torch_backend}
    for name, folder in (("onnx fp32", args.onnx), ("onnx int8", args.int8)):
        if folder:
            backends[name] = OnnxPredictor.from_dir(folder, threads=args.threads, pad_multiple=16)
    texts = [row[0] for row in read_task_file(args.data, TASKS["sst"], "dev").texts]
    tokenizer = torch_backend.tokenizer
    lengths = np.array([len(e.input_ids) for e in tokenizer.encode_batch(texts)])
    common = Counter(lengths.tolist()).most_common(1)[0][0]
    one_length = [texts[i] for i in np.flatnonzero(lengths == common)]
    rng = np.random.default_rng(0)
    print(
        f"SST dev: {len(texts)} sentences, mean {lengths.mean():.1f} tokens; one length: "
        f"{len(one_length)} sentences of {common} tokens; threads {args.threads}\n"
    )
    print(
        "| backend | sentences | " + " | ".join(f"batch {s}" for s in args.sizes.split(",")) + " |"
    )
    print("|---|---|" + "---|" * len(args.sizes.split(",")))
    for name, backend in backends.items():
        for kind, pool in (("one length", one_length), ("random", texts)):
            rates = []
            for size in map(int, args.sizes.split(",")):
                batches = [list(rng.choice(pool, size, replace=False)) for _ in range(64)]
                rates.append(rate(partial(backend.outputs, "sst"), batches, args.seconds))
            cells = " | ".join(f"{r:.0f} ({r / rates[0]:.2f}×)" for r in rates)
            print(f"| {name} | {kind} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
