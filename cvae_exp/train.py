"""`cvae-train`: validate the composed config, fit, validate and test the best checkpoint,
write metrics.json, and end with one line that says how the run ended."""

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, Timer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from cvae_exp.config import CONFIG_DIR, compose_train, validate
from cvae_exp.data import TensorDataModule
from cvae_exp.errors import TrainingDiverged, UserInputError, report_and_exit
from cvae_exp.module import CVAEModule
from cvae_exp.preflight import display_path, read_resumes
from cvae_exp.summary import run_summary

log = logging.getLogger("cvae-train")


def build(cfg: DictConfig, extra_callbacks: list[L.Callback] = ()) -> tuple[TensorDataModule, CVAEModule, L.Trainer]:
    """Seed, then instantiate what a run is made of (also used by scripts/benchmark.py).
    A Timer keeps the training time across resumed segments (it is saved in checkpoints);
    without a logger there is no learning rate to monitor, and without a ModelCheckpoint
    callback no checkpoint is written (Lightning would otherwise add one of its own)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    module = CVAEModule(
        **{key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "conditioning", "data", "loss", "optim", "eval")}
    )
    loggers = [instantiate(logger) for logger in (cfg.logger or {}).values()]
    callbacks = [instantiate(callback) for callback in (cfg.callbacks or {}).values()]
    callbacks = [c for c in callbacks if loggers or not isinstance(c, LearningRateMonitor)] + [Timer()] + list(extra_callbacks)
    checkpointing = any(isinstance(callback, ModelCheckpoint) for callback in callbacks)
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, enable_checkpointing=checkpointing, enable_model_summary=False
    )
    return datamodule, module, trainer


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, then validate and test the best checkpoint; returns what metrics.json holds
    (on every rank; rank 0 alone evaluates after data-parallel training)."""
    share_cores_with_parallel_jobs()
    datamodule, module, trainer = build(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    train_time = next(c for c in trainer.callbacks if isinstance(c, Timer)).time_elapsed("train")
    if torch.distributed.is_initialized():  # data parallel: rank 0 evaluates alone, on one device
        torch.distributed.destroy_process_group()
        if not trainer.is_global_zero:
            return {}

    run_dir = Path(cfg.paths.output_dir)
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    # Validate the best checkpoint again for the value returned, unlogged: its epoch is on the curves already.
    (val_metrics,) = single_device_trainer(trainer, loggers=[]).validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)
    evaluator = trainer if trainer.world_size == 1 else single_device_trainer(trainer, loggers=trainer.loggers)
    (test_metrics,) = evaluator.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
    summary = hparams(cfg)
    for logger in evaluator.loggers:  # the HParams tab: hyperparameters beside final test metrics
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(summary, metrics=dict(test_metrics))
    return {
        "status": "debug" if is_debug_run() else "completed",
        "test": {key.removeprefix("test/"): float(value) for key, value in test_metrics.items()},
        "val": {key.removeprefix("val/"): float(value) for key, value in val_metrics.items()},
        "recon_z": cfg.eval.recon_z,
        "score_form": "conditional" if module.cvae.is_conditional else "unconditional",
        "reference": OmegaConf.to_container(cfg.reference) if cfg.reference else None,
        "best_checkpoint": os.path.relpath(best, run_dir) if best else None,  # relative: the run dir can move
        "epochs": trainer.current_epoch,
        "train_time_s": train_time,
        "resumes": read_resumes(run_dir),
        "hparams": summary,
    }


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
        accelerator=trainer.strategy.root_device.type, devices=1, precision=trainer.precision, logger=loggers or False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=trainer.default_root_dir,
    )


def is_debug_run() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().runtime.choices.get("debug") is not None


def hparams(cfg: DictConfig) -> dict[str, Any]:
    return run_summary(cfg, HydraConfig.get().runtime.choices if HydraConfig.initialized() else {})


def write_json(path: Path, content: dict[str, Any]) -> None:
    """Write through a temporary file and rename, so readers never see half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(content, indent=2) + "\n")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def closing_line(metrics: dict[str, Any], run_dir: Path, seconds: float) -> str:
    """How the run ended, where it lives and its test score, in one line."""
    place = display_path(run_dir)
    if metrics["status"] == "failed":
        return f"cvae-train: failed after {seconds:.0f} s: {metrics['reason']} Run dir: {place}"
    test = metrics["test"]
    return (
        f"cvae-train: {metrics['status']} in {seconds:.0f} s ({metrics['epochs']} epoch{'s' * (metrics['epochs'] != 1)}): test score {test['score']:.2f} "
        f"(ssim {test['ssim']:.4f}, mse {test['mse']:.4f}, fid {test['fid']:.2f}). Run dir: {place}"
    )


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def run(cfg: DictConfig) -> float:
    """One job: returns the best checkpoint's validation `optimized_metric` (what a
    sweeper such as Optuna optimises). A failure is recorded in metrics.json; a single
    run then exits non-zero with one paragraph, a multirun's job returns NaN so that the
    other jobs run (the sweep's summary exits non-zero at the end)."""
    start, run_dir = time.perf_counter(), Path(cfg.paths.output_dir)
    logging.captureWarnings(True)  # library warnings go to train.log (configs/hydra/default.yaml), not the console
    try:
        validate(cfg)
        metrics = train(cfg)
    except Exception as error:
        reason = str(error) if isinstance(error, (UserInputError, TrainingDiverged)) else f"{type(error).__name__}: {error}"
        metrics = {"status": "failed", "reason": reason, "hparams": hparams(cfg)}
        if rank_zero_only.rank == 0:
            write_json(run_dir / "metrics.json", metrics)
            log.error(closing_line(metrics, run_dir, time.perf_counter() - start))
        if not isinstance(error, (UserInputError, TrainingDiverged)):
            raise  # a bug: Hydra shows the traceback
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return float("nan")
        report_and_exit(error, "cvae-train", status=2 if isinstance(error, UserInputError) else 1)
    if not metrics:  # a data-parallel rank other than 0
        return float("nan")
    write_json(run_dir / "metrics.json", metrics)
    log.info(closing_line(metrics, run_dir, time.perf_counter() - start))
    return metrics["val"][cfg.optimized_metric.removeprefix("val/")]


def main() -> None:
    """The console script. Its arguments are composed here first, so that a composition
    error (an unknown option or key) reads as one paragraph, not as Hydra's page; with
    `--cfg`, Hydra prints the config without running a job (or its callbacks), so that
    config is validated here too. A sweep's values are composed per job by Preflight."""
    arguments = sys.argv[1:]
    try:
        cfg = compose_train(fixed_overrides(arguments), output_dir=".")
        if "--cfg" in arguments or "-c" in arguments:
            validate(cfg, devices_here=False)
    except UserInputError as error:
        report_and_exit(error, "cvae-train")
    run()


def fixed_overrides(arguments: list[str]) -> list[str]:
    """The key=value arguments that are no sweep, without Hydra's flags and hydra.* keys."""
    takes_value = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun", "--info", "-i"}
    overrides, skip = [], False
    for argument in arguments:
        if skip or argument.startswith("-"):
            skip = argument in takes_value
            continue
        if not argument.startswith("hydra") and not is_sweep(argument):
            overrides.append(argument)
    return overrides


def is_sweep(argument: str) -> bool:
    try:
        (override,) = OverridesParser.create().parse_overrides([argument])
    except HydraException:
        return False  # composing it reports the error
    return override.is_sweep_override()


if __name__ == "__main__":
    main()
