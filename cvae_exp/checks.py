"""Validation of a composed training config before anything runs.

Types are checked by OmegaConf against the schema (cvae_exp/schema.py), ranges and choices
by `check_values`, and `validate` then builds the task, the network, the optimizer and the
callbacks on the declared data shape, so that every bad value stops the run with one
paragraph that names the key, the value and what is allowed. torch and Lightning are
imported only where a check needs them: the cheap checks run first, so that a bad value is
refused before those imports (seconds on a small CPU).
"""

import inspect
import os
import re
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cvae_exp.errors import ModelConfigError, UserInputError
from cvae_exp.schema import (
    ACCELERATORS,
    BINARIZE_CHOICES,
    ELBO_TARGET,
    GMM_COVARIANCES,
    IN_MEMORY_CHOICES,
    LIKELIHOODS,
    MONITORABLE,
    PRECISIONS,
    RECON_Z_CHOICES,
    SAMPLERS,
    VAL_METRICS,
    DataConfig,
    ELBOConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)


def check_sampler(settings) -> None:
    """eval.sampler and its settings (cvae-eval and cvae-sample check their own arguments)."""
    _require(
        settings.sampler in SAMPLERS,
        "eval.sampler",
        settings.sampler,
        f"allowed: {' | '.join(SAMPLERS)} (cvae_exp/samplers.py)",
    )
    _require(
        settings.gmm_components >= 1,
        "eval.gmm_components",
        settings.gmm_components,
        "must be an integer >= 1 (Gaussians per class)",
    )
    _require(
        settings.gmm_covariance in GMM_COVARIANCES,
        "eval.gmm_covariance",
        settings.gmm_covariance,
        f"allowed: {' | '.join(GMM_COVARIANCES)}",
    )
    _require(settings.flow_layers >= 1, "eval.flow_layers", settings.flow_layers, "must be an integer >= 1")
    _require(settings.flow_steps >= 1, "eval.flow_steps", settings.flow_steps, "must be an integer >= 1")


def check_sweep(config: DictConfig) -> None:
    """A multirun's launcher and sweeper values (`hydra.launcher.*`, `hydra.sweeper.*`), which
    the plugins check only once the sweep has begun: joblib refuses n_jobs=0 after Hydra has
    written multirun.yaml, Optuna's n_trials=0 fails after the sweep with "No trials are
    completed yet", and sbatch refuses a SLURM job's numbers on the cluster."""
    launcher, sweeper = config.hydra.launcher, config.hydra.sweeper
    if launcher._target_.endswith("JoblibLauncher"):
        n_jobs = launcher.n_jobs
        cpus = os.cpu_count() or 1
        _require(
            n_jobs is None or (isinstance(n_jobs, int) and n_jobs != 0 and cpus + 1 + min(n_jobs, 0) >= 1),
            "hydra.launcher.n_jobs",
            n_jobs,
            "must be a non-zero integer: the jobs run at once, -1 for one per CPU, -2 for all CPUs but one "
            f"(joblib runs n_cpus + 1 + n_jobs for a negative n_jobs: at least -{cpus} on this machine's {cpus} CPUs)",
        )
    if launcher._target_.startswith("hydra_plugins.hydra_submitit_launcher."):
        for key in ("timeout_min", "nodes", "tasks_per_node", "cpus_per_task", "mem_gb"):
            value = launcher.get(key)
            optional = key in ("cpus_per_task", "mem_gb")  # null: the cluster's default
            _require(
                (optional and value is None) or (value is not None and value >= 1),
                f"hydra.launcher.{key}",
                value,
                "must be an integer >= 1" + (" (or null for the cluster's default)" if optional else ""),
            )
        gpus = launcher.get("gpus_per_node")
        _require(gpus is None or gpus >= 0, "hydra.launcher.gpus_per_node", gpus, "must be an integer >= 0 (or null)")
    if sweeper._target_.endswith("OptunaSweeper"):
        _require(sweeper.n_trials >= 1, "hydra.sweeper.n_trials", sweeper.n_trials, "must be an integer >= 1")
        _require(
            sweeper.n_jobs >= 1,
            "hydra.sweeper.n_jobs",
            sweeper.n_jobs,
            "must be an integer >= 1 (the trials launched at once)",
        )
        direction = sweeper.direction
        directions = list(direction) if isinstance(direction, ListConfig) else [direction]
        names = [getattr(item, "name", item) for item in directions]  # Optuna's plugin default is an Enum
        _require(
            len(names) == 1 and names[0] in ("minimize", "maximize"),
            "hydra.sweeper.direction",
            names[0] if len(names) == 1 else names,
            "allowed: minimize | maximize (cvae-train returns one value, optimized_metric, to the sweeper)",
        )


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise UserInputError(f"Invalid config value {key}={value!r}: {allowed}.")


