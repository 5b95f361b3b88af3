"""Lightning callbacks the libraries do not provide."""

import logging
import os
import random
import signal
import threading
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cvae_exp import visualize
from cvae_exp.files import atomic_path
from cvae_exp.models.priors import StandardPrior

log = logging.getLogger(__name__)


class RelocatableCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, whose record of the best and last checkpoints follows a
    run directory that was moved or copied. Lightning drops that record when the saved
    `dirpath` differs from the current one; a resumed copy would then write last-v1.ckpt
    beside a stale last.ckpt and pick its best among the new epochs only."""

    def load_state_dict(self, state_dict: dict) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:

            def moved(path: str) -> str:
                return os.path.join(self.dirpath, os.path.relpath(path, old)) if path else path

            state_dict = {
                **state_dict,
                "dirpath": self.dirpath,
                **{
                    key: moved(state_dict.get(key, ""))
                    for key in ("best_model_path", "kth_best_model_path", "last_model_path")
                },
                "best_k_models": {moved(path): score for path, score in state_dict.get("best_k_models", {}).items()},
            }
        super().load_state_dict(state_dict)


class RandomStateCheckpoint(Callback):
    """Saves the random generators in every checkpoint and restores them when training
    resumes, so that a resumed run draws the same z samples (and binarisations) as an
    uninterrupted one. Lightning checkpoints do not hold them. They are restored at the
    start of the first training epoch, after the sanity check that would consume them."""

    def __init__(self):
        self.pending: dict | None = None

    def state_dict(self) -> dict:
        name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        numpy_state = (
            name,
            torch.from_numpy(keys.copy()),
            position,
            has_gauss,
            cached_gaussian,
        )  # loads with weights_only
        state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.pending = state_dict

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.pending is None:
            return
        torch.set_rng_state(self.pending["torch"])
        name, keys, position, has_gauss, cached_gaussian = self.pending["numpy"]
        np.random.set_state((name, keys.numpy(), position, has_gauss, cached_gaussian))
        random.setstate(self.pending["python"])
        if "cuda" in self.pending and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.pending["cuda"])
        self.pending = None


class ImageLogger(Callback):
    """Grids in TensorBoard every `every_n_epochs` epochs and at the end of training:
    samples with one row per class, validation images above their reconstructions, one
    z decoded under every label (standard prior), and latent interpolations between
    same-class pairs; for an image-conditioned task, condition / predictions / truth rows.
    Drawing forks the random generators, so logging images does not change training."""

    def __init__(self, every_n_epochs: int = 5, samples_per_class: int = 8, num_images: int = 8, steps: int = 10):
        for name, value in {
            "every_n_epochs": every_n_epochs,
            "samples_per_class": samples_per_class,
            "num_images": num_images,
            "steps": steps,
        }.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be an integer >= 1")
        self.every_n_epochs, self.samples_per_class = every_n_epochs, samples_per_class
        self.num_images, self.steps = num_images, steps
        self.logged_step = -1

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.log_images(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.log_images(trainer, pl_module)

    def log_images(self, trainer, pl_module) -> None:
        writers = [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not writers or not trainer.is_global_zero or trainer.global_step == self.logged_step:
            return
        self.logged_step = trainer.global_step
        cvae = pl_module.cvae
        datamodule = trainer.datamodule
        labels = datamodule.labels("val")
        first = torch.arange(min(self.num_images, len(labels)))
        pairs = same_class_pairs(labels, cvae.num_classes) if cvae.labels_condition else (first[:0], first[:0])
        images, labels = datamodule.gather("val", torch.cat([first, *pairs]))  # only the images the grids show
        starts = torch.arange(len(first), len(first) + len(pairs[0]))  # where the pairs are among them
        ends = starts + len(pairs[0])
        images, labels = images.to(pl_module.device).float() / 255, labels.to(pl_module.device)
        with torch.random.fork_rng(devices=[pl_module.device] if pl_module.device.type == "cuda" else []):
            if not cvae.labels_condition:  # a task that conditions on an image or on attributes
                grids = {
                    "samples/completions": visualize.completions(
                        cvae,
                        pl_module.task,
                        images[: self.num_images],
                        labels[: self.num_images],
                        self.samples_per_class,
                    )
                }
                if cvae.condition_kind == "vector" and ((labels == 0) | (labels == 1)).all():
                    grids["samples/attribute_toggles"] = visualize.attribute_toggles(cvae, labels[: self.num_images])
            else:
                grids = {
                    "samples/samples_by_class": visualize.class_samples(
                        cvae, torch.arange(cvae.num_classes), self.samples_per_class
                    ),
                    "samples/reconstructions": visualize.reconstructions(
                        cvae, images[: self.num_images], labels[: self.num_images]
                    ),
                }
                if not getattr(cvae, "discrete_latent", False):  # points between a VQ-VAE's codes are no codes
                    grids["samples/interpolation"] = visualize.interpolation(
                        cvae, images[starts], labels[starts], images[ends], labels[ends], self.steps
                    )
                if standard_normal_latent(cvae):  # one z under every label is a prior draw only there
                    grids["samples/label_swap"] = visualize.label_swap(cvae, self.num_images)
        for writer in writers:
            for tag, grid in grids.items():
                writer.add_image(tag, grid, trainer.global_step)


def standard_normal_latent(cvae) -> bool:
    """Whether the whole of z is N(0, I) under every condition: the standard prior over one
    Gaussian layer (not a hierarchy's z1 given z2 and c, not a VQ-VAE's codes)."""
    one_layer = getattr(cvae, "stochastic_layers", 1) == 1 and not getattr(cvae, "discrete_latent", False)
    return type(cvae.prior) is StandardPrior and one_layer


def same_class_pairs(labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the first two images of every class that has two."""
    firsts = [(labels == label).nonzero().flatten()[:2] for label in range(num_classes)]
    pairs = [pair for pair in firsts if len(pair) == 2]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


