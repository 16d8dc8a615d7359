"""What one training step costs per image, by model, batch size and image size: the price list behind
``resolution=progressive`` and ``time_budget_s``.

    uv run python -m benchmarks.step_cost [--models simple_cnn_stn simple_cnn] [--sizes 20 24 28 32] [--bf16]

Each row is a whole step on random data (forward, backward, AdamW; NHWC; bf16 autocast with ``--bf16``), the best
of ``--repeats`` means of ``--steps`` steps after warm-up: a busy neighbour only adds time. Prints a table and
writes it as JSON to ``--out``. Compare rows of one run; the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

from gtsrb.models.factory import build_model


def ms_per_image(name: str, batch: int, size: int, bf16: bool, steps: int, repeats: int) -> float:
    torch.manual_seed(0)
    model = build_model(name, 43).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 43, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(4):  # oneDNN picks its kernels in the first steps
        step()
    means = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        means.append((time.perf_counter() - started) / steps / batch * 1e3)
    return min(means)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=["simple_cnn_stn", "simple_cnn"])
    parser.add_argument("--batches", type=int, nargs="*", default=[128])
    parser.add_argument("--sizes", type=int, nargs="*", default=[20, 24, 28, 32])
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (the precision gtsrb_cpu trains in here)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/step_cost.json")
    args = parser.parse_args()
    rows = []
    print(f"| model | batch | {' | '.join(f'{s} px' for s in args.sizes)} |  (ms per image, "
          f"{'bf16' if args.bf16 else 'fp32'}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f})")
    for name in args.models:
        for batch in args.batches:
            costs = [ms_per_image(name, batch, size, args.bf16, args.steps, args.repeats) for size in args.sizes]
            rows += [{"model": name, "batch": batch, "size": s, "bf16": args.bf16, "ms_per_image": round(c, 4)}
                     for s, c in zip(args.sizes, costs)]
            print(f"| {name} | {batch} | {' | '.join(f'{c:.3f}' for c in costs)} |", flush=True)
    with open(args.out, "w") as f:
        json.dump({"threads": torch.get_num_threads(), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
