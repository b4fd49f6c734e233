"""Speed benchmarks: minbert against transformers' BERT, side by side in one process.

``measure`` holds the pure parts (timing, peak memory, FLOP formulas, matmul peak, statistics),
``systems`` builds the two systems so that they compute the same function on the same
batches, ``options`` defines the setups, the ablation variants and ``BenchOptions``,
``compare`` measures the two systems setup by setup, ``ablation`` measures minbert with each
optimisation switched off, ``sweep`` measures and plots tokens/s against length and batch
size, ``tables`` writes the markdown report, and ``throughput.run`` ties them together behind
``minbert bench`` and ``benchmarks/throughput.py``.
"""
