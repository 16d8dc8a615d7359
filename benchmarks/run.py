"""Side-by-side measurements on the real GTSRB training data, in one process, interleaved.

    uv run python -m benchmarks.run --root /tmp/gtsrb_real --out benchmarks/results

What it measures (see benchmarks/README.md for the current table):

1. **Pipeline**: training images/s of the usual approach (torchvision's GTSRB
   dataset, per-sample PIL transforms, a DataLoader with worker processes)
   against ours (decoded uint8 tensor cache, whole-batch augmentation in the
   training process), with the same model, input size and optimiser step;
   the usual pipeline runs at its reference batch size (64) and at ours. Also the model step alone on one fixed batch (the ceiling).
2. **Framework overhead**: the same model, data, augmentation, optimiser and
   schedule in a plain PyTorch loop against our Lightning loop (the
   LightningModule and LightningDataModule that ``train.py`` uses).
3. **Recipe** (:mod:`benchmarks.recipe`): time to given validation accuracies
   (``--target``), time to the last epoch and final validation accuracy of
   ``experiment=gtsrb_cpu`` (or ``--recipe``), each seed trained on five folds
   of held-out blocks (``--recipe-folds``; 0: the one split), from runs made
   with the ``benchmarks.recipe_clock.EpochClock`` callback (``--recipe-seeds``
   runs them, ``--recipe-runs`` reads finished ones), and the difference from
   another recipe fold by fold (``--recipe-baseline``).

The machine may be shared: every measurement alternates between the
contenders in short rounds, so a busy neighbour slows both alike, and each
round records ``os.getloadavg()``. Compare ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from gtsrb.config import AugmentationConfig
from gtsrb.data.datamodule import TrafficSignDataModule
from gtsrb.models import build_model

from benchmarks.recipe import compare_with, recipe_markdown, run_recipe, summarise_recipe

REPO = Path(__file__).resolve().parent.parent


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --------------------------------------------------------------------------- the two data pipelines


def usual_loader(root: str, size: int, batch_size: int, workers: int, mean, std):
    """The usual approach: torchvision's GTSRB dataset and per-sample PIL transforms."""
    import torchvision
    from torchvision import transforms as T

    transform = T.Compose([
        T.RandomResizedCrop(size, scale=(0.8, 1.0)),
        T.RandomRotation(12),
        T.ColorJitter(0.3, 0.3, 0.3, 0.02),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.GaussianBlur(3, sigma=(0.1, 1.0))], p=0.2),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
    dataset = torchvision.datasets.GTSRB(root, split="train", transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       persistent_workers=workers > 0, drop_last=True)


def our_datamodule(root: str, size: int, batch_size: int, augmentation: str, cache_dir: str | None,
                   preprocess: str = "none") -> TrafficSignDataModule:
    aug = OmegaConf.merge(OmegaConf.structured(AugmentationConfig), OmegaConf.load(REPO / f"conf/augmentation/{augmentation}.yaml"))
    data = OmegaConf.load(REPO / "conf/data/gtsrb.yaml")
    data.update(root=root, image_size=size, batch_size=batch_size, cache_dir=cache_dir, preprocess=preprocess,
                val_fraction=0.12)
    dm = TrafficSignDataModule(data, aug, seed=0)
    dm.setup("fit")
    return dm


def forever(loader):
    while True:
        yield from loader


