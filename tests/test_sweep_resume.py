"""`cvae-train resume=<sweep dir>`: a killed sweep goes on in its own directory; finished jobs
are kept, interrupted ones continue from their last.ckpt, failed ones run again only when asked."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra_plugins.cvae_exp.sweeper import job_plan

from tests.helpers import run_cli

FAST = [
    "model.encoder.hidden_dims=[32]",
    "model.decoder.hidden_dims=[32]",
    "callbacks.progress_bar.refresh_rate=0",
    "eval.samples_per_class=5",
    "eval.classifier_metrics=false",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
]
LAUNCHERS = {"local": [], "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]}


def _status(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())


def _write_job(directory: Path, status: str | None, checkpoint: bool) -> Path:
    (directory / "checkpoints").mkdir(parents=True)
    if status:
        (directory / "metrics.json").write_text(json.dumps({"status": status}))
    if checkpoint:
        (directory / "checkpoints" / "last.ckpt").write_bytes(b"")
    return directory


def test_each_job_of_a_resumed_sweep_is_kept_continued_or_run_again(tmp_path):
    assert job_plan(None, rerun_failed=False) == "start"
    assert job_plan(_write_job(tmp_path / "done", "completed", True), False) == "keep"
    assert job_plan(_write_job(tmp_path / "stopped", "interrupted", True), False) == "continue"
    assert job_plan(_write_job(tmp_path / "killed", None, True), False) == "continue"  # SIGKILL: no record
    assert job_plan(_write_job(tmp_path / "early", None, False), False) == "rerun"  # killed in its first epoch
    assert job_plan(_write_job(tmp_path / "failed", "failed", True), False) == "keep failed"
    assert job_plan(tmp_path / "failed", rerun_failed=True) == "rerun"


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, f"the sweep ended before {path} appeared: {process.communicate()}"
        assert time.monotonic() < deadline, f"{path} did not appear in {seconds} s"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_killed_sweep_resumes_in_its_own_directory(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    # job 1 trains long enough to be killed mid-way, after its first epoch's last.ckpt
    arguments = ["-m", *FAST, *LAUNCHERS[launcher], "trainer.max_epochs=2,30,2", f"hydra.sweep.dir={sweep}"]
    process = subprocess.Popen(
        [sys.executable, "-m", "cvae_exp.train", *arguments],
        cwd=tmp_path,
        start_new_session=True,  # its own process group: the kill takes the launcher's workers too
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(sweep / "0" / "metrics.json", process)
    _wait_for(sweep / "1" / "checkpoints" / "last.ckpt", process)
    os.killpg(process.pid, signal.SIGKILL)  # the machine is lost: nothing is recorded
    process.communicate()
    assert not (sweep / "1" / "metrics.json").exists()
    first = (sweep / "0" / "metrics.json").stat().st_mtime_ns

    result = run_cli(f"resume={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 finished, kept: jobs 0" in result.stdout
    assert "continued from their last.ckpt: jobs 1" in result.stdout
    assert (sweep / "0" / "metrics.json").stat().st_mtime_ns == first  # not rerun
    assert [_status(sweep / str(job))["status"] for job in range(3)] == ["completed"] * 3
    assert _status(sweep / "1")["epochs"] == 30
    assert "Restoring states from the checkpoint" in (sweep / "1" / "train.log").read_text()
    assert "3 completed" in result.stdout

    table = run_cli(str(sweep), cwd=tmp_path, tool="table")
    assert table.returncode == 0, table.stderr
    rows = (sweep / "table.csv").read_text().splitlines()[1:]
    assert len(rows) == 3  # every job once


@pytest.mark.slow
def test_failed_jobs_run_again_only_when_asked(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", *FAST, "trainer.max_epochs=1", "seed=1,2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record = _status(sweep / "1")
    (sweep / "1" / "metrics.json").write_text(json.dumps({**record, "status": "failed", "reason": "a test"}))

    kept = run_cli(f"resume={sweep}", cwd=tmp_path)
    assert kept.returncode == 1  # the sweep still holds a failed job
    assert "1 failed, kept (hydra.sweeper.rerun_failed=true runs them again): jobs 1" in kept.stdout
    assert _status(sweep / "1")["status"] == "failed"

    rerun = run_cli(f"resume={sweep}", "hydra.sweeper.rerun_failed=true", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "1 run again from the start: jobs 1" in rerun.stdout
    assert _status(sweep / "1")["test"] == record["test"]  # the same job, from the start: the same numbers


def test_a_resumed_sweep_keeps_its_overrides(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    result = run_cli(f"resume={sweep}", "model.latent_dim=4", cwd=tmp_path)
    assert result.returncode == 2
    assert "Cannot change model.latent_dim=4 of a resumed sweep" in result.stderr
    assert sorted(path.name for path in sweep.iterdir()) == ["multirun.yaml"]


def test_a_multirun_over_resume_values_is_refused(tmp_path):
    result = run_cli("-m", "resume=outputs/runs/a,outputs/runs/b", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "resume=outputs/runs/a,outputs/runs/b cannot be part of a multirun (-m)" in result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.iterdir())


def _hold(path: Path) -> subprocess.Popen:
    """A process that holds `path`'s lock as a live run or sweep does, until it is killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from cvae_exp.files import hold; hold({str(path)!r}); print('held', flush=True); "
         "import time; time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.slow  # a sweep of two one-epoch jobs, then three refusals: about 40 s
def test_a_run_or_sweep_that_is_running_now_is_not_resumed_beside_it(tmp_path):
    """Two processes would write one directory: resume waits for a live run, a live sweep, or
    a live job of a sweep (its train.log locked by the process that trains it, here or on a node)."""
    sweep = tmp_path / "sweep"
    result = run_cli("-m", *FAST, "trainer.max_epochs=1", "seed=1,2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    job = sweep / "1"
    (job / "metrics.json").write_text(json.dumps({**_status(job), "status": "interrupted", "signal": "SIGTERM"}))
    before = {path: path.read_bytes() for path in sorted(sweep.rglob("*")) if path.is_file()}
    for held, command, message in (
        (job / "train.log", [f"resume={job}", "trainer.max_epochs=2"], "the run is running now"),
        (sweep, [f"resume={sweep}"], "it is running now (another process holds its directory's lock)"),
        (job / "train.log", [f"resume={sweep}"], "its job 1 run now"),
    ):
        holder = _hold(held)
        try:
            refused = run_cli(*command, cwd=tmp_path)
        finally:
            holder.kill()
            holder.wait()
        assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
        assert message in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
        assert {path: path.read_bytes() for path in sorted(sweep.rglob("*")) if path.is_file()} == before

    resumed = run_cli(f"resume={sweep}", cwd=tmp_path)  # the holder is gone: the job continues
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _status(job)["status"] == "completed" and _status(job)["resumes"][0]["overrides"] == [f"resume={sweep}"]


@pytest.mark.slow  # a sweep interrupted in its second job: about 30 s
def test_an_interrupted_sweep_job_names_the_sweeps_resume_command(tmp_path):
    sweep = tmp_path / "sweep"
    process = subprocess.Popen(
        [sys.executable, "-m", "cvae_exp.train", "-m", *FAST, "trainer.max_epochs=1,60", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait_for(sweep / "1" / "checkpoints" / "last.ckpt", process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, out[-2000:] + err[-2000:]
    assert "continue the sweep with: cvae-train resume=sweep. Run dir: sweep/1" in out + err  # paths from cwd
    assert "resume=sweep/1" not in out + err
