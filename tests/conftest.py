"""Shared fixtures: configs composed through Hydra's compose API, tiny synthetic data, local weights.

Nothing here touches the network or data outside the test's temporary folders.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from gtsrb.cli import CONF_DIR
from gtsrb.config import register_configs

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a pretrained download must fail at once, not after retries
# At most two threads (the machines here have two cores); GTSRB_TEST_THREADS=1 runs the whole suite on one, which
# together with the default checks that no test depends on how a thread count rounds floats.
torch.set_num_threads(int(os.environ.get("GTSRB_TEST_THREADS", min(2, torch.get_num_threads()))))

# Small enough for a fast_dev_run in a few seconds on 2 cores, big enough for every class.
TINY = [
    "data=synthetic",
    "data.train_per_class=2",
    "data.val_per_class=1",
    "data.test_per_class=1",
    "data.batch_size=16",
    "model=simple_cnn",
    "trainer=cpu",
    "trainer.fast_dev_run=true",
    "logger=none",
]


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """Run a numerics-sensitive test once on one thread and once on two.

    Reductions and matrix products split their work by thread count, so their
    float results may differ in the last bits; a test that compares two code
    paths must hold under either.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """Tiny models on a shared CPU: more OpenMP threads than free cores make them ten times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def compose_cfg(output_dir: Path, *overrides: str, base: list[str] | None = None) -> DictConfig:
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=[*(TINY if base is None else base), *overrides, f"output_dir={output_dir}"])


@pytest.fixture
def make_cfg(tmp_path):
    def make(*overrides: str, base: list[str] | None = None) -> DictConfig:
        return compose_cfg(tmp_path / "run", *overrides, base=base)

    return make


@pytest.fixture(scope="session")
def mobilenet_weights(tmp_path_factory) -> Path:
    """A local weights file in timm's format, standing in for a downloaded ImageNet checkpoint."""
    import timm

    path = tmp_path_factory.mktemp("weights") / "mobilenetv3_small_100.pth"
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_100", num_classes=1000)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so freezing them is observable
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), path)
    return path


def _write_images(folder: Path, count: int, seed: int, size: int = 24) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(count):
        pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"img{i}.png")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """A user's own dataset: train/val/test, one subfolder per class."""
    root = tmp_path_factory.mktemp("folder")
    for s, split in enumerate(("train", "val", "test")):
        for c, name in enumerate(("bus_stop", "crossing", "parking")):
            _write_images(root / split / name, count=4 if split == "train" else 2, seed=10 * s + c)
    return root


@pytest.fixture(scope="session")
def gtsrb_root(tmp_path_factory) -> Path:
    """A tiny GTSRB tree in torchvision's layout (5 classes x 4 tracks x 3 frames, plus a test split)."""
    from test_gtsrb_data import build_torchvision_tree

    return build_torchvision_tree(tmp_path_factory.mktemp("gtsrb"))
