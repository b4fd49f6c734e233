"""The service's limits and batching (``minbert serve`` options); no web imports, so the CLI
can show the defaults without loading FastAPI."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeSettings:
    max_batch: int = 32  # items per forward pass (1: batching off)
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_items: int = 128  # texts or pairs per request
    max_text_bytes: int = 4096  # UTF-8 bytes per text
    max_body_bytes: int = 1 << 20  # request body
    pad_multiple: int = 16  # batches padded to a multiple of this many tokens (torch backend)


# Items per forward pass when --max-batch is not given. ONNX Runtime runs one sentence
# nearly as fast per sentence as a batch on a CPU, and a merged batch of mixed lengths is
# padded to its longest, so merging slows it down (docs/PERFORMANCE.md, "Serving").
DEFAULT_MAX_BATCH = {"torch": ServeSettings.max_batch, "onnx": 1}