_PASSED: set[str] = set()  # the configs validate() passed in this process


def validate(cfg: DictConfig, devices_here: bool = True) -> DictConfig:
    """Check `cfg` against the schema and the allowed ranges, then build what it describes
    (task, network, optimizer, callbacks) to check that too; raise UserInputError.
    `devices_here=False` skips the check that the accelerator exists on this machine,
    for configs that run elsewhere (a SLURM job composed on a login node, --cfg). A config
    that passed in this process (Preflight, then the job) is not checked again."""
    passed = f"{devices_here}\n{OmegaConf.to_yaml(cfg)}"
    if passed in _PASSED:
        return cfg
    typed = check_values(cfg)
    _check_device(typed.trainer, devices_here)
    task = _build_task(typed)
    model = _build_model(typed, task)
    _check_optimizer(typed.optim, model)
    from cvae_exp.samplers import require_applicable

    require_applicable(model, typed.eval.sampler)
    if typed.eval.disentanglement_metrics:
        _require(
            bool(typed.data.get("factor_names")) and model.has_latent,
            "eval.disentanglement_metrics",
            True,
            "needs data whose labels are ground-truth factors (data.factor_names, as data=dsprites has; "
            f"data={typed.data.name} has none) and a model with a latent variable (not prior=none)",
        )
    from cvae_exp.models.vqvae import NO_POSTERIOR_DENSITY

    _require(
        not (typed.eval.nll_samples and getattr(model, "discrete_latent", False)),
        "eval.nll_samples",
        typed.eval.nll_samples,
        f"{NO_POSTERIOR_DENSITY} (eval.nll_samples=0)",
    )
    if typed.eval.inception_weights is not None:  # the weights load, and serve images of this shape
        from cvae_exp.metrics.inception import fid_metric

        fid_metric(typed.eval.inception_weights, tuple(typed.data.image_shape))
    from cvae_exp.evaluation import grader_skipped

    no_ssim = grader_skipped(model) or (None if typed.eval.val_ssim_images else "eval.val_ssim_images=0")
    if no_ssim:
        for key, metric in [("optimized_metric", typed.optimized_metric), *_callback_monitors(typed.callbacks or {})]:
            _require(
                metric != "val/ssim",
                key,
                metric,
                f"this run logs no val/ssim ({no_ssim}); it logs val/loss, val/recon, "
                "val/kl and val/mse (over its target pixels)",
            )
    objective = _check_objective(typed.loss, model, typed.trainer)
    _check_trainer_arguments(typed.trainer)
    _check_module(typed.module)
    _check_callbacks(typed.callbacks or {})
    if typed.ckpt_path is not None:
        own = Path(typed.ckpt_path).resolve().is_relative_to(Path(str(typed.paths.output_dir)).resolve())
        _check_checkpoint(typed.ckpt_path, model, objective, typed.trainer.max_epochs, continues_its_run=own)
    _PASSED.add(passed)
    return cfg


