"""Speed benchmarks: minbert against transformers' BERT, side by side in one process.

``measure`` holds the pure parts (timing, peak memory, FLOP formulas, matmul peak, statistics),
``systems`` builds the two systems so that they compute the same function on the same
batches, and ``throughput`` runs the comparison, the sweep and the report behind
``minbert bench`` and ``benchmarks/throughput.py``.
"""
