"""Load test of ``python -m gtsrb.serve`` on localhost: requests/s and latency at several concurrencies,
with LitServe's dynamic batching on and off.

    uv run python -m benchmarks.load_test --model outputs/<run> --out benchmarks/results

For each setting (batching on: ``max_batch_size=16``; off: ``max_batch_size=1``) one server is started
(one inference worker, one torch thread) and, for each concurrency (1, 8, 32 clients), clients post one
PNG sign each request, looping until ``--requests`` have been sent or ``--seconds`` have passed: bounded
in both, it stops by itself. Every answer must be a 200 with a prediction; errors are counted and
reported. The clients run on the same CPU as the server (two cores here), so the figures include their
cost; compare batching on against off, measured the same way.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from PIL import Image

from benchmarks.report import cpu_name, write_results
from gtsrb.data.synthetic import make_synthetic
from gtsrb.serve import running_server

SETTINGS = {"on": ["max_batch_size=16", "batch_timeout=0.005"], "off": ["max_batch_size=1"]}


def sign_pngs(count: int = 43) -> list[bytes]:
    """PNG files of synthetic signs at 48 px, one per class: real uploads, decoded and resized by the server."""
    out = []
    for image in make_synthetic(1, 48, seed=21).images[:count]:
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def load(url: str, concurrency: int, requests: int, seconds: float, uploads: list[bytes]) -> dict:
    """``concurrency`` clients share a budget of ``requests`` and a deadline of ``seconds``."""
    lock = threading.Lock()
    sent, latencies, errors = [0], [], []
    deadline = time.perf_counter() + seconds

    def client(worker: int) -> None:
        with httpx.Client(timeout=60) as http:
            while True:
                with lock:
                    if sent[0] >= requests or time.perf_counter() > deadline:
                        return
                    index = sent[0]
                    sent[0] += 1
                upload = uploads[index % len(uploads)]
                start = time.perf_counter()
                try:
                    response = http.post(f"{url}/predict", files={"file": (f"sign{index}.png", upload)})
                    ok = response.status_code == 200 and response.json()["predictions"][0]["top_k"]
                    detail = None if ok else f"{response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    detail = f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - start
                with lock:
                    (errors.append(detail) if detail else latencies.append(elapsed * 1000))

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall = time.perf_counter() - started
    ordered = sorted(latencies) or [float("nan")]

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"concurrency": concurrency, "requests": len(latencies) + len(errors), "errors": len(errors),
            "first_errors": errors[:3], "seconds": wall, "requests_per_s": len(latencies) / wall,
            "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
            "mean_ms": statistics.fmean(latencies) if latencies else float("nan"), "load_avg_1min": os.getloadavg()[0]}


def markdown(results: list[dict], meta: dict) -> str:
    lines = [f"# Load test of gtsrb.serve on localhost ({meta['cpu']})", "",
             f"`{meta['command']}`; model `{meta['model']}`; one inference worker, one torch thread; up to "
             f"{meta['requests']} requests or {meta['seconds']:.0f} s per row; clients on the same CPU.", "",
             "| batching | concurrency | requests | errors | requests/s | p50 (ms) | p95 (ms) | p99 (ms) | "
             "load avg (1 min) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in results:
        lines.append(f"| {row['batching']} | {row['concurrency']} | {row['requests']} | {row['errors']} | "
                     f"{row['requests_per_s']:.1f} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['p99_ms']:.1f} | "
                     f"{row['load_avg_1min']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="run directory, .ckpt, evaluation directory or model.onnx")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=2000, help="requests per row at most")
    parser.add_argument("--seconds", type=float, default=20, help="seconds per row at most")
    parser.add_argument("--batching", nargs="+", default=["on", "off"], choices=list(SETTINGS))
    args = parser.parse_args()
    uploads = sign_pngs()
    results = []
    for batching in args.batching:
        with running_server(args.model, *SETTINGS[batching], "log_level=error") as url:
            load(url, 2, 20, 30, uploads)  # warm-up: first requests pick kernels and fill caches
            for concurrency in args.concurrency:
                row = {"batching": batching, **load(url, concurrency, args.requests, args.seconds, uploads)}
                print(json.dumps(row), flush=True)
                results.append(row)
    meta = {"command": "uv run python -m benchmarks.load_test --model <model>", "model": args.model,
            "requests": args.requests, "seconds": args.seconds, "cpu": cpu_name()}
    write_results(args.out, "load_test", {"meta": meta, "results": results}, markdown(results, meta))


if __name__ == "__main__":
    main()
