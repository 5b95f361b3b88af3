"""Real MNIST from the verified original files (skipped where they are absent)."""

import torch

from cvae_exp.data import TensorDataModule
from cvae_exp.data.sources import load_torchvision
from tests.helpers import run_cli


def test_mnist_loads_offline_with_the_protocol_split(mnist_root):
    module = TensorDataModule(
        name="mnist",
        source=lambda root: load_torchvision(root, "MNIST"),
        root=str(mnist_root),
        image_shape=[1, 28, 28],
        num_classes=10,
        batch_size=1024,
        val_size=10000,
    )
    module.setup()
    sizes = {name: len(module.labels(name)) for name in module.splits}
    assert sizes == {"train": 50000, "val": 10000, "test": 10000}
    images, labels = module.images("test")
    assert images.dtype == torch.uint8 and labels.bincount().tolist()[:2] == [980, 1135]
    x, _ = next(iter(module.train_dataloader()))
    assert x.shape == (1024, 1, 28, 28) and 0.0 <= x.min() and x.max() <= 1.0


def test_cli_trains_on_mnist(mnist_root, tmp_path):
    # eval.classifier_metrics: training MNIST's classifier takes 25 s; the metrics are tested on digits (test_train_e2e)
    result = run_cli(
        "data=mnist",
        f"data.root={mnist_root}",
        "debug=fast",
        "eval.classifier_metrics=false",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "metrics.json").is_file()
