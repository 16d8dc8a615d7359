"""On-disk cache of decoded (and preprocessed) datasets, keyed by what produced them.

Decoding 39,209 PPM files takes tens of seconds on a laptop; loading the
same images back as one uint8 tensor takes well under a second. The cache
(``data.cache_dir``) is only a shortcut, never a second source of truth:

* its file name comes from the settings that shape the tensors (source,
  root, image size, ROI crop, preprocessing, corrupt-file policy, split),
* the file stores a fingerprint of the source: every image file's path,
  size and modification time. If a file is added, removed, replaced or
  touched, the fingerprint differs and the cache is rebuilt;
* a cache file that cannot be read is reported and rebuilt;
* it is written to a temporary file and renamed, so an interrupted run
  never leaves a half-written cache behind for the next one.

Images skipped as unreadable (``data.on_corrupt=skip``) are stored with the
cache and reported again, by name, whenever it is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from gtsrb.data.imageset import ImageSet

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when decoding or preprocessing code changes what a setting produces
# 2: the gtsrb split is drawn on the file list before decoding (differs from 1 only when a whole track is unreadable)


def fingerprint(paths: list[Path]) -> str:
    """Hash of (path, size, mtime) of every file under ``paths``: changes whenever the source does."""
    digest = hashlib.sha256()
    for top in paths:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            stat = path.stat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_path(cache_dir: str, settings: dict) -> Path:
    """Where the cache for ``settings`` lives; readable prefix, hash of all settings after it."""
    text = json.dumps({"version": CACHE_VERSION, **settings}, sort_keys=True, default=str)
    key = hashlib.sha256(text.encode()).hexdigest()[:16]
    return Path(cache_dir).expanduser() / f"{settings['source']}-{settings['image_size']}px-{key}.pt"


class _SkippedNames(logging.Handler):
    """Collects the "skipping unreadable image" warnings of a build, to store them with the cache."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("skipping unreadable image"):
            self.messages.append(message)


def _pack(splits: dict[str, ImageSet]) -> dict:
    return {name: {"images": s.images, "labels": s.labels, "groups": s.groups} for name, s in splits.items()}


def _unpack(payload: dict) -> dict[str, ImageSet]:
    return {name: ImageSet(s["images"], s["labels"], s["groups"]) for name, s in payload.items()}


def load_or_build(cache_dir: str | None, settings: dict, sources: list[Path],
                  build: Callable[[], tuple[dict[str, ImageSet], list[str]]]) -> tuple[dict[str, ImageSet], list[str]]:
    """The splits and class names for ``settings``: from the cache when it is current, else built (and saved)."""
    if not cache_dir:
        return build()
    path = cache_path(cache_dir, settings)
    current = fingerprint(sources)
    if path.is_file():
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or foreign file: rebuild rather than fail
            log.warning("data cache %s is unreadable (%s: %s); rebuilding it", path, type(exc).__name__, exc)
        else:
            if payload.get("fingerprint") == current and payload.get("version") == CACHE_VERSION:
                for message in payload.get("skipped", []):
                    log.warning("%s (recorded in the data cache %s)", message, path.name)
                log.info("data: loaded from cache %s", path)
                return _unpack(payload["splits"]), list(payload["class_names"])
            log.info("data cache %s is stale (the source files changed); rebuilding it", path)

    collector = _SkippedNames()
    watched = logging.getLogger("gtsrb.data")
    watched.addHandler(collector)
    try:
        splits, class_names = build()
    finally:
        watched.removeHandler(collector)
    payload = {"version": CACHE_VERSION, "fingerprint": current, "settings": settings, "class_names": class_names,
               "skipped": collector.messages, "splits": _pack(splits)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is as readable as the data it holds
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half of one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("data: decoded and cached in %s", path)
    return splits, class_names