class Stepper:
    """One optimiser step of a fixed model: the same for every contender."""

    def __init__(self, model_name: str, channels_last: bool, bf16: bool, lr: float = 3e-3, compile: bool = False) -> None:
        torch.manual_seed(0)
        self.model = build_model(model_name, 43)
        self.channels_last, self.bf16 = channels_last, bf16
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if compile:  # as model.compile=on does: the module compiled in place
            self.model.compile()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.05)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = F.cross_entropy(self.model(images), labels, label_smoothing=0.1)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def timed_steps(step_fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step_fn()
    return time.perf_counter() - start


def bench_pipeline(args, model: str, size: int) -> dict:
    """Images/s of a training loop fed by the usual pipeline vs ours, alternating in rounds.

    The usual contender trains as such projects do (fp32, default NCHW layout,
    batch ``--usual-batch-size``, 64 in the reference setup); it also runs at our
    batch size, so the batch size's share of the difference is visible. Ours
    uses the layout/precision chosen by measurement (--channels-last, --bf16).
    Same model, input size and optimiser.
    """
    dm = our_datamodule(args.root, size, args.batch_size, "standard", args.cache_dir)
    ours_batches = forever(dm.train_dataloader())
    usual = {bs: forever(usual_loader(args.root, size, bs, args.workers, dm.cfg.mean, dm.cfg.std))
             for bs in dict.fromkeys([args.usual_batch_size, args.batch_size])}
    steppers = {"ours": Stepper(model, args.channels_last, args.bf16), "model_only": Stepper(model, args.channels_last, args.bf16)}
    fixed = next(usual[args.batch_size])

    def usual_step(bs: int, stepper: Stepper):
        def step():
            stepper(*next(usual[bs]))
        return step

    def ours():
        steppers["ours"](*dm.augment_batch(*next(ours_batches)))

    contenders = {f"usual_b{bs}": (usual_step(bs, Stepper(model, False, False)), bs) for bs in usual}
    contenders["ours"] = (ours, args.batch_size)
    if args.compile:  # ours with model.compile=on; its warm-up below includes the compile
        compiled = Stepper(model, args.channels_last, args.bf16, compile=True)
        contenders["ours_compiled"] = (lambda: compiled(*dm.augment_batch(*next(ours_batches))), args.batch_size)
    contenders["model_only"] = (lambda: steppers["model_only"](*fixed), args.batch_size)
    warmup = {name: round(timed_steps(fn, 3), 1) for name, (fn, _) in contenders.items()}  # workers, kernels, compiling
    print("pipeline", model, size, "warm-up seconds (3 steps each):", warmup, flush=True)
    seconds = {name: 0.0 for name in contenders}
    rounds = []
    for r in range(args.rounds):
        row = {"round": r, "load_before": load()}
        for name, (fn, bs) in contenders.items():
            t = timed_steps(fn, args.steps)
            seconds[name] += t
            row[name + "_img_s"] = round(args.steps * bs / t, 1)
        row["load_after"] = load()
        rounds.append(row)
        print("pipeline", model, size, row, flush=True)
    result = {name: round(args.rounds * args.steps * bs / seconds[name], 1) for name, (_, bs) in contenders.items()}
    reference = result[f"usual_b{args.usual_batch_size}"]
    result["speedup_ours_vs_usual"] = round(result["ours"] / reference, 2)
    result["speedup_ours_vs_usual_same_batch"] = round(result["ours"] / result[f"usual_b{args.batch_size}"], 2)
    result.update(model=model, size=size, warmup_s=warmup, rounds=rounds)
    return result


def bench_precision(args, model: str, size: int) -> dict:
    """The model step alone in fp32/bf16 x NCHW/NHWC, alternating in rounds: what conf/trainer picks from.

    With ``--compile`` also both precisions NHWC under torch.compile, whose inductor backend generates its own
    kernels around oneDNN's convolutions (fused casts, pointwise ops): the path where bf16 might pay on CPU.
    """
    torch.manual_seed(0)
    images, labels = torch.randn(args.batch_size, 3, size, size), torch.randint(0, 43, (args.batch_size,))
    variants = {f"{'bf16' if bf16 else 'fp32'} {'NHWC' if cl else 'NCHW'}": Stepper(model, cl, bf16)
                for bf16 in (False, True) for cl in (False, True)}
    if args.compile:
        variants |= {f"{'bf16' if bf16 else 'fp32'} NHWC compiled": Stepper(model, True, bf16, compile=True)
                     for bf16 in (False, True)}
    for name, step in variants.items():  # warm-up: kernels, and the compiling
        print("precision", model, size, name, "warm-up seconds (3 steps):",
              round(timed_steps(lambda: step(images, labels), 3), 1), flush=True)
    seconds = {name: 0.0 for name in variants}
    rounds = []
    for r in range(args.rounds):
        row = {"round": r, "load_before": load()}
        for name, step in variants.items():
            t = timed_steps(lambda: step(images, labels), args.steps)
            seconds[name] += t
            row[name] = round(args.steps * args.batch_size / t, 1)
        rounds.append(row)
        print("precision", model, size, row, flush=True)
    n = args.rounds * args.steps * args.batch_size
    return {"model": model, "size": size, "img_s": {k: round(n / v, 1) for k, v in seconds.items()}, "rounds": rounds}


# --------------------------------------------------------------------------- framework overhead


class _StepClock:
    """Lightning callback: time of the steady-state batches (after ``skip``)."""

    def __new__(cls, skip: int):
        import lightning as L

        class Clock(L.Callback):
            def __init__(self) -> None:
                self.start = self.end = None
                self.count = 0

            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                if batch_idx == skip:
                    self.start = time.perf_counter()

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                self.end = time.perf_counter()
                self.count = batch_idx + 1 - skip

        return Clock()


def bench_overhead(args) -> dict:
    """The same training (model, data, augmentation, AdamW + OneCycle) in a plain loop and in Lightning."""
    import lightning as L

    from gtsrb.module import TrafficSignClassifier

    dm = our_datamodule(args.root, args.size, args.batch_size, "standard", args.cache_dir)
    skip, steps = 3, args.overhead_steps
    optimizer = {"name": "adamw", "lr": 3e-3, "weight_decay": 0.05, "betas": [0.9, 0.999], "momentum": 0.9,
                 "nesterov": True}
    scheduler = {"name": "onecycle", "pct_start": 0.25, "div_factor": 25.0, "final_div_factor": 1e3,
                 "warmup_epochs": 1.0, "min_lr_ratio": 0.01, "factor": 0.5, "patience": 2}

    def plain_round() -> float:
        torch.manual_seed(0)
        model = build_model(args.model, 43)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=skip + steps, pct_start=0.25)
        model.train()
        batches = iter(dm.train_dataloader())
        start = None
        for i in range(skip + steps):
            if i == skip:
                start = time.perf_counter()
            images, labels = dm.augment_batch(*next(batches))
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        return time.perf_counter() - start

    def lightning_round() -> float:
        torch.manual_seed(0)
        module = TrafficSignClassifier({"name": args.model, "pretrained": False, "drop_rate": 0.2}, optimizer,
                                       scheduler, dm.class_names, channels_last=args.channels_last)
        clock = _StepClock(skip)
        trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=skip + steps,
                            limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, callbacks=[clock],
                            precision="bf16-mixed" if args.bf16 else "32-true", log_every_n_steps=50)
        trainer.fit(module, datamodule=dm)
        return clock.end - clock.start

    plain_round(), lightning_round()  # warm-up
    totals = {"plain": 0.0, "lightning": 0.0}
    rounds = []
    for r in range(args.rounds):
        row = {"round": r, "load_before": load()}
        for name, fn in (("plain", plain_round), ("lightning", lightning_round)):
            t = fn()
            totals[name] += t
            row[name + "_img_s"] = round(steps * args.batch_size / t, 1)
        row["load_after"] = load()
        rounds.append(row)
        print("overhead", row, flush=True)
    images = args.rounds * steps * args.batch_size
    result = {name + "_img_s": round(images / s, 1) for name, s in totals.items()}
    result["lightning_vs_plain"] = round(totals["plain"] / totals["lightning"], 3)
    result["rounds"] = rounds
    return result


