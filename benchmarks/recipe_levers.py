"""The main job's step with less to train (issue 26, item 1: the levers of its recipe): the
embeddings, or the embeddings and the bottom 1-3 encoder layers, frozen (``train.trainable``),
against the main job as it is; seconds per step as ``benchmarks/adapters.py`` measures them,
in fp32 (the AVX2-only kind's precision).

    .venv/bin/python benchmarks/recipe_levers.py [--steps 30] [--warmup 5] [--threads 1]

Prints one JSON line per arm.
"""

from __future__ import annotations

import json

from adapters import measure_config
from per_process import run_arms

UPPER = ["encoder.pooler.*", "heads.*"]  # the task heads and their own top layers


def frozen_below(layer: int) -> list[str]:
    """``train.trainable`` that freezes the embeddings and the encoder layers below ``layer``."""
    layers = "encoder.encoder.layer.*" if layer == 0 else f"encoder.encoder.layer.[{layer}-9].*"
    return [layers, *UPPER]


ARMS = {
    "full": None,
    "embeddings-frozen": frozen_below(0),
    "bottom-1-frozen": frozen_below(1),
    "bottom-2-frozen": frozen_below(2),
    "bottom-3-frozen": frozen_below(3),
}


def measure(arm: str, steps: int, warmup: int, threads: int) -> dict:
    sets = ['train.precision="fp32"']
    if ARMS[arm] is not None:
        sets.append("train.trainable=" + json.dumps(ARMS[arm]))
    return measure_config(arm, "configs/default.toml", sets, steps, warmup, threads)


def main() -> None:
    run_arms(__file__, __doc__, list(ARMS), measure, steps=30)


if __name__ == "__main__":
    main()
