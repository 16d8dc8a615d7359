"""Reader for the real GTSRB dataset: find it, index it, split it by track, decode it.

GTSRB was filmed from a moving car: each physical sign appears as a *track* of
about 30 consecutive frames that are near-duplicates of each other. A random
per-image validation split puts frames of the same sign on both sides, so the
model is validated on images it has practically seen, and val accuracy is far
more optimistic than the official test set confirms. The validation split here
therefore moves whole tracks (:func:`split_by_track`), stratified by class so
that rare classes (210 images, 7 tracks) still appear on both sides.

Users have the data in one of two layouts, both detected under ``root``:

* torchvision's, as ``torchvision.datasets.GTSRB(root, download=True)`` leaves it::

      root/gtsrb/GTSRB/Training/000CC/TTTTT_FFFFF.ppm   (+ GT-000CC.csv)
      root/gtsrb/GTSRB/Final_Test/Images/NNNNN.ppm
      root/gtsrb/GT-final_test.csv

* the official archives unpacked::

      root/GTSRB/Final_Training/Images/000CC/TTTTT_FFFFF.ppm   (+ GT-000CC.csv)
      root/GTSRB/Final_Test/Images/NNNNN.ppm
      root/GT-final_test.csv  (or root/GTSRB/, or next to the test images)

The split is drawn from the index (labels and tracks), before any file is
read: :func:`load_gtsrb` then decodes everything once into memory, while
``data.in_memory=false`` keeps only the records and decodes each image in the
DataLoader (:class:`RecordDecoder`) with the same code, on the same split.

``root`` may also be the ``gtsrb`` folder itself. The CSV ``Width``/``Height``/
``Roi.*`` columns describe the *original* image; copies on disk may have been
resized, so the ROI is scaled by the file's real size before cropping.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile

from gtsrb.classes import NUM_GTSRB_CLASSES
from gtsrb.data.imageset import ImageSet
from gtsrb.data.preprocess import preprocess_images
from gtsrb.errors import UserError

logger = logging.getLogger(__name__)

# Track numbers restart at 0 in every class folder; spacing classes this far
# apart makes a group id unique over the whole dataset and still readable
# (group 140003 = class 14, track 3).
TRACK_STRIDE = 10_000

_TRAIN_DIRS = ("gtsrb/GTSRB/Training", "GTSRB/Training", "GTSRB/Final_Training/Images", "gtsrb/GTSRB/Final_Training/Images")
_TEST_CSV = "GT-final_test.csv"
_CLASS_DIR = re.compile(r"^\d{5}$")
_TRAIN_FILE = re.compile(r"^(\d+)_(\d+)\.ppm$", re.IGNORECASE)
_ON_CORRUPT = ("error", "skip")


@dataclass(frozen=True)
class Record:
    """One image on disk and what the dataset says about it.

    ``size`` is the (Width, Height) the CSV gives: the size the ROI was drawn on,
    which need not be the size of the file.
    """

    path: Path
    label: int
    group: int = -1  # track id, unique across classes; -1 where unknown (test)
    roi: tuple[int, int, int, int] | None = None  # x1, y1, x2, y2 in CSV coordinates
    size: tuple[int, int] | None = None  # CSV Width, Height


# --------------------------------------------------------------------------- layout


def find_train_dir(root: str | os.PathLike) -> Path | None:
    """The folder holding the ``000CC`` class folders, in whichever layout the user has."""
    root = Path(root).expanduser()
    for rel in _TRAIN_DIRS:
        candidate = root / rel
        if candidate.is_dir() and any(_CLASS_DIR.match(p.name) and p.is_dir() for p in candidate.iterdir()):
            return candidate
    return None


def find_test(root: str | os.PathLike) -> tuple[Path, Path] | None:
    """(images folder, labelled CSV) of the official test split, or None.

    The test images and their labels come in separate archives, so the CSV ends
    up wherever the user unpacked the second one; all usual places are tried.
    """
    root = Path(root).expanduser()
    for base in (root / "gtsrb", root):
        images = base / "GTSRB" / "Final_Test" / "Images"
        if not images.is_dir():
            continue
        for csv_path in (base / _TEST_CSV, base / "GTSRB" / _TEST_CSV, images / _TEST_CSV):
            if csv_path.is_file():
                return images, csv_path
        logger.info("GTSRB test images found in %s but no labelled %s next to them", images, _TEST_CSV)
    return None


def _expected_train_layout(root: Path) -> str:
    return f"{root / 'gtsrb/GTSRB/Training'}/000CC/*.ppm or {root / 'GTSRB/Final_Training/Images'}/000CC/*.ppm"


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _download(root: Path, split: str) -> None:
    """Let torchvision fetch the split; any failure becomes a one-line UserError.

    torchvision is looked up at call time so that its real download code runs
    (and tests can replace it without touching the network).
    """
    import torchvision.datasets

    logger.info("downloading GTSRB %s split into %s with torchvision", split, root / "gtsrb")
    try:
        torchvision.datasets.GTSRB(str(root), split=split, download=True)
    except Exception as exc:  # offline, HTTP error, bad checksum, bad zip: all mean "no data"
        raise UserError(
            f"downloading the GTSRB {split} split into {root / 'gtsrb'} failed ({_one_line(exc)}); "
            f"check the network, or unpack the dataset under {root} "
            f"(expected {_expected_train_layout(root)}) and set data.download=false"
        ) from exc


# --------------------------------------------------------------------------- index


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f, delimiter=";", skipinitialspace=True))
    return [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in rows]


def _roi_of(row: dict[str, str], csv_path: Path) -> tuple[tuple[int, int, int, int] | None, tuple[int, int] | None]:
    """ROI and original size of a CSV row, or (None, None) where the CSV has no ROI columns."""
    keys = ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "Width", "Height")
    if not all(row.get(k) for k in keys):
        return None, None
    try:
        x1, y1, x2, y2, w, h = (int(row[k]) for k in keys)
    except ValueError:
        raise UserError(
            f"{csv_path}: non-integer ROI/size in the row for {row.get('Filename')}; restore the original CSV or remove it"
        ) from None
    return (x1, y1, x2, y2), (w, h)


def read_rois(csv_path: str | os.PathLike) -> dict[str, tuple[tuple[int, int, int, int], tuple[int, int]]]:
    """File name -> (ROI, original size) from a GTSRB annotation CSV (``Filename;Width;Height;Roi.X1;...``).

    For prediction on files that come with GTSRB's annotations, so that a
    model trained with ``data.roi_crop=true`` sees its images cropped as in
    training. Rows without an ROI are left out.
    """
    path = Path(csv_path).expanduser()
    if not path.is_file():
        raise UserError(f"ROI file {path} does not exist; give a GTSRB annotation CSV (e.g. GT-final_test.csv)")
    rows = _read_csv(path)
    if rows and "Filename" not in rows[0]:
        raise UserError(f"{path} has no Filename column; give a GTSRB annotation CSV (Filename;Width;Height;Roi.X1;...)")
    rois = {}
    for row in rows:
        roi, size = _roi_of(row, path)
        if roi is not None:
            rois[row["Filename"]] = (roi, size)
    return rois


def _check_label(label: int, where: str) -> int:
    if not 0 <= label < NUM_GTSRB_CLASSES:
        raise UserError(f"{where}: class id {label} is not a GTSRB class (0..{NUM_GTSRB_CLASSES - 1}); remove it")
    return label


def _index_class_dir(class_dir: Path) -> list[Record]:
    """Records of one class folder; the CSV, where present, only adds the ROI.

    The files on disk decide which images exist, so a CSV row without a file
    (or a file without a row) cannot shift labels.
    """
    label = _check_label(int(class_dir.name), str(class_dir))
    csv_path = class_dir / f"GT-{class_dir.name}.csv"
    rois = {}
    if csv_path.is_file():
        rois = {row.get("Filename", ""): _roi_of(row, csv_path) for row in _read_csv(csv_path)}
    records = []
    for name in sorted(n for n in os.listdir(class_dir) if n.lower().endswith(".ppm") and not n.startswith(".")):
        match = _TRAIN_FILE.match(name)
        if match is None:
            raise UserError(
                f"{class_dir / name}: GTSRB training files are named TTTTT_FFFFF.ppm (track_frame); rename or remove it"
            )
        track = int(match.group(1))
        if track >= TRACK_STRIDE:
            raise UserError(f"{class_dir / name}: track number {track} is too large (< {TRACK_STRIDE}); rename or remove it")
        roi, size = rois.get(name, (None, None))
        records.append(Record(class_dir / name, label, label * TRACK_STRIDE + track, roi, size))
    return records


def index_train(train_dir: Path) -> list[Record]:
    """All training images, ordered by class then file name, with their tracks."""
    class_dirs = sorted(p for p in Path(train_dir).iterdir() if p.is_dir() and _CLASS_DIR.match(p.name))
    return [record for class_dir in class_dirs for record in _index_class_dir(class_dir)]


def index_test(images_dir: Path, csv_path: Path) -> list[Record]:
    """Test images in CSV order; the labels exist only in the CSV."""
    records = []
    for row in _read_csv(csv_path):
        name = row.get("Filename")
        if not name or not row.get("ClassId"):
            raise UserError(
                f"{csv_path} has no Filename/ClassId columns; use the labelled {_TEST_CSV} from GTSRB_Final_Test_GT.zip"
            )
        try:
            label = int(row["ClassId"])
        except ValueError:
            raise UserError(f"{csv_path}: ClassId {row['ClassId']!r} of {name} is not a number; restore the original CSV") from None
        roi, size = _roi_of(row, csv_path)
        records.append(Record(images_dir / name, _check_label(label, f"{csv_path} ({name})"), -1, roi, size))
    return records


# --------------------------------------------------------------------------- decode


@contextlib.contextmanager
def strict_pil() -> Iterator[None]:
    """Refuse truncated files even if some other library switched PIL to tolerate them.

    With LOAD_TRUNCATED_IMAGES on, a cut-off file decodes into a partly grey
    image and the model trains on it without anyone knowing.
    """
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _crop_box(record: Record, width: int, height: int) -> tuple[float, float, float, float] | None:
    """ROI in the coordinates of the file actually on disk.

    The CSV ROI was drawn on the original image; a resized copy (e.g. the
    32x32 one) needs it scaled by real size / CSV size, or the crop lands in
    the wrong place.
    """
    if record.roi is None or record.size is None or min(record.size) <= 0:
        return None
    sx, sy = width / record.size[0], height / record.size[1]
    x1, y1, x2, y2 = record.roi
    left, top = min(max(x1 * sx, 0.0), width - 1.0), min(max(y1 * sy, 0.0), height - 1.0)
    right, bottom = min(max(x2 * sx, left + 1.0), float(width)), min(max(y2 * sy, top + 1.0), float(height))
    return left, top, right, bottom


def fit_image(img: Image.Image, image_size: int,
              box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """A decoded image as uint8 [S, S, 3]: RGB, cropped to ``box`` (left, top, right, bottom) if given, resized.

    Every image the project classifies, from a file or from a tensor, is
    resized here, so training, evaluation, prediction and serving see the
    same pixels.
    """
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    if box is None and rgb.size == (image_size, image_size):
        return np.asarray(rgb)
    # PIL's bilinear resize widens its kernel when shrinking, i.e. it antialiases.
    return np.asarray(rgb.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box))


def _decode_one(record: Record, image_size: int, roi_crop: bool) -> np.ndarray:
    with Image.open(record.path) as img:
        img.load()  # inside the caller's try: truncation surfaces here, not later
        return fit_image(img, image_size, _crop_box(record, *img.size) if roi_crop else None)


def check_decode_settings(image_size: int, on_corrupt: str) -> None:
    """Settings checked before the first file is read, so a typo does not surface after minutes of decoding."""
    if int(image_size) <= 0:
        raise UserError(f"image size {image_size} must be a positive number of pixels; set e.g. data.image_size=32")
    if on_corrupt not in _ON_CORRUPT:
        raise UserError(f"data.on_corrupt={on_corrupt!r} is not one of {_ON_CORRUPT}; set data.on_corrupt=error or skip")


def decode_record(record: Record, image_size: int, roi_crop: bool = False, on_corrupt: str = "error",
                  fix: str = "remove the file or set data.on_corrupt=skip") -> np.ndarray | None:
    """One image as uint8 [S, S, 3], or None when it does not decode and ``on_corrupt`` is "skip".

    The one place a file is read, for the in-memory and the lazy path and for
    prediction alike: all refuse truncated files and name an unreadable one in
    the same words (``fix`` says what to do about it).
    """
    try:
        with strict_pil():
            return _decode_one(record, image_size, roi_crop)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        if on_corrupt == "error":
            raise UserError(f"cannot decode image {record.path} ({_one_line(exc)}); {fix}") from exc
        logger.warning("skipping unreadable image %s (%s)", record.path, _one_line(exc))
        return None


def decode_images(
    records: Sequence[Record], image_size: int, roi_crop: bool = False, on_corrupt: str = "error"
) -> tuple[torch.Tensor, list[int]]:
    """Decode every record once into uint8 [N, 3, S, S]; returns (images, indices of the records kept).

    A file that does not decode is named, never silently replaced: "error"
    stops with a UserError, "skip" leaves it out with a warning.
    """
    check_decode_settings(image_size, on_corrupt)
    out = np.empty((len(records), image_size, image_size, 3), dtype=np.uint8)
    kept: list[int] = []
    for i, record in enumerate(records):
        pixels = decode_record(record, image_size, roi_crop, on_corrupt)
        if pixels is not None:
            out[len(kept)] = pixels
            kept.append(i)
    if len(kept) < len(records):
        logger.warning("skipped %d of %d GTSRB images that could not be decoded (data.on_corrupt=skip)", len(records) - len(kept), len(records))
    images = torch.from_numpy(out[: len(kept)]).permute(0, 3, 1, 2).contiguous()
    return images, kept


def records_to_imageset(records: Sequence[Record], image_size: int, roi_crop: bool, on_corrupt: str,
                        with_groups: bool) -> ImageSet:
    """The decodable records as an ImageSet, labels (and track ids) lined up with the images kept."""
    images, kept = decode_images(records, image_size, roi_crop, on_corrupt)
    return _imageset(records, images, kept, with_groups)


def _imageset(records: Sequence[Record], images: torch.Tensor, kept: list[int], with_groups: bool) -> ImageSet:
    labels = torch.tensor([records[i].label for i in kept], dtype=torch.int64)
    groups = torch.tensor([records[i].group for i in kept], dtype=torch.int64) if with_groups else None
    return ImageSet(images, labels, groups)


@dataclass(frozen=True)
class RecordDecoder:
    """One record -> uint8 [3, S, S], decoded and preprocessed as the in-memory path does it; None if skipped.

    The lazy path (``data.in_memory=false``) calls it once per image inside
    the DataLoader's worker processes, so it is a small picklable object
    rather than a closure. ``data.preprocess`` runs on the single image
    through the same batch function, so both paths give the same pixels.
    """

    image_size: int
    roi_crop: bool = False
    on_corrupt: str = "error"
    preprocess: str = "none"
    fix: str = "remove the file or set data.on_corrupt=skip"

    def __post_init__(self) -> None:
        check_decode_settings(self.image_size, self.on_corrupt)

    def __call__(self, record: Record) -> torch.Tensor | None:
        pixels = decode_record(record, self.image_size, self.roi_crop, self.on_corrupt, self.fix)
        if pixels is None:
            return None
        image = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))  # a writable copy, [3, S, S]
        return preprocess_images(image[None], self.preprocess)[0]


# --------------------------------------------------------------------------- split


VAL_SPLITS = ("tracks", "blocks")


def split_by_track(
    labels: torch.Tensor | Sequence[int], groups: torch.Tensor | Sequence[int], val_fraction: float, seed: int,
    how: str = "tracks", folds: int = 0, fold: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices) with every track wholly on one side.

    Near-duplicate frames of one track on both sides would make val measure
    memorisation. Tracks are drawn per class so that val has every class that
    has at least two tracks, and each class keeps at least one track for
    training. A local generator keeps the split identical across runs and
    independent of any global seeding.

    ``how="tracks"`` holds out tracks drawn at random. ``how="blocks"`` holds
    out a run of consecutive track numbers per class: tracks are numbered in
    recording order, and one physical sign can be filmed in neighbouring
    tracks, which a random draw would put on both sides. ``folds=k`` splits
    each class's tracks (shuffled, or in order for blocks) into ``k`` parts
    and holds out part ``fold``, for k-fold cross-validation; ``val_fraction``
    is then ``1/k``.
    """
    if how not in VAL_SPLITS:
        raise UserError(f"data.val_split={how} is not a split; use one of: {', '.join(VAL_SPLITS)}")
    if folds and not (folds >= 2 and 0 <= fold < folds):
        raise UserError(f"data.fold={fold} of data.folds={folds}: folds must be 2 or more and fold in 0..{folds - 1}")
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"data.val_fraction={val_fraction} must be in [0, 1); set e.g. data.val_fraction=0.1")
    labels = torch.as_tensor(labels, dtype=torch.int64)
    groups = torch.as_tensor(groups, dtype=torch.int64)
    if labels.shape != groups.shape:
        raise ValueError(f"{labels.numel()} labels but {groups.numel()} groups")
    unique_groups, first = _first_occurrence(groups)
    group_class = labels[first]  # a track belongs to the class of its first frame
    generator = torch.Generator().manual_seed(int(seed))
    val_groups = []
    for cls in torch.unique(group_class).tolist():
        tracks = unique_groups[group_class == cls]  # ascending: the order they were recorded in
        if folds:
            val_groups.append(_fold_of(tracks, how, folds, fold, generator))
            continue
        n_val = 0 if val_fraction == 0 else min(len(tracks) - 1, max(1, round(val_fraction * len(tracks))))
        if n_val > 0 and how == "tracks":
            val_groups.append(tracks[torch.randperm(len(tracks), generator=generator)[:n_val]])
        elif n_val > 0:  # blocks: n_val consecutive tracks from a random start
            start = int(torch.randint(len(tracks) - n_val + 1, (1,), generator=generator))
            val_groups.append(tracks[start:start + n_val])
    in_val = torch.isin(groups, torch.cat(val_groups)) if val_groups else torch.zeros_like(groups, dtype=torch.bool)
    return torch.nonzero(~in_val).flatten(), torch.nonzero(in_val).flatten()


