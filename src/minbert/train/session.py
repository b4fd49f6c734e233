"""What a run does to its process and folder, outside the trainer's constructor: the run
folder prepared, the log file attached, stop signals caught. Each is undone on exit, so a
process can run one trainer after another (sweeps, searches, tests)."""

from __future__ import annotations

import logging
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from minbert.run.layout import RunDir
from minbert.train.state import TrainingError, write_atomic

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
MIN_FREE_BYTES = 512 * 2**20  # RUN/last/ of MiniLM is 266 MiB (du -sh)
log = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM: the run stopped after a step and saved its state for ``--resume``."""

    def __init__(self, signum: int, out: Path, step: int):
        self.signum = signum
        name = signal.Signals(signum).name
        super().__init__(
            f"{name}: stopped after step {step}; the state is saved in {RunDir(out).last}. "
            f"Resume with: minbert train --resume {out}"
        )


def prepare_run_dir(run: RunDir, config_toml: str, resume: bool) -> None:
    """Check the folder is writable with room for checkpoints; a fresh run owns its folder."""
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
    if not resume:
        write_atomic(run.config, config_toml)
        for stale in (run.metrics, run.final):
            stale.unlink(missing_ok=True)
        shutil.rmtree(run.last, ignore_errors=True)


@contextmanager
def logging_to(path: Path, append: bool) -> Iterator[None]:
    """The ``minbert`` loggers also write to ``path`` inside the block."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, mode="a" if append else "w", encoding="utf-8")
    except OSError as exc:
        raise TrainingError(f"cannot write to the output folder {path.parent}: {exc}") from exc
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("minbert")
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


@contextmanager
def stop_signals(on_signal: Callable[[int], None]) -> Iterator[None]:
    """SIGINT/SIGTERM call ``on_signal`` inside the block (a second one stops at once)."""

    def handle(signum: int, frame) -> None:
        on_signal(signum)
        signal.signal(signum, signal.SIG_DFL)
        log.warning("%s: stopping after this step", signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may catch signals
        return
    previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
