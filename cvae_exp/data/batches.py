"""Batches served by indexing tensors that already sit on the training device."""

import math
from collections.abc import Callable

import torch


class TensorBatches:
    """An iterable of (images in [0, 1], labels) batches over uint8 tensors.

    Replaces a DataLoader: one gather and one cast per batch, no per-sample Python.
    With `shuffle`, epoch e uses the permutation seeded by `seed + e`, so a resumed run
    sees the same order; `current_epoch` tells e when an iteration starts (the DataModule
    passes the trainer's). Under data parallelism each rank takes every world_size-th index.
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
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.current_epoch())
            order = torch.randperm(len(self.labels), generator=generator).to(self.labels.device)
        else:
            order = torch.arange(len(self.labels), device=self.labels.device)
        order = order[self.rank :: self.world_size]
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            images = self.images[index].float().div_(255.0)
            if self.dynamic_binarize:
                images = torch.bernoulli(images)
            yield images, self.labels[index]
