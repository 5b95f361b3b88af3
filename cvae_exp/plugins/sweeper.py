"""Hydra's basic sweeper, able to continue a sweep in its own directory.

`cvae-train resume=<sweep dir>` runs the sweep again with its recorded overrides into the
same directory (cvae_exp/resume.py). Hydra's basic sweeper would run every job again from
the start; this one first reads what each job's directory says of it (its metrics.json and
checkpoints/last.ckpt) and launches only what is left, under the job numbers (and so in the
directories) the jobs had: a completed job is kept, an interrupted one (or one killed before
it could record anything, that left a last.ckpt) continues from its last.ckpt, a failed one
is kept unless `hydra.sweeper.rerun_failed=true`, and a job that never started, or left no
checkpoint, starts afresh. On a new sweep directory it is Hydra's basic sweeper. Its own
code, as Hydra has no resumable sweeper and any launcher (local, joblib, SLURM) takes a
batch of jobs with their first number.
"""

import json
import shutil
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from cvae_exp.preflight import append_resume, display_path

DONE = ("completed", "debug")


def job_directories(sweep_dir: Path) -> dict[int, Path]:
    """Each job's directory by its number (hydra.job.num in its .hydra/hydra.yaml), whatever
    hydra.sweep.subdir names it."""
    found = {}
    for hydra_file in sweep_dir.glob("*/.hydra/hydra.yaml"):
        number = OmegaConf.load(hydra_file).hydra.job.get("num")
        if number is not None:
            found[int(number)] = hydra_file.parent.parent
    return found


def job_plan(directory: Path | None, rerun_failed: bool) -> str:
    """What a resumed sweep does with one job: keep (or keep failed), continue (from last.ckpt),
    rerun (from the start, in a cleared directory) or start (it has no directory)."""
    if directory is None:
        return "start"
    metrics_file, last = directory / "metrics.json", directory / "checkpoints" / "last.ckpt"
    status = json.loads(metrics_file.read_text()).get("status") if metrics_file.is_file() else None
    if status in DONE:
        return "keep"
    if status == "failed" and not rerun_failed:
        return "keep failed"
    if status in (None, "interrupted") and last.is_file():
        return "continue"
    return "rerun"


class ResumableSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None, params: dict[str, str] | None = None, rerun_failed: bool = False):
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.rerun_failed = rerun_failed

    def sweep(self, arguments: list[str]) -> Any:
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        if not (sweep_dir / "multirun.yaml").is_file():
            return super().sweep(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        (jobs,) = self.split_arguments(parser.parse_overrides(self._parse_config() + arguments), None)
        directories = job_directories(sweep_dir)
        plans = [job_plan(directories.get(number), self.rerun_failed) for number in range(len(jobs))]
        print(resume_summary(plans, sweep_dir), flush=True)
        launches: list[tuple[int, list[list[str]]]] = []  # (first job number, jobs): consecutive numbers each
        for number, (overrides, plan) in enumerate(zip(jobs, plans)):
            if plan.startswith("keep"):
                continue
            if plan == "continue":
                overrides = [*overrides, f"ckpt_path={directories[number] / 'checkpoints' / 'last.ckpt'}"]
                append_resume(directories[number], [f"resume={sweep_dir.resolve()}"])
            elif plan == "rerun":  # its earlier attempt would mix with the new one (checkpoints, event files)
                shutil.rmtree(directories[number])
            if launches and launches[-1][0] + len(launches[-1][1]) == number:
                launches[-1][1].append(overrides)
            else:
                launches.append((number, [overrides]))
        returns = []
        for first, batch in launches:
            for start in range(0, len(batch), self.max_batch_size or len(batch)):
                chunk = batch[start : start + (self.max_batch_size or len(batch))]
                self.validate_batch_is_legal(chunk)
                results = self.launcher.launch(chunk, initial_job_idx=first + start)
                for result in results:
                    _ = result.return_value  # raises where a job raised, as the basic sweeper does
                returns.append(results)
        return returns


def resume_summary(plans: list[str], sweep_dir: Path) -> str:
    """One line: which jobs the resumed sweep keeps, continues, reruns and starts."""
    groups: dict[str, list[int]] = {}
    for number, plan in enumerate(plans):
        groups.setdefault(plan, []).append(number)
    words = {
        "keep": "finished, kept",
        "keep failed": "failed, kept (hydra.sweeper.rerun_failed=true runs them again)",
        "continue": "continued from their last.ckpt",
        "rerun": "run again from the start",
        "start": "started",
    }
    parts = [
        f"{len(groups[plan])} {words[plan]}: jobs {' '.join(map(str, groups[plan]))}"
        for plan in words
        if plan in groups
    ]
    return f"cvae-train: resuming the sweep {display_path(sweep_dir)} of {len(plans)} jobs; " + "; ".join(parts) + "."
