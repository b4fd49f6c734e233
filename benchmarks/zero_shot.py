"""Zero-shot pair scores of the packaged MiniLM: mean-pooled cosine, no training.

STS: Pearson r of cos(u, v) with the gold score on dev. Quora: the cosine threshold best
on *train*, applied to dev. Run: `.venv/bin/python benchmarks/zero_shot.py` (about a minute).
"""

from pathlib import Path

import numpy as np
import torch

from minbert.data.batching import encode_task, eval_batches
from minbert.data.io import read_task_file
from minbert.data.tasks import TASKS
from minbert.eval.metrics import pearson
from minbert.model.heads import pool
from minbert.model.loading import load_pretrained

DATA = Path(__file__).resolve().parents[1] / "data"


def embed(encoder, data, part: int) -> np.ndarray:
    lengths = np.array([len(s) for s in data.sequences[part]])
    out = np.zeros((len(lengths), encoder.config.hidden_size), dtype=np.float32)
    for rows in eval_batches(lengths, 256):
        seg = data.batch(rows).segments[part]
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
            o = encoder(*seg.as_tuple())
            vecs = pool(o.last_hidden_state, seg.attention_mask, o.pooler_output, "mean")
        out[rows] = vecs.float().numpy()
    return out


def cosines(encoder, tokenizer, task: str, split: str):
    spec = TASKS[task]
    data = encode_task(read_task_file(DATA / spec.files[split], spec, split), tokenizer, 128, True)
    u, v = embed(encoder, data, 0), embed(encoder, data, 1)
    cos = (u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)
    return cos, data.labels


def main() -> None:
    encoder, tokenizer = load_pretrained("minilm-l6")
    cos, gold = cosines(encoder, tokenizer, "sts", "dev")
    print(f"STS dev Pearson r of mean-pooled cosine: {pearson(cos, gold):.3f}")
    cos, gold = cosines(encoder, tokenizer, "quora", "train")
    thresholds = np.linspace(0.5, 0.99, 100)
    best = thresholds[int(np.argmax([np.mean((cos > t) == gold) for t in thresholds]))]
    cos, gold = cosines(encoder, tokenizer, "quora", "dev")
    print(
        f"Quora dev accuracy at the best train threshold cos > {best:.2f}: "
        f"{np.mean((cos > best) == gold):.3f}"
    )


if __name__ == "__main__":
    main()
