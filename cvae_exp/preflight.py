"""Checks that run before Hydra creates a run or sweep directory, `resume=<run dir>`, and
the summary that ends a multirun.

Hydra makes the run directory and writes .hydra/ before it calls the task function, so a
bad value caught there would leave a half-made run behind. This Hydra callback checks
first: for a single run the composed config, for a multirun every job's config (each is
composed from the sweep's overrides as Hydra's basic sweeper will compose it; every job's
values before any job's network), and the data each one loads, and that the output
directory can be written. On bad input it prints
one paragraph and exits with status 2, having written nothing.
"""

import copy
import json
import os
import shlex
import sys
import tempfile
import traceback
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import yaml
from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from cvae_exp.checks import build_data, check_sweep, check_values, epochs_done, validate
from cvae_exp.compose import composition_error, override_arguments
from cvae_exp.errors import UserInputError, report_and_exit
from cvae_exp.files import first_process, held_elsewhere, hold
from cvae_exp.resume import override_key

RESUMES_FILE = Path(".hydra") / "resumes.yaml"
# What a resumed run cannot change: the model, what it is trained on and how (data.root may move)
RUN_DEFINING = ("model", "conditioning", "task", "prior", "data", "loss", "optim", "scheduler", "seed")


class Preflight(Callback):
    def __init__(self, resuming: bool = False):
        self.resuming = resuming  # a resumed sweep (cvae_exp/resume.py) goes on in its own, used, directory

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        with _reported():
            record = None
            with read_write(config), open_dict(config):
                if config.get("resume"):
                    record = continue_run(config)
            first_rank = first_process()  # DDP starts the command again per rank, srun once per task
            if record is not None and first_rank and not hold(Path(config.resume) / "train.log"):
                raise UserInputError(
                    f"Cannot resume resume={display_path(Path(config.resume))}: the run is running now (another "
                    "process holds its train.log); wait for it to end, or stop it (Ctrl-C, kill) and resume then."
                )
            HydraConfig.instance().set_config(config)  # resolves ${hydra:...} in the run dir
            with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
                config.hydra.runtime.output_dir = os.path.abspath(str(config.hydra.run.dir))
            HydraConfig.instance().set_config(config)
            check_job(config)
            check_writable(Path(config.hydra.runtime.output_dir), "hydra.run.dir")
            if first_rank and record is None:
                claim(config, "run")
                HydraConfig.instance().set_config(config)
            elif first_rank:
                record_resume(Path(config.hydra.runtime.output_dir), *record)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        with _reported():
            sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
            swept = [override for override in config.hydra.overrides.task if override.startswith("resume=")]
            if config.get("resume") or swept:
                value = config.get("resume") or swept[0].partition("=")[2]
                raise UserInputError(
                    f"resume={value} cannot be part of a multirun (-m): resume=<run dir> continues one run "
                    "(cvae-train resume=<run dir>, once per run) and resume=<sweep dir> a whole sweep "
                    "(cvae-train resume=<sweep dir>)."
                )
            if self.resuming:
                _refuse_a_live_sweep(sweep_dir)
            check_sweep(config)  # before claim() makes the sweep dir and Hydra writes multirun.yaml
            local = config.hydra.launcher._target_.endswith(
                ("BasicLauncher", "JoblibLauncher")
            )  # jobs run on this machine
            jobs = []
            for number, overrides in enumerate(job_overrides(config)):
                try:
                    job = compose(
                        config_name=kwargs.get("config_name", "train"), overrides=overrides, return_hydra_config=True
                    )
                except HydraException as error:
                    raise composition_error(error, overrides) from None
                with read_write(job.hydra.runtime), open_dict(job.hydra.runtime):
                    job.hydra.runtime.output_dir = str(sweep_dir / str(number))
                prefix = f"In job {number} ({' '.join(overrides) or 'no overrides'}): " if number or overrides else ""
                HydraConfig.instance().set_config(job)
                with _in_job(prefix):  # every job's values first: a bad one in job 9 need not wait for torch
                    check_values(task_config(job))
                jobs.append((job, prefix))
            data_checked: set[str] = set()
            for job, prefix in jobs:
                HydraConfig.instance().set_config(job)
                check_job(job, devices_here=local, data_checked=data_checked, prefix=prefix)
            HydraConfig.instance().set_config(config)
            check_writable(sweep_dir, "hydra.sweep.dir")
            if not self.resuming:
                claim(config, "sweep")
            sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()  # claim() may have renamed it
            sweep_dir.mkdir(parents=True, exist_ok=True)
            hold(sweep_dir)  # while this process lives, the sweep is live

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        """One line for the whole sweep; a non-zero exit if any job failed."""
        sweep_dir = Path(str(config.hydra.sweep.dir))
        statuses = {}
        for metrics_file in sorted(sweep_dir.glob("*/metrics.json")):
            status = json.loads(metrics_file.read_text()).get("status", "unknown")
            statuses.setdefault(status, []).append(metrics_file.parent.name)
        counts = ", ".join(
            f"{len(jobs)} {status}" + (f" (jobs {' '.join(jobs)})" if status == "failed" else "")
            for status, jobs in statuses.items()
        )
        place = display_path(sweep_dir)
        print(
            f"cvae-train: multirun finished: {counts or 'no job wrote metrics.json'}. Sweep dir: {place}; "
            f"tabulate it with: cvae-table {place}"
        )
        if "failed" in statuses:
            sys.exit(1)