def check_values(cfg: DictConfig) -> DictConfig:
    """The checks that need no torch (well under a second): the schema, the types, the ranges
    and choices, callbacks' monitors. Returns the typed config."""
    try:
        schema = OmegaConf.structured(TrainConfig)
        schema.optim = OmegaConf.structured(OptimConfig)
        OmegaConf.set_struct(schema.optim, False)  # other torch.optim arguments: +optim.momentum=0.9
        schema.data = OmegaConf.structured(DataConfig)
        OmegaConf.set_struct(schema.data, False)  # a DataModule's own arguments: +data.<key>=...
        schema.model = OmegaConf.structured(ModelConfig)
        OmegaConf.set_struct(schema.model, False)  # a model's own arguments (model=vqvae: codebook_size, ...)
        elbo = OmegaConf.select(cfg, "loss._target_") == ELBO_TARGET
        if elbo:
            schema.loss = OmegaConf.structured(ELBOConfig)
        typed = OmegaConf.merge(schema, cfg)
        OmegaConf.resolve(typed)
        missing = sorted(key for key in OmegaConf.missing_keys(typed) if not key.startswith("hydra"))
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        reason = str(error).splitlines()[0]
        raise UserInputError(
            f"Invalid config at {key}: {reason}. See configs/ and cvae_exp/schema.py for the allowed keys and types."
        ) from None
    if missing:
        raise UserInputError(
            f"The config leaves {', '.join(missing)} without a value (??? in its YAML): give "
            f"{'it' if len(missing) == 1 else 'each'} on the command line, e.g. {missing[0]}=<value> "
            "(the comment beside each in its configs/ file says what it is)."
        )

    data, model, loss, optim, trainer = typed.data, typed.model, typed.loss, typed.optim, typed.trainer
    _require(typed.seed >= 0, "seed", typed.seed, "must be an integer >= 0")
    _require(data.batch_size >= 1, "data.batch_size", data.batch_size, "must be an integer >= 1")
    _require(
        data.val_size >= 0,
        "data.val_size",
        data.val_size,
        "must be an integer >= 1 (0 for a dataset with a validation set of its own, such as CelebA)",
    )
    _require(
        data.binarize in BINARIZE_CHOICES, "data.binarize", data.binarize, f"allowed: {' | '.join(BINARIZE_CHOICES)}"
    )
    _require(
        len(data.image_shape) == 3 and min(data.image_shape) >= 1,
        "data.image_shape",
        list(data.image_shape),
        "must be [channels, height, width] of positive integers",
    )
    _require(
        data.num_classes >= 1 or (data.num_classes == 0 and data.attributes > 0),
        "data.num_classes",
        data.num_classes,
        "must be an integer >= 1 (0 for a dataset whose labels are attribute vectors, data.attributes > 0)",
    )
    _require(
        data.in_memory in IN_MEMORY_CHOICES,
        "data.in_memory",
        data.in_memory,
        "allowed: auto (in memory where the images take at most a quarter of the free memory) | true | false",
    )
    _require(data.num_workers >= 0, "data.num_workers", data.num_workers, "must be an integer >= 0")
    _require(data.attributes >= 0, "data.attributes", data.attributes, "must be an integer >= 0 (0: class labels)")
    groups = dict(data.attribute_groups or {})
    _require(
        not groups or (min(groups.values()) >= 1 and sum(groups.values()) == data.attributes),
        "data.attribute_groups",
        groups,
        f"the sizes of the one-hot groups must be >= 1 and add up to data.attributes={data.attributes}",
    )
    _require(model.latent_dim >= 1, "model.latent_dim", model.latent_dim, "must be an integer >= 1 (the size of z)")
    if elbo:  # another objective checks its own arguments when validate() builds it
        _check_elbo(loss)
    _require(optim.lr > 0, "optim.lr", optim.lr, "must be a number > 0")
    _require(optim.weight_decay >= 0, "optim.weight_decay", optim.weight_decay, "must be a number >= 0")
    _require(
        typed.eval.recon_z in RECON_Z_CHOICES,
        "eval.recon_z",
        typed.eval.recon_z,
        f"allowed: {' | '.join(RECON_Z_CHOICES)}",
    )
    check_sampler(typed.eval)
    _require(
        typed.eval.val_ssim_images >= 0,
        "eval.val_ssim_images",
        typed.eval.val_ssim_images,
        "must be an integer >= 0 (validation images graded by SSIM each epoch; 0: none)",
    )
    _require(
        typed.eval.samples_per_class >= 1,
        "eval.samples_per_class",
        typed.eval.samples_per_class,
        "must be an integer >= 1",
    )
    _require(
        typed.eval.nll_samples >= 0,
        "eval.nll_samples",
        typed.eval.nll_samples,
        "must be an integer >= 0 (importance samples per test image for test/nll; 0: no likelihood estimate)",
    )
    _check_trainer_values(trainer)
    # The ELBO's terms are known here; another objective's are its own, and Lightning names
    # the logged metrics if a monitor finds none.
    if elbo:
        val_metrics, monitorable, suffix = VAL_METRICS, MONITORABLE, ""
        known = lambda metric, names: metric in names
    else:  # prefixes: the terms are the objective's own
        val_metrics, monitorable, suffix = ("val/",), ("val/", "train/"), " followed by a logged term"
        known = lambda metric, names: metric.startswith(names)
    for key, metric, names in [
        ("optimized_metric", typed.optimized_metric, val_metrics),
        *((key, metric, monitorable) for key, metric in _callback_monitors(typed.callbacks or {})),
    ]:
        _require(known(metric, names), key, metric, f"allowed: {' | '.join(names)}{suffix}")
    return typed


