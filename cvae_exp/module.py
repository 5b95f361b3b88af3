"""The LightningModule: owns the CVAE and the objective, logs losses and metrics.

Lightning does device placement, precision, checkpointing and logging; this file says
what a step computes and what the test stage grades.
"""

import logging
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torchmetrics import MeanMetric, MeanSquaredError
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from cvae_exp.classifier import (
    attribute_accuracies,
    attribute_balanced_accuracy,
    classifier_metrics,
    features,
    group_accuracies,
    load_or_train,
)
from cvae_exp.data.batches import bernoulli_uint8
from cvae_exp.errors import TrainingDiverged
from cvae_exp.evaluation import generate_per_class, grade, grader_skipped, save_grader_images
from cvae_exp.likelihood import importance_sampled_nll
from cvae_exp.metrics import quantize_uint8, ssim_per_image
from cvae_exp.metrics.inception import WEIGHTS_FILE, WEIGHTS_URL, fid_metric, inception_fid
from cvae_exp.models import CVAE, build_cvae
from cvae_exp.objective import own_parameters
from cvae_exp.samplers import fitted_sampler, posterior_means
from cvae_exp.schema import DISCRETE_LIKELIHOODS, ELBO_TARGET, EvalConfig
from cvae_exp.tasks import LabelTask

