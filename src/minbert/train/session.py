"""What a run does to its process and folder, outside the trainer's constructor: the run
folder prepared, the log file attached, stop signals caught. Each is undone on exit, so a
process can run one trainer after another (sweeps, searches, tests)."""

from __future__ import annotations

import logging
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from minbert.run import lock
from minbert.run.layout import RunDir
from minbert.train.state import TrainingError, write_atomic

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
MIN_FREE_BYTES = 512 * 2**20  # RUN/last/ of MiniLM is 266 MiB (du -sh)
log = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM: the run stopped at a safe point with its state saved for ``--resume``."""

    def __init__(self, signum: int, out: Path, step: int, during: str = "", ranks: int = 1):
        self.signum = signum
        name = signal.Signals(signum).name
        where = f"stopped {during}" if during else f"stopped after step {step}"
        launch = f"torchrun --nproc_per_node={ranks} -m minbert" if ranks > 1 else "minbert"
        super().__init__(
            f"{name}: {where}; the state after step {step} is saved in {RunDir(out).last}. "
            f"Resume with: {launch} train --resume {out}"
        )


def check_output_folder(run: RunDir) -> None:
    """Before anything is read: the folder is writable, with room for checkpoints."""
    try:
        run.root.mkdir(parents=True, exist_ok=True)
        probe = run / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise TrainingError(f"cannot write to the output folder {run}: {exc}") from exc
    free = shutil.disk_usage(run.root).free
    if free < MIN_FREE_BYTES:
        raise TrainingError(
            f"only {free / 2**20:.0f} MiB free in {run}; a run needs at least "
            f"{MIN_FREE_BYTES / 2**20:.0f} MiB for its checkpoints"
        )


def check_no_run_here(run: RunDir) -> None:
    """A new run does not land on an old one (checked under the folder's lock)."""
    if found := run.run_files():
        names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in found)
        raise TrainingError(
            f"{run} already holds a run ({names}). Continue it with `minbert train --resume "
            f"{run}`, replace it with --overwrite, or give another --out"
        )


def open_output_folder(run: RunDir, resume: bool, overwrite: bool) -> Path:
    """Before anything is read: the folder checked and locked (the lock's path, for
    ``lock.release``), and a run already there refused unless resumed or overwritten."""
    if resume and overwrite:
        raise TrainingError("--resume continues the run in its folder; it cannot --overwrite")
    check_output_folder(run)
    held = lock.acquire(run)
    try:
        if not (resume or overwrite):
            check_no_run_here(run)
    except BaseException:
        lock.release(held)
        raise
    return held


def claim_output_folder(run: RunDir, config_toml: str) -> None:
    """A new run takes its folder, once every input has been read: what an earlier run left
    there (``--overwrite``) is removed and the config written."""
    for path in run.run_files():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    write_atomic(run.config, config_toml)


class _Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def collecting_logs() -> Iterator[list[logging.LogRecord]]:
    """The ``minbert`` log records of the block, kept for ``logging_to(earlier=...)``: a run
    writes its log only once it owns its folder, from its first line."""
    handler = _Collected()
    root = logging.getLogger("minbert")
    root.addHandler(handler)
    try:
        yield handler.records
    finally:
        root.removeHandler(handler)


@contextmanager
def logging_to(path: Path, append: bool, earlier: list[logging.LogRecord] = ()) -> Iterator[None]:
    """The ``minbert`` loggers also write to ``path`` inside the block (after ``earlier``)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, mode="a" if append else "w", encoding="utf-8")
    except OSError as exc:
        raise TrainingError(f"cannot write to the output folder {path.parent}: {exc}") from exc
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for record in earlier:
        handler.handle(record)
    root = logging.getLogger("minbert")
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


class StopRequested(Exception):
    """A stop signal that arrived inside ``StopSignals.interruptible()``."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """SIGINT/SIGTERM, caught while a run trains: the first one is noted (``received``) and
    the run stops at its next safe point; a second one stops the process at once. Inside
    ``interruptible()`` (evaluation, prediction files: nothing half-written is kept) the
    stop comes at once, as ``StopRequested``."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._interruptible = False

    def _handle(self, signum: int, frame) -> None:
        self.received = signum
        signal.signal(signum, signal.SIG_DFL)
        log.warning("%s: stopping", signal.Signals(signum).name)
        if self._interruptible:
            raise StopRequested(signum)

    @contextmanager
    def caught(self) -> Iterator[StopSignals]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # only the main thread may catch signals
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        if self.received is not None:
            raise StopRequested(self.received)
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False
