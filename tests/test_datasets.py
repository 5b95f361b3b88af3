"""The dataset loaders, each on small files in the dataset's own on-disk format written here
(CIFAR's pickled batches, SVHN's .mat files, CelebA's folder and lists, .npz arrays), the two
datasets made in code (coloured MNIST, dSprites), and their offline messages."""

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from scipy.io import savemat

from cvae_exp import api
from cvae_exp.data import datasets
from cvae_exp.data.batches import MappedImages
from cvae_exp.data.datasets import (
    COLOURS,
    draw_sprites,
    dsprites_factors,
    load_arrays,
    load_celeba,
    load_cifar,
    load_coloured_mnist,
    load_dsprites,
    load_svhn,
)
from cvae_exp.errors import UserInputError

RNG = np.random.default_rng(0)


def write_cifar(root: Path, dataset: str = "CIFAR10", per_file: int = 4) -> dict[str, np.ndarray]:
    folder, train_files, test_files, label_key = datasets.CIFAR[dataset]
    (root / folder).mkdir(parents=True)
    written = {}
    for name in train_files + test_files:
        data = RNG.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        labels = list(RNG.integers(0, 10, per_file))
        with open(root / folder / name, "wb") as file:  # as the originals: protocol 2, numpy data, list labels
            pickle.dump({"data": data, label_key: labels, "filenames": [b"x.png"] * per_file}, file, protocol=2)
        written[name] = (data, labels)
    return written


@pytest.mark.parametrize("dataset", ["CIFAR10", "CIFAR100"])
def test_cifar_reads_its_pickled_batches_as_channels_first_images(tmp_path, dataset):
    datasets.load_cifar.cache_clear()
    written = write_cifar(tmp_path, dataset)
    data = load_cifar(tmp_path, dataset)
    folder, train_files, test_files, _ = datasets.CIFAR[dataset]
    assert data.train_images.shape == (4 * len(train_files), 3, 32, 32) and data.test_images.shape == (4, 3, 32, 32)
    first, labels = written[train_files[0]]
    assert torch.equal(data.train_images[0], torch.from_numpy(first[0].reshape(3, 32, 32)))  # R, G, B planes
    assert data.train_labels[:4].tolist() == labels and data.test_labels.tolist() == written[test_files[0]][1]


def test_svhn_reads_its_mat_files_with_ten_as_zero(tmp_path):
    datasets.load_svhn.cache_clear()
    (tmp_path / "SVHN").mkdir()
    x = {split: RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8) for split, n in (("train", 5), ("test", 3))}
    y = {"train": np.array([[10], [1], [2], [3], [9]]), "test": np.array([[10], [10], [5]])}
    for split in ("train", "test"):
        savemat(tmp_path / "SVHN" / f"{split}_32x32.mat", {"X": x[split], "y": y[split]})
    data = load_svhn(tmp_path)
    assert data.train_images.shape == (5, 3, 32, 32) and data.train_labels.tolist() == [0, 1, 2, 3, 9]
    assert torch.equal(data.test_images[2], torch.from_numpy(x["test"][..., 2].transpose(2, 0, 1).copy()))
    assert data.test_labels.tolist() == [0, 0, 5]


ATTRIBUTE_NAMES = "5_o_Clock_Shadow Arched_Eyebrows Attractive".split()


