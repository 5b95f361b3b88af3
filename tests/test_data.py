"""Datasets and device batches: sizes, splits, order, binarisation, the offline error."""

import pytest
import torch
import torchvision

from cvae_exp.data import ImageSplits, TensorDataModule
from cvae_exp.data.batches import TensorBatches
from cvae_exp.data.sources import load_digits, load_torchvision
from cvae_exp.errors import UserInputError


def digits_module(**overrides) -> TensorDataModule:
    arguments = dict(
        name="digits",
        source=load_digits,
        root=".",
        image_shape=[1, 28, 28],
        num_classes=10,
        batch_size=64,
        val_size=300,
        split_seed=0,
        binarize="none",
    )
    module = TensorDataModule(**{**arguments, **overrides})
    module.setup()
    return module


def test_digits_are_upsampled_uint8_with_a_fixed_disjoint_split():
    module = digits_module()
    sizes = {name: len(module.labels(name)) for name in module.splits}
    assert sizes == {"train": 1200, "val": 300, "test": 297}
    images, labels = module.images("train")
    assert images.dtype == torch.uint8 and images.shape[1:] == (1, 28, 28)
    assert images.max() == 255 and images.min() == 0
    assert set(labels.tolist()) == set(range(10))
    again = digits_module()
    assert all(torch.equal(module.images(s)[0], again.images(s)[0]) for s in module.splits)
    flat = {name: {tuple(row) for row in module.images(name)[0].flatten(1).tolist()} for name in module.splits}
    assert not flat["train"] & flat["test"] and not flat["val"] & flat["test"]


def test_batches_visit_every_sample_once_per_epoch_in_a_seeded_order():
    labels = torch.arange(103)
    images = torch.zeros(103, 1, 2, 2, dtype=torch.uint8)
    epoch = [0]
    batches = TensorBatches(images, labels, batch_size=10, shuffle=True, seed=5, current_epoch=lambda: epoch[0])
    assert len(batches) == 11
    first, again = (torch.cat([y for _, y in batches]) for _ in range(2))
    epoch[0] = 1
    second = torch.cat([y for _, y in batches])
    assert sorted(first.tolist()) == list(range(103)) == sorted(second.tolist())
    assert torch.equal(first, again) and not torch.equal(first, second)
    replay = TensorBatches(images, labels, batch_size=10, shuffle=True, seed=5, current_epoch=lambda: 1)
    assert torch.equal(torch.cat([y for _, y in replay]), second)


def test_batches_are_split_across_ranks_without_overlap():
    labels = torch.arange(50)
    images = torch.zeros(50, 1, 2, 2, dtype=torch.uint8)
    seen = [
        torch.cat([y for _, y in TensorBatches(images, labels, 8, shuffle=True, rank=r, world_size=2)]) for r in (0, 1)
    ]
    assert sorted(torch.cat(seen).tolist()) == list(range(50))
    assert len(TensorBatches(images, labels, 8, rank=1, world_size=2)) == 4


def test_batches_scale_pixels_to_unit_interval():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1, 1)
    ((x, _),) = TensorBatches(images, torch.zeros(3, dtype=torch.long), batch_size=3)
    assert torch.allclose(x.flatten(), torch.tensor([0.0, 0.2, 1.0]))


def test_dynamic_binarisation_draws_each_training_epoch_anew_and_held_out_images_once():
    """Training batches are new Bernoulli draws every epoch; validation and test images are
    binarised once (the same in every epoch and every run), so their likelihoods are of binary data."""
    module = digits_module(binarize="dynamic")
    first, _ = next(iter(module.train_dataloader()))
    second, _ = next(iter(module.train_dataloader()))
    assert set(first.unique().tolist()) <= {0.0, 1.0} and not torch.equal(first, second)
    for split in ("val", "test"):
        held_out, _ = next(iter(getattr(module, f"{split}_dataloader")()))
        again, _ = next(iter(getattr(digits_module(binarize="dynamic"), f"{split}_dataloader")()))
        assert set(held_out.unique().tolist()) <= {0.0, 1.0} and torch.equal(held_out, again)
    assert not torch.equal(module.images("train")[0], digits_module(binarize="static").images("train")[0])


