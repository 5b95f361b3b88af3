"""The hyperparameters that tell a run from its neighbours in a sweep: metrics.json's
`hparams`, TensorBoard's HParams tab and cvae-table's columns, and the overrides that
name a sweep's run in TensorBoard (cvae_exp/loggers.py). Kept free of heavy imports, so
that cvae-table reads runs without loading torch."""

import hashlib
from dataclasses import fields
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from cvae_exp.schema import ELBOConfig


def run_summary(cfg: DictConfig, choices: dict[str, Any] | None = None) -> dict[str, Any]:
    """`cfg` is a run's config, `choices` Hydra's runtime choices of config groups
    (by default those of the running job)."""
    if choices is None:
        choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return {
        "data": cfg.data.name,
        "model": choices.get("model"),
        **_parameters("model", _model_keys(cfg.model)),
        "conditioning": choices.get("conditioning"),
        "task": choices.get("task"),
        **_parameters("task", cfg.get("task")),
        "prior": choices.get("prior"),
        **_parameters("prior", cfg.get("prior")),
        "loss": choices.get("loss"),
        **_parameters("loss", _own_keys(cfg.get("loss"))),
        "scheduler": choices.get("scheduler"),
        "sampler": OmegaConf.select(cfg, "eval.sampler", default="prior"),  # older runs: the prior
        "experiment": choices.get("experiment"),
        "latent_dim": cfg.model.latent_dim,
        "likelihood": OmegaConf.select(cfg, "loss.likelihood"),  # the ELBO's; another objective may have none
        "beta": OmegaConf.select(cfg, "loss.beta"),
        "lr": cfg.optim.lr,
        "epochs": cfg.trainer.max_epochs,
        "batch_size": cfg.data.batch_size,
        "seed": cfg.seed,
        "precision": str(cfg.trainer.precision),
    }


def _model_keys(model: Any) -> dict[str, Any]:
    """A model's own arguments (model.codebook_size, model.top_dim, ...): its values but
    latent_dim (reported as such) and its networks and other nested nodes."""
    return {
        key: value
        for key, value in model.items()
        if key != "latent_dim" and not isinstance(value, DictConfig) and not str(key).startswith("_")
    }


def _own_keys(loss: Any) -> dict[str, Any]:
    """An objective's scalar arguments beyond the ELBO's (loss.gamma, loss.samples, ...); the
    ELBO's likelihood and beta are reported as such, nested nodes (an optimizer) not at all."""
    elbo = {field.name for field in fields(ELBOConfig)}
    return {key: value for key, value in (loss or {}).items() if key not in elbo and not isinstance(value, DictConfig)}


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


# How a sweep's job is told from the others: TensorBoard names a run by its directory, so a
# job's events go to tensorboard/<its varied overrides>/ (a single run's stay in tensorboard/).
SWEEP_FILE = "multirun.yaml"  # where Hydra's basic sweeper saves the sweep's config, arguments included
NAME_LIMIT = 200  # characters of a run name; a file name takes 255 bytes
# Config keys that run_summary reports under another name; a group choice (model=conv) and
# task.*, prior.* and seed keep theirs
SUMMARY_NAMES = {
    "data.name": "data",
    "model.latent_dim": "latent_dim",
    "loss.likelihood": "likelihood",
    "loss.beta": "beta",
    "optim.lr": "lr",
    "trainer.max_epochs": "epochs",
    "data.batch_size": "batch_size",
    "trainer.precision": "precision",
    "eval.sampler": "sampler",
}


def varied_overrides(job: list[str], sweep: list[str] | None) -> list[str]:
    """The job's overrides of the keys that `sweep` (the sweep's arguments, e.g.
    `model.latent_dim=8,16` or Optuna's `choice(...)`) varies, as `key=value` in the job's
    order; all of them when the sweep's arguments are unknown. Keys, not text, are compared:
    Hydra rewrites `x=false` as `x=False` in a job."""
    parser = OverridesParser.create()
    swept = None if sweep is None else {o.key_or_group for o in parser.parse_overrides(sweep) if o.is_sweep_override()}
    return [
        f"{o.key_or_group}={o.get_value_element_as_str()}"
        for o in parser.parse_overrides(job)
        if swept is None or o.key_or_group in swept
    ]


def sweep_overrides(run_dir: Path) -> list[str]:
    """What tells this run from the other jobs of its sweep ([] for a single run), from the
    job's .hydra/hydra.yaml, which a resumed job keeps (its live Hydra config is the resume's),
    and the sweep's multirun.yaml (or Optuna's search space, hydra.sweeper.params)."""
    saved = run_dir / ".hydra" / "hydra.yaml"
    hydra = OmegaConf.load(saved).hydra if saved.is_file() else HydraConfig.get() if HydraConfig.initialized() else None
    if hydra is None or not str(hydra.mode).endswith("MULTIRUN"):
        return []
    sweep = [f"{key}={value}" for key, value in (hydra.sweeper.get("params") or {}).items()] or None
    recorded = OmegaConf.select(hydra, "sweep.dir", throw_on_resolution_failure=False)
    directories = ([] if recorded is None else [Path(str(recorded))]) + [run_dir.parent]  # the parent: a moved sweep
    for directory in directories:
        if (directory / SWEEP_FILE).is_file():
            sweep = list(OmegaConf.load(directory / SWEEP_FILE).hydra.overrides.task) + (sweep or [])
            break
    return varied_overrides(list(hydra.overrides.task), sweep)


def run_name(overrides: list[str]) -> str:
    """TensorBoard's name of a run below <run dir>/tensorboard/, e.g. `model.latent_dim=8,seed=1`
    ("": no sub-directory). A '/' would nest directories; a long name ends in a hash, to stay unique."""
    name = ",".join(overrides).replace("/", "-")
    if len(name) > NAME_LIMIT:
        name = f"{name[: NAME_LIMIT - 9]}~{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def tensorboard_hparams(summary: dict[str, Any], overrides: list[str]) -> tuple[dict[str, Any], set[str]]:
    """The HParams tab's values and the names among them that the sweep varies: these first
    (a varied key run_summary lacks, such as model.encoder.hidden_dims, is added), then the rest
    of the summary, all as numbers, booleans or text."""
    varied = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        key = SUMMARY_NAMES.get(override.key_or_group, override.key_or_group)
        varied[key] = summary[key] if key in summary else override.value()
    hparams = {key: _scalar(value) for key, value in {**varied, **summary}.items()}
    return hparams, set(varied)


def _scalar(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) else str(value)
