"""What per-class logit biases would be worth for SST: in-sample, and on unseen sentences.

For each trained run, the best model's SST dev logits get one bias per class, chosen by
coordinate ascent to maximise accuracy. Fitted on all of dev, that is an upper bound
(in-sample). Fitted on a random half of dev and scored on the other half, 20 splits each
way, it is what the biases would give on sentences they were not fitted on, as with biases
set on held-out training rows (docs/RESULTS.md, "SST probes, continued"). Analysis only:
nothing here is used by training.

    .venv/bin/python benchmarks/sst_class_bias.py RUN [RUN ...]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from minbert.device import use_bf16
from minbert.eval.evaluate import predict
from minbert.run.model_dir import load_model_dir
from minbert.train.trainer import load_split

GRID = np.linspace(-1.5, 1.5, 61)


def accuracy(logits: np.ndarray, labels: np.ndarray, bias: np.ndarray) -> float:
    return float(((logits + bias).argmax(1) == labels).mean())


def fit_biases(logits: np.ndarray, labels: np.ndarray, sweeps: int = 3) -> np.ndarray:
    """Coordinate ascent: each class's bias in turn set to the grid value most accurate."""
    bias = np.zeros(logits.shape[1])
    for _ in range(sweeps):
        for c in range(len(bias)):
            best, best_value = accuracy(logits, labels, bias), bias[c]
            for value in GRID:
                trial = bias.copy()
                trial[c] = value
                score = accuracy(logits, labels, trial)
                if score > best + 1e-12:
                    best, best_value = score, value
            bias[c] = best_value
    return bias


def split_half_gains(logits: np.ndarray, labels: np.ndarray, splits: int = 20) -> list[float]:
    rng = np.random.default_rng(0)
    gains = []
    zero = np.zeros(logits.shape[1])
    for _ in range(splits):
        order = rng.permutation(len(labels))
        halves = order[: len(order) // 2], order[len(order) // 2 :]
        for fit, held in (halves, halves[::-1]):
            bias = fit_biases(logits[fit], labels[fit])
            gains.append(
                accuracy(logits[held], labels[held], bias)
                - accuracy(logits[held], labels[held], zero)
            )
    return gains


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders (their best/ model is read)")
    args = parser.parse_args()
    for run in args.runs:
        model, tokenizer, config = load_model_dir(run)
        dev = load_split(config, "sst", "dev", tokenizer)
        bf16 = use_bf16(config.train.precision, torch.device("cpu"))  # as the run evaluated
        logits = predict(model, dev, config.train.eval_batch_size, bf16=bf16).outputs
        logits = logits.astype(np.float64)
        labels = dev.labels.astype(np.int64)
        zero = np.zeros(logits.shape[1])
        in_sample = fit_biases(logits, labels)
        gains = split_half_gains(logits, labels)
        print(
            f"{run}: dev {accuracy(logits, labels, zero):.4f}; biases fitted on dev "
            f"{accuracy(logits, labels, in_sample):.4f} (in-sample); fitted on one half, "
            f"scored on the other: {np.mean(gains):+.4f} ± {np.std(gains):.4f}"
        )


if __name__ == "__main__":
    main()
