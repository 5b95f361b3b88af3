"""`cvae-train resume=<sweep dir>`: continue a sweep (killed, preempted, its machine lost)
in its own directory, with the overrides it was started with.

The sweep's multirun.yaml records them (Hydra's own and the task's) and the config source;
they become the command line of a multirun into the same hydra.sweep.dir, whose sweeper
decides per job what is left to do: the basic sweeper's resumable form
(cvae_exp/plugins/sweeper.py) keeps finished jobs and continues interrupted ones from their
last.ckpt. (An Optuna search resumes by running it again into its sweep directory, whose
storage holds the study: cvae_exp/optuna_sweeper.py.) Preflight is told
that the used sweep directory is this sweep's own. `resume=<run dir>` of one run is
cvae_exp/preflight.py's `continue_run`.
"""

from pathlib import Path

from omegaconf import OmegaConf

from cvae_exp.errors import UserInputError

RESUMING = "+hydra.callbacks.preflight.resuming=true"
# What a resumed sweep may change: where and how its jobs run, and whether failed jobs run again
MAY_CHANGE = ("hydra.launcher.", "hydra.sweeper.rerun_failed=", "hydra/launcher=")
# The recorded Hydra overrides that this command sets anew
SET_HERE = ("hydra.sweep.dir=", "hydra.mode=", RESUMING.split("=")[0])


def resumed_sweep_arguments(arguments: list[str]) -> list[str]:
    """The command line that continues the sweep `resume=` names, with the arguments given
    beside it (launcher settings, hydra.sweeper.rerun_failed=true); other arguments are returned
    as they are (a run's resume, or no resume at all)."""
    values = [argument.partition("=")[2] for argument in arguments if argument.startswith("resume=")]
    sweep_dir = Path(values[-1]).expanduser() if values else None
    if sweep_dir is None or not (sweep_dir / "multirun.yaml").is_file():
        return arguments
    others = [
        argument
        for argument in arguments
        if not argument.startswith("resume=") and argument not in ("-m", "--multirun")
    ]
    refused = [argument for argument in others if not argument.startswith(MAY_CHANGE)]
    if refused:
        raise UserInputError(
            f"Cannot change {' '.join(refused)} of a resumed sweep: resume={values[-1]!r} continues that sweep with "
            "the overrides it was started with (its multirun.yaml), so that every job keeps its config; only "
            "hydra.launcher.* (where and how its jobs run) and hydra.sweeper.rerun_failed=true (run its failed jobs "
            "again) may be given. Start a new sweep for other values."
        )
    recorded = OmegaConf.load(sweep_dir / "multirun.yaml").hydra
    given = {override_key(argument) for argument in others}  # a launcher setting given here replaces the recorded one
    hydra_overrides = [
        override
        for override in recorded.overrides.hydra
        if not override.startswith(SET_HERE) and override_key(override) not in given
    ]
    return [
        "-m",
        *source_flags(recorded),
        *hydra_overrides,
        *recorded.overrides.task,
        f"hydra.sweep.dir={sweep_dir.resolve()}",
        RESUMING,
        *others,
    ]


def source_flags(recorded) -> list[str]:
    """--config-name, --config-path and --config-dir as the sweep was started with them."""
    flags = [] if recorded.job.config_name == "train" else ["--config-name", recorded.job.config_name]
    for source in recorded.runtime.config_sources:
        path = source.path.removeprefix("file://")
        if source.provider == "main" and source.schema == "file":
            flags += ["--config-path", path]
        elif source.provider == "command-line" and source.schema == "file":
            flags += ["--config-dir", path]
    return flags


def override_key(override: str) -> str:
    """The key an override sets (`+a.b=1`, `~a.b`: a.b), as text, without parsing it."""
    return override.split("=")[0].lstrip("+~")
