"""Batches of a split: indexed from tensors on the training device (the fast path), or
gathered from memory-mapped images by DataLoader workers (data larger than memory).

Both visit the same rows in the same order: epoch e of a shuffled split uses the
permutation seeded by `seed + e` (a resumed run sees the same order), and under data
parallelism each rank takes every world_size-th row of it.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Split:
    """The uint8 (N, C, H, W) images of one split with their labels (N,) or attribute
    vectors (N, D). `rows`: where the split's images lie in `images` (None: all of them, in
    order), so that a memory-mapped dataset is split without copying it."""

    images: torch.Tensor
    labels: torch.Tensor
    rows: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def gather(self, index: torch.Tensor | slice) -> torch.Tensor:
        """The uint8 images at `index` (positions in this split)."""
        return self.images[index if self.rows is None else self.rows[index]]


class MappedImages:
    """uint8 images in a file read through a memory map: index it like a tensor to read rows.
    Pickled by path, so that DataLoader workers started by spawn map the file anew instead of
    receiving a copy of the data."""

    def __init__(self, path: str, shape: tuple[int, ...]):
        self.path, self.shape = path, tuple(shape)
        self._array: np.memmap | None = None

    @property
    def array(self) -> np.memmap:
        if self._array is None:
            self._array = np.memmap(self.path, dtype=np.uint8, mode="r", shape=self.shape)
        return self._array

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        return torch.from_numpy(np.array(self.array[index]))  # a copy: the map is read-only

    def __getstate__(self) -> dict:
        return {"path": self.path, "shape": self.shape, "_array": None}


def epoch_order(
    count: int, shuffle: bool, seed: int, epoch: int, rank: int, world_size: int, device: torch.device
) -> torch.Tensor:
    """The positions a rank visits in one epoch, in order."""
    if shuffle:
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed + epoch)).to(device)
    else:
        order = torch.arange(count, device=device)
    return order[rank::world_size]


class TensorBatches:
    """An iterable of (images in [0, 1], labels) batches over uint8 tensors on the device.

    Replaces a DataLoader where the data fits: one gather and one cast per batch, no
    per-sample Python. `current_epoch` tells the epoch when an iteration starts (the
    DataModule passes the trainer's).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        dynamic_binarize: bool = False,
        rank: int = 0,
        world_size: int = 1,
        current_epoch: Callable[[], int] = lambda: 0,
    ):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.shuffle, self.seed, self.dynamic_binarize = shuffle, seed, dynamic_binarize
        self.rank, self.world_size, self.current_epoch = rank, world_size, current_epoch

    def __len__(self) -> int:
        return math.ceil(len(range(self.rank, len(self.labels), self.world_size)) / self.batch_size)

    def __iter__(self):
        order = epoch_order(
            len(self.labels),
            self.shuffle,
            self.seed,
            self.current_epoch(),
            self.rank,
            self.world_size,
            self.labels.device,
        )
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            images = self.images[index].float().div_(255.0)
            if self.dynamic_binarize:
                images = torch.bernoulli(images)
            yield images, self.labels[index]


class BatchOrder(torch.utils.data.Sampler):
    """The positions of each batch of an epoch, for a DataLoader whose dataset takes a whole
    batch at once (SplitRows): the same order as TensorBatches."""

    def __init__(
        self, count: int, batch_size: int, shuffle: bool, seed: int, rank: int, world_size: int, current_epoch
    ):
        self.count, self.batch_size, self.shuffle, self.seed = count, batch_size, shuffle, seed
        self.rank, self.world_size, self.current_epoch = rank, world_size, current_epoch

    def __len__(self) -> int:
        return math.ceil(len(range(self.rank, self.count, self.world_size)) / self.batch_size)

    def __iter__(self):
        order = epoch_order(
            self.count, self.shuffle, self.seed, self.current_epoch(), self.rank, self.world_size, torch.device("cpu")
        )
        yield from order.split(self.batch_size)


class SplitRows(torch.utils.data.Dataset):
    """A split as a map from a batch's positions to its (uint8 images, labels): one read of
    the memory map per batch instead of one call per image. With `binarize_seed`, each image
    is binarised by a generator seeded with its position, the same draw in every epoch."""

    def __init__(self, split: Split, binarize_seed: int | None = None):
        self.split, self.binarize_seed = split, binarize_seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.split.gather(index)
        if self.binarize_seed is not None:
            images = torch.stack(
                [bernoulli_uint8(image, self.binarize_seed + int(i)) for image, i in zip(images, index)]
            )
        return images, self.split.labels[index]


def bernoulli_uint8(images: torch.Tensor, seed: int | torch.Generator) -> torch.Tensor:
    """x ~ Bernoulli(pixel / 255), as uint8 0 or 255."""
    generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    probabilities = images.float() / 255.0
    return (torch.rand(probabilities.shape, generator=generator) < probabilities).to(torch.uint8) * 255
