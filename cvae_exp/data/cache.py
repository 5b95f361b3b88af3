"""Decoded datasets kept on disk as uint8 memory maps, so that a dataset of image files is
decoded once: later runs, and every job of a sweep, open it at once and read only the rows
they use.

A cache is a directory `<data.cache_dir>/<name>-<digest>/`, the digest of a key that names
the source, its settings and its files (sizes and modification times), holding per split
`<split>.images` (raw uint8 rows), `<split>.labels.npy` and a `manifest.json` of their shapes
and CRC-32s. It is written in a temporary directory beside it and renamed into place when
complete, so that a reader never sees a partial cache; every open checks the sizes and
CRC-32s, and a cache that fails is rebuilt, never trained on. numpy's memmap serves the
reads; no library keeps a checked, content-addressed cache of decoded arrays, hence this file.
"""

import hashlib
import json
import logging
import os
import shutil
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from cvae_exp.data.batches import MappedImages
from cvae_exp.data.sources import ImageSplits
from cvae_exp.errors import UserInputError

log = logging.getLogger(__name__)

FORMAT = 1
SPLITS = ("train", "test", "val")  # val: only where the dataset has an official one
CHUNK = 1 << 24  # bytes read at a time for the CRC-32s

# What a decoder yields: (split, uint8 images (n, C, H, W), labels (n,) or attribute vectors (n, D))
Chunks = Iterable[tuple[str, torch.Tensor, torch.Tensor]]


def digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def files_key(paths: Iterable[Path]) -> list[tuple[str, int, int]]:
    """The files a source reads, as (path, size, modification time): a cache of changed files is another cache."""
    return [(str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in sorted(paths)]


def cached(name: str, key: dict, decode: Callable[[], Chunks], directory: str | Path) -> ImageSplits:
    """The dataset `name` from its cache under `directory`, decoded (by `decode`) and written first
    if the cache is missing or fails its checks."""
    directory = Path(directory).expanduser()
    path = directory / f"{name}-{digest(key)}"
    if path.exists():
        try:
            return _open(path)
        except (OSError, ValueError, KeyError) as problem:
            log.warning(f"The cache {path} is damaged ({problem}); decoding {name} again.")
            _remove(path)
    log.info(f"Decoding {name} once into the memory-mapped cache {path} ...")
    _write(path, key, decode)
    return _open(path)


def _open(path: Path) -> ImageSplits:
    manifest = json.loads((path / "manifest.json").read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"format {manifest.get('format')}, not {FORMAT}")
    arrays = {}
    for split, entry in manifest["splits"].items():
        images, labels = path / f"{split}.images", path / f"{split}.labels.npy"
        expected = int(np.prod(entry["shape"]))
        if images.stat().st_size != expected:
            raise ValueError(f"{images.name} holds {images.stat().st_size} bytes, not {expected}")
        for file, crc in ((images, entry["images_crc32"]), (labels, entry["labels_crc32"])):
            if _crc32(file) != crc:
                raise ValueError(f"{file.name} does not match its CRC-32")
        arrays[f"{split}_images"] = MappedImages(str(images), entry["shape"])
        arrays[f"{split}_labels"] = torch.from_numpy(np.load(labels))
    return ImageSplits(**arrays)


def _write(path: Path, key: dict, decode: Callable[[], Chunks]) -> None:
    """Decode into a temporary directory and rename it to `path`; on any failure, remove it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        temporary.mkdir(parents=True)
        files = {}
        shapes: dict[str, list[int]] = {}
        labels: dict[str, list[torch.Tensor]] = {split: [] for split in SPLITS}
        try:
            for split, images, split_labels in decode():
                images = images.contiguous()
                if images.dtype != torch.uint8 or images.dim() != 4:
                    raise ValueError(
                        f"decoded {split} images are {images.dtype} {tuple(images.shape)}, not uint8 (N, C, H, W)"
                    )
                if split not in SPLITS:
                    raise ValueError(f"decoded images of a split {split!r}, not one of {SPLITS}")
                shape = shapes.setdefault(split, [0, *images.shape[1:]])
                if list(images.shape[1:]) != shape[1:]:
                    raise UserInputError(
                        f"The {split} images of {path.name} differ in shape "
                        f"({shape[1:]} and {list(images.shape[1:])}); "
                        "resize them to one size (the dataset's image_size setting)."
                    )
                if split not in files:
                    files[split] = open(temporary / f"{split}.images", "wb")
                files[split].write(images.numpy().tobytes())
                shape[0] += len(images)
                labels[split].append(split_labels)
        finally:
            for file in files.values():
                file.close()
        manifest = {"format": FORMAT, "key": key, "splits": {}}
        for split in ("train", "test"):
            if split not in shapes:
                raise UserInputError(f"{path.name.rsplit('-', 1)[0]} has no {split} images.")
        for split in shapes:
            np.save(temporary / f"{split}.labels.npy", torch.cat(labels[split]).numpy())
            manifest["splits"][split] = {
                "shape": shapes[split],
                "images_crc32": _crc32(temporary / f"{split}.images"),
                "labels_crc32": _crc32(temporary / f"{split}.labels.npy"),
            }
        (temporary / "manifest.json").write_text(json.dumps(manifest, default=str))
        for file in temporary.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        try:
            temporary.rename(path)
        except OSError:  # another job of a sweep wrote it first: keep theirs
            if not (path / "manifest.json").is_file():
                raise
            _remove(temporary)
    except OSError as error:
        _remove(temporary)
        raise UserInputError(
            f"Could not write the cache of the decoded dataset in {path.parent} ({error.strerror or error}). Free "
            "space there, or point paths.cache_dir (or data.source.cache_dir) at a directory on a disk with room for "
            "the dataset's uint8 images (height x width x channels bytes per image); nothing was left behind."
        ) from None
    except BaseException:
        _remove(temporary)
        raise


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
