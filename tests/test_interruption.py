"""Every way a run ends is recorded: SIGTERM and SIGINT stop it at a batch boundary with a
resumable last.ckpt, `status: interrupted` and the signal in metrics.json, a closing line that
says how to continue, and the shell's exit status (143, 130); resume= then finishes it."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import run_cli

RUN = [
    "data=digits",
    "model.encoder.hidden_dims=[16]",
    "model.decoder.hidden_dims=[16]",
    "data.batch_size=8",
    "trainer.max_epochs=200",
    "eval.classifier_metrics=false",
    "eval.samples_per_class=5",
    "callbacks.progress_bar.refresh_rate=0",
    "logger=none",
]
# one epoch of a few batches, the test split whole (the grader needs every class)
QUICK = [*RUN[:4], "trainer.max_epochs=1", "+trainer.limit_val_batches=1", *RUN[5:]]


def start(run_dir: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cvae_exp.train", *RUN, f"hydra.run.dir={run_dir}"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_training(run_dir: Path, process: subprocess.Popen, epochs: int = 2) -> None:
    """Until `epochs` epochs have written checkpoints (the run is in its training loop)."""
    deadline = time.monotonic() + 120
    while len(list((run_dir / "checkpoints").glob("epoch_*.ckpt"))) < 1 or not _epochs_done(run_dir, epochs):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.2)


def _epochs_done(run_dir: Path, epochs: int) -> bool:
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        return last.is_file() and torch.load(last, map_location="cpu", weights_only=False)["epoch"] >= epochs - 1
    except Exception:  # being written
        return False


@pytest.mark.slow  # a run started and signalled, then resumed: 20 to 100 s each, by how busy the cores are
@pytest.mark.parametrize("name,status", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_stops_the_run_resumably_and_says_so(tmp_path, name, status):
    run_dir = tmp_path / "run"
    process = start(run_dir, tmp_path)
    wait_for_training(run_dir, process)
    process.send_signal(getattr(signal, name))
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == status, stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["signal"] == name and metrics["resumable"] is True
    assert f"cvae-train: interrupted by {name} after" in stdout and "continue it with: cvae-train resume=run." in stdout
    assert "Traceback" not in stderr, stderr[-3000:]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] > 0 and "optimizer_states" in checkpoint
    if name == "SIGTERM":  # it continues where it stopped, and then ends as completed
        resumed = run_cli(f"resume={run_dir}", "trainer.max_epochs=" + str(checkpoint["epoch"] + 2), cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.slow  # three runs: about 25 s
def test_a_run_directory_belongs_to_one_run(tmp_path):
    """Two runs given the same generated name (${now:...}): the second gets <name>-2. A run
    into a used directory that the user named is refused, and the first run's files stay."""
    quick = [*QUICK, "+trainer.limit_train_batches=2"]
    named = str(tmp_path / "runs" / "same_${now:%Y}")
    first = run_cli(*quick, "seed=1", f"hydra.run.dir={named}", cwd=tmp_path)
    second = run_cli(*quick, "seed=2", f"hydra.run.dir={named}", cwd=tmp_path)
    assert first.returncode == 0 and second.returncode == 0, second.stderr[-2000:]
    (one,) = (tmp_path / "runs").glob("same_????")
    two = one.with_name(one.name + "-2")
    assert json.loads((one / "metrics.json").read_text())["hparams"]["seed"] == 1
    assert json.loads((two / "metrics.json").read_text())["hparams"]["seed"] == 2
    assert f"Run dir: runs/{two.name}" in second.stdout
    before = (one / "metrics.json").read_text()
    refused = run_cli(*quick, "seed=3", f"hydra.run.dir={one}", cwd=tmp_path)
    assert refused.returncode == 2 and "holds another run" in refused.stderr and "resume=" in refused.stderr
    assert (one / "metrics.json").read_text() == before


@pytest.mark.slow  # three sweeps of two jobs: about 40 s
def test_a_sweep_directory_belongs_to_one_sweep(tmp_path):
    quick = [*QUICK, "+trainer.limit_train_batches=1"]
    named = str(tmp_path / "sweeps" / "same_${now:%Y}")
    for _ in range(2):
        result = run_cli("-m", *quick, "seed=1,2", f"hydra.sweep.dir={named}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
    (one,) = (tmp_path / "sweeps").glob("same_????")
    two = one.with_name(one.name + "-2")
    for sweep in (one, two):
        assert sorted(p.parent.name for p in sweep.glob("*/metrics.json")) == ["0", "1"], sweep
    refused = run_cli("-m", *quick, "seed=1,2", f"hydra.sweep.dir={one}", cwd=tmp_path)
    assert refused.returncode == 2 and "holds another sweep" in refused.stderr
