"""Load test of ``minbert serve`` on this machine, loopback only, bounded in time and
requests: N concurrent clients for T seconds, each sending one request after another.

    python benchmarks/serve_load.py --run runs/demo [--onnx runs/demo-onnx] \
        --clients 16 --seconds 60 [--json out.json]

For each backend (torch; onnx when ``--onnx`` is given) and batching on and off, it starts
the server on a free port, warms it up, runs the clients, and reports requests/s,
sentences/s, p50/p95/p99 latency, errors, and the server's RSS after the warm-up and at the
end. The clients run in this process (one event loop), beside the server on the same
cores: the figures are for the machine as a whole, not for the server alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from minbert.serve.settings import ServeSettings

ROOT = Path(__file__).resolve().parents[1]


def sentences(path: Path, count: int = 2000) -> list[str]:
    from minbert.data.io import read_task_file
    from minbert.data.tasks import TASKS

    data = read_task_file(path, TASKS["sst"], "dev")
    return [t[0] for t in data.texts][:count]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def start_server(source: str, backend: str, batching: bool, threads: int) -> tuple:
    port = free_port()
    command = [sys.executable, "-m", "minbert.cli", "serve", source, "--port", str(port)]
    command += ["--backend", backend, "--threads", str(threads)]
    # on: the torch default, given explicitly (the onnx default is off)
    command += ["--max-batch", str(ServeSettings.max_batch)] if batching else ["--no-batching"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            server.kill()
            raise RuntimeError("the server did not answer /health within 120 s")
        time.sleep(0.2)


async def load(url: str, texts: list[str], clients: int, seconds: float, max_requests: int):
    latencies: list[float] = []
    errors = 0
    sent = 0
    stop_at = time.monotonic() + seconds

    async def client(seed: int, c: httpx.AsyncClient) -> None:
        nonlocal errors, sent
        rng = random.Random(seed)
        while time.monotonic() < stop_at and sent < max_requests:
            sent += 1
            started = time.perf_counter()
            try:
                r = await c.post("/v1/sentiment", json={"texts": [rng.choice(texts)]})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += not ok

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        started = time.perf_counter()
        await asyncio.gather(*(client(i, c) for i in range(clients)))
        wall = time.perf_counter() - started
    return latencies, errors, wall


def measure(args, backend: str, source: str, batching: bool, texts: list[str]) -> dict:
    server, url = start_server(source, backend, batching, args.threads)
    try:
        # warm-up: the first requests fill the kernel and memory caches of each shape
        asyncio.run(load(url, texts, args.clients, args.warmup, 10**9))
        rss_start = rss_mib(server.pid)
        latencies, errors, wall = asyncio.run(
            load(url, texts, args.clients, args.seconds, args.max_requests)
        )
        rss_end = rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    ms = np.array(latencies) * 1000
    return {
        "backend": backend,
        "batching": batching,
        "clients": args.clients,
        "seconds": round(wall, 1),
        "requests": len(latencies),
        "errors": errors,
        "requests_per_s": round(len(latencies) / wall, 1),
        "sentences_per_s": round(len(latencies) / wall, 1),  # one sentence per request
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "rss_start_mib": round(rss_start),
        "rss_end_mib": round(rss_end),
        "rss_growth_pct": round(100 * (rss_end - rss_start) / rss_start, 2),
    }


def table(rows: list[dict]) -> str:
    head = (
        "| backend | batching | clients | requests | errors | req/s | sentences/s | p50 ms "
        "| p95 ms | p99 ms | RSS start → end (MiB) |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    return head + "".join(
        f"| {r['backend']} | {'on' if r['batching'] else 'off'} | {r['clients']} | "
        f"{r['requests']} | {r['errors']} | {r['requests_per_s']} | {r['sentences_per_s']} | "
        f"{r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['rss_start_mib']} → "
        f"{r['rss_end_mib']} ({r['rss_growth_pct']:+.1f}%) |\n"
        for r in rows
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run folder (torch backend)")
    parser.add_argument("--onnx", help="ONNX export folder of the same run (onnx backend)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before measuring")
    parser.add_argument("--skip-torch", action="store_true", help="measure the onnx backend only")
    parser.add_argument("--max-requests", type=int, default=100_000, help="per measurement")
    parser.add_argument("--threads", type=int, default=0, help="server CPU threads")
    parser.add_argument("--data", default=str(ROOT / "data" / "ids-sst-dev.csv"))
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    texts = sentences(Path(args.data))
    backends = [] if args.skip_torch else [("torch", args.run)]
    backends += [("onnx", args.onnx)] if args.onnx else []
    rows = []
    for backend, source in backends:
        for batching in (True, False):
            print(f"{backend}, batching {'on' if batching else 'off'} ...", file=sys.stderr)
            rows.append(measure(args, backend, source, batching, texts))
    print(table(rows), end="")
    for backend, _ in backends:
        on, off = (
            next(r for r in rows if r["backend"] == backend and r["batching"] == b)
            for b in (True, False)
        )
        print(
            f"{backend}: batching on / off = "
            f"{on['sentences_per_s'] / max(off['sentences_per_s'], 1e-9):.2f}x sentences/s"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