log = logging.getLogger(__name__)  # on the console and in train.log (configs/hydra/default.yaml)
notices = logging.getLogger("cvae_exp.notices")  # in train.log only: what every run would repeat on the console
# Where the grader does not run, the classifier metrics compare samples with the first test images
TEST_IMAGES_FOR_CLASSIFIER_METRICS = 10_000
SAMPLE_BINARIZATION_SEED = 0  # the draws of binary samples from their pixel means (_as_the_data)


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
        task: dict[str, Any] | None = None,
        prior: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
    ):
        super().__init__()
        eval = {**asdict(EvalConfig()), **eval}  # the schema's defaults for what a config (or an older run) leaves out
        self.save_hyperparameters()
        self.task = instantiate(task) if task else LabelTask()
        self.cvae: CVAE = build_cvae(model, conditioning, prior, self.task, data)
        # a checkpoint written before `loss._target_` existed holds the ELBO's arguments alone
        self.objective = instantiate({"_target_": ELBO_TARGET, **loss})
        # an objective with parameters of its own (FactorVAE's discriminator) has its own optimizer:
        # Lightning steps two optimizers only under manual optimisation
        self.automatic_optimization = not own_parameters(self.objective)
        self.val_mse, self.val_ssim = MeanSquaredError(), MeanMetric()
        self.test_mse, self.test_nll, self.test_neg_elbo = MeanSquaredError(), MeanMetric(), MeanMetric()
        self.test_bits_per_dim = MeanMetric()
        # Where the grader does not apply: the reconstructions' PSNR and SSIM (per channel, then averaged),
        # each per image then averaged; SSIM's Gaussian window shrinks to fit small images
        side = min(self.cvae.image_shape[1:])
        self.test_psnr = PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3))
        self.test_ssim = StructuralSimilarityIndexMeasure(data_range=1.0, kernel_size=min(11, side - 1 + side % 2))
        self.test_records: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.sampler: torch.nn.Module | None = None  # eval.sampler, fitted when the test starts; None: the prior
        self.classifier_record: dict | None = None  # where the metrics' classifier is and its test accuracy
        # the epoch's sums of the objective's terms; also set here for a run resumed mid-epoch
        # (after an interruption), whose first epoch does not start anew
        self.train_sums: torch.Tensor | None = None
        self.train_count = 0

    def setup(self, stage: str) -> None:
        """An objective that estimates the aggregate posterior from batches (beta-TCVAE) learns
        the training set's size N from the data, unless its config gives one."""
        if getattr(self.objective, "dataset_size", False) is None and self.trainer.datamodule is not None:
            self.objective.dataset_size = len(self.trainer.datamodule.labels("train"))

    @property
    def graded(self) -> bool:
        """Whether the lab's grader (SSIM, per-class FID, Score) applies (cvae_exp/evaluation.py)."""
        return grader_skipped(self.cvae) is None

    def _split(self, batch, batch_idx: int | None = None):
        """(images, condition, target mask) of a batch. Validation and test pass their batch
        index, which seeds the task's random draws (inpainting holes): the same every epoch."""
        images, labels = batch
        generator = None if batch_idx is None else torch.Generator().manual_seed(batch_idx)
        condition, mask = self.task(images, labels, generator)
        return images, condition, mask

    def training_step(self, batch, batch_idx):
        images, condition, mask = self._split(batch)
        result = self.objective(self.cvae, images, condition, mask, step=self.global_step)
        self._stop_if_diverged(result.terms)
        if self.train_sums is None:  # the first step names the terms
            self.train_terms = list(result.terms)
            self.train_sums = torch.zeros(len(self.train_terms), device=self.device)
        self.train_sums += torch.stack([result.terms[name] for name in self.train_terms]).detach() * len(images)
        self.train_count += len(images)
        if not self.automatic_optimization:
            return self._step_model_then_objective(result)
        return result.loss

    def _step_model_then_objective(self, result) -> None:
        """One step of the model's optimizer on the loss, then one of the objective's own on
        `objective.own_loss(result)`. The second steps the bare torch optimizer: a Lightning
        optimizer's step would count as a global step, doubling every step count (warm-up,
        max_steps); the precision plugin's loss scaling, which it would apply, is refused for
        such objectives before the run (checks._check_objective)."""
        model_optimizer, objective_optimizer = self.optimizers()
        model_optimizer.zero_grad()
        self.manual_backward(result.loss)
        model_optimizer.step()
        objective_optimizer.optimizer.zero_grad()  # also clears what the model's loss left in its parameters
        self.manual_backward(self.objective.own_loss(result))
        objective_optimizer.optimizer.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def on_train_epoch_start(self):
        """Epoch means are summed here and logged once per epoch: calling `self.log` on
        every step costs about 1 ms a step, 10% of an MLP step at batch 128 on a CPU
        (scripts/benchmark.py)."""
        self.train_sums = None
        self.train_count = 0

    def on_train_epoch_end(self):
        if self.train_sums is not None:
            means = (self.train_sums / max(self.train_count, 1)).tolist()
            self.log_dict({f"train/{name}": mean for name, mean in zip(self.train_terms, means)}, sync_dist=True)
        self.log_dict({f"train/{name}": value for name, value in self.objective.schedule(self.global_step).items()})

    def _stop_if_diverged(self, terms: dict[str, torch.Tensor]) -> None:
        """Stop before a non-finite loss reaches the weights. Lightning's own checks act
        on logged metrics at epoch or validation ends, after NaN has spread; this one
        costs one host sync per step."""
        if torch.isfinite(terms["loss"]):
            return
        precision = str(self.trainer.precision)
        remedies = "a smaller optim.lr or a KL warm-up (loss.warmup_steps)"
        if precision != "32-true":
            remedies = (
                "a smaller optim.lr, a KL warm-up (loss.warmup_steps) or trainer.precision=32-true (this run: "
                f"{precision})"
            )
        others = ", ".join(f"{name} {value.item()}" for name, value in terms.items() if name != "loss")
        raise TrainingDiverged(
            f"Training diverged: the loss is {terms['loss'].item()} ({others}) at step {self.global_step}, "
            f"epoch {self.current_epoch}. The likely cause "
            f"is a learning rate too high for this model (optim.lr={self.hparams.optim['lr']}); try {remedies}. "
            f"{self._checkpoints_on_disk()}"
        )

    def _checkpoints_on_disk(self) -> str:
        """What a stopped run has on disk to start again from: the files its ModelCheckpoint
        callbacks wrote before this step, or why there is none."""
        written: dict[str, str] = {}
        for callback in self.trainer.checkpoint_callbacks:
            role = f"the best by {callback.monitor}" if callback.monitor else "the latest"
            for path, kind in ((callback.best_model_path, role), (callback.last_model_path, "the latest")):
                if path and Path(path).is_file():
                    shown = os.path.relpath(path) if Path(path).resolve().is_relative_to(Path.cwd()) else path
                    written.setdefault(shown, kind)
        if written:
            return (
                "Written before this step and kept: "
                + ", ".join(f"{path} ({kind})" for path, kind in written.items())
                + "."
            )
        if self.trainer.checkpoint_callbacks:
            return "No checkpoint was written before this step: the first is written when an epoch ends."
        return "No checkpoint was written: this run keeps none (no ModelCheckpoint in its callbacks, callbacks=none)."

    def _evaluate(self, images, condition, mask, stage: str) -> torch.Tensor:
        """Log the objective's terms and return the reconstruction (pixel means) of the
        forward pass. Validation and test use the configured beta, not the warm-up's
        current one, so that val/loss (the checkpoint criterion) is the same objective
        every epoch."""
        result = self.objective(self.cvae, images, condition, mask)
        self.log_dict({f"{stage}/{name}": value for name, value in result.terms.items()}, sync_dist=True)
        return torch.sigmoid(result.output.logits.float())

    def validation_step(self, batch, batch_idx):
        """val/mse over the target pixels of the whole split; for the label task val/ssim,
        the grader's SSIM (8-bit, 7x7 window, equal to skimage's), over its first
        `eval.val_ssim_images` images: on a CPU SSIM costs about 2x the forward pass, and
        every epoch pays for it (scripts/benchmark.py)."""
        images, condition, mask = self._split(batch, batch_idx)
        reconstructions = self._evaluate(images, condition, mask, "val")
        self.val_mse.update(*_targets(reconstructions, images, mask))
        self.log("val/mse", self.val_mse)
        if not self.graded or not self.hparams.eval["val_ssim_images"]:
            return
        first = batch_idx * self.hparams.data["batch_size"]  # batches are in order; the last one may be shorter
        graded = max(0, min(len(images), self.hparams.eval["val_ssim_images"] - first))
        if graded:
            self.val_ssim.update(
                ssim_per_image(quantize_uint8(images[:graded]), quantize_uint8(reconstructions[:graded]))
            )
        self.log("val/ssim", self.val_ssim)

    def on_test_start(self):
        """Fit (or reload) eval.sampler to the weights under test: Lightning has loaded them by now.
        Say so where the lab's grader does not apply."""
        if not self.graded:
            log.info(
                f"The report's grader is skipped for this run: {grader_skipped(self.cvae)}"
                + ("; so are the classifier metrics." if self.cvae.condition_kind == "image" else ".")
            )
        checkpoint = self.trainer.ckpt_path
        self.sampler = fitted_sampler(
            self,
            self.hparams.eval["sampler"],
            Path(checkpoint) if checkpoint else None,
            self.trainer.datamodule,
        )

    def on_test_epoch_start(self):
        self.test_records = []

    def test_step(self, batch, batch_idx):
        """Label task: keep 8-bit originals and reconstructions for the grader, from the
        forward pass's sampled z as the lab does (eval.recon_z=sample) or from the posterior
        mean (mean). Other tasks: test/mse of a prediction from z ~ p(z | c) over the target
        pixels. With eval.nll_samples = K > 0, test/nll (K importance samples) and
        test/neg_elbo, in nats per image over the target pixels."""
        images, condition, mask = self._split(batch, batch_idx)
        reconstructions = self._evaluate(images, condition, mask, "test")
        if self.graded:
            if self.hparams.eval["recon_z"] == "mean":
                reconstructions = self.cvae.reconstruct(images, condition, use_mean=True).float()
            self.test_records.append((quantize_uint8(images), quantize_uint8(reconstructions), condition))
        else:
            self.test_mse.update(*_targets(self.cvae.sample(condition).float(), images, mask))
            self.log("test/mse", self.test_mse)
            if mask is None:
                self.test_psnr.update(reconstructions, images)
                self.test_ssim.update(reconstructions, images)
                self.log_dict({"test/psnr": self.test_psnr, "test/ssim": self.test_ssim})
        if self.hparams.eval["nll_samples"]:
            with torch.random.fork_rng(
                devices=[self.device] if self.device.type == "cuda" else []
            ):  # the Score's draws stay as without it
                nll, neg_elbo = importance_sampled_nll(
                    self.cvae, self.objective, images, condition, mask, self.hparams.eval["nll_samples"]
                )
            self.test_nll.update(nll)
            self.test_neg_elbo.update(neg_elbo)
            self.log_dict({"test/nll": self.test_nll, "test/neg_elbo": self.test_neg_elbo})
            if self._pixel_probabilities():
                dims = images[0].numel() if mask is None else mask.flatten(1).sum(dim=1)
                self.test_bits_per_dim.update(nll / (dims * math.log(2)))
                self.log("test/bits_per_dim", self.test_bits_per_dim)

    def _pixel_probabilities(self) -> bool:
        """Whether the likelihood gives probabilities of the pixel values, as bits per dimension
        need: the discretised logistic, or the Bernoulli of binarised data (data.binarize)."""
        likelihood = getattr(self.objective, "likelihood", None)
        binary = self.hparams.data.get("binarize", "none") != "none"
        return likelihood in DISCRETE_LIKELIHOODS and (likelihood != "bernoulli" or binary)

    def on_test_epoch_end(self):
        metrics = {}
        if self.graded:
            metrics, originals, reconstructions, generated, generated_labels = self._grade()
        classify = self.hparams.eval["classifier_metrics"] and self._classifiable()
        inception = self._inception_fid_applies()
        if not self.graded and (classify or inception):
            originals, generated, generated_labels = self._samples_for_the_classifier()
        if classify or inception:
            samples = self._as_the_data(generated)
        if classify:
            classifier, self.classifier_record = load_or_train(
                self.trainer.datamodule, self.hparams.eval["classifier_dir"]
            )
            metrics.update(self._classifier_metrics(classifier, originals, samples, generated_labels))
        if inception:
            metric = fid_metric(self.hparams.eval["inception_weights"], self.cvae.image_shape)
            metrics["inception_fid"] = inception_fid(metric, originals, samples, self.device)
        if self.hparams.eval["disentanglement_metrics"]:
            metrics.update(self._disentanglement_metrics())
        if metrics:
            self.log_dict({f"test/{name}": value for name, value in metrics.items()})
        if self.graded and self.hparams.eval["save_images"]:
            save_grader_images(Path(self.trainer.default_root_dir), reconstructions, generated, generated_labels)

    def _disentanglement_metrics(self) -> dict[str, float]:
        """MIG, the FactorVAE score, DCI and SAP of the test images' posterior means against
        their ground-truth factors (the label vectors of data with data.factor_names)."""
        from cvae_exp.metrics.disentanglement import scores

        datamodule = self.trainer.datamodule
        latents = posterior_means(self.cvae, datamodule.batches("test", 1024), self.task)
        return scores(latents.cpu(), datamodule.labels("test"))

    def _grade(self):
        """The lab's grader on the kept test images and on eval.samples_per_class samples per class."""
        originals, reconstructions, labels = (torch.cat(parts) for parts in zip(*self.test_records))
        self.test_records = []
        generated, generated_labels = self._per_class_samples()
        metrics = grade(
            originals,
            reconstructions,
            labels,
            generated,
            generated_labels,
            self.cvae.latent_dim,
            self.cvae.is_conditional,
        )
        return metrics, originals, reconstructions, generated, generated_labels

    def _as_the_data(self, generated: torch.Tensor) -> torch.Tensor:
        """Samples to compare with the test images: on binarised data (data.binarize) under the
        Bernoulli likelihood, draws x ~ Bernoulli(mean), binary as the test images are, not the
        grey pixel means (the grader's images stay its means); otherwise the means themselves."""
        binary = self.hparams.data.get("binarize", "none") != "none"
        if not (binary and getattr(self.objective, "likelihood", None) == "bernoulli"):
            return generated
        return bernoulli_uint8(generated.cpu(), SAMPLE_BINARIZATION_SEED).to(generated.device)

    def _classifiable(self) -> bool:
        """The dataset classifier's metrics need class labels or multi-hot attribute vectors."""
        if self.cvae.condition_kind == "image":
            return False
        if self.cvae.condition_kind == "vector":
            vectors = self.trainer.datamodule.labels("test")
            if not ((vectors == 0) | (vectors == 1)).all():
                log.info("The classifier metrics are skipped: the attribute vectors are not multi-hot (0 or 1).")
                return False
        return True

    def _inception_fid_applies(self) -> bool:
        """Whether test/inception_fid is computed; where not, one line says why: in train.log for
        eval.inception_weights=null (every default run), on the console for an image-conditioned
        task (whose samples are completions of test images, not draws to compare with them)."""
        if self.hparams.eval["inception_weights"] is None:
            notices.info(
                "Inception FID (test/inception_fid) is not computed: eval.inception_weights is null. To compute it, "
                f"pass eval.inception_weights=<path of {WEIGHTS_FILE}>, the Inception-v3 weights torch-fidelity "
                f"downloads from {WEIGHTS_URL} (docs/usage.md)."
            )
            return False
        if self.cvae.condition_kind == "image":
            log.info("Inception FID (eval.inception_weights) is skipped: this task conditions on images.")
            return False
        return True

    def _samples_for_the_classifier(self):
        """Where the grader does not run: the test images, and samples of every class
        (eval.samples_per_class each) or one for each test image's attribute vector."""
        datamodule = self.trainer.datamodule
        originals, labels = datamodule.images("test", TEST_IMAGES_FOR_CLASSIFIER_METRICS)
        if self.cvae.condition_kind == "vector":
            conditions = labels.float().to(self.device)
            generated = torch.cat(
                [
                    quantize_uint8(self.cvae.sample(chunk, sampler=self.sampler).float())
                    for chunk in conditions.split(self.hparams.data["batch_size"])
                ]
            )
            return originals, generated, conditions
        return originals, *self._per_class_samples()

    def _per_class_samples(self) -> tuple[torch.Tensor, torch.Tensor]:
        """eval.samples_per_class uint8 samples of every class, from eval.sampler's z."""
        samples_per_class, batch_size = self.hparams.eval["samples_per_class"], self.hparams.data["batch_size"]
        return generate_per_class(self.cvae, samples_per_class, batch_size, self.device, self.sampler)

    def _classifier_metrics(self, classifier, originals, generated, generated_labels) -> dict[str, float]:
        conditioned = generated_labels if self.cvae.is_conditional else None  # an unconditional model's samples
        if self.cvae.condition_kind != "vector":  # have no class to hit
            metrics = classifier_metrics(classifier, originals, generated, conditioned)
            return {**metrics, "classifier_accuracy": self.classifier_record["test_accuracy"]}
        generated_features = features(classifier.to(self.device), generated)
        metrics = classifier_metrics(classifier, originals, generated, None, generated_features)
        metrics["sample_attribute_accuracy"] = (
            attribute_accuracies(classifier, generated, generated_labels, generated_features).mean().item()
        )
        metrics["sample_attribute_balanced_accuracy"] = attribute_balanced_accuracy(
            classifier, generated_features, generated_labels
        )
        metrics["classifier_attribute_balanced_accuracy"] = attribute_balanced_accuracy(
            classifier, features(classifier, originals), generated_labels
        )  # the classifier's own, on the test images whose vectors the samples were drawn for
        groups = getattr(self.trainer.datamodule, "attribute_groups", {})
        for name, value in group_accuracies(classifier, generated_features, generated_labels, groups).items():
            metrics[f"sample_accuracy_{name}"] = value
        if groups:  # the classifier's own accuracy on the test images (whose vectors the samples were drawn for)
            own = group_accuracies(classifier, features(classifier, originals), generated_labels, groups)
            metrics.update({f"classifier_accuracy_{name}": value for name, value in own.items()})
        metrics["classifier_accuracy"] = self.classifier_record["test_accuracy"]
        return metrics

    def validation_metrics(self) -> dict[str, float]:
        """The last validation's epoch metrics, as logged."""
        return {name: float(value) for name, value in self.trainer.callback_metrics.items() if name.startswith("val/")}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Checkpoints are written after each validation: they carry its metrics, so that
        metrics.json reports the best checkpoint's without validating it again."""
        checkpoint["val_metrics"] = self.validation_metrics()
        checkpoint["module_target"] = f"{type(self).__module__}.{type(self).__qualname__}"  # what cvae-eval loads

    def configure_optimizers(self):
        optimizer = instantiate(self.hparams.optim)(self.cvae.parameters())
        optimizers = [optimizer]
        if own_parameters(self.objective):
            optimizers.append(self.objective.optimizer(self.objective.parameters()))
        if not self.hparams.get("scheduler"):
            return optimizers if len(optimizers) > 1 else optimizer
        # configs/scheduler/ holds factories of torch schedulers that decay over T_max steps
        scheduler = instantiate(self.hparams.scheduler)(optimizer, T_max=self.trainer.estimated_stepping_batches)
        if len(optimizers) > 1:
            return optimizers, [scheduler]
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _targets(
    predictions: torch.Tensor, images: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The target pixels of predictions and images (all of them without a mask)."""
    if mask is None:
        return predictions, images
    keep = mask.bool()
    return predictions[keep], images[keep]
