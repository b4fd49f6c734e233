"""Memory per GPU of the main job's recipe on a bigger encoder (docs/PERFORMANCE.md,
"Several processes"): the parameters (weights, gradients and AdamW's two moments: 16 bytes
each in fp32), and the activations one training row of each task keeps for the backward pass,
counted as the bytes of the distinct tensors autograd saves (``saved_tensors_hooks``), which
do not depend on the device.

    .venv/bin/python benchmarks/activation_memory.py [--layers 12 --hidden 768 --heads 12
        --intermediate 3072] [--rows 32] [--fp32]

The encoder is randomly initialised in the given shape (bert-base by default; no weights are
needed to count bytes); the rows are the main job's own training rows (configs/default.toml,
real lengths, packed as in training), ``--rows`` of each task.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from minbert.config import load_config
from minbert.model.bert import BertConfig, BertModel
from minbert.model.loading import export_pretrained, load_pretrained
from minbert.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9


class SavedBytes:
    """The bytes of the distinct storages autograd keeps for the backward pass."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--intermediate", type=int, default=3072)
    parser.add_argument(
        "--rows", default="16,32", help="row counts to measure (two or more: the cost per row)"
    )
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    args = parser.parse_args()

    _, tokenizer = load_pretrained("minilm-l6")  # bert-base-uncased's vocabulary
    shape = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.intermediate,
    )
    with tempfile.TemporaryDirectory() as tmp:
        export_pretrained(BertModel(shape), tokenizer, Path(tmp) / "encoder")
        sets = [
            f"model.name={Path(tmp) / 'encoder'}",
            f"data.dir={ROOT / 'data'}",
            "train.progress=false",
            f"train.precision={'fp32' if args.fp32 else 'bf16'}",
        ]
        config = load_config(ROOT / "configs" / "default.toml", sets)
        trainer = Trainer(config, Path(tmp) / "run")
        params = sum(p.numel() for p in trainer.model.parameters())
        trained = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        print(f"encoder {args.layers} x {args.hidden} (heads {args.heads}); bf16={trainer.bf16}")
        print(f"parameters {params / 1e6:.1f}M ({trained / 1e6:.1f}M trained)")
        print(f"weights + gradients + AdamW moments (fp32): {16 * trained / GB:.2f} GB")
        trainer.model.train()
        counts = [int(n) for n in args.rows.split(",")]
        for task in config.train.tasks:
            stream = trainer.streams[trainer.objectives[task].source]
            rows = stream.take_rows(max(counts))
            saved_bytes = []
            for n in counts:  # the first n rows of one batch: the counts share their rows
                saved = SavedBytes()
                with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
                    parts, total = trainer._micro_loss(task, rows[:n], 1.0)
                tokens = sum(len(part[r]) for part in stream.data.sequences for r in rows[:n])
                print(f"{task}: {n} rows, {tokens} real tokens: saved {saved.total / GB:.3f} GB")
                saved_bytes.append(saved.total)
                del parts, total
            per_row = (saved_bytes[-1] - saved_bytes[0]) / (counts[-1] - counts[0])
            fixed = saved_bytes[0] - per_row * counts[0]
            print(
                f"{task}: {per_row / 1e6:.1f} MB a row, plus {fixed / GB:.3f} GB whatever the "
                "rows (the bf16 copies of the weights autocast keeps for the backward pass)"
            )


if __name__ == "__main__":
    main()
