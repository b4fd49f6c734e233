"""Throughput of minbert against transformers' BERT: the command behind docs/PERFORMANCE.md.

The same program as `minbert bench` (the measuring code is src/minbert/bench/); every option
of one works with the other:

    .venv/bin/python benchmarks/throughput.py --quick                   # under a minute
    .venv/bin/python benchmarks/throughput.py --json runs/bench/throughput.json
    .venv/bin/python benchmarks/throughput.py --sweep-only --sweep runs/bench/sweep.png
    .venv/bin/python benchmarks/throughput.py --device cuda --json runs/bench/cuda.json

Run it on an idle machine: the two systems alternate run by run, so load from elsewhere
hits both, but it still widens the spread.
"""

import sys

from minbert.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