def _check_elbo(loss: DictConfig) -> None:
    _require(loss.likelihood in LIKELIHOODS, "loss.likelihood", loss.likelihood, f"allowed: {' | '.join(LIKELIHOODS)}")
    _require(loss.var > 0, "loss.var", loss.var, "must be a number > 0 (the Gaussian decoder's variance)")
    _require(loss.scale > 0, "loss.scale", loss.scale, "must be a number > 0 (the discretised logistic's scale)")
    _require(loss.beta >= 0, "loss.beta", loss.beta, "must be a number >= 0")
    _require(loss.warmup_steps >= 0, "loss.warmup_steps", loss.warmup_steps, "must be an integer >= 0 (0: no warm-up)")


def _precision_and_accelerator(trainer: DictConfig) -> tuple[str, str]:
    return str(trainer.get("precision", "32-true")), str(trainer.get("accelerator", "auto"))


def _check_trainer_values(trainer: DictConfig) -> None:
    precision, accelerator = _precision_and_accelerator(trainer)
    _require(precision in PRECISIONS, "trainer.precision", precision, f"allowed: {' | '.join(PRECISIONS)}")
    max_epochs = trainer.get("max_epochs")
    _require(
        isinstance(max_epochs, int) and max_epochs >= 1, "trainer.max_epochs", max_epochs, "must be an integer >= 1"
    )
    max_time = trainer.get("max_time")
    _require(
        max_time is None
        or (isinstance(max_time, str) and re.fullmatch(r"\d+:\d{2}:\d{2}:\d{2}", max_time) is not None),
        "trainer.max_time",
        max_time,
        "must be null or a duration DD:HH:MM:SS (e.g. 00:01:00:00 for one hour of training)",
    )
    _require(accelerator in ACCELERATORS, "trainer.accelerator", accelerator, f"allowed: {' | '.join(ACCELERATORS)}")


def _check_device(trainer: DictConfig, devices_here: bool) -> None:
    """The accelerator exists on this machine, and float16 does not train on a CPU (torch only)."""
    import torch

    precision, accelerator = _precision_and_accelerator(trainer)
    available = {
        "auto": True,
        "cpu": True,
        "gpu": torch.cuda.is_available() or torch.backends.mps.is_available(),
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    _require(
        available[accelerator] or not devices_here,
        "trainer.accelerator",
        accelerator,
        "no such device is available on this machine; use trainer=default (accelerator=auto: a GPU when there "
        "is one) or trainer=cpu",
    )
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not available["gpu"])
    _require(
        not (devices_here and on_cpu and precision.startswith("16")),
        "trainer.precision",
        precision,
        "float16 runs on a GPU only and this run trains on the CPU; use trainer.precision=bf16-mixed or 32-true",
    )


def _check_trainer_arguments(trainer: DictConfig) -> None:
    """The trainer's keys are lightning.Trainer arguments (this check waits for Lightning's import)."""
    import lightning as L

    allowed = set(inspect.signature(L.Trainer.__init__).parameters) - {"self", "callbacks", "logger"}
    for key in trainer:
        if key != "_target_":
            _require(
                key in allowed,
                f"trainer.{key}",
                trainer[key],
                f"is not a lightning.Trainer argument; allowed: {', '.join(sorted(allowed))}",
            )


def _callback_monitors(callbacks: DictConfig) -> list[tuple[str, str]]:
    """(key, metric) of each callback that monitors a metric."""
    monitors = [
        (f"callbacks.{name}.monitor", callback.get("monitor"))
        for name, callback in callbacks.items()
        if isinstance(callback, DictConfig)
    ]
    return [(key, metric) for key, metric in monitors if metric is not None]


def _check_callbacks(callbacks: DictConfig) -> None:
    """Each callback must construct (milliseconds, nothing written), so that a bad argument
    fails here and not when training starts."""
    for name, callback in callbacks.items():
        _constructs(callback, f"callbacks.{name}", "See configs/callbacks/default.yaml for its keys.")