class Interruption(Callback):
    """SIGINT (Ctrl-C) and SIGTERM (a scheduler, a preemption) stop a run at the next batch
    boundary and save a resumable `last.ckpt` in `dirpath`. Lightning already stops at a batch
    boundary on SIGTERM (its SIGTERMException) but turns Ctrl-C into a KeyboardInterrupt wherever
    the program is, mid-step included; this handler makes Ctrl-C wait for the batch's end as well
    (a second Ctrl-C stops at once). `signal` names what stopped the run, for its record.

    In a SLURM job that submitit runs (hydra/launcher=slurm), its preemption signal (USR2: what
    SLURM sends `signal_delay_s` before the time limit, or a scheduler that preempts) would make
    submitit requeue the job at once, mid-step and without a checkpoint of the training. Here it
    stops the run as SIGTERM does (Lightning's stop agrees the batch across data-parallel ranks),
    and `requeue` then hands the job to submitit's handler, which requeues it; the requeued job
    continues from that last.ckpt (cvae_exp/run.py)."""

    def __init__(self, dirpath: str | None):
        self.dirpath, self.signal, self.checkpoint, self.stage = dirpath, None, None, "fit"
        self.preempted_by: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}
        self._requeue = None  # submitit's handler of its preemption signal

    def on_fit_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)
        preemption = submitit_preemption_signal()
        if preemption is not None and callable(signal.getsignal(preemption)):
            self._requeue = signal.getsignal(preemption)
            self._previous[preemption] = signal.signal(preemption, self._on_preemption)

    def _on_preemption(self, signum, frame) -> None:
        self.preempted_by = signal.Signals(signum)
        log.info(
            f"\nPreempted ({self.preempted_by.name}): stopping after this batch to save checkpoints/last.ckpt; "
            "the job is then requeued and continues from it."
        )
        signal.raise_signal(signal.SIGTERM)  # Lightning's stop at the batch boundary; on_exception saves

    def requeue(self) -> None:
        """After a preemption stopped the fit: submitit's handler requeues the job (`scontrol requeue`) with
        the launcher's resubmission of the same job, which runs in the same run directory, and exits. On a
        data-parallel rank other than 0 it returns; a job out of requeues (max_num_timeout) raises."""
        if self.preempted_by is not None and self._requeue is not None:
            self._requeue(self.preempted_by, None)

    def _on_sigint(self, signum, frame) -> None:
        self.signal = "SIGINT"
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts at once
        log.info("\nInterrupted (Ctrl-C): stopping after this batch; Ctrl-C again stops at once.")

    def _stop_if_asked(self) -> None:
        if self.signal == "SIGINT":
            raise KeyboardInterrupt

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stop_if_asked()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._stop_if_asked()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        self.signal = self.signal or ("SIGTERM" if isinstance(exception, SIGTERMException) else "SIGINT")
        self.stage = "fit" if trainer.state.fn == "fit" else "test"
        if self.dirpath is not None and self.stage == "fit":
            path = Path(self.dirpath) / "last.ckpt"
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as temporary:  # an earlier last.ckpt stays whole if this one fails
                trainer.save_checkpoint(temporary)
            self.checkpoint = str(path)
        self._restore()

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore()

    def _restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}


def submitit_preemption_signal() -> signal.Signals | None:
    """The signal on which submitit requeues the SLURM job this process runs in (USR2 unless
    SUBMITIT_PREEMPT_SIGNAL says otherwise), or None outside such a job."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return None
    import submitit  # only inside a submitit job

    return signal.Signals[f"SIG{submitit.JobEnvironment.USR_SIG}"]
