"""The baseline of scripts/benchmark.py: the script one would write instead of cvae-train.

`PlainLoop` trains the CVAE that a config describes with the config's optimizer on the same objective,
over uint8 tensors on the device: no validation, checkpoints, logging or test. benchmark.py
times its epochs in its own process; `--whole-run` also runs this file as a process of its
own, as a hand-written script runs (Python's start, imports of torch and torchvision,
MNIST read from its files, then the epochs). Lightning is not imported here, on purpose.

    python scripts/bare_loop.py CONFIG.yaml EPOCHS --data-root DIR [--limit-batches K] [--device cpu]

CONFIG.yaml holds the model, conditioning, data, loss, optim, seed and trainer.precision
nodes of a composed config; the last line printed is {"epochs_s": [...]} as JSON.
"""

import argparse
import itertools
import json
import time

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchvision import datasets


def now(device: torch.device) -> float:
    """Wall time once queued GPU work is done, so that an epoch is not timed by its launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


class PlainLoop:
    """The config's optimizer on the objective over `batches()` (one iterable per epoch), with the
    CVAE built as CVAEModule builds it; `epoch()` trains one epoch and records its time."""

    def __init__(self, cfg: DictConfig, batches, device: torch.device):
        torch.manual_seed(cfg.seed)
        self.model = instantiate(
            cfg.model,
            conditioning=instantiate(cfg.conditioning),
            image_shape=list(cfg.data.image_shape),
            num_classes=cfg.data.num_classes,
        ).to(device)
        self.optimizer = instantiate(cfg.optim)(self.model.parameters())  # the config's, as the framework's
        self.objective = instantiate(cfg.loss)
        self.bf16 = cfg.trainer.precision == "bf16-mixed"
        self.batches, self.device, self.times = batches, device, []

    def epoch(self) -> None:
        start = now(self.device)
        for images, labels in self.batches():
            images, labels = images.to(self.device), labels.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                output = self.model(images, labels)
                loss = self.objective.terms(images, output.logits, output.kl, self.objective.beta)["loss"]
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.times.append(now(self.device) - start)


def tensor_batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, limit: int | None, device: torch.device
):
    """The bare loop's data: a random permutation per epoch indexing uint8 tensors on the device."""
    images, labels = images.to(device), labels.to(device)

    def epoch():
        for index in itertools.islice(torch.randperm(len(labels), device=device).split(batch_size), limit):
            yield images[index].float() / 255, labels[index]

    return epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "config", help="a YAML file with the model, conditioning, data, loss, optim, seed and trainer nodes"
    )
    parser.add_argument("epochs", type=int)
    parser.add_argument("--data-root", required=True, help="a directory holding MNIST/raw/")
    parser.add_argument("--limit-batches", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    cfg, device = OmegaConf.load(args.config), torch.device(args.device)
    mnist = datasets.MNIST(args.data_root, train=True)  # read from MNIST/raw, never downloaded
    # as many training images as the framework's split keeps; which ones does not change the time
    keep = torch.randperm(len(mnist.targets), generator=torch.Generator().manual_seed(0))[
        : len(mnist.targets) - cfg.data.val_size
    ]
    loop = PlainLoop(
        cfg,
        tensor_batches(mnist.data[keep, None], mnist.targets[keep], cfg.data.batch_size, args.limit_batches, device),
        device,
    )
    for _ in range(args.epochs):
        loop.epoch()
    print(json.dumps({"epochs_s": loop.times}))


if __name__ == "__main__":
    main()