def _check_objective(loss: DictConfig, model, trainer: DictConfig):
    """The objective constructs (microseconds) and, where it has a `check(model)`, accepts the
    model, so that an objective refuses its bad arguments, or a model it cannot train, here,
    not at the first training step. One with its own optimizer is trained under manual
    optimisation, which takes no Trainer gradient clipping, accumulation or loss scaling.
    Returns the objective."""
    from cvae_exp.objective import own_parameters

    advice = "loss._target_ names an objective class (configs/loss/, docs/extending.md), the other keys its arguments."
    objective = _constructs(loss, "loss", advice)
    try:
        getattr(objective, "check", lambda model: None)(model)
    except ValueError as error:
        raise UserInputError(f"Invalid config at loss: {error}.") from None
    if own_parameters(objective):
        if not callable(getattr(objective, "optimizer", None)) or not callable(getattr(objective, "own_loss", None)):
            raise UserInputError(
                f"Invalid config at loss: {loss._target_} has parameters of its own but not both of "
                "`optimizer(parameters)` and `own_loss(result)`, which train them (docs/extending.md: an objective "
                "with parameters of its own)."
            )
        try:  # its optimizer's arguments (loss.optimizer.lr=-1), before the run
            objective.optimizer(objective.parameters())
        except (TypeError, ValueError) as error:
            raise UserInputError(f"Invalid config at loss.optimizer: {error}.") from None
        refused = [  # Lightning: gradient_clip_val 0 or None clips nothing
            ("gradient_clip_val", bool(trainer.get("gradient_clip_val")), "leave it out or 0"),
            ("accumulate_grad_batches", (trainer.get("accumulate_grad_batches") or 1) != 1, "leave it out or 1"),
            ("precision", str(trainer.get("precision")).startswith("16"), "use 32-true or bf16-mixed"),
        ]
        for key, present, advice in refused:
            _require(
                not present,
                f"trainer.{key}",
                trainer.get(key),
                f"is not supported with {loss._target_}, whose own optimizer steps beside the model's "
                f"(manual optimisation): {advice}",
            )
    return objective


def build_data(data: DictConfig):
    """The DataModule, with its data loaded (Preflight checks it before any directory exists)."""
    datamodule = _constructs(data, "data", "data._target_ names a DataModule class, the other keys its arguments.")
    datamodule.setup()
    return datamodule


def _constructs(node: DictConfig, key: str, advice: str):
    """`node` instantiated; else its constructor's objection, refused as one paragraph that names `key`."""
    try:
        return instantiate(node)
    except Exception as error:
        raise UserInputError(f"Invalid config at {key}: {_constructor_error(error)} {advice}") from None


def _check_module(module: DictConfig) -> None:
    """`module._target_` names a CVAEModule, whose test stage and records every run shares (this
    check waits for Lightning's import)."""
    from hydra.utils import get_class

    from cvae_exp.module import CVAEModule

    try:
        found = get_class(module._target_)
    except Exception as error:
        raise UserInputError(f"Invalid config at module: {_constructor_error(error)} See configs/module/.") from None
    _require(
        isinstance(found, type) and issubclass(found, CVAEModule),
        "module._target_",
        module._target_,
        "must name a subclass of cvae_exp.module.CVAEModule (configs/module/cvae.yaml, docs/extending.md)",
    )


def _constructor_error(error: Exception) -> str:
    """What a constructor called through `instantiate` objected to, as one sentence:
    Hydra wraps it (the cause) and spreads a class it cannot load over three lines."""
    text = " ".join(line.strip() for line in str(error.__cause__ or error).splitlines() if line.strip())
    return text if text.endswith("?") else text.rstrip(".") + "."


def _check_optimizer(optim: DictConfig, model) -> None:
    """The optimizer must construct over the model's parameters (milliseconds), so that a
    `_target_` or an argument it does not take fails here, not when training starts."""
    try:
        instantiate(optim)(model.parameters())
    except Exception as error:  # a bad class path or keyword
        raise UserInputError(
            f"Invalid config at optim: {_constructor_error(error)} optim._target_ names a torch.optim class "
            "and the other keys are its "
            f"arguments (configs/train.yaml); `+optim.key=value` adds one the config lacks."
        ) from None


def _build_task(typed: DictConfig):
    """The task, checked on the declared image shape before `_check_trainer_arguments` imports
    Lightning, so that a bad `task.*` value is refused with its own message in the time of
    torch's import (about 3 s in all on a small CPU), not Lightning's."""
    from cvae_exp.tasks import LabelTask

    if not typed.task:
        return LabelTask()
    try:
        task = instantiate(typed.task)
        task.condition_shape(tuple(typed.data.image_shape))
    except Exception as error:  # a task's own check of its arguments
        raise UserInputError(
            f"Invalid task config: {_constructor_error(error)} See configs/task/ for each task's keys."
        ) from None
    _require(
        not (typed.data.attributes and task.condition_kind == "class"),
        "data.attributes",
        typed.data.attributes,
        f"the {typed.data.name} images come with attribute vectors, not class labels: condition on them with "
        "task=attributes (or on parts of the image: task=quadrants, inpaint, superres)",
    )
    return task


