"""What one run is: its parts built from the config, the fit, then the validation and the
graded test of the best checkpoint; `train` returns what metrics.json holds. The
cvae-train command (train.py) wraps it; scripts/benchmark.py times `build`'s parts."""

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, Timer
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from cvae_exp.callbacks import Interruption
from cvae_exp.data import TensorDataModule
from cvae_exp.errors import RunInterrupted
from cvae_exp.module import CVAEModule
from cvae_exp.preflight import read_resumes
from cvae_exp.summary import run_summary

log = logging.getLogger("cvae-train")


def build(cfg: DictConfig, extra_callbacks: list[L.Callback] = ()) -> tuple[TensorDataModule, CVAEModule, L.Trainer]:
    """Seed, then instantiate what a run is made of (also used by scripts/benchmark.py).
    A Timer keeps the training time across resumed segments (it is saved in checkpoints)
    and stops the fit after `trainer.max_time` of training if that is set; an Interruption
    turns SIGINT and SIGTERM into a resumable stop;
    without a logger there is no learning rate to monitor, and without a ModelCheckpoint
    callback no checkpoint is written (Lightning would otherwise add one of its own)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg)
    loggers = [instantiate(logger) for logger in (cfg.logger or {}).values()]
    # callbacks.<name>=null drops one callback of the group
    callbacks = [instantiate(callback) for callback in (cfg.callbacks or {}).values() if callback is not None]
    timer = Timer(duration=cfg.trainer.get("max_time"))  # Lightning ignores trainer.max_time beside a Timer of ours
    checkpointing = any(isinstance(callback, ModelCheckpoint) for callback in callbacks)
    interruption = Interruption(str(Path(cfg.paths.output_dir) / "checkpoints") if checkpointing else None)
    callbacks = [c for c in callbacks if loggers or not isinstance(c, LearningRateMonitor)] + [timer, interruption]
    callbacks += list(extra_callbacks)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        enable_checkpointing=checkpointing,
        enable_model_summary=False,
    )
    return datamodule, module, trainer


MODULE_ARGUMENTS = ("model", "conditioning", "data", "loss", "optim", "eval", "task", "prior", "scheduler")


def build_module(cfg: DictConfig) -> CVAEModule:
    """The LightningModule that `module._target_` names, built with the run's config nodes
    as plain dicts (so that its checkpoint's hyperparameters describe the run) and the other
    keys of `module`."""
    nodes = {
        key: OmegaConf.to_container(cfg[key], resolve=True) for key in MODULE_ARGUMENTS if cfg.get(key) is not None
    }
    own = {key: value for key, value in OmegaConf.to_container(cfg.module, resolve=True).items() if key != "_target_"}
    return get_class(cfg.module._target_)(**nodes, **own)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then test the best checkpoint; returns what metrics.json holds (on every rank;
    rank 0 alone evaluates after data-parallel training). The validation metrics are
    those logged at the best checkpoint's epoch, which the checkpoint carries: the same
    numbers as on the curves, without a second validation pass."""
    share_cores_with_parallel_jobs()
    datamodule, module, trainer = build(cfg)
    with interruptible(trainer):
        trainer.fit(module, datamodule=datamodule, ckpt_path=start_checkpoint(cfg))
    train_time = next(c for c in trainer.callbacks if isinstance(c, Timer)).time_elapsed("train")
    if torch.distributed.is_initialized():  # data parallel: rank 0 evaluates alone, on one device
        torch.distributed.destroy_process_group()
        if not trainer.is_global_zero:
            return {}

    run_dir = Path(cfg.paths.output_dir)
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    val_metrics = (
        torch.load(best, map_location="cpu", weights_only=False)["val_metrics"] if best else module.validation_metrics()
    )
    evaluator = trainer if trainer.world_size == 1 else single_device_trainer(trainer, loggers=trainer.loggers)
    if evaluator is not trainer:
        evaluator.callbacks.append(next(c for c in trainer.callbacks if isinstance(c, Interruption)))
    with interruptible(evaluator):
        (test_metrics,) = evaluator.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
    summary = run_summary(cfg)
    for logger in evaluator.loggers:  # the HParams tab: hyperparameters beside final test metrics
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(summary, metrics=dict(test_metrics))
            logger.finalize("success")  # the test stage closed the event file; this closes the one just written
    return {
        "status": "debug" if is_debug_run() else "completed",
        "test": {key.removeprefix("test/"): float(value) for key, value in test_metrics.items()},
        "val": {key.removeprefix("val/"): value for key, value in val_metrics.items()},
        "recon_z": cfg.eval.recon_z,
        "sampler": cfg.eval.sampler,  # where the generated images' z came from (cvae_exp/samplers.py)
        "classifier": module.classifier_record,  # the classifier of the classifier metrics (test/sample_accuracy, ...)
        "score_form": "conditional" if module.cvae.is_conditional else "unconditional",
        "reference": OmegaConf.to_container(cfg.reference) if cfg.reference else None,
        "best_checkpoint": os.path.relpath(best, run_dir) if best else None,  # relative: the run dir can move
        "epochs": trainer.current_epoch,
        "train_time_s": train_time,
        "resumes": read_resumes(run_dir),
        "hparams": summary,
    }


@contextmanager
def interruptible(trainer: L.Trainer):
    """A fit or test that SIGINT or SIGTERM stopped raises RunInterrupted, whatever Lightning
    raised for it (SystemExit(1) after a KeyboardInterrupt, its SIGTERMException)."""
    interruption = next(c for c in trainer.callbacks if isinstance(c, Interruption))
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        if interruption.signal is None:
            raise
        interruption.requeue()  # a preempted SLURM job: submitit requeues it and exits here
        raise RunInterrupted(interruption.signal, interruption.checkpoint, interruption.stage) from None


def start_checkpoint(cfg: DictConfig) -> str | None:
    """Where the fit starts: `ckpt_path` (None: from scratch), except in a SLURM job that was
    requeued (preempted or out of time: SLURM_RESTART_COUNT counts its restarts) after its earlier
    start saved checkpoints/last.ckpt in its run directory: the job continues from there. Lightning
    would look only for the hpc_ckpt_*.ckpt files of its own requeue signal."""
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    if restarts and last.is_file():
        log.info(f"Requeued SLURM job (restart {restarts}): continuing from {last}")
        return str(last)
    return cfg.ckpt_path


def share_cores_with_parallel_jobs() -> None:
    """Under a parallel launcher (hydra/launcher=joblib), give each job its share of
    the cores, so that n jobs do not run n * cores threads."""
    n_jobs = HydraConfig.get().launcher.get("n_jobs") if HydraConfig.initialized() else None
    if n_jobs:
        cores = os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // (cores if n_jobs < 0 else n_jobs)))


def single_device_trainer(trainer: L.Trainer, loggers: list) -> L.Trainer:
    """A one-device trainer like `trainer` for the final evaluation, so that the grader
    sees the whole test set also after data-parallel training (each rank holds a shard).
    The accelerator is named by its device type: given as an object, Lightning would set
    up bf16-mixed autocast for CUDA and fall back to float32 on a CPU."""
    return L.Trainer(
        accelerator=trainer.strategy.root_device.type,
        devices=1,
        precision=trainer.precision,
        logger=loggers or False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=trainer.default_root_dir,
    )


def is_debug_run() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().runtime.choices.get("debug") is not None
