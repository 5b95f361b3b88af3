"""The datasets of the literature, read from their own files: CIFAR's pickled batches, SVHN's
.mat files, CelebA's aligned images with its attribute and partition lists, arrays in .npz
files (as pythae takes them), and two made in code for offline work: coloured MNIST and dSprites.

Each is `load_*(root, ...) -> ImageSplits`. Where a torchvision dataset class can fetch the
files, it does (`download=True`), and the files are then read here: torchvision's classes
check MD5 sums of the original archives, so they cannot read the small files of the same
format that the tests write. Offline, the message names the files and where they go.
"""

import functools
import math
import os
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cvae_exp.data.cache import Chunks, cached, files_key
from cvae_exp.data.folders import DECODE_BATCH, decode
from cvae_exp.data.sources import ImageSplits, load_torchvision
from cvae_exp.errors import UserInputError
from cvae_exp.files import undone_on_failure

CIFAR = {  # torchvision class -> its folder, files and label key
    "CIFAR10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    "CIFAR100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}


def _fetch(dataset: str, root: Path, needed: list[Path], advice: str, **arguments) -> None:
    """Download `dataset` with torchvision into `root` if any of `needed` is missing; offline, say what goes where."""
    if all(path.exists() for path in needed):
        return
    from torchvision import datasets

    try:
        with undone_on_failure(Path(os.path.commonpath(needed))):  # a failed download leaves no folder behind
            getattr(datasets, dataset)(str(root), download=True, **arguments)
    except (OSError, RuntimeError) as error:
        missing = ", ".join(str(path) for path in needed if not path.exists())
        raise UserInputError(
            f"{dataset} is not under data.root and could not be downloaded ({' '.join(str(error).split())}). It needs "
            f"{missing}: {advice} Or point data.root at a directory that holds them, or train offline on data=digits."
        ) from error


@functools.cache
def load_cifar(root: Path, dataset: str = "CIFAR10") -> ImageSplits:
    """CIFAR-10 or CIFAR-100 (its 100 fine labels) from the python version's pickled batches."""
    if dataset not in CIFAR:
        raise UserInputError(f"Invalid config value data.source.dataset={dataset!r}: allowed: {' | '.join(CIFAR)}.")
    folder, train_files, test_files, label_key = CIFAR[dataset]
    base = Path(root) / folder
    needed = [base / name for name in train_files + test_files]
    archive = f"{folder.replace('-batches-py', '').replace('-python', '')}-python.tar.gz"
    _fetch(dataset, Path(root), needed, f"extract {archive} in data.root (it makes {folder}/).")

    def read(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for name in names:
            with open(base / name, "rb") as file:
                entry = pickle.load(file, encoding="latin1")
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels += entry[label_key]
        return torch.from_numpy(np.concatenate(images)), torch.tensor(labels)

    return ImageSplits(*read(train_files), *read(test_files))


@functools.cache
def load_svhn(root: Path) -> ImageSplits:
    """SVHN's cropped digits (train_32x32.mat, test_32x32.mat in <root>/SVHN/); class 10 of the files is the digit 0."""
    from scipy.io import loadmat

    base = Path(root) / "SVHN"
    needed = [base / f"{split}_32x32.mat" for split in ("train", "test")]
    with undone_on_failure(base):  # a failed test download takes the train file with it
        for split, path in zip(("train", "test"), needed):
            _fetch("SVHN", base, [path], "download it from http://ufldl.stanford.edu/housenumbers/.", split=split)

    def read(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            mat = loadmat(path)
        except Exception as error:  # scipy raises MatReadError, ValueError, IndexError ... for a damaged file
            raise UserInputError(
                f"Cannot read {path} ({error}): a truncated or damaged download? Remove it and run again to download "
                "it anew (or copy a whole one there)."
            ) from None
        images = torch.from_numpy(np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1))))
        return images, torch.from_numpy(mat["y"].astype(np.int64).reshape(-1) % 10)

    return ImageSplits(*read(needed[0]), *read(needed[1]))


def load_celeba(
    root: Path, image_size: int = 64, crop: int = 148, cache_dir: str = "~/.cache/cvae_exp/data"
) -> ImageSplits:
    """CelebA's aligned faces (<root>/celeba/img_align_celeba/*.jpg), centre-cropped to `crop`
    and resized to `image_size` as PyTorch-VAE prepares them, with the 40 attributes of
    list_attr_celeba.txt as a multi-hot vector and the official partition of
    list_eval_partition.txt (train, val, test)."""
    base = Path(root) / "celeba"
    lists = [base / "list_attr_celeba.txt", base / "list_eval_partition.txt"]
    advice = (
        "copy img_align_celeba/ (unzipped img_align_celeba.zip), list_attr_celeba.txt and list_eval_partition.txt "
        f"from CelebA's Google Drive into {base}/."
    )
    _fetch("CelebA", Path(root), lists + [base / "img_align_celeba"], advice, split="all")
    return _celeba(str(base), int(image_size), int(crop), str(Path(cache_dir).expanduser()))


