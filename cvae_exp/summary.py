"""The hyperparameters that tell a run from its neighbours in a sweep: metrics.json's
`hparams`, TensorBoard's HParams tab and cvae-table's columns. Kept free of heavy imports,
so that cvae-table reads runs without loading torch."""

from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf


def run_summary(cfg: DictConfig, choices: dict[str, Any] | None = None) -> dict[str, Any]:
    """`cfg` is a run's config, `choices` Hydra's runtime choices of config groups
    (by default those of the running job)."""
    if choices is None:
        choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return {
        "data": cfg.data.name,
        "model": choices.get("model"),
        "conditioning": choices.get("conditioning"),
        "task": choices.get("task"),
        **_parameters("task", cfg.get("task")),
        "prior": choices.get("prior"),
        **_parameters("prior", cfg.get("prior")),
        "scheduler": choices.get("scheduler"),
        "sampler": OmegaConf.select(cfg, "eval.sampler", default="prior"),  # older runs: the prior
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


def _parameters(group: str, node: Any) -> dict[str, Any]:
    """A task's or prior's own values (task.observed, prior.hidden_dims, ...), as scalars or
    text so that TensorBoard's HParams tab takes them."""
    if not node:
        return {}
    values = {key: value for key, value in node.items() if not str(key).startswith("_")}
    return {
        f"{group}.{key}": value if isinstance(value, (int, float, str, bool)) or value is None else str(list(value))
        for key, value in values.items()
    }