# --------------------------------------------------------------------------- report


def markdown(report: dict) -> str:
    a = report["args"]
    lines = [f"Machine: {report['machine']}; torch {report['torch']}, {report['threads']} threads; batch {a['batch_size']}. "
             f"Framework overhead: {a['model']} at {a['size']} px."]
    if any(key in report for key in ("pipeline", "precision", "overhead")):
        lines += ["", "| measurement | contender | images/s | ratio | load avg (1 min) during |", "|---|---|---:|---:|---|"]
    for p in report.get("pipeline", []):
        loads = ", ".join(str(r["load_before"][0]) for r in p["rounds"])
        what = f"training pipeline, {p['model']} at {p['size']} px"
        layout = f"{'bf16' if a['bf16'] else 'fp32'}{' NHWC' if a['channels_last'] else ''}"
        reference = p[f"usual_b{a['usual_batch_size']}"]
        for i, bs in enumerate(dict.fromkeys([a["usual_batch_size"], a["batch_size"]])):
            value = p[f"usual_b{bs}"]
            lines.append(f"| {what} | usual: torchvision GTSRB + per-sample PIL, {a['workers']} workers, fp32 NCHW, "
                         f"batch {bs} | {value} | {value / reference:.2f} | {loads if i == 0 else ''} |")
        lines.append(f"| {what} | ours: uint8 cache + batched augmentation, {layout}, batch {a['batch_size']} | {p['ours']} | "
                     f"{p['ours'] / reference:.2f} | |")
        if "ours_compiled" in p:
            lines.append(f"| {what} | ours + torch.compile (model.compile=on), after compiling | {p['ours_compiled']} | "
                         f"{p['ours_compiled'] / reference:.2f} | |")
        lines.append(f"| {what} | model step alone, {layout}, batch {a['batch_size']} (ceiling) | {p['model_only']} | "
                     f"{p['model_only'] / reference:.2f} | |")
    for p in report.get("precision", []):
        loads = ", ".join(str(r["load_before"][0]) for r in p["rounds"])
        base = p["img_s"]["fp32 NCHW"]
        for i, (name, value) in enumerate(p["img_s"].items()):
            lines.append(f"| model step, {p['model']} at {p['size']} px | {name} | {value} | {value / base:.2f} | "
                         f"{loads if i == 0 else ''} |")
    if "overhead" in report:
        o = report["overhead"]
        loads = ", ".join(str(r["load_before"][0]) for r in o["rounds"])
        lines += [f"| framework overhead | plain PyTorch loop | {o['plain_img_s']} | 1.00 | {loads} |",
                  f"| framework overhead | our Lightning loop | {o['lightning_img_s']} | {o['lightning_vs_plain']:.3f} | |"]
    if "recipe" in report:
        lines += ["", *recipe_markdown(report["recipe"], a)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="data.root of the real GTSRB (torchvision layout)")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--cache-dir", default=None, help="data.cache_dir (default: <root>/cache)")
    parser.add_argument("--model", default="simple_cnn", help="model of the framework-overhead comparison")
    parser.add_argument("--pipeline-models", nargs="*", default=["mobilenetv3_small_100:64", "simple_cnn:32"],
                        help="model:size pairs of the pipeline comparison")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128, help="ours (and the usual pipeline's second run)")
    parser.add_argument("--usual-batch-size", type=int, default=64, help="the usual pipeline's reference batch size")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the usual pipeline")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="pipeline and precision: also torch.compile contenders (about a minute of compiling each)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="steps per contender per round (pipeline)")
    parser.add_argument("--overhead-steps", type=int, default=30, help="steps per round (framework overhead)")
    parser.add_argument("--only", nargs="*", default=["pipeline", "precision", "overhead", "recipe"])
    parser.add_argument("--recipe", default="gtsrb_cpu")
    parser.add_argument("--recipe-seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--recipe-overrides", nargs="*", default=[],
                        help="Hydra overrides on top of the recipe (e.g. model=simple_cnn_stn_ms): a variant, measured alike")
    parser.add_argument("--recipe-folds", type=int, default=5,
                        help="train every seed on each of this many folds of blocks (data.folds); 0: the one split")
    parser.add_argument("--recipe-baseline", default=None,
                        help="another recipe's benchmark.json: compare with it on the same (seed, fold)")
    parser.add_argument("--recipe-runs", nargs="*", default=None, help="summarise these finished runs instead")
    parser.add_argument("--target", type=float, nargs="+", default=[0.99, 0.996],
                        help="validation accuracies to time: the goals on test, which the five-fold mean predicted "
                             "within 0.26 points (benchmarks/README.md)")
    args = parser.parse_args(argv)
    args.cache_dir = args.cache_dir or str(Path(args.root) / "cache")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    report = {"args": vars(args), "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "load_at_start": load()}
    if "pipeline" in args.only:
        report["pipeline"] = [bench_pipeline(args, *spec.split(":")[:1], int(spec.split(":")[1]))
                              for spec in args.pipeline_models]
    if "precision" in args.only:
        report["precision"] = [bench_precision(args, spec.split(":")[0], int(spec.split(":")[1]))
                               for spec in args.pipeline_models]
    if "overhead" in args.only:
        report["overhead"] = bench_overhead(args)
    if "recipe" in args.only:
        folds = range(args.recipe_folds) if args.recipe_folds else [None]
        runs = [Path(r) for r in args.recipe_runs] if args.recipe_runs is not None else [
            run_recipe(args, seed, fold) for seed in args.recipe_seeds for fold in folds]
        if runs:
            report["recipe"] = summarise_recipe(runs, args.target)
            if args.recipe_baseline:
                report["recipe"]["paired"] = compare_with(report["recipe"]["runs"], args.recipe_baseline)
    report["load_at_end"] = load()
    (out / "benchmark.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "benchmark.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
