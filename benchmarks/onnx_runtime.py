"""ONNX Runtime against PyTorch eager on the CPU, one thread each: the exported model vs the checkpoint.

    uv run python -m benchmarks.onnx_runtime --out benchmarks/results

For the CPU recipe's model (simple_cnn, 32 px) and a timm model (MobileNetV3-S, 64 px), both built
the way ``gtsrb.export`` builds them (uint8 in, calibrated probabilities out, so both contenders do
the same work): latency of one image (p50, p95) and throughput at batch 64. The contenders alternate
in short rounds, so a neighbour's load slows both alike; the ratios are the result. Weights are
random: speed does not depend on their values.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.report import cpu_name, write_results
from gtsrb.export import INPUT, OUTPUT, ExportedClassifier, export_onnx, onnx_session
from gtsrb.inference import InputSpec, Predictor
from gtsrb.module import TrafficSignClassifier

MODELS = {"simple_cnn": 32, "mobilenetv3_small_100": 64}


def _predictor(name: str, size: int) -> Predictor:
    torch.manual_seed(0)
    model = TrafficSignClassifier({"name": name, "pretrained": False}, {"name": "adamw", "lr": 1e-3},
                                  {"name": "none"}, [f"class {i}" for i in range(43)]).eval()
    return Predictor(model, InputSpec(size), batch_size=64, device="cpu")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(name: str, size: int, rounds: int, calls: int, batch_calls: int, workdir: Path) -> dict:
    predictor = _predictor(name, size)
    path = export_onnx(predictor, workdir / f"{name}.onnx")
    session = onnx_session(path, threads=1)
    module = ExportedClassifier(predictor).eval()
    one = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8)
    batch = torch.randint(0, 256, (64, 3, size, size), dtype=torch.uint8)
    contenders = {
        "pytorch eager": lambda x: module(x),
        "onnx runtime": lambda x: session.run([OUTPUT], {INPUT: x.numpy()})[0],
    }
    latency = {k: [] for k in contenders}
    throughput = {k: [] for k in contenders}
    loads = []
    with torch.no_grad():
        for run in contenders.values():  # warm-up: first calls allocate and pick kernels
            for _ in range(5):
                run(one), run(batch)
        for _ in range(rounds):
            loads.append(os.getloadavg()[0])
            for label, run in contenders.items():
                for _ in range(calls):
                    start = time.perf_counter()
                    run(one)
                    latency[label].append((time.perf_counter() - start) * 1000)
                start = time.perf_counter()
                for _ in range(batch_calls):
                    run(batch)
                throughput[label].append(64 * batch_calls / (time.perf_counter() - start))
    rows = {}
    for label in contenders:
        rows[label] = {"p50_ms": statistics.median(latency[label]), "p95_ms": _percentile(latency[label], 0.95),
                       "images_per_s_batch64": statistics.median(throughput[label])}
    base = rows["pytorch eager"]
    for label, row in rows.items():
        row["p50_speedup"] = base["p50_ms"] / row["p50_ms"]
        row["throughput_ratio"] = row["images_per_s_batch64"] / base["images_per_s_batch64"]
    return {"model": name, "image_size": size, "rows": rows, "load_avg_1min": loads}


def markdown(results: list[dict], meta: dict) -> str:
    lines = [f"# ONNX Runtime vs PyTorch eager, CPU, one thread each ({meta['cpu']}, torch {meta['torch']}, "
             f"onnxruntime {meta['onnxruntime']})", "",
             f"`{meta['command']}`: {meta['rounds']} alternating rounds of {meta['calls']} single-image calls and "
             f"{meta['batch_calls']} batch-64 calls per contender.", "",
             "| model | contender | latency p50 (ms) | p95 (ms) | p50 speed-up | images/s at batch 64 | ratio | "
             "load avg (1 min) |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for result in results:
        for label, row in result["rows"].items():
            lines.append(f"| {result['model']} ({result['image_size']} px) | {label} | {row['p50_ms']:.3f} | "
                         f"{row['p95_ms']:.3f} | {row['p50_speedup']:.2f}x | {row['images_per_s_batch64']:.0f} | "
                         f"{row['throughput_ratio']:.2f}x | "
                         f"{', '.join(f'{v:.1f}' for v in result['load_avg_1min'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=100, help="single-image calls per contender and round")
    parser.add_argument("--batch-calls", type=int, default=10, help="batch-64 calls per contender and round")
    args = parser.parse_args()
    import logging

    import onnxruntime

    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(name, size, args.rounds, args.calls, args.batch_calls, Path(tmp))
                   for name, size in MODELS.items()]
    meta = {"command": "uv run python -m benchmarks.onnx_runtime", "rounds": args.rounds, "calls": args.calls,
            "batch_calls": args.batch_calls, "cpu": cpu_name(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__}
    write_results(args.out, "onnx_runtime", {"meta": meta, "results": results}, markdown(results, meta))


if __name__ == "__main__":
    main()