def _refuse_a_live_sweep(sweep_dir: Path) -> None:
    """A resumed sweep may not run beside the process that runs it still, nor beside a live job of it."""
    if held_elsewhere(sweep_dir):
        raise UserInputError(
            f"Cannot resume the sweep {display_path(sweep_dir)}: it is running now (another process holds its "
            "directory's lock); wait for it to end, or stop it (Ctrl-C, kill) and resume then."
        )
    live = sorted(log.parent.name for log in sweep_dir.glob("*/train.log") if held_elsewhere(log))
    if live:
        raise UserInputError(
            f"Cannot resume the sweep {display_path(sweep_dir)}: its job{'s' * (len(live) > 1)} {' '.join(live)} "
            "run now (another process, here or on another node, holds their train.log); wait for them to end, or "
            "stop them (scancel, kill) and resume then."
        )


class _reported:
    """Bad input ends as one paragraph and exit 2; anything else as a traceback and exit 1.
    Hydra would only warn about an exception in a callback and run unchecked."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        if isinstance(error, UserInputError):
            report_and_exit(error, "cvae-train")
        if isinstance(error, Exception):
            traceback.print_exception(error)
            sys.exit(1)
        return False


def display_path(path: Path) -> str:
    """Relative to the working directory when inside it, as a user would type it."""
    return os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd()) else str(path)


def task_config(config: DictConfig) -> DictConfig:
    """A job's config as the task function gets it: a copy without its `hydra` node."""
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


@contextmanager
def _in_job(prefix: str):
    """A bad value in a multirun names its job first."""
    try:
        yield
    except UserInputError as error:
        raise UserInputError(f"{prefix}{error}") from None


def check_job(
    config: DictConfig, devices_here: bool = True, prefix: str = "", data_checked: set[str] | None = None
) -> None:
    """Validate a job's config and load its data, once per distinct data config
    (`data_checked` remembers them)."""
    task = task_config(config)
    data_checked = set() if data_checked is None else data_checked
    with _in_job(prefix):
        validate(task, devices_here)
        data = OmegaConf.to_yaml(task.data, resolve=True)
        if devices_here and data not in data_checked:  # a remote job may read its data from another root
            build_data(task.data)
            data_checked.add(data)