def _build_model(typed: DictConfig, task):
    """Build the network on the declared data shape (milliseconds), so that an
    architecture or a prior that cannot handle the data fails here, not after data loading."""
    from cvae_exp.models import build_cvae

    try:
        return build_cvae(typed.model, typed.conditioning, typed.prior, task, typed.data)
    except Exception as error:  # any constructor error is a config error here
        if isinstance(error.__cause__ or error, ModelConfigError):  # it names its key and what is allowed
            raise UserInputError(
                f"Invalid config for data {typed.data.name} with image shape {list(typed.data.image_shape)}: "
                f"{_constructor_error(error)}"
            ) from None
        raise UserInputError(
            f"The model config cannot be built for data {typed.data.name} with image shape "
            f"{list(typed.data.image_shape)}: {_constructor_error(error)} Change "
            f"model.encoder / model.decoder (configs/model/: each model's keys are its own) or the prior "
            f"(configs/prior/), or choose another model."
        ) from None


def epochs_done(checkpoint: dict) -> int:
    """Epochs a cvae-train checkpoint has trained: it is written at the end of its (0-based) epoch."""
    return checkpoint["epoch"] + 1


def _shapes(state: dict, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """The shape of each tensor of a state dict whose key starts with `prefix`, by the rest of its key."""
    return {key.removeprefix(prefix): tuple(value.shape) for key, value in state.items() if key.startswith(prefix)}


def _first_difference(saved: dict, expected: dict) -> str | None:
    """Where two state dicts' shapes first differ (by key), as the checkpoint and this config have it."""
    if saved == expected:
        return None
    key = sorted(set(saved.items()) ^ set(expected.items()))[0][0]
    return f"{key}: {saved.get(key)} in the checkpoint, {expected.get(key)} here"


def _check_checkpoint(path: str, model, objective, max_epochs: int, continues_its_run: bool = False) -> None:
    """The checkpoint must exist, load, hold this config's network (and the objective's own
    parameters, FactorVAE's discriminator) tensor for tensor, and leave epochs to train before
    max_epochs; or, where it is the run's own (a run continued in its directory, stopped after
    training and before its test), have trained them all."""
    import torch

    _require(
        Path(path).is_file(),
        "ckpt_path",
        path,
        "must be an existing checkpoint file (e.g. <run dir>/checkpoints/last.ckpt)",
    )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        saved = _shapes(checkpoint["state_dict"], "cvae.")
        saved_objective = _shapes(checkpoint["state_dict"], "objective.")
        done = epochs_done(checkpoint)
    except Exception as error:  # truncated, not a torch file, not a Lightning checkpoint
        raise UserInputError(
            f"Invalid config value ckpt_path={path!r}: the file cannot be read as a cvae-exp checkpoint "
            f"({type(error).__name__}: {str(error)[:200]}); it may be truncated. Use a .ckpt written by "
            f"cvae-train, e.g. <run dir>/checkpoints/last.ckpt."
        ) from None
    different = _first_difference(saved, _shapes(model.state_dict()))
    if different:
        raise UserInputError(
            f"Invalid config value ckpt_path={path!r}: the checkpoint holds another model than this "
            f"config builds (first difference at {different}). Resume with the run's own config (resume=<run dir>) "
            f"or set model/conditioning/data as they were."
        )
    state = objective.state_dict() if isinstance(objective, torch.nn.Module) else {}
    different = _first_difference(saved_objective, _shapes(state))
    if different:
        raise UserInputError(
            f"Invalid config value ckpt_path={path!r}: the checkpoint's objective has other parameters than this "
            f"config's ({type(objective).__name__}) builds (first difference at objective.{different}). A "
            "checkpoint carries its objective's parameters and optimizers (FactorVAE's discriminator), so "
            "ckpt_path continues under the objective it was trained with, its arguments as they were "
            "(loss.hidden, loss.layers)."
        )
    _require(
        max_epochs > done or (continues_its_run and max_epochs == done),
        "trainer.max_epochs",
        max_epochs,
        f"the checkpoint ckpt_path={path!r} has trained {done} epochs already; pass "
        f"trainer.max_epochs={done + 1} or more to train on from it",
    )
