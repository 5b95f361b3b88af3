"""The Python API, for notebooks and scripts: what the console scripts do, as functions.

    from cvae_exp import api

    run = api.train(["data=digits", "trainer.max_epochs=2"])  # as `cvae-train data=digits ...`
    images = run.sample([3, 3, 7], n=4)  # 12 images, (12, 1, 28, 28), pixel means in [0, 1]
    run = api.load_run("outputs/runs/<time>")  # a run cvae-train made

docs/api.md shows each function; the run directory and metrics.json are those of cvae-train.
"""

import json
import logging
from collections.abc import Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from cvae_exp.checks import build_data, validate
from cvae_exp.compose import compose_train, config_source
from cvae_exp.errors import UserInputError


def compose(overrides: Sequence[str] = (), config_dir: str | None = None, config_name: str | None = None) -> DictConfig:
    """The config that `cvae-train [-cd config_dir] [-cn config_name] <overrides>` runs, with
    its run directory (hydra.run.dir) as paths.output_dir, validated as cvae-train validates
    it: its values, what it builds, and its data, loaded once. Bad input raises
    UserInputError with the console script's message."""
    source = config_source(config_dir=config_dir, config_name=config_name)
    cfg = validate(compose_train(list(overrides), output_dir=None, source=source))
    build_data(cfg.data)
    return cfg


def train(overrides: Sequence[str] = (), config_dir: str | None = None, config_name: str | None = None) -> "Run":
    """Train one run as `cvae-train <overrides>` does, in its own run directory (with the
    .hydra/ files Hydra writes, so that resume= and cvae-table read it), and return it.
    A failed run raises, with metrics.json saying why."""
    from cvae_exp.train import execute

    cfg = compose(overrides, config_dir, config_name)
    hydra = HydraConfig.get()
    run_dir = Path(hydra.runtime.output_dir)
    if (run_dir / ".hydra").exists():
        raise UserInputError(
            f"The run directory {str(run_dir)!r} holds another run; pass hydra.run.dir=<a new directory> "
            "or leave it to the default (one per second)."
        )
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra}), run_dir / ".hydra" / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), run_dir / ".hydra" / "overrides.yaml")
    with run_log(run_dir / "train.log"):
        execute(cfg)
    return Run(run_dir)


@contextmanager
def run_log(path: Path):
    """<run dir>/train.log as cvae-train writes it (configs/hydra/default.yaml): the run's lines,
    Lightning's notices, Python's warnings and our cvae_exp.notices go to the file, and only the run's lines reach
    the notebook's or script's own handlers."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    quiet = [
        logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric", "py.warnings", "cvae_exp.notices")
    ]
    ours = [logging.getLogger(name) for name in ("cvae-train", "cvae_exp")]
    saved = [(logger, list(logger.handlers), logger.propagate, logger.level) for logger in quiet + ours]
    for logger in quiet:
        logger.handlers, logger.propagate = [handler], False
    for logger in ours:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for logger, handlers, propagate, level in saved:
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)
        handler.close()


def load_run(path: str | Path) -> "Run":
    """A run directory (or a checkpoint file) that cvae-train or `train` wrote."""
    return Run(Path(path))


class Run:
    """A trained run: its metrics, and its model (the best checkpoint, else last.ckpt, loaded
    on first use, on the CPU, in evaluation mode). Images are float tensors (N, C, H, W) in
    [0, 1], labels int64 class numbers."""

    def __init__(self, path: Path):
        from cvae_exp.eval import find_checkpoint

        self.checkpoint = find_checkpoint(path)
        self.path = path if path.is_dir() else self.checkpoint.parent.parent

    @property
    def metrics(self) -> dict:
        """What metrics.json holds (status, test and val metrics, hparams)."""
        return json.loads((self.path / "metrics.json").read_text())

    @cached_property
    def module(self):
        """The LightningModule (cvae_exp/module.py); `.cvae` is the model, `.task` its task."""
        from cvae_exp.eval import load_module

        return load_module(self.checkpoint).eval()

    @property
    def model(self):
        return self.module.cvae

    def test_images(self, count: int | None = None):
        """The first `count` test images of the run's dataset (all of them with None) and their labels."""
        from hydra.utils import instantiate

        images, labels = instantiate(self.module.hparams.data).images("test", count)
        return images.float() / 255, labels

    def sample(self, conditions, n: int = 1, seed: int | None = None):
        """`n` images for each condition (condition-major) from z ~ p(z | c): class numbers, or
        attribute vectors (N, D) for a run of task=attributes."""
        import torch

        if self.model.condition_kind == "image":
            raise UserInputError(
                f"This run's task ({type(self.module.task).__name__}) conditions on images: sample draws from class "
                "labels or attributes; use reconstruct(images, labels), which completes images from their condition."
            )
        from cvae_exp.visualize import checked_labels, checked_vectors

        try:
            check = checked_vectors if self.model.condition_kind == "vector" else checked_labels
            conditions = check(self.model, conditions, name="conditions")
            if not (isinstance(n, int) and n >= 1):
                raise ValueError(f"n={n!r} must be an integer >= 1 (images per condition)")
        except ValueError as error:
            raise UserInputError(f"{error}.") from None
        if seed is not None:
            torch.manual_seed(seed)
        return self.model.sample(conditions, n)

    def encode(self, images, labels):
        """q(z | x, c): `.mean` and `.logvar`, (N, latent_dim), `.rsample()`, `.log_prob(z)`."""
        import torch

        condition, _ = self._condition(images, labels)
        with torch.no_grad():
            return self.model.encode(images, condition)

    def reconstruct(self, images, labels, use_mean: bool = True):
        """Pixel means decoded from the posterior mean (or a posterior sample), one per image;
        for an image-conditioned task, the prediction with the observed pixels kept."""
        condition, _ = self._condition(images, labels)
        prediction = self.model.reconstruct(images, condition, use_mean=use_mean)
        return prediction if self.model.labels_condition else self.module.task.complete(condition, prediction)

    def nll(self, images, labels, samples: int = 1000):
        """(-log p(x | c), the negative ELBO) per image in nats, over the task's target pixels,
        from `samples` importance samples (cvae_exp/likelihood.py)."""
        from cvae_exp.likelihood import importance_sampled_nll

        condition, mask = self._condition(images, labels)
        return importance_sampled_nll(self.model, self.module.objective, images, condition, mask, samples)

    def _condition(self, images, labels):
        """(condition, target mask) of images with their labels, as the run's task makes them."""
        import torch

        return self.module.task(images, torch.as_tensor(labels))