def job_overrides(config: DictConfig) -> list[list[str]]:
    """The override lists of a multirun's jobs, expanded by Hydra's basic sweeper. Other
    sweepers (Optuna) draw their own values; their fixed overrides are checked here, and a
    drawn value that fails is recorded in that job's metrics.json."""
    arguments = list(config.hydra.overrides.task)
    if config.hydra.sweeper._target_.endswith(("BasicSweeper", "ResumableSweeper")):
        arguments = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()] + arguments
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    (jobs,) = BasicSweeper.split_arguments(parser.parse_overrides(arguments), max_batch_size=None)
    return [list(job) for job in jobs]


# What makes a directory a run's (or a sweep's): another run may not write into it
RUN_MARKS = (".hydra", "metrics.json", "checkpoints", "train.log")
SWEEP_MARKS = ("multirun.yaml", *RUN_MARKS)  # a sweep may not write into a run's directory either


def claim(config: DictConfig, kind: str) -> None:
    """Make hydra.run.dir (kind "run") or hydra.sweep.dir ("sweep") this run's own: a directory
    that holds another run is refused, or, where its name was generated from the time
    (${now:...}), replaced by the first free `<name>-2`, `<name>-3`, ... Creating the directory
    is the claim (mkdir fails where another process made it first), so that two runs started in
    the same second get two directories."""
    key, marks = (f"hydra.{kind}.dir", RUN_MARKS if kind == "run" else SWEEP_MARKS)
    node = config.hydra.run if kind == "run" else config.hydra.sweep
    generated = "${now:" in str(OmegaConf.to_container(node, resolve=False)["dir"])
    directory = Path(str(node.dir)).absolute()
    used = lambda path: path.is_dir() and any((path / mark).exists() for mark in marks)  # noqa: E731
    if used(directory) and not generated and (held_elsewhere(directory / "train.log") or held_elsewhere(directory)):
        raise UserInputError(
            f"The directory {key}={str(directory)!r} is in use: a {kind} is writing there now (another process "
            f"holds its lock). Choose a new {key}, or leave it to the default (one per start)."
        )
    if used(directory) and not generated:
        found = ", ".join(mark for mark in marks if (directory / mark).exists())
        raise UserInputError(
            f"The directory {key}={str(directory)!r} holds another {kind} ({found}); "
            f"a {kind} directory belongs to one {kind}. Choose a new {key}, or leave it to the default (one per start)"
            + (
                f", or continue that {kind} with resume={display_path(directory)}."
                if kind == "run" or (directory / "multirun.yaml").is_file()
                else "."
            )
        )
    if not generated:
        return
    candidate, number = directory, 1
    while True:
        try:
            candidate.mkdir(parents=True)
            break
        except FileExistsError:  # another run's, even if still empty: it may have just made it
            number += 1
            candidate = directory.with_name(f"{directory.name}-{number}")
    if candidate != directory:
        with read_write(node), open_dict(node):
            node.dir = str(candidate)
        with read_write(config.hydra.overrides), open_dict(config.hydra.overrides):
            config.hydra.overrides.hydra.append(f"{key}={candidate}")  # each sweep job composes its config anew
        if kind == "run":
            with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
                config.hydra.runtime.output_dir = str(candidate)


def check_writable(directory: Path, key: str) -> None:
    """The nearest existing folder of `directory` must take a file; the probe is unnamed
    and gone at once, so nothing is left behind."""
    existing = directory
    while not existing.exists():
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise UserInputError(
            f"Cannot write the output directory {key}={str(directory)!r}: {error.strerror or error}. "
            f"Run from a writable directory, or set paths.log_dir (or {key}) to a writable one."
        ) from None


