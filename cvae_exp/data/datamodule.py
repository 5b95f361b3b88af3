"""One DataModule for every dataset: load once, split, serve batches from device tensors.

Besides Lightning's train/val/test dataloaders, a DataModule offers what the framework's
other consumers (the test-stage grader, the dataset classifier, the latent samplers, the
image grids, cvae-sample and the Python API) read data through, so that none depends on
how the images are stored: `images(split, count)` (the first `count` uint8 images of a
split with their labels, on the CPU) and `source_splits()` (the dataset's own train and test
sets, which the dataset classifier trains and is tested on); and the attributes `name`,
`image_shape`, `num_classes` and `batch_size`.
"""

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from cvae_exp.data.batches import BatchOrder, Split, SplitRows, TensorBatches, bernoulli_uint8
from cvae_exp.data.sources import ImageSplits
from cvae_exp.errors import UserInputError
from cvae_exp.schema import BINARIZE_CHOICES, DataConfig


class TensorDataModule(L.LightningDataModule):
    """Splits the official train set into train/val with `split_seed` and keeps the
    official test set as test. `binarize`: `dynamic` draws x ~ Bernoulli(pixel) for every
    training batch and once (with `split_seed`) for validation and test, `static` once for
    every split; both suit `loss.likelihood=bernoulli`. With `attributes` = D > 0 the labels
    are (N, D) attribute vectors (multi-hot or real values), the condition of task=attributes."""

    def __init__(
        self,
        name: str,
        source: Callable[[Path], ImageSplits],
        root: str,
        image_shape: list[int],
        num_classes: int,
        batch_size: int,
        val_size: int,
        split_seed: int = DataConfig.split_seed,
        binarize: str = DataConfig.binarize,
        attributes: int = DataConfig.attributes,
        attribute_groups: dict[str, int] | None = DataConfig.attribute_groups,
        factor_names: list[str] | None = DataConfig.factor_names,
        in_memory: bool | str = DataConfig.in_memory,
        num_workers: int = DataConfig.num_workers,
    ):
        super().__init__()
        if binarize not in BINARIZE_CHOICES:
            raise ValueError(f"data.binarize={binarize!r} is not one of {BINARIZE_CHOICES}")
        self.name, self.source, self.root = name, source, Path(root)
        self.image_shape, self.num_classes = tuple(image_shape), num_classes
        self.batch_size, self.val_size, self.split_seed, self.binarize = batch_size, val_size, split_seed, binarize
        self.attributes, self.in_memory, self.num_workers = attributes, in_memory, num_workers
        self.attribute_groups = dict(attribute_groups or {})
        self.factor_names = list(factor_names or [])  # the labels' columns as factors of variation
        self.splits: dict[str, Split] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        data = self.source(root=self.root)
        self._check(data)
        generator = torch.Generator().manual_seed(self.split_seed)
        if data.val_images is None:  # validation images held out from the training set
            order = torch.randperm(len(data.train_labels), generator=generator)
            val, train = order[: self.val_size], order[self.val_size :]
            splits = {
                "train": Split(data.train_images, data.train_labels[train], train),
                "val": Split(data.train_images, data.train_labels[val], val),
            }
        else:  # the dataset's own validation set
            splits = {
                "train": Split(data.train_images, data.train_labels),
                "val": Split(data.val_images, data.val_labels),
            }
        splits["test"] = Split(data.test_images, data.test_labels)
        self.in_memory = self._fits(data) if self.in_memory == "auto" else self.in_memory
        if not self.in_memory:  # positions into the (memory-mapped) images: nothing is copied
            self.splits = splits
            return
        # in memory, each split's images gathered into a tensor of their own. static: every split binarised
        # once; dynamic: training batches drawn anew (TensorBatches), validation and test binarised once,
        # so that their likelihoods are of binary data.
        self.splits = {}
        for name, split in splits.items():
            images = split.gather(slice(None))
            if name in self._binarised_once():
                images = bernoulli_uint8(images, generator)
            self.splits[name] = Split(images, split.labels)

    def _binarised_once(self) -> tuple[str, ...]:
        return {"static": ("train", "val", "test"), "dynamic": ("val", "test")}.get(self.binarize, ())

    def _fits(self, data: ImageSplits) -> bool:
        """Whether the images take at most a quarter of the memory available now (and of the
        GPU's free memory when training on one): data.in_memory=auto."""
        held = (data.train_images, data.test_images, data.val_images)
        size = sum(math.prod(images.shape) for images in held if images is not None)
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if self.trainer is not None and self.trainer.strategy.root_device.type == "cuda":
            available = min(available, torch.cuda.mem_get_info(self.trainer.strategy.root_device)[0])
        return size <= available // 4

    def images(self, split: str, count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `count` uint8 images of `split` (train, val or test; all with None) and their labels."""
        return self.gather(split, slice(count))

    def gather(self, split: str, index: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 images of `split` at `index` (positions in the split) and their labels."""
        self.setup()
        data = self.splits[split]
        if self.in_memory or split not in self._binarised_once():
            return data.gather(index), data.labels[index]
        return SplitRows(data, self._binarize_seed(split))[torch.arange(len(data))[index]]

    def labels(self, split: str) -> torch.Tensor:
        """Every label (or attribute vector) of `split`: small, always in memory."""
        self.setup()
        return self.splits[split].labels

    def batches(self, split: str, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The uint8 images of `split` with their labels, in order, `batch_size` at a time: for
        a consumer that reads a whole split without holding it."""
        for start in range(0, len(self.labels(split)), batch_size):
            yield self.gather(split, slice(start, start + batch_size))

    def source_splits(self) -> ImageSplits:
        return self.source(root=self.root)

    def _check(self, data: ImageSplits) -> None:
        """The declared shape, classes and split sizes must fit the data that was loaded."""
        shape, count = list(data.train_images.shape[1:]), len(data.train_labels)
        if shape != list(self.image_shape):
            raise UserInputError(
                f"Invalid config value data.image_shape={list(self.image_shape)}: the {self.name} images are "
                f"{shape} ([channels, height, width]); set data.image_shape={shape} or choose another data config."
            )
        if self.attributes or data.train_labels.dim() != 1:
            self._check_attributes(data)
            return self._check_val_size(count, data)
        classes = int(max(data.train_labels.max(), data.test_labels.max())) + 1
        if classes != self.num_classes:
            raise UserInputError(
                f"Invalid config value data.num_classes={self.num_classes}: the {self.name} labels are "
                f"0..{classes - 1}; "
                f"set data.num_classes={classes}."
            )
        self._check_val_size(count, data)

    def _check_attributes(self, data: ImageSplits) -> None:
        shape = list(data.train_labels.shape[1:])
        if data.train_labels.dim() != 2 or shape != [self.attributes] or list(data.test_labels.shape[1:]) != shape:
            found = f"vectors of {shape[0]} attribute values" if data.train_labels.dim() == 2 else "class numbers"
            raise UserInputError(
                f"Invalid config value data.attributes={self.attributes}: the {self.name} labels are {found}; set "
                f"data.attributes to the length of the vectors (0 for class numbers)."
            )

    def _check_val_size(self, count: int, data: ImageSplits) -> None:
        if data.val_images is None and not 0 < self.val_size < count:
            raise UserInputError(
                f"Invalid config value data.val_size={self.val_size}: the validation images are taken from the {count} "
                f"images of {self.name}'s training set (the rest are trained on), so it must be between 1 and "
                f"{count - 1}."
            )

    def _binarize_seed(self, split: str) -> int:
        return self.split_seed * 1_000_003 + ("train", "val", "test").index(split) * 100_000_007

    def _batches(self, split: str, shuffle: bool = False) -> TensorBatches | DataLoader:
        device, rank, world_size, current_epoch = torch.device("cpu"), 0, 1, lambda: 0
        if self.trainer is not None:
            device, rank, world_size = (
                self.trainer.strategy.root_device,
                self.trainer.global_rank,
                self.trainer.world_size,
            )
            current_epoch = lambda: self.trainer.current_epoch  # read when an epoch's iteration starts
        data = self.splits[split]
        if self.in_memory:
            return TensorBatches(
                data.images.to(device),
                data.labels.to(device),
                self.batch_size,
                shuffle=shuffle,
                seed=torch.initial_seed(),
                dynamic_binarize=shuffle and self.binarize == "dynamic",
                rank=rank,
                world_size=world_size,
                current_epoch=current_epoch,
            )
        order = BatchOrder(len(data), self.batch_size, shuffle, torch.initial_seed(), rank, world_size, current_epoch)
        seed = self._binarize_seed(split) if split in self._binarised_once() else None
        return DataLoader(
            SplitRows(data, seed),
            sampler=order,
            batch_size=None,  # each item of SplitRows is a whole batch
            num_workers=self.num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=self.num_workers > 0,
            # the workers' base seed from a generator of its own, not the global one that the model
            # samples z from: a run draws the same noise on both paths
            generator=torch.Generator(),
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """A DataLoader's uint8 batch, on the device: to [0, 1], and drawn anew from its pixels
        for data.binarize=dynamic in training. (TensorBatches' batches arrive ready.)"""
        images, labels = batch
        if images.dtype != torch.uint8:
            return batch
        images = images.float().div_(255.0)
        if self.binarize == "dynamic" and self.trainer is not None and self.trainer.training:
            images = torch.bernoulli(images)
        return images, labels

    def train_dataloader(self) -> TensorBatches | DataLoader:
        return self._batches("train", shuffle=True)

    def val_dataloader(self) -> TensorBatches | DataLoader:
        return self._batches("val")

    def test_dataloader(self) -> TensorBatches | DataLoader:
        return self._batches("test")
