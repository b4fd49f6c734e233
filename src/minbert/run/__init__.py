"""Run folders: ``RunDir`` names every file a run writes (``layout.py``)."""

from minbert.run.layout import RunDir, RunFileError

__all__ = ["RunDir", "RunFileError"]