def continue_run(config: DictConfig) -> tuple[dict, list[str]]:
    """Replace the composed config by the saved one of the run being resumed (plus value
    overrides such as trainer.max_epochs=N), so that the run trains on in its own directory
    from checkpoints/last.ckpt. Hydra is told not to rewrite .hydra/: the original config
    and overrides stay; `record_resume` adds the new values and a record once all checks pass."""
    run_dir = Path(config.resume).resolve()
    saved_config, last = run_dir / ".hydra" / "config.yaml", run_dir / "checkpoints" / "last.ckpt"
    if not saved_config.is_file():
        raise UserInputError(
            f"Cannot resume resume={config.resume!r}: it is not a run directory (no .hydra/config.yaml there); "
            f"pass the directory of a run cvae-train made, e.g. outputs/runs/<date_time>."
        )
    if not last.is_file():
        raise UserInputError(
            f"Cannot resume resume={config.resume!r}: checkpoints/last.ckpt is missing (a run with callbacks=none "
            f"writes none, and a run killed in its first epoch had none yet); start a new run instead."
        )
    saved = OmegaConf.load(saved_config)
    overrides = [override for override in config.hydra.overrides.task if not override.startswith("resume=")]
    for override in OverridesParser.create().parse_overrides(overrides):
        refuse_change(config.resume, saved, override, overrides)
        OmegaConf.update(saved, override.key_or_group, override.value(), force_add=True)
    done = _epochs_in(last, run_dir)
    max_epochs = saved.trainer.max_epochs
    metrics_file = run_dir / "metrics.json"
    finished = metrics_file.is_file() and json.loads(metrics_file.read_text()).get("status") in ("completed", "debug")
    if max_epochs < done or (finished and max_epochs == done):
        state = "is finished" if finished else "has checkpoints/last.ckpt"
        raise UserInputError(
            f"Cannot resume resume={config.resume!r} with trainer.max_epochs={max_epochs}: the run {state} after "
            f"{done} epochs; pass trainer.max_epochs={done + 1} or more to train it longer."
        )
    new_config = OmegaConf.to_container(saved)
    saved.resume, saved.ckpt_path = str(run_dir), str(last)
    for key in [key for key in config if key != "hydra"]:
        del config[key]
    config.merge_with(saved)
    config.hydra.run.dir = str(run_dir)
    config.hydra.output_subdir = None
    config.hydra.runtime.choices = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.runtime.choices
    return new_config, overrides


def refuse_change(resume: str, saved: DictConfig, override, overrides: list[str]) -> None:
    """Refuse an override of what defines the resumed run (`saved`, its config): a config group,
    or a value of RUN_DEFINING (data.root may move); the message ends with the new run's command,
    unpunctuated, so that it can be copied as it stands."""
    run_dir = Path(resume).resolve()
    key = override.key_or_group
    if key in saved and isinstance(saved[key], DictConfig):
        raise UserInputError(
            f"Cannot change the config group {key}={override.value()} of a resumed run: "
            f"resume={resume!r} continues that run with its own config; only values "
            f"such as trainer.max_epochs=N may be overridden. Start a new run with its overrides "
            f"and the new choice: {_new_run(run_dir, overrides)}"
        )
    top = key.split(".")[0]
    if top in RUN_DEFINING and key != "data.root" and OmegaConf.select(saved, key) != override.value():
        checkpoint = f"ckpt_path={resume.rstrip('/')}/checkpoints/last.ckpt"
        # ckpt_path brings the run's weights, optimizer, scheduler and random states; a new loss applies over them
        remark = {
            "loss": f"{checkpoint} starts it from that run's weights. ",
            "optim": f"The command leaves out {checkpoint}, which would restore that run's optimizer state over it. ",
            "scheduler": f"The command leaves out {checkpoint}, which would restore that run's scheduler state over "
            "it. ",
            "seed": f"The command leaves out {checkpoint}, which would restore that run's random states over it. ",
        }.get(top, "")  # another network or data: that run's checkpoint cannot start it
        raise UserInputError(
            f"Cannot change {key} (to {override.value()!r}, saved {OmegaConf.select(saved, key)!r}) of a "
            "resumed run: "
            f"resume={resume!r} trains on the checkpoint of that run, whose "
            f"{', '.join(RUN_DEFINING)} are fixed. {remark}"
            f"Start a new run with its overrides and the new value: {_new_run(run_dir, overrides)}"
            + (f" {checkpoint}" if top == "loss" else "")
        )