def test_static_binarisation_is_fixed():
    first, second = digits_module(binarize="static"), digits_module(binarize="static")
    images = first.images("train")[0]
    assert set(images.unique().tolist()) == {0, 255}
    assert torch.equal(images, second.images("train")[0])


def test_mismatched_shape_classes_and_bad_val_size_are_refused():
    with pytest.raises(UserInputError, match=r"data.image_shape=\[3, 32, 32\].*\[1, 28, 28\]"):
        digits_module(image_shape=[3, 32, 32])
    with pytest.raises(UserInputError, match="data.num_classes=5: .* 0..9"):
        digits_module(num_classes=5)
    with pytest.raises(UserInputError, match="data.val_size=5000: .* 1500 images of digits.s training set"):
        digits_module(val_size=5000)


def test_offline_without_files_says_where_to_put_them(tmp_path, monkeypatch):
    def no_network(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    with pytest.raises(UserInputError) as error:
        load_torchvision(tmp_path, "MNIST")
    message = str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "data=digits" in message and "data.root" in message


def test_splits_are_tensors_not_pil():
    data = load_digits(root=None)
    assert isinstance(data, ImageSplits) and data.train_images.is_contiguous()


@pytest.mark.parametrize("binarize", ["none", "static", "dynamic"])
def test_the_dataloader_path_serves_the_in_memory_paths_batches(binarize):
    """data.in_memory=false: the same rows in the same order, uint8 until the device, where
    on_after_batch_transfer scales them (and draws training batches anew under dynamic)."""
    fast, streamed = digits_module(binarize=binarize), digits_module(binarize=binarize, in_memory=False, num_workers=0)
    assert fast.in_memory is True and streamed.in_memory is False
    for split in ("train", "val", "test"):
        expected = list(getattr(fast, f"{split}_dataloader")())
        served = [streamed.on_after_batch_transfer(batch, 0) for batch in getattr(streamed, f"{split}_dataloader")()]
        assert len(expected) == len(served) == len(getattr(streamed, f"{split}_dataloader")())
        for (x, y), (x_served, y_served) in zip(expected, served):
            assert torch.equal(y, y_served) and x.dtype == x_served.dtype == torch.float32
            if binarize == "none":
                assert torch.equal(x, x_served)
            elif not (binarize == "dynamic" and split == "train"):  # (drawn anew in training, on both paths)
                assert set(x_served.unique().tolist()) <= {0.0, 1.0}  # binarised once, per image by its position
    if binarize == "static":
        first, again = streamed.images("val", 40)[0], streamed.gather("val", torch.arange(40))[0]
        assert torch.equal(first, again) and torch.equal(first, next(iter(streamed.val_dataloader()))[0][:40])


def test_the_consumer_protocol_is_the_same_on_both_paths():
    fast, streamed = digits_module(), digits_module(in_memory=False)
    rows = torch.tensor([5, 0, 296])
    for split in ("train", "val", "test"):
        assert torch.equal(fast.labels(split), streamed.labels(split))
        assert all(torch.equal(a, b) for a, b in zip(fast.images(split, 7), streamed.images(split, 7)))
        assert all(torch.equal(a, b) for a, b in zip(fast.gather(split, rows), streamed.gather(split, rows)))
        whole = [torch.cat(parts) for parts in zip(*streamed.batches(split, 128))]
        assert all(torch.equal(a, b) for a, b in zip(whole, fast.images(split)))


def test_in_memory_auto_holds_data_that_fits_and_streams_what_does_not(monkeypatch):
    assert digits_module(in_memory="auto").in_memory is True
    monkeypatch.setattr("os.sysconf", lambda name: 1024 if name == "SC_AVPHYS_PAGES" else 4096)  # 4 MiB free
    assert digits_module(in_memory="auto").in_memory is False  # 1797 images of 784 bytes > 1 MiB
