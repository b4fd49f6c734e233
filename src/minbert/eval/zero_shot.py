"""Zero-shot STS: the cosine of two sentences' pooled embeddings against the gold scores,
with no head and no training on STS (how SimCSE chooses its checkpoint, and how MiniLM's
published score is measured)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.stats
import torch
import torch.nn.functional as F

from minbert.data.batching import EncodedTask, encode_task, eval_batches, pad_sequences
from minbert.data.io import read_task_file
from minbert.data.tasks import TASKS
from minbert.device import autocast
from minbert.model.heads import encode
from minbert.model.tokenizer import Tokenizer


def load_sts_pairs(data_dir: str | Path, tokenizer: Tokenizer, split: str = "dev") -> EncodedTask:
    """STS ``split`` (dev by default), each sentence on its own (bi-encoded)."""
    spec = TASKS["sts"]
    data = read_task_file(Path(data_dir) / spec.files[split], spec, split)
    return encode_task(data, tokenizer, 128, bi_encode=True)


@torch.inference_mode()
def zero_shot_sts(
    encoder,
    data: EncodedTask,
    pooling: str = "mean",
    batch_size: int = 128,
    device="cpu",
    bf16: bool = False,
) -> dict[str, float]:
    """``sts_zeroshot_pearson`` and ``sts_zeroshot_spearman`` of cos(u, v) on ``data``."""
    was_training = encoder.training
    encoder.eval()
    distinct, where = data.distinct_sentences()
    vectors = []
    order = eval_batches(np.array([len(ids) for ids in distinct]), batch_size)
    for rows in order:
        ids = [distinct[i] for i in rows]
        segment = pad_sequences(ids, [np.zeros_like(x) for x in ids]).to(device)
        with autocast(device, bf16):
            vectors.append(encode(encoder, segment, pooling).float())
    table = torch.empty(len(distinct), vectors[0].shape[-1], device=device)
    table[torch.from_numpy(np.concatenate(order)).to(device)] = torch.cat(vectors)
    u, v = (table[torch.from_numpy(where[p]).to(device)] for p in (0, 1))
    cosine = F.cosine_similarity(u, v).cpu().numpy().astype(np.float64)
    encoder.train(was_training)
    return {
        "sts_zeroshot_pearson": float(scipy.stats.pearsonr(cosine, data.labels)[0]),
        "sts_zeroshot_spearman": float(scipy.stats.spearmanr(cosine, data.labels)[0]),
    }
