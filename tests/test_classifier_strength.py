"""The classifier behind the classifier metrics is as accurate as a small CNN should be:
>= 90% on Fashion-MNIST's test set and >= 99% on MNIST's, trained as the test stage trains it.

Fashion-MNIST comes from Debian's `dataset-fashion-mnist` package (`.ci/run` installs it);
both tests skip where their files are absent."""

import gzip
from pathlib import Path

import pytest

from cvae_exp.classifier import train_classifier
from cvae_exp.data import TensorDataModule
from cvae_exp.data.sources import load_torchvision
from tests.conftest import SHARED_MNIST

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

pytestmark = pytest.mark.slow


def _test_accuracy(files: Path, dataset: str, tmp_path: Path) -> float:
    if not files.is_dir():
        pytest.skip(f"{dataset}'s original files not found at {files}")
    raw = tmp_path / dataset / "raw"
    raw.mkdir(parents=True)
    for file in files.glob("*.gz"):  # decompressed: Debian's .gz are not byte for byte torchvision's (md5)
        (raw / file.stem).write_bytes(gzip.decompress(file.read_bytes()))
    module = TensorDataModule(
        name=dataset.lower(),
        source=lambda root: load_torchvision(root, dataset),
        root=str(tmp_path),
        image_shape=[1, 28, 28],
        num_classes=10,
        batch_size=128,
        val_size=10000,
    )
    module.setup()
    _, accuracy = train_classifier(module.source_splits(), module.image_shape, 10)
    return accuracy


def test_the_classifier_reaches_90_percent_on_fashion_mnist(tmp_path):
    assert _test_accuracy(DEBIAN_FASHION_MNIST, "FashionMNIST", tmp_path) >= 0.90


def test_the_classifier_reaches_99_percent_on_mnist(tmp_path):
    assert _test_accuracy(SHARED_MNIST, "MNIST", tmp_path) >= 0.99
