"""The real-GTSRB reader, on tiny trees built in tmp_path (never the network, never the shared data)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
from PIL import Image, ImageFile

from gtsrb.data.gtsrb import TRACK_STRIDE, load_gtsrb, split_by_track
from gtsrb.errors import UserError

CLASSES = (0, 1, 2, 14, 42)
TRACKS, FRAMES, SIZE = 4, 3, 8
TEST_LABELS = (14, 0, 42, 2, 1, 14)
HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"


def colour(cls: int, track: int, frame: int) -> tuple[int, int, int]:
    """Every image is one flat colour that encodes where it came from, so a decoded
    pixel tells whether image, label and track id still line up."""
    return (cls * 5, track * 40, frame * 60)


def write_ppm(path: Path, rgb: tuple[int, int, int], size: int = SIZE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), rgb).save(path)


def build_train(train_dir: Path) -> None:
    for cls in CLASSES:
        class_dir = train_dir / f"{cls:05d}"
        lines = [HEADER]
        for track in range(TRACKS):
            for frame in range(FRAMES):
                name = f"{track:05d}_{frame:05d}.ppm"
                write_ppm(class_dir / name, colour(cls, track, frame))
                lines.append(f"{name};{SIZE};{SIZE};1;1;{SIZE - 1};{SIZE - 1};{cls}\n")
        (class_dir / f"GT-{cls:05d}.csv").write_text("".join(lines))


def build_test(images_dir: Path, csv_path: Path) -> None:
    lines = [HEADER]
    for i, cls in enumerate(TEST_LABELS):
        write_ppm(images_dir / f"{i:05d}.ppm", colour(cls, 0, 0))
        lines.append(f"{i:05d}.ppm;{SIZE};{SIZE};1;1;{SIZE - 1};{SIZE - 1};{cls}\n")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text("".join(lines))


def build_torchvision_tree(root: Path, with_test: bool = True) -> Path:
    """What torchvision.datasets.GTSRB(root, download=True) leaves behind."""
    build_train(root / "gtsrb" / "GTSRB" / "Training")
    if with_test:
        build_test(root / "gtsrb" / "GTSRB" / "Final_Test" / "Images", root / "gtsrb" / "GT-final_test.csv")
    return root


def build_official_tree(root: Path, csv_place: str = "root") -> Path:
    """The official archives unpacked into root; the test labels come from a separate zip."""
    build_train(root / "GTSRB" / "Final_Training" / "Images")
    images = root / "GTSRB" / "Final_Test" / "Images"
    csv_dir = {"root": root, "GTSRB": root / "GTSRB", "images": images}[csv_place]
    build_test(images, csv_dir / "GT-final_test.csv")
    return root


def assert_consistent(data) -> None:
    """Decoded pixels agree with the label and the track id of each image."""
    px = data.images[:, :, 0, 0].to(torch.int64)
    assert torch.equal(px[:, 0], data.labels * 5)
    if data.groups is not None:
        assert torch.equal(data.groups // TRACK_STRIDE, data.labels)
        assert torch.equal(px[:, 1], (data.groups % TRACK_STRIDE) * 40)


def check_full_load(splits) -> None:
    assert set(splits) == {"train", "val", "test"}
    train, val, test = splits["train"], splits["val"], splits["test"]
    assert len(train) + len(val) == len(CLASSES) * TRACKS * FRAMES
    assert train.images.shape[1:] == (3, SIZE, SIZE) and train.images.dtype == torch.uint8
    all_labels = torch.cat([train.labels, val.labels])
    assert sorted(all_labels.tolist()) == sorted(c for c in CLASSES for _ in range(TRACKS * FRAMES))
    assert len(torch.unique(torch.cat([train.groups, val.groups]))) == len(CLASSES) * TRACKS
    assert test.labels.tolist() == list(TEST_LABELS) and test.groups is None
    for data in (train, val, test):
        assert_consistent(data)


def test_torchvision_layout_loads(tmp_path, caplog):
    root = build_torchvision_tree(tmp_path)
    with caplog.at_level(logging.INFO, logger="gtsrb.data.gtsrb"):
        splits = load_gtsrb(root, image_size=SIZE, val_fraction=0.25, seed=0)
    check_full_load(splits)
    # one summary line: 1 of 4 tracks per class goes to val
    assert "train 45 images / 15 tracks / 5 classes; val 15 images / 5 tracks / 5 classes; test 6 images" in caplog.text


@pytest.mark.parametrize("csv_place", ["root", "GTSRB", "images"])
def test_official_layout_loads_with_test_csv_anywhere(tmp_path, csv_place):
    check_full_load(load_gtsrb(build_official_tree(tmp_path, csv_place), image_size=SIZE, val_fraction=0.25, seed=0))


def test_root_may_be_the_gtsrb_folder_and_images_are_resized(tmp_path):
    build_torchvision_tree(tmp_path)
    splits = load_gtsrb(tmp_path / "gtsrb", image_size=5, val_fraction=0.25, seed=0)
    assert splits["train"].images.shape[1:] == (3, 5, 5)
    assert_consistent(splits["train"])  # a flat colour survives a resize unchanged


def test_missing_test_split_is_not_an_error(tmp_path, caplog):
    root = build_torchvision_tree(tmp_path, with_test=False)
    with caplog.at_level(logging.INFO, logger="gtsrb.data.gtsrb"):
        splits = load_gtsrb(root, image_size=SIZE, val_fraction=0.25, seed=0)
    assert set(splits) == {"train", "val"}
    assert "test metrics will be skipped" in caplog.text


# ------------------------------------------------------------------- split by track


def synthetic_tracks(n_classes=10, tracks_per_class=10, frames=5):
    labels = torch.arange(n_classes).repeat_interleave(tracks_per_class * frames)
    groups = torch.arange(n_classes * tracks_per_class).repeat_interleave(frames)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(123))  # order must not matter
    return labels[perm], groups[perm]


def test_split_keeps_tracks_whole_and_classes_on_both_sides():
    labels, groups = synthetic_tracks()
    train, val = split_by_track(labels, groups, val_fraction=0.2, seed=0)
    assert sorted(torch.cat([train, val]).tolist()) == list(range(len(labels)))
    assert not set(groups[train].tolist()) & set(groups[val].tolist())
    assert set(labels[train].tolist()) == set(labels[val].tolist()) == set(range(10))
    # 2 of 10 tracks per class, 5 frames each
    assert len(torch.unique(groups[val])) == 20 and len(val) == 100


def test_split_is_deterministic_per_seed():
    labels, groups = synthetic_tracks()
    a = split_by_track(labels, groups, 0.2, seed=7)
    b = split_by_track(labels, groups, 0.2, seed=7)
    c = split_by_track(labels, groups, 0.2, seed=8)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    assert not torch.equal(a[1], c[1])


def test_split_fraction_edges():
    labels, groups = synthetic_tracks()
    train, val = split_by_track(labels, groups, 0.0, seed=0)
    assert len(val) == 0 and len(train) == len(labels)
    # rare classes: one track stays in train, at least one goes to val when possible
    labels = torch.tensor([0, 0, 1, 1, 1, 1])
    groups = torch.tensor([10, 10, 20, 20, 21, 21])
    train, val = split_by_track(labels, groups, 0.9, seed=0)
    assert labels[train].tolist().count(0) == 2  # single-track class: all train
    assert len(torch.unique(groups[train][labels[train] == 1])) == 1
    assert len(torch.unique(groups[val])) == 1
    with pytest.raises(UserError, match="data.val_fraction"):
        split_by_track(labels, groups, 1.0, seed=0)


def test_loaded_splits_share_no_track(tmp_path):
    splits = load_gtsrb(build_torchvision_tree(tmp_path), image_size=SIZE, val_fraction=0.25, seed=3)
    assert not set(splits["train"].groups.tolist()) & set(splits["val"].groups.tolist())
    assert set(splits["val"].labels.tolist()) == set(CLASSES)


# ------------------------------------------------------------------- ROI crop


def test_roi_is_scaled_to_the_real_file_size(tmp_path):
    # The CSV says the original was 64x64 with the sign at 16..48; the file is a
    # 16x16 copy, so the sign sits at 4..12 in the file.
    class_dir = tmp_path / "gtsrb" / "GTSRB" / "Training" / "00003"
    class_dir.mkdir(parents=True)
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    pixels[...] = (0, 0, 255)
    pixels[4:12, 4:12] = (255, 0, 0)
    for track in range(2):
        Image.fromarray(pixels).save(class_dir / f"{track:05d}_00000.ppm")
    (class_dir / "GT-00003.csv").write_text(
        HEADER + "".join(f"{t:05d}_00000.ppm;64;64;16;16;48;48;3\n" for t in range(2))
    )
    cropped = load_gtsrb(tmp_path, image_size=8, val_fraction=0.0, seed=0, roi_crop=True)["train"].images.int()
    red = (cropped[:, 0] > 200) & (cropped[:, 2] < 55)
    assert red.float().mean() > 0.9
    whole = load_gtsrb(tmp_path, image_size=8, val_fraction=0.0, seed=0, roi_crop=False)["train"].images.int()
    assert ((whole[:, 0] > 200) & (whole[:, 2] < 55)).float().mean() < 0.5


# ------------------------------------------------------------------- missing data, download


def test_absent_data_names_layout_and_download_switch(tmp_path):
    with pytest.raises(UserError) as info:
        load_gtsrb(tmp_path, image_size=SIZE, val_fraction=0.1, seed=0, download=False)
    message = str(info.value)
    assert "\n" not in message
    assert "gtsrb/GTSRB/Training/000CC" in message and "GTSRB/Final_Training/Images/000CC" in message
    assert "data.download" in message and str(tmp_path) in message


def test_download_offline_becomes_one_line_user_error(tmp_path, monkeypatch):
    calls = []

    def offline(root, split="train", download=False, **kwargs):
        calls.append((root, split, download))
        raise ConnectionError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(torchvision.datasets, "GTSRB", offline)
    with pytest.raises(UserError) as info:
        load_gtsrb(tmp_path, image_size=SIZE, val_fraction=0.1, seed=0, download=True)
    assert calls == [(str(tmp_path), "train", True)]
    message = str(info.value)
    assert "\n" not in message and "ConnectionError" in message and "data.download=false" in message


def test_download_uses_torchvision_and_then_reads_its_layout(tmp_path, monkeypatch):
    calls = []

    def fake_download(root, split="train", download=False, **kwargs):
        calls.append(split)
        if split == "train":
            build_train(Path(root) / "gtsrb" / "GTSRB" / "Training")
        else:
            build_test(Path(root) / "gtsrb" / "GTSRB" / "Final_Test" / "Images", Path(root) / "gtsrb" / "GT-final_test.csv")

    monkeypatch.setattr(torchvision.datasets, "GTSRB", fake_download)
    splits = load_gtsrb(tmp_path, image_size=SIZE, val_fraction=0.25, seed=0, download=True)
    assert calls == ["train", "test"]
    check_full_load(splits)


# ------------------------------------------------------------------- corrupt files


def corrupt_tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    root = build_torchvision_tree(tmp_path, with_test=False)
    class_dir = root / "gtsrb" / "GTSRB" / "Training" / "00002"
    truncated = class_dir / "00001_00001.ppm"
    write_ppm(truncated, (1, 2, 3), size=32)  # bigger, so half the file still has a valid header
    truncated.write_bytes(truncated.read_bytes()[:1000])
    garbage = class_dir / "00003_00002.ppm"
    garbage.write_bytes(b"this is not an image")
    return root, truncated, garbage


def test_corrupt_image_error_names_the_file(tmp_path):
    root, truncated, _ = corrupt_tree(tmp_path)
    with pytest.raises(UserError) as info:
        load_gtsrb(root, image_size=SIZE, val_fraction=0.25, seed=0, on_corrupt="error")
    message = str(info.value)
    assert truncated.name in message and "data.on_corrupt=skip" in message and "\n" not in message


def test_corrupt_images_skipped_with_warning(tmp_path, caplog):
    root, truncated, garbage = corrupt_tree(tmp_path)
    with caplog.at_level(logging.WARNING, logger="gtsrb.data.gtsrb"):
        splits = load_gtsrb(root, image_size=SIZE, val_fraction=0.25, seed=0, on_corrupt="skip")
    assert len(splits["train"]) + len(splits["val"]) == len(CLASSES) * TRACKS * FRAMES - 2
    for data in (splits["train"], splits["val"]):
        assert_consistent(data)  # the labels of the skipped files did not shift onto others
    assert truncated.name in caplog.text and garbage.name in caplog.text and "skipped 2 of 60" in caplog.text


def test_truncated_file_is_refused_even_if_pil_was_told_to_tolerate_it(tmp_path, monkeypatch):
    root, truncated, garbage = corrupt_tree(tmp_path)
    garbage.unlink()
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # some other library did this
    with pytest.raises(UserError, match=truncated.name):
        load_gtsrb(root, image_size=SIZE, val_fraction=0.25, seed=0)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # and we gave the setting back


def test_unknown_on_corrupt_value_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="data.on_corrupt"):
        load_gtsrb(build_torchvision_tree(tmp_path), image_size=SIZE, val_fraction=0.25, seed=0, on_corrupt="ignore")


def _val_tracks_per_class(labels, groups, val):
    held = {}
    for g, c in zip(groups[val].tolist(), labels[val].tolist()):
        held.setdefault(c, set()).add(g)
    return held


def test_blocks_hold_out_consecutive_tracks_of_every_class():
    labels, groups = synthetic_tracks(n_classes=6, tracks_per_class=20)
    seen_starts = set()
    for seed in range(4):
        train, val = split_by_track(labels, groups, 0.15, seed=seed, how="blocks")
        assert not set(groups[train].tolist()) & set(groups[val].tolist())
        for cls, held in _val_tracks_per_class(labels, groups, val).items():
            held = sorted(held)
            assert len(held) == 3 and held == list(range(held[0], held[0] + 3)), held  # one run, no gaps
            seen_starts.add((cls, held[0]))
    assert len(seen_starts) > 6  # the run's position depends on split_seed


def test_random_tracks_are_not_one_run():
    labels, groups = synthetic_tracks(n_classes=6, tracks_per_class=20)
    _, val = split_by_track(labels, groups, 0.15, seed=0, how="tracks")
    runs = [sorted(h) for h in _val_tracks_per_class(labels, groups, val).values()]
    assert any(r != list(range(r[0], r[0] + len(r))) for r in runs)


@pytest.mark.parametrize("how", ["tracks", "blocks"])
def test_folds_hold_out_every_track_exactly_once(how):
    labels, groups = synthetic_tracks(n_classes=5, tracks_per_class=7)
    held = [split_by_track(labels, groups, 0.15, seed=3, how=how, folds=3, fold=f)[1] for f in range(3)]
    all_val = torch.cat(held)
    assert sorted(all_val.tolist()) == list(range(len(labels)))  # a partition of every image
    for val in held:  # each fold has every class, a third of its tracks (2 or 3 of 7)
        counts = {c: len(t) for c, t in _val_tracks_per_class(labels, groups, val).items()}
        assert set(counts) == set(range(5)) and set(counts.values()) <= {2, 3}
    if how == "blocks":  # consecutive modulo the class's track count (a block may wrap around)
        for val in held:
            for cls, tracks in _val_tracks_per_class(labels, groups, val).items():
                steps = {(b - a) % 7 for a, b in zip(sorted(tracks), sorted(tracks)[1:])}
                assert steps <= {1} or len(steps - {1}) == 1, tracks


@pytest.mark.parametrize("kwargs, message", [({"how": "random"}, "data.val_split=random"),
                                             ({"folds": 1}, "folds must be 2 or more"),
                                             ({"folds": 3, "fold": 3}, "fold in 0..2")])
def test_a_split_that_cannot_be_made_is_named(kwargs, message):
    labels, groups = synthetic_tracks()
    with pytest.raises(UserError, match=message):
        split_by_track(labels, groups, 0.15, seed=0, **kwargs)


def test_the_model_card_says_which_tracks_were_held_out():
    """The card's validation line follows the protocol: a fold is 1/k of the tracks, whatever val_fraction says."""
    from gtsrb.data.sources import SOURCES

    data = {"val_split": "blocks", "split_seed": 0, "val_fraction": 0.12, "folds": 0, "fold": 0}
    assert SOURCES["gtsrb"].validation(data).startswith("0.12 of each class's tracks held out whole, as one block")
    fold = SOURCES["gtsrb"].validation({**data, "folds": 5, "fold": 3, "val_split": "tracks"})
    assert fold.startswith("fold 3 of 5 (1/5 of each class's tracks)") and "drawn at random" in fold
    assert "val/" in SOURCES["folder"].validation({})
