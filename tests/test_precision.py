"""trainer.precision=fastest: the probe times both contenders without touching the run, picks the faster only when it
wins by a margin, and the run trains in (and reports) what was picked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gtsrb import precision
from gtsrb.errors import UserError
from gtsrb.models.simple_cnn import SimpleCNN
from gtsrb.training import train


@pytest.mark.parametrize(("fp32", "bf16", "chosen"), [
    (1.00, 0.62, "bf16-mixed"),   # 1.61x: bf16 pays
    (1.00, 1.28, "32-true"),      # 0.78x: bf16 is slower
    (1.00, 0.97, "32-true"),      # 1.03x: within the margin, fp32 stays
])
def test_the_faster_contender_wins_only_by_the_margin(monkeypatch, fp32, bf16, chosen):
    monkeypatch.setattr(precision, "time_steps", lambda *a, **k: {"32-true": fp32, "bf16-mixed": bf16})
    monkeypatch.setattr(precision, "trains_on_gpu", lambda accelerator: False)
    picked, seconds = precision.resolve_precision(torch.nn.Identity(), (2, 3, 8, 8), False, "auto")
    assert picked == chosen
    assert seconds == {"32-true": fp32, "bf16-mixed": bf16}


def test_a_neighbour_busy_for_most_of_the_probe_does_not_turn_a_bf16_win_into_a_tie():
    """Four of six steps of each contender shared the CPU (about +1 s each); one clean step of each is enough."""
    clean = {"32-true": 0.16, "bf16-mixed": 0.10}  # 1.6x: bf16 pays
    busy = {name: [t + 1.0, t + 1.0, t, t + 1.0, t + 1.0, t * 1.02] for name, t in clean.items()}
    seconds = precision.least_disturbed(busy)
    assert seconds["32-true"] / seconds["bf16-mixed"] > precision.MARGIN  # medians would read 1.16/1.10 = 1.05x
    assert seconds == pytest.approx(clean)


def test_the_probe_times_both_and_leaves_the_model_and_random_streams_alone(one_thread):
    torch.manual_seed(1)
    network = SimpleCNN(num_classes=5, widths=(8, 16))
    before = {k: v.clone() for k, v in network.state_dict().items()}
    rng_before = torch.get_rng_state()
    seconds = precision.time_steps(network, (4, 3, 16, 16), channels_last=True, rounds=1, steps=1)
    assert set(seconds) == {"32-true", "bf16-mixed"} and min(seconds.values()) > 0
    after = network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and batch-norm statistics
    assert all(p.grad is None for p in network.parameters())
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_a_run_with_fastest_trains_in_the_chosen_precision_and_says_so(make_cfg, one_thread):
    cfg = make_cfg("trainer.precision=fastest")
    train(cfg)
    report = json.loads((Path(cfg.output_dir) / "metrics.json").read_text())
    chosen = report["config"]["trainer"]["precision"]
    assert chosen in precision.CONTENDERS
    seconds = report["precision_probe_s_per_step"]
    assert (chosen == "bf16-mixed") == (seconds["32-true"] / seconds["bf16-mixed"] >= precision.MARGIN)


@pytest.mark.parametrize("several", [["+trainer.strategy=ddp"], ["trainer.devices=2"]], ids=["ddp", "2-devices"])
def test_fastest_with_several_processes_is_refused_with_the_fix(make_cfg, several):
    cfg = make_cfg("trainer.precision=fastest", *several)
    with pytest.raises(UserError, match="trainer.precision=32-true or bf16-mixed"):
        train(cfg)