@functools.cache
def _celeba(base: str, image_size: int, crop: int, cache_dir: str) -> ImageSplits:
    base = Path(base)
    lines = (base / "list_attr_celeba.txt").read_text().splitlines()
    names = lines[1].split()
    attributes = {}
    for line in lines[2:]:
        if line.strip():
            file, *values = line.split()
            attributes[file] = [int(value) > 0 for value in values]
    if any(len(values) != len(names) for values in attributes.values()):
        raise UserInputError(f"{base / 'list_attr_celeba.txt'}: a line has other than {len(names)} attribute values.")
    partition = {"0": "train", "1": "val", "2": "test"}
    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for line in (base / "list_eval_partition.txt").read_text().splitlines():
        if line.strip():
            file, part = line.split()
            splits[partition[part]].append(file)
    paths = {split: [base / "img_align_celeba" / file for file in files] for split, files in splits.items()}
    missing = [path for files in paths.values() for path in files if not path.is_file()]
    if missing:
        raise UserInputError(f"{len(missing)} images of list_eval_partition.txt are not in {missing[0].parent} "
                             f"(the first: {missing[0].name}); copy the whole img_align_celeba/ there.")  # fmt: skip

    def chunks() -> Chunks:
        for split, files in splits.items():
            start = 0
            for images in decode(paths[split], 3, (image_size, image_size), "resize", crop=crop):
                vectors = torch.tensor([attributes[file] for file in files[start : start + len(images)]]).long()
                yield split, images, vectors
                start += len(images)

    files = [base / "list_attr_celeba.txt", base / "list_eval_partition.txt", *sum(paths.values(), [])]
    key = {"source": "celeba", "files": files_key(files), "size": image_size, "crop": crop}
    return cached("celeba", key, chunks, cache_dir)