def _fold_of(tracks: torch.Tensor, how: str, folds: int, fold: int, generator: torch.Generator) -> torch.Tensor:
    """Part ``fold`` of ``folds`` of one class's tracks: shuffled (tracks) or consecutive, from a random start
    (blocks); none where the class has a single track, which stays in training."""
    if len(tracks) < 2:
        return tracks[:0]
    if how == "tracks":
        order = tracks[torch.randperm(len(tracks), generator=generator)]
    else:
        order = torch.roll(tracks, -int(torch.randint(len(tracks), (1,), generator=generator)))
    return torch.tensor_split(order, folds)[fold]


def _first_occurrence(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique values and the index of the first element holding each."""
    unique, inverse = torch.unique(values, sorted=True, return_inverse=True)
    first = torch.full((len(unique),), len(values), dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(len(values)), reduce="amin")
    return unique, first


# --------------------------------------------------------------------------- entry point


def _describe(name: str, data: ImageSet) -> str:
    text = f"{name} {len(data):,} images"
    if data.groups is not None:
        text += f" / {len(torch.unique(data.groups)):,} tracks"
    return text + f" / {len(torch.unique(data.labels))} classes"


@dataclass
class GtsrbIndex:
    """Every image of the dataset as a :class:`Record`, and the validation split, before anything is decoded.

    The split is drawn from the index alone (labels and tracks), so the
    in-memory path and the lazy one (``data.in_memory=false``) hold out the
    same tracks for the same ``val_fraction`` and ``split_seed``.
    """

    train_dir: Path
    train: list[Record]  # every training image, by class then file name
    in_val: torch.Tensor  # bool per record of ``train``: its track is held out for validation
    test: list[Record] | None  # the official test split, where it is on disk

    def splits(self) -> dict[str, list[Record]]:
        """The records of train, val and (where present) test."""
        held_out = self.in_val.tolist()
        splits = {"train": [r for r, v in zip(self.train, held_out) if not v],
                  "val": [r for r, v in zip(self.train, held_out) if v]}
        if self.test is not None:
            splits["test"] = self.test
        return splits


def _find_or_download_train(root: Path, download: bool) -> Path:
    train_dir = find_train_dir(root)
    if train_dir is None and download:
        _download(root, "train")
        train_dir = find_train_dir(root)
    if train_dir is None:
        fix = (
            f"unpack the dataset there or set data.root=... (data.download=true did not produce it)"
            if download
            else "unpack the dataset there, set data.root=..., or allow data.download=true"
        )
        raise UserError(f"GTSRB training images not found under {root} (expected {_expected_train_layout(root)}); {fix}")
    return train_dir


def _find_or_download_test(root: Path, download: bool) -> tuple[Path, Path] | None:
    test_location = find_test(root)
    if test_location is None and download:
        _download(root, "test")
        test_location = find_test(root)
    if test_location is None:
        logger.info("GTSRB official test split not found under %s; test metrics will be skipped", root)
    return test_location


def index_gtsrb(root, val_fraction: float, seed: int, download: bool = False, how: str = "tracks", folds: int = 0,
                fold: int = 0) -> GtsrbIndex:
    """Find (or download) the dataset, list its images and split train/val by whole tracks; decodes nothing.

    ``how``, ``folds`` and ``fold`` choose the validation tracks (:func:`split_by_track`)."""
    root = Path(root).expanduser()
    train_dir = _find_or_download_train(root, download)
    test_location = _find_or_download_test(root, download)
    train = index_train(train_dir)
    if not train:
        raise UserError(f"no .ppm images in the class folders of {train_dir}; unpack the dataset again or set data.root=...")
    _, val_idx = split_by_track([r.label for r in train], [r.group for r in train], val_fraction, seed, how, folds,
                                fold)
    in_val = torch.zeros(len(train), dtype=torch.bool)
    in_val[val_idx] = True
    test = None if test_location is None else index_test(*test_location)
    return GtsrbIndex(train_dir, train, in_val, test)


def load_gtsrb(
    root,
    image_size: int,
    val_fraction: float,
    seed: int,
    download: bool = False,
    roi_crop: bool = False,
    on_corrupt: str = "error",
    how: str = "tracks",
    folds: int = 0,
    fold: int = 0,
) -> dict[str, ImageSet]:
    """The real GTSRB as {"train", "val"[, "test"]} ImageSets, decoded once.

    "test" is the official test split and is only there when it is on disk (or
    downloaded): training does not need it, so its absence is logged, not fatal.
    Train and val carry track ids as ``groups`` so later code can check for leaks.
    Train and val are decoded in one pass (one "skipped" summary) and then
    divided by the index's split, so a skipped file never moves a track.
    """
    check_decode_settings(image_size, on_corrupt)
    index = index_gtsrb(root, val_fraction, seed, download, how, folds, fold)
    images, kept = decode_images(index.train, image_size, roi_crop, on_corrupt)
    if not kept:
        raise UserError(f"none of the {len(index.train)} images under {index.train_dir} could be decoded; "
                        "unpack the dataset again")
    full = _imageset(index.train, images, kept, with_groups=True)
    in_val = index.in_val[kept]  # the index's split, for the images that decoded
    splits = {"train": full.subset(torch.nonzero(~in_val).flatten()),
              "val": full.subset(torch.nonzero(in_val).flatten())}
    del full, images  # the two subsets are copies: free the whole tensor before decoding the test split
    if index.test is not None:
        splits["test"] = records_to_imageset(index.test, image_size, roi_crop, on_corrupt, with_groups=False)
    logger.info("GTSRB from %s: %s", index.train_dir, "; ".join(_describe(name, data) for name, data in splits.items()))
    return splits
