"""Experiments over runs: seed sweeps with paired intervals (sweep.py, stats.py)."""