def write_celeba(root: Path, count: int = 10) -> dict:
    """CelebA's layout: 178x218 aligned JPEGs, the attribute list (a count line, a names line,
    then -1/1 values padded with spaces) and the partition list (0 train, 1 val, 2 test)."""
    base = root / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    names = [f"{i:06d}.jpg" for i in range(1, count + 1)]
    values = RNG.choice([-1, 1], (count, len(ATTRIBUTE_NAMES)))
    for name in names:
        Image.fromarray(RNG.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(base / "img_align_celeba" / name)
    rows = [f"{name} " + " ".join(f"{v:2d}" for v in row) for name, row in zip(names, values)]
    (base / "list_attr_celeba.txt").write_text("\n".join([str(count), " ".join(ATTRIBUTE_NAMES), *rows]) + "\n")
    parts = [0] * (count - 4) + [1, 1, 2, 2]
    (base / "list_eval_partition.txt").write_text("\n".join(f"{n} {p}" for n, p in zip(names, parts)) + "\n")
    return {"names": names, "values": values, "parts": parts}


def test_celeba_is_cropped_resized_with_its_attributes_and_official_partition(tmp_path):
    written = write_celeba(tmp_path)
    data = load_celeba(tmp_path, image_size=16, crop=148, cache_dir=str(tmp_path / "cache"))
    assert isinstance(data.train_images, MappedImages)
    assert (len(data.train_labels), len(data.val_labels), len(data.test_labels)) == (6, 2, 2)
    assert data.train_images.shape == (6, 3, 16, 16) and data.val_images.shape == (2, 3, 16, 16)
    multi_hot = torch.from_numpy((written["values"] > 0).astype(np.int64))
    assert torch.equal(data.train_labels, multi_hot[:6]) and torch.equal(data.test_labels, multi_hot[8:])
    from torchvision.transforms.v2.functional import center_crop, resize

    image = torch.from_numpy(np.asarray(Image.open(tmp_path / "celeba/img_align_celeba/000009.jpg")).copy())
    expected = resize(center_crop(image.permute(2, 0, 1), [148, 148]), [16, 16], antialias=True)
    assert torch.equal(data.test_images[0], expected)


def test_celeba64_cvae_runs_end_to_end_on_a_celeba_folder(tmp_path):
    """experiment=celeba64_cvae as documented, on 12 CelebA-format images (its 40 attributes cut
    to the 3 written here), through the official validation split."""
    write_celeba(tmp_path, count=12)
    run = api.train(
        [
            "experiment=celeba64_cvae",
            f"data.root={tmp_path}",
            f"data.source.cache_dir={tmp_path / 'cache'}",
            "data.attributes=3",
            "data.batch_size=4",
            "trainer.max_epochs=1",
            "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}",
        ]
    )
    assert run.metrics["status"] == "completed" and run.metrics["test"]["loss"] > 0
    grid = run.sample(torch.tensor([[1, 0, 1], [0, 1, 0]]), n=2, seed=0)
    assert grid.shape == (4, 3, 64, 64)
    for conditions, n, message in (
        ([[1, 0]], 1, "conditions=[[1, 0]] must be a non-empty list of vectors of 3 values"),
        ([1, 0, 1], 1, "must be a non-empty list of vectors of 3 values"),
        ([[1, 0, 1]], 0, "n=0 must be an integer >= 1"),
    ):
        with pytest.raises(UserInputError, match=re.escape(message)):
            run.sample(conditions, n=n)


def test_arrays_are_read_from_npz_in_any_layout(tmp_path):
    images = RNG.random((10, 8, 8, 3))  # floats in [0, 1], channels last
    np.savez(tmp_path / "mine.npz", train_images=images[:7], train_labels=np.arange(7) % 2,
             test_images=images[7:], test_labels=np.array([0, 1, 0]))  # fmt: skip
    data = load_arrays(None, str(tmp_path / "mine.npz"), cache_dir=str(tmp_path / "cache"))
    assert data.train_images.shape == (7, 3, 8, 8) and data.val_images is None
    expected = torch.from_numpy(np.round(images[8].transpose(2, 0, 1) * 255).astype(np.uint8))
    assert torch.equal(data.test_images[1], expected) and data.test_labels.tolist() == [0, 1, 0]
    vectors = RNG.random((6, 4)).astype(np.float32)
    np.savez(tmp_path / "vectors.npz", train_images=RNG.integers(0, 256, (4, 1, 5, 5), dtype=np.uint8),
             train_labels=vectors[:4], test_images=np.zeros((1, 5, 5), np.uint8), test_labels=vectors[4:5],
             val_images=np.zeros((1, 1, 5, 5), np.uint8), val_labels=vectors[5:])  # fmt: skip
    data = load_arrays(None, str(tmp_path / "vectors.npz"), cache_dir=str(tmp_path / "cache"))
    assert data.test_images.shape == (1, 1, 5, 5) and torch.equal(data.val_labels, torch.from_numpy(vectors[5:]))
    np.savez(tmp_path / "bad.npz", images=images)
    with pytest.raises(UserInputError, match=r"holds the arrays \['images'\]; it needs"):
        load_arrays(None, str(tmp_path / "bad.npz"), cache_dir=str(tmp_path / "cache"))


def test_coloured_mnist_paints_each_digit_in_the_colour_its_vector_names(mnist_root):
    data = load_coloured_mnist(mnist_root)
    assert data.train_images.shape == (60000, 3, 32, 32) and data.test_labels.shape == (10000, 13)
    mnist = torchvision.datasets.MNIST(str(mnist_root), train=False)
    assert torch.equal(data.test_labels[:, :10].argmax(1), mnist.targets)
    assert torch.equal(data.test_labels.sum(1), torch.full((10000,), 2))
    palette = torch.tensor(list(COLOURS.values()))
    for index in range(5):
        colour = palette[data.test_labels[index, 10:].argmax()]
        stroke = mnist.data[index].float()
        expected = (torch.nn.functional.pad(stroke, (2, 2, 2, 2)) * colour[:, None, None]).round().to(torch.uint8)
        assert torch.equal(data.test_images[index], expected)
    counts = data.train_labels[:, 10:].sum(0)
    assert counts.min() > 19000  # each colour about a third of the images


def test_dsprites_draws_every_factor_combination_with_its_factor_values(tmp_path):
    factors = dsprites_factors(scales=6, orientations=40, positions=32)
    assert len(factors) == 737_280 and factors[:, 0].unique().tolist() == [0.0, 1.0, 2.0]
    data = load_dsprites(None, scales=2, orientations=4, positions=3, test_size=10, cache_dir=str(tmp_path))
    assert data.train_images.shape == (3 * 2 * 4 * 9 - 10, 1, 64, 64) and data.test_labels.shape == (10, 5)
    everything = torch.cat([data.train_labels, data.test_labels])
    assert len(everything.unique(dim=0)) == 216  # every combination once
    images = torch.cat([data.train_images[:], data.test_images[:]])
    assert set(images.unique().tolist()) == {0, 255}
    # the drawing follows the factors: larger with scale, moved by x and y, rotated by orientation
    small, large = draw_sprites(torch.tensor([[0, 0.5, 0, 0.5, 0.5], [0, 1.0, 0, 0.5, 0.5]]))
    assert 3.5 < (large > 0).sum() / (small > 0).sum() < 4.5  # area grows with the square of the scale
    left, right = draw_sprites(torch.tensor([[1, 1.0, 0, 0.0, 0.5], [1, 1.0, 0, 1.0, 0.5]]))
    columns = lambda image: image[0].nonzero()[:, 1].float().mean()  # noqa: E731
    assert columns(right) - columns(left) > 30
    flat, turned = draw_sprites(torch.tensor([[1, 1.0, 0, 0.5, 0.5], [1, 1.0, np.pi / 2, 0.5, 0.5]]))
    assert torch.equal(flat[0].T, turned[0]) or (flat[0].T != turned[0]).float().mean() < 0.01


def test_offline_without_the_files_the_message_names_them_and_leaves_no_directory(tmp_path, monkeypatch):
    def offline(self):
        raise RuntimeError("Error downloading cifar-10-python.tar.gz")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    datasets.load_cifar.cache_clear()
    root = tmp_path / "missing" / "data"
    with pytest.raises(UserInputError) as error:
        load_cifar(root, "CIFAR10")
    message = str(error.value)
    assert "cifar-10-batches-py/data_batch_1" in message and "cifar-10-python.tar.gz" in message
    assert "data.root" in message and not (tmp_path / "missing").exists()


def test_float_class_labels_in_npz_are_read_as_classes_and_fractional_ones_refused(tmp_path):
    images = RNG.integers(0, 256, (6, 1, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "f.npz", train_images=images[:4], train_labels=np.array([0.0, 1.0, 2.0, 1.0]),
             test_images=images[4:], test_labels=np.array([1.0, 0.0]))  # fmt: skip
    data = load_arrays(None, str(tmp_path / "f.npz"), cache_dir=str(tmp_path / "cache"))
    assert data.train_labels.dtype == torch.int64 and data.train_labels.tolist() == [0, 1, 2, 1]
    np.savez(tmp_path / "g.npz", train_images=images[:4], train_labels=np.array([0.5, 1.0, 2.0, 1.0]),
             test_images=images[4:], test_labels=np.array([1.0, 0.0]))  # fmt: skip
    with pytest.raises(UserInputError, match="train_labels are fractional numbers"):
        load_arrays(None, str(tmp_path / "g.npz"), cache_dir=str(tmp_path / "cache"))


def test_a_damaged_svhn_file_is_one_message(tmp_path):
    datasets.load_svhn.cache_clear()
    (tmp_path / "SVHN").mkdir()
    for split in ("train", "test"):
        (tmp_path / "SVHN" / f"{split}_32x32.mat").write_bytes(b"MATLAB 5.0 truncated")
    with pytest.raises(UserInputError, match=r"Cannot read .*train_32x32.mat .*damaged download"):
        load_svhn(tmp_path)
