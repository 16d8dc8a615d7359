"""Every option of every config group composes and trains one fast_dev_run step on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from gtsrb.cli import CONF_DIR, group_options
from gtsrb.training import train

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "data"))
CASES = [(group, option) for group in GROUPS for option in group_options(group)]

# What an option needs besides itself to run offline on 2 cores.
EXTRA = {
    "model": ["model.pretrained=false"],
    "experiment": ["trainer.fast_dev_run=true", "data.train_per_class=2", "data.val_per_class=1",
                   "data.test_per_class=1", "model.pretrained=false"],
}


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_option_trains_one_step(make_cfg, group, option, mobilenet_weights):
    if group == "trainer" and option == "gpu" and not torch.cuda.is_available():
        pytest.skip("no GPU on this machine")
    if group == "trainer" and option == "ddp":
        pytest.skip("starts processes by running a script again: tests/test_ddp.py runs train.py on 2 processes")
    extra = list(EXTRA.get(group, []))
    if group == "finetuning":  # fine-tuning acts on pretrained weights only
        extra += ["model=mobilenet_v3_small", f"model.weights={mobilenet_weights}"]
    cfg = make_cfg(f"{group}={option}", *extra)
    score = train(cfg)
    assert 0.0 <= score <= 1.0
    report = json.loads((Path(cfg.output_dir) / "metrics.json").read_text())
    if group == "experiment":
        assert report["config"]["data"]["source"] == "synthetic"
    elif group == "hparams_search":  # a trial of a search chooses on val: the winner is tested once, later
        assert report["config"]["test"] is False and set(report["final"]) == {"val"}
        return
    else:  # the run recorded the option it ran with
        assert report["config"][group] == OmegaConf.to_container(cfg[group], resolve=True)
    assert set(report["final"]) == {"val", "test"} and "val/f1" in report["final"]["val"]


def test_each_data_option_is_one_source_and_each_source_has_its_option():
    """data.source picks a class of gtsrb/data/sources.py; an option naming no source, or a source without an
    option in conf/data, would only be found by the user who tries it."""
    from gtsrb.data.sources import SOURCES

    named = {OmegaConf.load(CONF_DIR / "data" / f"{option}.yaml").source: option for option in group_options("data")}
    assert set(named) == set(SOURCES)
    assert all(SOURCES[source].name == source for source in named)


@pytest.mark.parametrize("option", group_options("data"))
def test_data_option_trains_one_step(make_cfg, option, gtsrb_root, image_folder):
    root = {"gtsrb": gtsrb_root, "folder": image_folder, "synthetic": None}[option]
    overrides = [f"data={option}", "data.batch_size=8"]
    if root is not None:
        overrides.append(f"data.root={root}")
    if option == "synthetic":
        overrides += ["data.train_per_class=2", "data.val_per_class=1", "data.test_per_class=1"]
    cfg = make_cfg(*overrides)
    assert 0.0 <= train(cfg) <= 1.0
