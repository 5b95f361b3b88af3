"""hydra/launcher=slurm on a real SLURM cluster (tests/slurm_cluster.py: one node, this
machine): docs/usage.md's sweep and its DDP job over two tasks on CPUs, and preemption: a job
signalled before its time limit is requeued and continues from its checkpoint in its own run
directory. Each job's stdout and stderr (in the sweep's .submitit/) are in the failure messages.
About 2-3 minutes on 2 cores, most of it the requeued jobs' waits."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.slurm_cluster import SlurmCluster

# docs/usage.md's CPU variant: jobs without GPUs, of one core and 2 GB, on the default partition
LAUNCHER = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
]
FAST = [
    "data=digits",
    "model.encoder.hidden_dims=[32]",
    "model.decoder.hidden_dims=[32]",
    "callbacks.progress_bar.refresh_rate=0",
    "eval.samples_per_class=20",
    "eval.classifier_metrics=false",  # not what these tests look at; training the classifier would double a job
]
SWEEP_TIMEOUT_S = 300
OUTPUT_TAIL = 3000


def job_logs(sweep: Path) -> str:
    """The end of every job task's stdout and stderr that submitit keeps in the sweep's .submitit/."""
    logs = sorted((sweep / ".submitit").glob("*/*_log.*"))
    return "\n".join(f"--- {path} ---\n{path.read_text(errors='replace')[-OUTPUT_TAIL:]}" for path in logs) or (
        f"(no job logs under {sweep / '.submitit'})"
    )


class Sweep:
    """`cvae-train -m ...` (as `python -m cvae_exp.train`) started on the login node, that is
    here; `wait` returns its output once it ends."""

    def __init__(self, cluster: SlurmCluster, cwd: Path, *overrides: str):
        self.cluster, self.dir = cluster, cwd / "sweep"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cvae_exp.train", "-m", *LAUNCHER, *FAST, *overrides, f"hydra.sweep.dir={self.dir}"],
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def report(self, output: str = "") -> str:
        return f"{output[-OUTPUT_TAIL:]}\n{job_logs(self.dir)}\n{self.cluster.logs()}"

    def wait(self) -> str:
        try:
            output, _ = self.process.communicate(timeout=SWEEP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            output, _ = self.process.communicate()
            pytest.fail(f"the sweep did not end in {SWEEP_TIMEOUT_S} s\n{self.report(output)}")
        assert self.process.returncode == 0, f"exit {self.process.returncode}\n{self.report(output)}"
        return output

    def job_id(self) -> str:
        """The SLURM id of a one-job sweep: the name of its folder in .submitit/."""
        (folder,) = [path for path in (self.dir / ".submitit").iterdir() if path.is_dir()]
        return folder.name

    def wait_for(self, condition, what: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = self.process.communicate()[0] if self.process.poll() is not None else ""
                pytest.fail(f"waited for {what}\n{self.report(output)}")
            time.sleep(0.2)


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.slow
def test_a_sweep_runs_its_jobs_on_the_cluster(slurm_cluster, tmp_path):
    sweep = Sweep(slurm_cluster, tmp_path, "trainer=cpu", "trainer.max_epochs=1", "model.latent_dim=8,16")
    output = sweep.wait()
    assert "multirun finished: 2 completed" in output, sweep.report(output)
    for job, latent_dim in (("0", 8), ("1", 16)):
        record = metrics(sweep.dir / job)
        assert record["status"] == "completed" and record["hparams"]["latent_dim"] == latent_dim, sweep.report()


@pytest.mark.slow
def test_ddp_runs_over_two_tasks_of_one_job(slurm_cluster, tmp_path):
    sweep = Sweep(
        slurm_cluster,
        tmp_path,
        "hydra.launcher.tasks_per_node=2",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_epochs=2",
    )
    output = sweep.wait()
    run = sweep.dir / "0"
    assert metrics(run)["status"] == "completed" and metrics(run)["epochs"] == 2, sweep.report(output)
    log = (run / "train.log").read_text()
    assert "distributed_backend=gloo" in log and "MEMBER: 2/2" in log, sweep.report(output)  # SLURM's two tasks
    task_logs = sorted((sweep.dir / ".submitit").glob("*/*_[01]_log.out"))
    assert len(task_logs) == 2 and all("Job completed successfully" in path.read_text() for path in task_logs), (
        sweep.report(output)
    )


# How a job is preempted -> (the command, with the job id to append; what its stdout says once
# the first start has stopped). USR2 is the signal SLURM sends a submitit job signal_delay_s
# before its time limit (and a preemption sends); the job saves its checkpoint and requeues itself.
# `scontrol requeue` is the scheduler requeueing it (PreemptMode=REQUEUE): SIGTERM, then a new start.
PREEMPTIONS = {
    "USR2": (["scancel", "--signal=USR2"], "Requeued job"),
    "requeue": (["scontrol", "requeue"], "interrupted by SIGTERM"),
}


@pytest.mark.slow
@pytest.mark.parametrize("how", PREEMPTIONS)
def test_a_preempted_job_is_requeued_and_continues_from_its_checkpoint(slurm_cluster, tmp_path, how):
    command, stopped = PREEMPTIONS[how]
    epochs = 15
    sweep = Sweep(slurm_cluster, tmp_path, "trainer=cpu", f"trainer.max_epochs={epochs}", "data.batch_size=16")
    run, last = sweep.dir / "0", sweep.dir / "0" / "checkpoints" / "last.ckpt"
    sweep.wait_for(lambda: any(run.glob("checkpoints/epoch_*.ckpt")), "the job's first epoch")
    job = sweep.job_id()
    slurm_cluster.run(*command, job)
    sweep.wait_for(lambda: stopped in job_logs(sweep.dir), f"the job to stop ({stopped!r})")
    before = torch.load(last, map_location="cpu", weights_only=False)  # the requeued start is not running yet
    output = sweep.wait()

    assert 1 <= before["epoch"] < epochs - 1, f"preempted at epoch {before['epoch']}\n{sweep.report(output)}"
    entries = sorted(path.name for path in sweep.dir.iterdir())
    assert entries == [".submitit", "0", "multirun.yaml"], sweep.report(output)  # one run dir, the job's own
    record = metrics(run)
    assert record["status"] == "completed" and record["epochs"] == epochs, sweep.report(output)
    log = (run / "train.log").read_text()
    assert f"Requeued SLURM job (restart 1): continuing from {last}" in log, sweep.report(output)
    assert f"Restored all states from the checkpoint at {last}" in log, sweep.report(output)
    final = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["epoch"] == epochs - 1 and final["global_step"] > before["global_step"], sweep.report(output)
    assert "multirun finished: 1 completed" in output, sweep.report(output)


@pytest.mark.slow
def test_a_sweep_whose_login_node_was_lost_resumes_on_the_cluster(slurm_cluster, tmp_path):
    sweep = Sweep(slurm_cluster, tmp_path, "trainer=cpu", "data.batch_size=16", "trainer.max_epochs=1,15")
    finished, stopped = sweep.dir / "0", sweep.dir / "1"
    sweep.wait_for(lambda: (finished / "metrics.json").is_file(), "job 0 to finish")
    sweep.wait_for(lambda: any(stopped.glob("checkpoints/epoch_*.ckpt")), "job 1's first epoch")
    os.killpg(sweep.process.pid, signal.SIGKILL)  # the login node's sweep is gone; job 1 trains on
    sweep.process.communicate()
    (job,) = [path.name for path in (sweep.dir / ".submitit").iterdir() if path.name.endswith("_1")]
    slurm_cluster.run("scancel", job)  # and is then cancelled: SIGTERM, a last.ckpt, status interrupted
    deadline = time.monotonic() + 120
    # as a user does before resuming: wait for the jobs to leave the queue; a job that has written its
    # metrics.json may still be exiting, and a resume refuses a job whose process is alive
    while (
        not (stopped / "metrics.json").is_file() or metrics(stopped)["status"] != "interrupted" or slurm_cluster.jobs()
    ):
        assert time.monotonic() < deadline, sweep.report()
        time.sleep(0.2)
    kept = (finished / "metrics.json").stat().st_mtime_ns

    result = subprocess.run(
        [sys.executable, "-m", "cvae_exp.train", f"resume={sweep.dir}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=SWEEP_TIMEOUT_S,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, sweep.report(output)
    assert "1 finished, kept: jobs 0; 1 continued from their last.ckpt: jobs 1" in output, sweep.report(output)
    assert (finished / "metrics.json").stat().st_mtime_ns == kept
    assert metrics(stopped)["status"] == "completed" and metrics(stopped)["epochs"] == 15, sweep.report(output)
    assert "multirun finished: 2 completed" in output, sweep.report(output)
