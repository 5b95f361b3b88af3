"""`cvae-train`: validate the composed config, fit, validate and test the best checkpoint,
write metrics.json, and end with one line that says how the run ended.

Only Hydra and OmegaConf are imported here: a bad value is refused before torch and
Lightning load (cvae_exp/run.py, imported once the config has passed)."""

import atexit
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from cvae_exp.checks import validate
from cvae_exp.compose import (
    CONFIG_NAME,
    CONFIG_PATH,
    ConfigSource,
    compose_train,
    config_source,
    import_from_working_directory,
    override_arguments,
)
from cvae_exp.errors import RunInterrupted, TrainingDiverged, UserInputError, report_and_exit
from cvae_exp.files import first_process, hold, write_json
from cvae_exp.preflight import display_path, read_resumes, refuse_resume_changes
from cvae_exp.resume import resumed_sweep_arguments
from cvae_exp.summary import run_summary

log = logging.getLogger("cvae-train")


def closing_line(metrics: dict[str, Any], run_dir: Path, seconds: float) -> str:
    """How the run ended, where it lives and its test score, in one line."""
    place = display_path(run_dir)
    if metrics["status"] == "failed":
        return f"cvae-train: failed after {seconds:.0f} s: {metrics['reason']} Run dir: {place}"
    if metrics["status"] == "interrupted":
        how = f"continue it with: cvae-train resume={place}" if metrics["resumable"] else "it kept no checkpoint"
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            how = continue_sweep_hint(metrics["resumable"])
        elif metrics.get("stage") == "test":
            how = f"its training had finished; test its best checkpoint with: cvae-eval {place}"
        return f"cvae-train: interrupted by {metrics['signal']} after {seconds:.0f} s; {how}. Run dir: {place}"
    test = metrics["test"]
    if "score" in test:  # the label task, graded by the lab's formula
        sampler = f", z from {metrics['sampler']}" if metrics.get("sampler", "prior") != "prior" else ""
        result = (
            f"test score {test['score']:.2f} (ssim {test['ssim']:.4f}, mse {test['mse']:.4f}, fid "
            f"{test['fid']:.2f}{sampler})"
        )
        if "classifier_fid" in test:
            accuracy = (
                f"samples classified as their class {test['sample_accuracy']:.1%}, "
                if "sample_accuracy" in test
                else ""
            )
            result += (
                f"; {accuracy}classifier fid {test['classifier_fid']:.2f} (classifier test accuracy "
                f"{test['classifier_accuracy']:.1%})"
            )
    else:  # another task or image size: its objective and the error of a prediction over the target pixels
        result = f"test loss {test['loss']:.2f} (mse {test['mse']:.4f} over the target pixels)"
        groups = {key.removeprefix("sample_accuracy_"): value for key, value in test.items()
                  if key.startswith("sample_accuracy_")}  # fmt: skip
        if groups:
            result += "; samples with the attributes asked for: " + ", ".join(
                f"{name} {value:.1%}" for name, value in groups.items()
            )
        elif "sample_accuracy" in test:
            result += f"; samples classified as their class {test['sample_accuracy']:.1%}"
    if "nll" in test:
        result += f", -log p {test['nll']:.2f} nats (negative ELBO {test['neg_elbo']:.2f})"
    return (
        f"cvae-train: {metrics['status']} in {seconds:.0f} s ({metrics['epochs']} "
        f"epoch{'s' * (metrics['epochs'] != 1)} in all): "
        f"{result}. Run dir: {place}"
    )


def continue_sweep_hint(resumable: bool) -> str:
    """How to go on with the sweep a job belongs to: its job alone would leave the others undone,
    and an Optuna trial's job outside its study would be counted by no one."""
    sweep = HydraConfig.get().sweep.dir
    kept = "" if resumable else " (this job kept no checkpoint: it starts again)"
    if "optuna" in HydraConfig.get().sweeper._target_.lower():
        return (
            f"continue the search by running its command again with hydra.sweep.dir={display_path(Path(sweep))}: "
            f"this trial is retried{kept}"
        )
    return f"continue the sweep with: cvae-train resume={display_path(Path(sweep))}{kept}"


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def job(cfg: DictConfig) -> float:
    """One job: returns the best checkpoint's validation `optimized_metric` (what a
    sweeper such as Optuna optimises). A failure is recorded in metrics.json; a single
    run then exits non-zero with one paragraph, a multirun's job returns NaN so that the
    other jobs run (the sweep's summary exits non-zero at the end)."""
    logging.captureWarnings(True)  # library warnings go to train.log (configs/hydra/default.yaml), not the console
    run_dir = Path(cfg.paths.output_dir)
    if first_process() and not hold(run_dir / "train.log"):  # a resumed sweep's job that another process runs
        error = UserInputError(
            f"The run directory {display_path(run_dir)} is in use: another process runs there now (it holds its "
            "train.log); nothing was written."
        )
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error(f"cvae-train: {error}")
            return float("nan")
        report_and_exit(error, "cvae-train")
    try:
        metrics = execute(cfg)
    except RunInterrupted as interrupted:  # a sweep stops too: its remaining jobs would be signalled alike
        sys.exit(RunInterrupted.EXIT_STATUS[interrupted.signal])
    except (UserInputError, TrainingDiverged) as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return float("nan")
        report_and_exit(error, "cvae-train", status=2 if isinstance(error, UserInputError) else 1)
    if not metrics:  # a data-parallel rank other than 0
        return float("nan")
    return metrics["val"][cfg.optimized_metric.removeprefix("val/")]


