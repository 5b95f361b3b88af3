"""End to end through the real CLI on the embedded digits data."""

import json
import shutil
import subprocess

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import run_cli

FAST = ["data=digits", "model.encoder.hidden_dims=[64]", "model.decoder.hidden_dims=[64]", "callbacks.progress_bar.refresh_rate=0"]


def test_two_epochs_write_checkpoints_events_and_metrics_then_resume(tmp_path):
    run = tmp_path / "run"
    result = run_cli(*FAST, "trainer.max_epochs=2", f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    assert (run / ".hydra" / "config.yaml").is_file()
    checkpoints = {path.name for path in (run / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints and any(name.startswith("epoch_") for name in checkpoints)

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 2
    assert {"loss", "recon", "kl", "ssim", "mse", "fid", "score", "score_uncapped"} <= set(metrics["test"])
    assert metrics["recon_z"] == "sample" and metrics["score_form"] == "conditional"
    assert metrics["hparams"]["model"] == "mlp" and metrics["hparams"]["conditioning"] == "concat"

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {"train/loss", "train/recon", "train/kl", "train/beta", "val/loss", "val/recon", "val/kl", "val/mse", "val/ssim"}
    assert expected <= scalars, expected - scalars
    assert len(events.Scalars("val/loss")) == 2

    result = run_cli(str(run), "--recon-z", "mean", "--samples-per-class", "20", cwd=tmp_path, tool="eval")
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((run / "eval.json").read_text())
    assert evaluated["recon_z"] == "mean" and evaluated["checkpoint"] == metrics["best_checkpoint"]
    assert {"ssim", "mse", "fid", "score", "score_uncapped"} <= set(evaluated["test"])

    resumed = tmp_path / "resumed"
    result = run_cli(*FAST, "trainer.max_epochs=3", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={resumed}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((resumed / "metrics.json").read_text())["epochs"] == 3
    before = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    after = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)
    assert after["epoch"] == before["epoch"] + 1
    assert after["global_step"] == before["global_step"] * 3 // 2


def test_multirun_runs_each_job_in_its_own_dir(tmp_path):
    result = run_cli("-m", *FAST, "debug=fast", "model.latent_dim=2,4", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    latent = sorted(json.loads(p.read_text())["hparams"]["latent_dim"] for p in (tmp_path / "sweep").glob("*/metrics.json"))
    assert latent == [2, 4]
    result = run_cli(str(tmp_path / "sweep"), cwd=tmp_path, tool="table")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len((tmp_path / "sweep" / "table.csv").read_text().splitlines()) == 3


def test_bad_value_exits_non_zero_with_one_paragraph_and_no_traceback(tmp_path):
    command = shutil.which("cvae-train")
    assert command, "the cvae-train console script is not installed"
    result = subprocess.run([command, "model.latent_dim=0", f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert "model.latent_dim=0" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()
