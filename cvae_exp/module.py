"""The LightningModule: owns the CVAE and the objective, logs losses and metrics.

Lightning does device placement, precision, checkpointing and logging; this file says
what a step computes and what the test stage grades.
"""

from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torchmetrics import MeanMetric, MeanSquaredError

from cvae_exp.errors import TrainingDiverged
from cvae_exp.evaluation import generate_per_class, grade, save_grader_images
from cvae_exp.metrics import quantize_uint8, ssim_per_image
from cvae_exp.models import CVAE
from cvae_exp.objective import Objective

class CVAEModule(L.LightningModule):
    """Built from plain config dicts, saved as hyperparameters, so that a checkpoint
    describes its run: `CVAEModule.load_from_checkpoint(path)` rebuilds the network
    and `instantiate(module.hparams.data)` its data."""

    def __init__(
        self,
        model: dict[str, Any],
        conditioning: dict[str, Any],
        data: dict[str, Any],
        loss: dict[str, Any],
        optim: dict[str, Any],
        eval: dict[str, Any],
    ):
        super().__init__()
        self.save_hyperparameters()
        self.cvae: CVAE = instantiate(
            model, conditioning=instantiate(conditioning), image_shape=list(data["image_shape"]), num_classes=data["num_classes"]
        )
        self.objective = Objective(**loss)
        self.val_mse, self.val_ssim = MeanSquaredError(), MeanMetric()
        self.test_records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        images, labels = batch
        output = self.cvae(images, labels)
        beta = self.objective.beta_at(self.global_step)
        terms = self.objective(images, output.logits, output.mu, output.logvar, beta)
        self._stop_if_diverged(terms)
        self.train_sums += torch.stack(list(terms.values())).detach() * len(images)
        self.train_count += len(images)
        return terms["loss"]

    def on_train_epoch_start(self):
        """Epoch means are summed here and logged once per epoch: calling `self.log` on
        every step costs about 1 ms a step, 10% of an MLP step at batch 128 on a CPU
        (scripts/benchmark.py)."""
        self.train_sums = torch.zeros(len(Objective.TERMS), device=self.device)
        self.train_count = 0

    def on_train_epoch_end(self):
        means = (self.train_sums / max(self.train_count, 1)).tolist()
        self.log_dict({f"train/{name}": mean for name, mean in zip(Objective.TERMS, means)}, sync_dist=True)
        self.log("train/beta", self.objective.beta_at(self.global_step))

    def _stop_if_diverged(self, terms: dict[str, torch.Tensor]) -> None:
        """Stop before a non-finite loss reaches the weights. Lightning's own checks act
        on logged metrics at epoch or validation ends, after NaN has spread; this one
        costs one host sync per step."""
        if torch.isfinite(terms["loss"]):
            return
        raise TrainingDiverged(
            f"Training diverged: the loss is {terms['loss'].item()} (reconstruction {terms['recon'].item()}, "
            f"KL {terms['kl'].item()}) at step {self.global_step}, epoch {self.current_epoch}. The likely cause "
            f"is a learning rate too high for this model (optim.lr={self.hparams.optim['lr']}); try a smaller "
            f"optim.lr, a KL warm-up (loss.warmup_steps) or trainer.precision=32-true. Checkpoints written "
            f"before this step are kept; the best is the last with a finite validation loss."
        )

    def _evaluate(self, batch, stage: str) -> torch.Tensor:
        """Log the objective's terms and return the reconstruction (pixel means) of the
        forward pass. Validation and test use the configured beta, not the warm-up's
        current one, so that val/loss (the checkpoint criterion) is the same objective
        every epoch."""
        images, labels = batch
        output = self.cvae(images, labels)
        terms = self.objective(images, output.logits, output.mu, output.logvar, self.objective.beta)
        self.log_dict({f"{stage}/{name}": value for name, value in terms.items()}, sync_dist=True)
        return torch.sigmoid(output.logits.float())

    def validation_step(self, batch, batch_idx):
        """val/mse over the whole split; val/ssim, the grader's SSIM (8-bit, 7x7 window,
        equal to skimage's), over its first `eval.val_ssim_images` images: on a CPU SSIM
        costs about 3x the forward pass, and every epoch pays for it (scripts/benchmark.py)."""
        images = batch[0]
        reconstructions = self._evaluate(batch, "val")
        self.val_mse.update(reconstructions, images)
        first = batch_idx * self.hparams.data["batch_size"]  # batches are in order; the last one may be shorter
        graded = max(0, min(len(images), self.hparams.eval["val_ssim_images"] - first))
        if graded:
            self.val_ssim.update(ssim_per_image(quantize_uint8(images[:graded]), quantize_uint8(reconstructions[:graded])))
        self.log_dict({"val/mse": self.val_mse, "val/ssim": self.val_ssim})

    def on_test_epoch_start(self):
        self.test_records = []

    def test_step(self, batch, batch_idx):
        """Keep 8-bit originals and reconstructions: from the forward pass's sampled z
        as the lab does (eval.recon_z=sample) or from the posterior mean (mean)."""
        images, labels = batch
        reconstructions = self._evaluate(batch, "test")
        if self.hparams.eval["recon_z"] == "mean":
            reconstructions = self.cvae.reconstruct(images, labels, use_mean=True).float()
        self.test_records.append((quantize_uint8(images), quantize_uint8(reconstructions), labels))

    def on_test_epoch_end(self):
        originals, reconstructions, labels = (torch.cat(parts) for parts in zip(*self.test_records))
        self.test_records = []
        generated, generated_labels = generate_per_class(
            self.cvae, self.hparams.eval["samples_per_class"], self.hparams.data["batch_size"], self.device
        )
        metrics = grade(originals, reconstructions, labels, generated, generated_labels, self.cvae.latent_dim, self.cvae.is_conditional)
        self.log_dict({f"test/{name}": value for name, value in metrics.items()})
        if self.hparams.eval["save_images"]:
            save_grader_images(Path(self.trainer.default_root_dir), reconstructions, generated, generated_labels)

    def validation_metrics(self) -> dict[str, float]:
        """The last validation's epoch metrics, as logged."""
        return {name: float(value) for name, value in self.trainer.callback_metrics.items() if name.startswith("val/")}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Checkpoints are written after each validation: they carry its metrics, so that
        metrics.json reports the best checkpoint's without validating it again."""
        checkpoint["val_metrics"] = self.validation_metrics()

    def configure_optimizers(self):
        return instantiate(self.hparams.optim)(self.parameters())