def refuse_resume_changes(arguments: list[str]) -> None:
    """The checks of `refuse_change` on the command line, before it is composed: a key of the
    resumed run's own model (model.codebook_size of a VQ-VAE) is not in the default config the
    line composes with, and Hydra would call it unknown."""
    resumes = [argument.partition("=")[2] for argument in arguments if argument.startswith("resume=")]
    saved_config = Path(resumes[-1]).expanduser() / ".hydra" / "config.yaml" if resumes else None
    if saved_config is None or not saved_config.is_file() or {"-m", "--multirun"} & set(arguments):
        return  # not a run's resume (a sweep's, a multirun that Preflight refuses, a directory continue_run refuses)
    overrides = [a for a in override_arguments(arguments) if not a.startswith("resume=") and "=" in a]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return  # bad syntax: the composition says so
    saved = OmegaConf.load(saved_config)
    for override in parsed:
        if not override.key_or_group.startswith("hydra") and not override.is_sweep_override():
            refuse_change(resumes[-1], saved, override, overrides)


def _new_run(run_dir: Path, overrides: list[str]) -> str:
    """The command of a new run like the one in `run_dir` (its own overrides: its config groups,
    loss=vqvae say, and values), with the `overrides` of the refused resume in place of its own."""
    try:
        saved = [str(item) for item in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")]
    except (OSError, ValueError):  # a run without its overrides file: the new overrides alone
        saved = []
    changed = {override_key(item) for item in overrides}
    return shlex.join(["cvae-train", *(item for item in saved if override_key(item) not in changed), *overrides])


def _epochs_in(last: Path, run_dir: Path) -> int:
    """Epochs done by last.ckpt; if it cannot be read, name the intact epoch checkpoint."""
    import torch

    try:
        return epochs_done(torch.load(last, map_location="cpu", weights_only=False))
    except Exception as error:  # truncated or overwritten
        intact = []
        for candidate in sorted((run_dir / "checkpoints").glob("epoch_*.ckpt"), reverse=True):
            try:
                intact.append((candidate, epochs_done(torch.load(candidate, map_location="cpu", weights_only=False))))
                break
            except Exception:
                continue
        advice = (
            f"{intact[0][0].relative_to(run_dir)} is intact ({intact[0][1]} epochs): copy it over last.ckpt "
            f"(cp {intact[0][0]} {last}) and resume again, or start a new run from it with ckpt_path={intact[0][0]}"
            if intact
            else "no intact epoch checkpoint is left; start a new run"
        )
        raise UserInputError(
            f"Cannot resume resume={str(run_dir)!r}: checkpoints/last.ckpt cannot be read ({type(error).__name__}); "
            f"it may be truncated. {advice}."
        ) from None


def record_resume(run_dir: Path, new_config: dict, overrides: list[str]) -> None:
    """The run's config with the resume's values, and one more entry in .hydra/resumes.yaml."""
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(new_config)))
    append_resume(run_dir, overrides)


def append_resume(run_dir: Path, overrides: list[str]) -> None:
    """One more entry in .hydra/resumes.yaml: when, with which overrides, and how the segment
    before it ended (its metrics.json's status, signal and reason; `killed` where it wrote
    none), which the resumed run's metrics.json replaces (and copies the entries)."""
    try:
        ended = json.loads((run_dir / "metrics.json").read_text())
        ended = {key: ended[key] for key in ("status", "signal", "reason") if key in ended}
    except (OSError, ValueError):
        ended = {"status": "killed (no metrics.json)"}
    entry = {"time": datetime.now().isoformat(timespec="seconds"), "overrides": overrides, "after": ended}
    resumes = read_resumes(run_dir) + [entry]
    (run_dir / RESUMES_FILE).write_text(yaml.safe_dump(resumes, sort_keys=False))


def read_resumes(run_dir: Path) -> list[dict]:
    """The record of each `resume=` of a run, oldest first (metrics.json copies it)."""
    path = run_dir / RESUMES_FILE
    return (yaml.safe_load(path.read_text()) or []) if path.is_file() else []