def execute(cfg: DictConfig) -> dict:
    """Validate and train one run, write its metrics.json and log the closing line, also
    when it fails (then the error propagates); returns what metrics.json holds ({} on a
    data-parallel rank other than 0)."""
    start, run_dir = time.perf_counter(), Path(cfg.paths.output_dir)
    try:
        validate(cfg)
        from cvae_exp.run import train  # torch and Lightning, once the config has passed

        metrics = train(cfg)
    except RunInterrupted as interrupted:
        metrics = {
            "status": "interrupted",
            "signal": interrupted.signal,
            "stage": interrupted.stage,  # fit, or test: the training had finished
            "resumable": interrupted.stage == "fit" and (run_dir / "checkpoints" / "last.ckpt").is_file(),
            "resumes": read_resumes(run_dir),
            "hparams": run_summary(cfg),
        }
        if first_process():
            write_json(run_dir / "metrics.json", metrics)
            end_progress_bar_line()
            log.warning(closing_line(metrics, run_dir, time.perf_counter() - start))
        raise
    except Exception as error:
        reason = (
            str(error) if isinstance(error, (UserInputError, TrainingDiverged)) else f"{type(error).__name__}: {error}"
        )
        metrics = {"status": "failed", "reason": reason, "hparams": run_summary(cfg)}
        if first_process():  # one record under data parallelism
            write_json(run_dir / "metrics.json", metrics)
            end_progress_bar_line()
            log.error(closing_line(metrics, run_dir, time.perf_counter() - start))
        raise  # a bug (not bad input, not divergence): Hydra shows the traceback
    if metrics:
        write_json(run_dir / "metrics.json", metrics)
        log.info(closing_line(metrics, run_dir, time.perf_counter() - start))
    return metrics


def end_progress_bar_line() -> None:
    """Close the progress bars that a run stopped mid-loop leaves open (Lightning closes them
    at the end of each loop only): an open bar's line has no newline yet, so the closing line
    would be glued to it, and the bar would be drawn once more at exit, below the error.
    Closing draws its last state and ends its line; where no bar was drawn, nothing is written.
    tqdm keeps its open bars in `tqdm._instances`, the set its own `tqdm.write` clears them by."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main() -> None:
    """The console script; Ctrl-C outside training (at start-up, in the checks, while the data
    loads) ends it with one line, not a traceback. During training, Interruption handles it."""
    try:
        run_console_script()
    except KeyboardInterrupt:
        print(
            "\ncvae-train: interrupted (Ctrl-C) outside training: no checkpoint or metrics.json was written.",
            file=sys.stderr,
        )
        sys.exit(RunInterrupted.EXIT_STATUS["SIGINT"])


def run_console_script() -> None:
    """The console script's work. Its arguments are composed here first, so that a composition
    error (an unknown option or key) reads as one paragraph, not as Hydra's page; with
    `--cfg`, Hydra prints the config without running a job (or its callbacks), so that
    config is validated here too. A sweep's values are composed per job by Preflight.
    A user's `_target_`s may live in the working directory."""
    import_from_working_directory()
    register_plugins()
    try:
        sys.argv[1:] = resumed_sweep_arguments(sys.argv[1:])
        source, sys.argv[1:] = config_flags(sys.argv[1:])
        sys.argv[1:] = help_without_sweeps(sys.argv[1:])
        refuse_resume_changes(sys.argv[1:])  # before the composition, which knows only the default model's keys
        cfg = compose_train(fixed_overrides(sys.argv[1:]), output_dir=".", source=source)
        refuse_sweeps_outside_multirun(sys.argv[1:])  # after it: a config may set hydra.mode (hparams_search=optuna)
        if "--cfg" in sys.argv or "-c" in sys.argv:
            validate(cfg, devices_here=False)
    except UserInputError as error:
        report_and_exit(error, "cvae-train")
    job()
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN:
        exit_without_teardown()