def load_arrays(root: Path, path: str, cache_dir: str = "~/.cache/cvae_exp/data") -> ImageSplits:
    """Images and labels from a .npz file (numpy.savez) with the arrays train_images,
    train_labels, test_images and test_labels (and val_images, val_labels for a validation set
    of your own): images (N, C, H, W) or (N, H, W, C) or (N, H, W), uint8 or floats in [0, 1];
    labels class numbers (N,) or condition vectors (N, D)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserInputError(f"Invalid config value data.source.path={path!r}: no such file (a .npz file).")
    return _arrays(str(file), str(Path(cache_dir).expanduser()))


@functools.cache
def _arrays(file: str, cache_dir: str) -> ImageSplits:
    try:
        arrays = np.load(file, mmap_mode="r")
        keys = set(arrays.files)
    except (OSError, ValueError, AttributeError) as error:
        raise UserInputError(f"Cannot read {file} as a .npz file of arrays ({error}).") from None
    needed = {"train_images", "train_labels", "test_images", "test_labels"}
    if not needed <= keys or ("val_images" in keys) != ("val_labels" in keys):
        raise UserInputError(
            f"{file} holds the arrays {sorted(keys)}; it needs {sorted(needed)} (and val_images with val_labels "
            "for a validation set of its own)."
        )
    splits = [split for split in ("train", "test", "val") if f"{split}_images" in keys]

    def chunks() -> Chunks:
        for split in splits:
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            if len(images) != len(labels):
                raise UserInputError(f"{file}: {split}_images has {len(images)} rows, {split}_labels {len(labels)}.")
            if labels.ndim == 1 and labels.dtype.kind == "f":  # class numbers saved as floats
                if not np.array_equal(labels, np.round(labels)) or labels.min() < 0:
                    raise UserInputError(
                        f"{file}: {split}_labels are fractional numbers; class labels are whole numbers 0..K-1 "
                        "(condition vectors are (N, D) arrays)."
                    )
                labels = labels.astype(np.int64)
            for start in range(0, len(images), DECODE_BATCH * 8):
                yield (
                    split,
                    _uint8_nchw(np.asarray(images[start : start + DECODE_BATCH * 8]), file, split),
                    (torch.from_numpy(np.asarray(labels[start : start + DECODE_BATCH * 8]).copy())),
                )

    return cached(Path(file).stem, {"source": "arrays", "files": files_key([Path(file)])}, chunks, cache_dir)


def _uint8_nchw(images: np.ndarray, file: str, split: str) -> torch.Tensor:
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise UserInputError(
            f"{file}: {split}_images has shape {images.shape}; images are (N, C, H, W) or (N, H, W, C)."
        )
    if images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    if images.dtype != np.uint8:
        if images.min() < 0 or images.max() > 1:
            raise UserInputError(f"{file}: {split}_images are {images.dtype} outside [0, 1]; give uint8 or [0, 1].")
        images = np.round(images * 255)
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))


# Coloured MNIST's colours (RGB in [0, 1]), in the order of its colour attribute
COLOURS = {"red": (1.0, 0.15, 0.1), "green": (0.1, 0.9, 0.2), "blue": (0.2, 0.4, 1.0)}


@functools.cache
def load_coloured_mnist(root: Path, colours: int = 3, seed: int = 0) -> ImageSplits:
    """MNIST's digits padded to 32x32 and painted in one of `colours` colours (COLOURS) drawn
    per image with `seed`: 3x32x32 images whose condition is a multi-hot vector of the digit's
    one-hot (10 entries) then the colour's (`colours` entries)."""
    if not 1 <= colours <= len(COLOURS):
        raise UserInputError(f"Invalid config value data.source.colours={colours}: between 1 and {len(COLOURS)}.")
    mnist = load_torchvision(Path(root), "MNIST")
    palette = torch.tensor(list(COLOURS.values())[:colours])
    generator = torch.Generator().manual_seed(seed)

    def paint(images: torch.Tensor, digits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        colour = torch.randint(colours, (len(digits),), generator=generator)
        gray = F.pad(images, (2, 2, 2, 2)).float()
        painted = (gray * palette[colour][:, :, None, None]).round().to(torch.uint8)
        vectors = torch.cat([F.one_hot(digits, 10), F.one_hot(colour, colours)], dim=1)
        return painted, vectors

    return ImageSplits(*paint(mnist.train_images, mnist.train_labels), *paint(mnist.test_images, mnist.test_labels))


DSPRITES_SHAPES = ("square", "ellipse", "heart")


def dsprites_factors(scales: int, orientations: int, positions: int) -> torch.Tensor:
    """Every combination of dSprites' factors as rows (shape, scale, orientation, x, y), in the
    original's order and ranges: scale 0.5..1, orientation 0..2pi (endpoint excluded), x and y 0..1."""
    grids = [
        torch.arange(len(DSPRITES_SHAPES), dtype=torch.float64),
        torch.linspace(0.5, 1.0, scales, dtype=torch.float64),
        torch.arange(orientations, dtype=torch.float64) * (2 * math.pi / orientations),
        torch.linspace(0.0, 1.0, positions, dtype=torch.float64),
        torch.linspace(0.0, 1.0, positions, dtype=torch.float64),
    ]
    return torch.cartesian_prod(*grids)


def draw_sprites(factors: torch.Tensor, size: int = 64) -> torch.Tensor:
    """uint8 (n, 1, size, size) white sprites on black for factor rows (shape, scale, orientation, x, y):
    the shape's outline rotated and scaled about its centre, which x and y place in the image."""
    n = len(factors)
    shape, scale, angle, x, y = (factors[:, i, None, None].float() for i in range(5))
    grid = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    half = 0.12 * scale  # a sprite spans up to a quarter of the image
    centre_x, centre_y = 0.2 + 0.6 * x, 0.2 + 0.6 * y
    dx, dy = grid[None, None, :] - centre_x, grid[None, :, None] - centre_y
    u = (dx * torch.cos(angle) + dy * torch.sin(angle)) / half  # coordinates in the sprite's frame, unit size
    v = (-dx * torch.sin(angle) + dy * torch.cos(angle)) / half
    square = (u.abs() <= 1) & (v.abs() <= 1)
    ellipse = (u / 1.0) ** 2 + (v / 0.55) ** 2 <= 1
    heart_v = -v * 1.1 + 0.25  # the implicit heart curve (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, point up
    heart = (u**2 + heart_v**2 - 1) ** 3 - u**2 * heart_v**3 <= 0
    pixels = torch.where(shape == 0, square, torch.where(shape == 1, ellipse, heart))
    return pixels.to(torch.uint8).mul_(255).view(n, 1, size, size)


@functools.cache  # per process: the pre-run check and the run open the cache once
def load_dsprites(
    root: Path,
    scales: int = 6,
    orientations: int = 40,
    positions: int = 32,
    test_size: int = 10_000,
    split_seed: int = 0,
    cache_dir: str = "~/.cache/cvae_exp/data",
) -> ImageSplits:
    """dSprites (Matthey et al. 2017) drawn in code: 64x64 binary images of every combination of
    shape (3), scale, orientation, x and y (737,280 at the defaults, the original's factor grid),
    with the factor values (shape as 0, 1, 2) as each image's label vector: the disentanglement
    metrics' ground truth. `test_size` images are held out by `split_seed`. Written once to the cache."""
    factors = dsprites_factors(scales, orientations, positions)
    if not 0 < test_size < len(factors):
        raise UserInputError(
            f"Invalid config value data.source.test_size={test_size}: this grid has {len(factors)} images; "
            f"hold out between 1 and {len(factors) - 1}."
        )
    order = torch.randperm(len(factors), generator=torch.Generator().manual_seed(split_seed))
    parts = {"train": order[test_size:].sort().values, "test": order[:test_size].sort().values}

    def chunks() -> Chunks:
        for split, rows in parts.items():
            for batch in rows.split(4096):
                yield split, draw_sprites(factors[batch]), factors[batch].float()

    key = {"source": "dsprites", "grid": [scales, orientations, positions], "test_size": test_size,
           "split_seed": split_seed, "version": 1}  # fmt: skip
    return cached("dsprites", key, chunks, Path(cache_dir).expanduser())
