"""Sources read from image files: decoded once into the memory-mapped cache (cache.py), then
served from it. Each is `load_*(root, ..., cache_dir) -> ImageSplits` as in sources.py.

Decoding uses Pillow in a thread pool, then torchvision's resize and centre crop on uint8
tensors (torchvision's own decoders are deprecated for TorchCodec, which needs FFmpeg).
"""

import functools
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from cvae_exp.data.cache import Chunks, cached, files_key
from cvae_exp.data.sources import ImageSplits
from cvae_exp.errors import UserInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
RESIZE_CHOICES = ("resize", "crop", "resize_crop")
DECODE_BATCH = 512  # images decoded (in parallel) per chunk written to the cache


def _size(size: int | list[int]) -> tuple[int, int]:
    """An image size given as one number (square) or as [height, width]."""
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return int(height), int(width)


def decode(
    paths: list[Path], channels: int, size: tuple[int, int], resize: str, crop: int | None = None
) -> Iterator[torch.Tensor]:
    """uint8 (n, channels, *size) batches of the images at `paths`, in order. With `crop`, each
    is first cut to its centre crop x crop square; then `resize` scales it to `size` (its aspect
    ratio lost), `crop` takes its centre `size` (padding a smaller image), `resize_crop` scales
    its shorter side to size's longer side then takes the centre."""
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms.v2 import functional as F

    def one(path: Path) -> torch.Tensor:
        try:
            with Image.open(path) as file:
                pixels = np.asarray(file.convert("L" if channels == 1 else "RGB"))
        except (OSError, UnidentifiedImageError) as error:
            raise UserInputError(f"Cannot decode the image {path} ({error}); remove it or replace it.") from None
        image = torch.from_numpy(pixels.reshape(*pixels.shape[:2], channels).copy()).permute(2, 0, 1)
        if crop is not None:
            image = F.center_crop(image, [crop, crop])
        if resize == "resize":
            return F.resize(image, list(size), antialias=True)
        if resize == "resize_crop":
            image = F.resize(image, max(size), antialias=True)
        return F.center_crop(image, list(size))

    with ThreadPoolExecutor(os.cpu_count()) as pool:  # Pillow's decoders and torch's resize release the GIL
        for start in range(0, len(paths), DECODE_BATCH):
            yield torch.stack(list(pool.map(one, paths[start : start + DECODE_BATCH])))


def _class_images(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    """The images under folder/<class>/ (any depth), with the class numbers of sorted class names (as ImageFolder)."""
    classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    paths, labels = [], []
    for number, name in enumerate(classes):
        found = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise UserInputError(
                f"The class folder {folder / name} holds no images ({', '.join(IMAGE_SUFFIXES)}); every subfolder "
                "is a class: remove it or fill it."
            )
        paths += found
        labels += [number] * len(found)
    return paths, labels, classes


def load_image_folder(
    root: Path,
    path: str,
    image_size: int | list[int] = 64,
    channels: int = 3,
    resize: str = "resize_crop",
    test_size: int = 0,
    split_seed: int = 0,
    cache_dir: str = "~/.cache/cvae_exp/data",
) -> ImageSplits:
    """A folder with one subfolder of images per class, as torchvision's ImageFolder reads it,
    any format Pillow reads, at `image_size` by `resize` (RESIZE_CHOICES). Its test set is
    path/test/ beside path/train/ where both exist, else `test_size` images held out by `split_seed`."""
    return _image_folder(
        str(Path(path).expanduser()), _size(image_size), channels, resize, test_size, split_seed, cache_dir
    )


@functools.cache  # per process: the pre-run check and the run open the cache once
def _image_folder(
    path: str, size: tuple[int, int], channels: int, resize: str, test_size: int, split_seed: int, cache_dir: str
) -> ImageSplits:
    folder = Path(path)
    if resize not in RESIZE_CHOICES:
        raise UserInputError(
            f"Invalid config value data.source.resize={resize!r}: allowed: {' | '.join(RESIZE_CHOICES)}."
        )
    if channels not in (1, 3):
        raise UserInputError(f"Invalid config value data.source.channels={channels}: 1 (grayscale) or 3 (RGB).")
    if not folder.is_dir():
        raise UserInputError(
            f"Invalid config value data.source.path={path!r}: no such directory. Point it at a folder with one "
            "subfolder of images per class (or with train/ and test/ folders of such subfolders)."
        )
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        splits = {split: _class_images(folder / split) for split in ("train", "test")}
        if splits["train"][2] != splits["test"][2]:
            raise UserInputError(
                f"The class folders of {folder / 'train'} ({splits['train'][2]}) and {folder / 'test'} "
                f"({splits['test'][2]}) differ; both need the same class subfolders."
            )
    else:
        paths, labels, classes = _class_images(folder)
        if not 0 < test_size < len(paths):
            raise UserInputError(
                f"Invalid config value data.source.test_size={test_size}: {folder} has {len(paths)} images and no "
                f"train/ and test/ folders, so test_size of them are held out as the test set: between 1 and "
                f"{len(paths) - 1}."
            )
        order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(split_seed)).tolist()
        test, train = sorted(order[:test_size]), sorted(order[test_size:])
        splits = {
            "train": ([paths[i] for i in train], [labels[i] for i in train], classes),
            "test": ([paths[i] for i in test], [labels[i] for i in test], classes),
        }
    for split, (paths, _, _) in splits.items():
        if not paths:
            raise UserInputError(f"No {split} images ({', '.join(IMAGE_SUFFIXES)}) were found under {folder}.")

    def chunks() -> Chunks:
        for split, (paths, labels, _) in splits.items():
            start = 0
            for images in decode(paths, channels, size, resize):
                yield split, images, torch.tensor(labels[start : start + len(images)])
                start += len(images)

    key = {
        "source": "image_folder",
        "files": {split: files_key(paths) for split, (paths, _, _) in splits.items()},
        "labels": {split: labels for split, (_, labels, _) in splits.items()},
        "size": size,
        "channels": channels,
        "resize": resize,
    }
    return cached(folder.name or "images", key, chunks, Path(cache_dir).expanduser())
