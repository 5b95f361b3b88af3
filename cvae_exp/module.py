"""The LightningModule: owns the CVAE and the objective, logs losses and metrics.

Lightning does device placement, precision, checkpointing and logging; this file only
says what one step computes.
"""

from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torchmetrics import MeanSquaredError, MetricCollection
from torchmetrics.image import StructuralSimilarityIndexMeasure

from cvae_exp.models import CVAE
from cvae_exp.objective import Objective


class CVAEModule(L.LightningModule):
    """Built from plain config dicts (saved as hyperparameters), so that
    `CVAEModule.load_from_checkpoint(path)` rebuilds the same network."""

    def __init__(
        self,
        model: dict[str, Any],
        conditioning: dict[str, Any],
        loss: dict[str, Any],
        optim: dict[str, Any],
        image_shape: list[int],
        num_classes: int,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.cvae: CVAE = instantiate(
            model, conditioning=instantiate(conditioning), image_shape=list(image_shape), num_classes=num_classes
        )
        self.objective = Objective(**loss)
        image_metrics = MetricCollection(
            {"mse": MeanSquaredError(), "ssim": StructuralSimilarityIndexMeasure(data_range=1.0)}
        )
        self.val_metrics = image_metrics.clone(prefix="val/")
        self.test_metrics = image_metrics.clone(prefix="test/")

    def training_step(self, batch, batch_idx):
        images, labels = batch
        output = self.cvae(images, labels)
        beta = self.objective.beta_at(self.global_step)
        terms = self.objective(images, output.logits, output.mu, output.logvar, beta)
        self.log_dict({f"train/{name}": value for name, value in terms.items()}, on_step=False, on_epoch=True)
        self.log("train/beta", beta, on_step=False, on_epoch=True)
        return terms["loss"]

    def _evaluate(self, batch, stage: str, metrics: MetricCollection) -> None:
        """Validation and test use the configured beta, not the warm-up's current one,
        so that val/loss (the checkpoint criterion) measures the same objective every epoch."""
        images, labels = batch
        output = self.cvae(images, labels)
        terms = self.objective(images, output.logits, output.mu, output.logvar, self.objective.beta)
        self.log_dict({f"{stage}/{name}": value for name, value in terms.items()}, sync_dist=True)
        metrics.update(torch.sigmoid(output.logits.float()), images)
        self.log_dict(metrics)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test", self.test_metrics)

    def configure_optimizers(self):
        return instantiate(self.hparams.optim)(self.parameters())
