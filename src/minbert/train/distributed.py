"""Ranks and what they do together: one process per rank under ``torchrun``, or one alone.

A run launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` ...)
joins a process group (``gloo`` on the CPU, ``nccl`` on CUDA); any other run is the world of
one, where every collective below is a no-op, so the trainer has one code path.

Gradients are summed with explicit all-reduces after the backward pass, rather than by
wrapping the model in ``DistributedDataParallel``: the objectives call the model's task
methods (not ``forward``, which DDP's hooks watch), and PCGrad, GradNorm and the conflict
probes take per-task gradients with ``torch.autograd.grad``, which DDP never reduces. Every
rank runs the same objectives at every step (the schedule comes from the shared seed), so
every rank makes the same collectives in the same order.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from minbert.settings import ConfigError
from minbert.train.state import TrainingError

T = TypeVar("T")
BUCKET_ELEMENTS = 2**22  # gradients go out in flat buckets of up to 16 MiB (fp32)


class RankFailed(TrainingError):
    """Another rank failed: its error, as rank 0 (and every other rank) reports it."""


class RankLost(TrainingError):
    """A collective failed: another rank died, or waited past ``train.dist_timeout``."""


def _collective(call: Callable, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except RuntimeError as exc:  # gloo and nccl say a peer is gone with a RuntimeError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RankLost(f"another rank stopped answering ({call.__name__}: {first})") from exc


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: str = ""

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes files, logs and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: on CUDA, GPU ``LOCAL_RANK`` (one process per GPU)."""
        if self.distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    # -- the data of a step ---------------------------------------------------------------------

    def check_step_rows(self, rows: int) -> None:
        """A task step of ``rows`` rows gives every rank some."""
        if rows < self.size:
            raise ConfigError(
                f"train.batch_size × train.accumulate_steps = {rows} row(s) a task step, fewer "
                f"than the {self.size} ranks: every rank needs rows of every step"
            )

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's contiguous part of a step's rows (parts differ by one row at most
        when the world does not divide them; the loss weights each part by its rows)."""
        return np.array_split(rows, self.size)[self.rank] if self.distributed else rows

    def seed_ranks(self, seed: int) -> None:
        """Each rank its own torch generator (dropout masks, SMART's noise) once the model
        is built; the data order comes from numpy generators of the shared seed, the same
        on every rank."""
        if self.distributed:
            torch.manual_seed(int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0]))

    # -- collectives (each a no-op in the world of one) -----------------------------------------

    def _comm_device(self) -> torch.device:
        return (
            torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")
        )

    def all_reduce_(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over the ranks, in place."""
        if not self.distributed:
            return tensor
        if tensor.device != self._comm_device():  # nccl reduces GPU tensors only
            moved = tensor.to(self._comm_device())
            _collective(dist.all_reduce, moved)
            return tensor.copy_(moved)
        _collective(dist.all_reduce, tensor)
        return tensor

    def sum_floats(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over the ranks (every rank has the same keys)."""
        if not self.distributed or not values:
            return values
        keys = sorted(values)
        vector = torch.tensor(
            [values[k] for k in keys], dtype=torch.float64, device=self._comm_device()
        )
        _collective(dist.all_reduce, vector)
        return dict(zip(keys, vector.cpu().tolist(), strict=True))

    def max_int(self, value: int) -> int:
        """The largest of the ranks' ``value`` (0 and a signal number: any rank's signal)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self._comm_device())
        _collective(dist.all_reduce, t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def any_true(self, flag: bool) -> bool:
        return bool(self.max_int(int(flag)))

    def sync_gradients(self, model: nn.Module) -> None:
        """Sum the ``.grad`` of every trainable parameter of ``model`` over the ranks. A
        parameter with a gradient on any rank gets one on all (zeros where it had none); one
        with none anywhere keeps None, so the optimiser skips it as it would in one process.
        Embedding tables send only the rows that some rank's gradient touches."""
        params = [p for p in model.parameters() if p.requires_grad]
        if not self.distributed or not params:
            return
        row_sparse = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
        present = torch.tensor(
            [p.grad is not None for p in params], dtype=torch.uint8, device=self._comm_device()
        )
        _collective(dist.all_reduce, present, op=dist.ReduceOp.MAX)
        used = [p for p, flag in zip(params, present.tolist(), strict=True) if flag]
        for p in used:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        tables = {id(p) for p in row_sparse}
        for p in used:
            if id(p) in tables:
                self._sum_touched_rows(p.grad)
        for bucket in _buckets([p for p in used if id(p) not in tables]):
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])
            _collective(dist.all_reduce, flat)
            offset = 0
            for p in bucket:
                n = p.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n

    def _sum_touched_rows(self, grad: Tensor) -> None:
        """An embedding table's gradient is zero outside the rows of the step's tokens (a
        few thousand of 30k words): the ranks agree on the rows any of them touched and sum
        those alone. Rows zero on every rank stay zero: the same sum, fewer bytes."""
        touched = (grad != 0).any(dim=1).to(torch.uint8)
        _collective(dist.all_reduce, touched, op=dist.ReduceOp.MAX)
        rows = touched.nonzero().squeeze(1)
        part = grad.index_select(0, rows)
        _collective(dist.all_reduce, part)
        grad.index_copy_(0, rows, part)

    def gather_rng(self, rng: dict) -> dict:
        """The checkpoint's generators (collective): ``rng`` (rank 0's), and under torchrun
        every rank's as ``rng_ranks``, since each rank draws its own dropout masks."""
        ranks = self.gather_object(rng)
        return {"rng": rng, "rng_ranks": ranks} if self.distributed else {"rng": rng}

    def own_rng(self, state: dict, where: Path) -> dict:
        """This rank's generators from a checkpoint saved in ``where`` (a one-process
        checkpoint has rank 0's alone)."""
        ranks = state.get("rng_ranks") or [state["rng"]]
        if len(ranks) != self.size:
            raise TrainingError(
                f"{where} was saved by {len(ranks)} rank(s); resume it with "
                f"--nproc_per_node/--nnodes giving {len(ranks)} rank(s), not {self.size}"
            )
        return ranks[self.rank]

    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (as DDP does at the start)."""
        if not self.distributed:
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                _collective(dist.broadcast, tensor.data, src=0)

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled: for small things and checkpoints)."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        _collective(dist.broadcast_object_list, box, src=0, device=self._comm_device())
        return box[0]

    def gather_object(self, obj: Any) -> list | None:
        """Every rank's ``obj``, in rank order, on rank 0 (None elsewhere)."""
        if not self.distributed:
            return [obj]
        boxes = [None] * self.size if self.is_main else None
        _collective(dist.gather_object, obj, boxes, dst=0)
        return boxes

    def all_gather_object(self, obj: Any) -> list:
        if not self.distributed:
            return [obj]
        boxes: list = [None] * self.size
        _collective(dist.all_gather_object, boxes, obj)
        return boxes

    # -- agreement ------------------------------------------------------------------------------

    def together(self, step: Callable[[], T]) -> T:
        """Run ``step`` on every rank; if it failed anywhere, every rank raises (the failing
        rank its own error, the others ``RankFailed`` naming it) instead of one rank going on
        to a collective that the failed one never reaches."""
        error: BaseException | None = None
        value = None
        try:
            value = step()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, on every rank
            error = exc
        if self.distributed:
            said = self.all_gather_object(None if error is None else _describe(error))
            failed = [(rank, text) for rank, text in enumerate(said) if text is not None]
            if error is None and failed:
                rank, text = failed[0]
                raise RankFailed(f"rank {rank} of {self.size} failed: {text}")
        if error is not None:
            raise error
        return value

    def check_same_config(self, config_toml: str) -> None:
        """Every rank was launched with the same resolved config, or every rank stops,
        naming the first line where a rank's differs from rank 0's."""
        if not self.distributed:
            return
        digests = self.all_gather_object(hashlib.sha256(config_toml.encode()).hexdigest())
        if len(set(digests)) == 1:
            return
        texts = self.all_gather_object(config_toml)
        rank = next(r for r, d in enumerate(digests) if d != digests[0])
        ours, theirs = texts[0].splitlines(), texts[rank].splitlines()
        pairs = enumerate(zip(ours, theirs, strict=False))
        line = next((i for i, (a, b) in pairs if a != b), min(len(ours), len(theirs)))

        def at(lines: list[str]) -> str:
            return lines[line] if line < len(lines) else "(nothing)"

        raise TrainingError(
            f"rank {rank} was launched with another config than rank 0: line {line + 1} of the "
            f"resolved config is {at(theirs)!r} there and {at(ours)!r} on rank 0. Launch every "
            "rank with the same --config and --set"
        )

    @contextlib.contextmanager
    def all_local_threads(self, device: torch.device) -> Iterator[None]:
        """Rank 0's work alone (evaluation, final predictions) on the CPU threads of every
        rank of its node, which wait meanwhile."""
        if not (self.distributed and device.type == "cpu"):
            yield
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(threads * self.local_size)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def leave(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


ALONE = World()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(device: torch.device, timeout_seconds: float) -> World:
    """The world this process is a rank of: the one ``torchrun`` set up in the environment,
    or ``ALONE``. The backend follows the device: ``nccl`` on CUDA, ``gloo`` on the CPU. A
    collective that waits longer than ``timeout_seconds`` (a rank that died or hangs)
    raises instead of hanging."""
    if not launched_by_torchrun():
        return ALONE
    env = os.environ
    world = World(
        rank=int(env["RANK"]),
        size=int(env["WORLD_SIZE"]),
        local_rank=int(env.get("LOCAL_RANK", "0")),
        local_size=int(env.get("LOCAL_WORLD_SIZE", "1")),
        backend="nccl" if device.type == "cuda" else "gloo",
    )
    if world.backend == "nccl":
        torch.cuda.set_device(world.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(world.backend, timeout=datetime.timedelta(seconds=timeout_seconds))
    return world


def _buckets(params: list[nn.Parameter]) -> Iterator[list[nn.Parameter]]:
    """Consecutive parameters of one dtype and device, up to ``BUCKET_ELEMENTS`` a bucket."""
    bucket: list[nn.Parameter] = []
    size = 0
    for p in params:
        if bucket and (
            size + p.numel() > BUCKET_ELEMENTS
            or p.grad.dtype != bucket[0].grad.dtype
            or p.grad.device != bucket[0].grad.device
        ):
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += p.numel()
    if bucket:
        yield bucket


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