def register_plugins() -> None:
    """Hydra finds plugins by listing the directories of the hydra_plugins namespace, where an
    editable install has none (an import hook maps hydra_plugins.cvae_exp to cvae_exp/plugins/):
    ours are registered by hand, as Hydra's Plugins.register allows. After Hydra's own scan,
    which executes its plugin modules anew: ours must subclass the classes that scan made."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()
    from hydra_plugins.cvae_exp.sweeper import ResumableSweeper

    plugins.register(ResumableSweeper)


CONFIG_FLAGS = {
    "--config-path": "config_path",
    "-cp": "config_path",
    "--config-name": "config_name",
    "-cn": "config_name",
    "--config-dir": "config_dir",
    "-cd": "config_dir",
}


def config_flags(arguments: list[str]) -> tuple[ConfigSource, list[str]]:
    """The config source that Hydra's flags name, and the arguments with its directories
    made absolute: Hydra reads a relative --config-path from this file's directory, a user
    means the working directory."""
    values, rewritten, remaining = {}, [], iter(arguments)
    for argument in remaining:
        flag, equals, value = argument.partition("=")
        if flag not in CONFIG_FLAGS:
            rewritten.append(argument)
            continue
        value = value if equals else next(remaining, None)
        if value is None:
            raise UserInputError(f"{flag} needs a value: a directory (-cp, -cd) or a config name (-cn).")
        values[CONFIG_FLAGS[flag]] = value
    source = config_source(**values)
    for flag, key in (
        ("--config-path", "config_path"),
        ("--config-name", "config_name"),
        ("--config-dir", "config_dir"),
    ):
        if key in values:
            rewritten += [flag, getattr(source, key)]
    return source, rewritten


def exit_without_teardown() -> None:
    """End a finished single run now. Python's teardown of the ~4000 modules that torch and
    Lightning import takes 1.5-2 s on a CPU, and a run has nothing left for it to clean up:
    the exit handlers that libraries registered (event files, log handlers) still run, through
    CPython's own `atexit._run_exitfuncs` (no public API does this). A multirun exits the
    usual way: its launcher's worker processes are shut down by Python's teardown."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def help_without_sweeps(arguments: list[str]) -> list[str]:
    """--help shows the config without a sweep's values: Hydra composes its help as a single
    run, which a sweep's key=a,b would end in a traceback."""
    if not {"--help", "-h", "--hydra-help"} & set(arguments):
        return arguments
    sweeps = {argument for argument in override_arguments(arguments) if is_sweep(argument)}
    return [argument for argument in arguments if argument not in sweeps]


def refuse_sweeps_outside_multirun(arguments: list[str]) -> None:
    """A sweep (key=a,b) needs a multirun (-m, or hydra.mode: MULTIRUN in a config), and Hydra's
    refusal without one is a page that exits 1: refuse it in one paragraph instead. A sweep of
    hydra.* keys is Hydra's to refuse."""
    if {"-m", "--multirun"} & set(arguments) or HydraConfig.get().mode == RunMode.MULTIRUN:
        return
    sweeps = [argument for argument in override_arguments(arguments) if not argument.lstrip("+~").startswith("hydra")]
    sweeps = [argument for argument in sweeps if is_sweep(argument)]
    if sweeps:
        raise UserInputError(
            f"{sweeps[0]} is a sweep over several values, which runs only with -m (--multirun): "
            f"cvae-train -m {shlex.join(arguments)} runs one job for each value. For a list as one value, "
            "write key=[a,b]; for a string that holds a comma, quote it for Hydra inside the shell's quotes: "
            "\"key='a,b'\"."
        )


def fixed_overrides(arguments: list[str]) -> list[str]:
    """The key=value arguments that are no sweep, without the hydra.* keys that do not change
    what is composed."""
    return [
        argument
        for argument in override_arguments(arguments)
        if (not argument.lstrip("+~").startswith("hydra") or argument.lstrip("+~").startswith("hydra.searchpath"))
        and not is_sweep(argument)
    ]


def is_sweep(argument: str) -> bool:
    try:
        (override,) = OverridesParser.create().parse_overrides([argument])
    except HydraException:
        return False  # composing it reports the error
    return override.is_sweep_override()


if __name__ == "__main__":
    main()
