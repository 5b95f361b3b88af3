"""End to end through the real CLI on the embedded digits data."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cvae_exp.errors import UserInputError
from cvae_exp.run import single_device_trainer
from tests.helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]

FAST = [
    "data=digits",
    "model.encoder.hidden_dims=[64]",
    "model.decoder.hidden_dims=[64]",
    "callbacks.progress_bar.refresh_rate=0",
]


@pytest.mark.slow  # trains and resumes or sweeps real runs: over 10 s; .ci/run runs the slow tests
def test_two_epochs_write_checkpoints_events_and_metrics_then_resume(tmp_path):
    run = tmp_path / "run"
    result = run_cli(*FAST, "trainer.max_epochs=2", f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    closing = result.stdout.strip().splitlines()[-1]
    assert (
        closing.startswith("cvae-train: completed in ")
        and "(2 epochs in all): test score " in closing
        and closing.endswith("Run dir: run")
    )
    for notice in ("Tip:", "GPU available", "Warning", "warn"):  # Lightning's notices and warnings: in train.log only
        assert notice not in result.stdout + result.stderr, notice
    log = (run / "train.log").read_text()
    assert closing in log and "GPU available" in log

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
    expected = {
        "loss/train",  # train/loss, shown first (cvae_exp/loggers.py: tensorboard_tag)
        "train/recon",
        "train/kl",
        "train/beta",
        "loss/val",
        "val/recon",
        "val/kl",
        "val/mse",
        "val/ssim",
    }
    assert expected <= scalars, expected - scalars
    assert len(events.Scalars("loss/val")) == 2
    best_epoch = min(events.Scalars("loss/val"), key=lambda event: event.value)  # what the best checkpoint holds
    for name, tag in (("loss", "loss/val"), ("ssim", "val/ssim"), ("mse", "val/mse")):
        logged = next(e.value for e in events.Scalars(tag) if e.step == best_epoch.step)
        assert metrics["val"][name] == pytest.approx(logged, rel=1e-6), name

    slurm_login_node = tmp_path / "bin"  # an `srun` on PATH, as on a cluster's login node
    slurm_login_node.mkdir()
    (slurm_login_node / "srun").write_text("#!/bin/sh\nexit 0\n")
    (slurm_login_node / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{slurm_login_node}{os.pathsep}{os.environ['PATH']}"}
    result = run_cli(str(run), "--recon-z", "mean", "--samples-per-class", "20", cwd=tmp_path, tool="eval", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((run / "eval.json").read_text())
    assert evaluated["recon_z"] == "mean" and evaluated["checkpoint"] == metrics["best_checkpoint"]
    assert {"ssim", "mse", "fid", "score", "score_uncapped"} <= set(evaluated["test"])
    assert result.stderr.strip() == f"cvae-eval: written to {run / 'eval.json'}", result.stderr  # no notices

    resumed = tmp_path / "resumed"
    result = run_cli(
        *FAST,
        "trainer.max_epochs=3",
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={resumed}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((resumed / "metrics.json").read_text())["epochs"] == 3
    before = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    after = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)
    assert after["epoch"] == before["epoch"] + 1
    assert after["global_step"] == before["global_step"] * 3 // 2


@pytest.mark.slow  # trains and resumes or sweeps real runs: over 10 s; .ci/run runs the slow tests
def test_multirun_with_the_default_sweep_dir_runs_each_job_in_its_own_dir(tmp_path):
    """As README runs it: no hydra.sweep.dir given."""
    result = run_cli("-m", *FAST, "debug=fast", "model.latent_dim=2,4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multiruns").iterdir()
    latent = sorted(json.loads(p.read_text())["hparams"]["latent_dim"] for p in sweep.glob("*/metrics.json"))
    assert latent == [2, 4]
    assert f"2 debug. Sweep dir: outputs/multiruns/{sweep.name}" in result.stdout
    result = run_cli(str(sweep), cwd=tmp_path, tool="table")
    assert result.returncode == 0, result.stderr[-3000:]
    table = (sweep / "table.md").read_text()
    assert table.splitlines()[0].startswith("| run | epochs | latent_dim | lr | ssim") and "| debug |" in table


@pytest.mark.slow  # trains and resumes or sweeps real runs: over 10 s; .ci/run runs the slow tests
def test_without_logger_or_callbacks_a_run_completes_and_writes_no_stray_checkpoint(tmp_path):
    """logger=none drops the learning-rate monitor; callbacks=none writes no checkpoint at all."""
    result = run_cli("-m", *FAST[:3], "debug=fast", "logger=none,tensorboard", "callbacks=none,default", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multiruns").iterdir()
    assert len(list(sweep.glob("*/metrics.json"))) == 4 and "4 debug" in result.stdout
    checkpoints = sorted(str(path.relative_to(sweep)) for path in sweep.rglob("*.ckpt"))
    assert all(path.split("/")[1] == "checkpoints" for path in checkpoints)
    overrides = {job.name: (job / ".hydra" / "overrides.yaml").read_text() for job in sweep.iterdir() if job.is_dir()}
    with_checkpoints = {path.split("/")[0] for path in checkpoints}
    assert with_checkpoints == {name for name, text in overrides.items() if "callbacks=default" in text}


def test_help_describes_the_program_and_its_groups(tmp_path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("cvae-train: train a conditional VAE")
    assert "model: conv, hierarchical, mlp" in result.stdout
    assert "cvae-train -m model.latent_dim=2,8,32 loss.beta=1,4" in result.stdout
    assert "(schema is not a choice" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_help_of_a_sweep_shows_the_help(tmp_path):
    result = run_cli("-m", "seed=1,2", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("cvae-train: train a conditional VAE")
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_is_refused_only_outside_a_multirun(tmp_path, monkeypatch):
    """-m, or a config that sets hydra.mode: MULTIRUN (hparams_search=optuna), makes key=a,b a
    sweep; a sweep of hydra.* keys is left to Hydra."""
    from cvae_exp.compose import compose_train
    from cvae_exp.train import refuse_sweeps_outside_multirun

    monkeypatch.chdir(tmp_path)
    compose_train(["hparams_search=optuna"], output_dir=".")
    refuse_sweeps_outside_multirun(["hparams_search=optuna", "model.latent_dim=2,4"])
    compose_train([], output_dir=".")
    refuse_sweeps_outside_multirun(["-m", "model.latent_dim=2,4"])
    refuse_sweeps_outside_multirun(["hydra.sweeper.params.seed=choice(1,2)"])
    with pytest.raises(UserInputError, match=re.escape("model.latent_dim=2,4 is a sweep")):
        refuse_sweeps_outside_multirun(["-cn", "train", "model.latent_dim=2,4"])


def test_a_sweep_without_multirun_is_refused_in_one_paragraph(tmp_path):
    result = run_cli("seed=1,2", "model.latent_dim=4", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "cvae-train: error: seed=1,2 is a sweep over several values, which runs only with -m (--multirun): "
        "cvae-train -m seed=1,2 model.latent_dim=4 runs one job for each value. For a list as one value, "
        "write key=[a,b]; for a string that holds a comma, quote it for Hydra inside the shell's quotes: "
        "\"key='a,b'\"."
    )
    assert list(tmp_path.iterdir()) == []


def test_bad_value_exits_non_zero_with_one_paragraph_and_no_traceback(tmp_path):
    command = shutil.which("cvae-train")
    assert command, "the cvae-train console script is not installed"
    result = subprocess.run(
        [command, "model.latent_dim=0", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "model.latent_dim=0" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_the_final_evaluation_keeps_bf16_autocast_on_a_cpu():
    """The rebuilt one-device trainer names its accelerator by device type; given the
    accelerator object, Lightning set up CUDA autocast and fell back to float32 on a CPU."""
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_progress_bar=False)
    evaluator = single_device_trainer(trainer, loggers=[])
    assert isinstance(evaluator.precision_plugin, MixedPrecision) and evaluator.precision_plugin.device == "cpu"


@pytest.mark.slow  # trains and resumes or sweeps real runs: over 10 s; .ci/run runs the slow tests
def test_every_task_and_prior_trains_tests_and_tabulates(tmp_path):
    """A sweep over the tasks and priors through the real CLI: image-conditioned tasks
    report test/nll, test/neg_elbo and test/mse over their target pixels (no lab Score),
    the NN baseline's likelihood is exact (nll == neg_elbo), and cvae-table shows them."""
    result = run_cli(
        "-m",
        *FAST,
        "debug=fast",
        "eval.nll_samples=8",
        "loss.likelihood=bernoulli",
        "task=quadrants,inpaint",
        "prior=none,conditional",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multiruns").iterdir()
    runs = [json.loads(path.read_text()) for path in sorted(sweep.glob("*/metrics.json"))]
    assert len(runs) == 4
    for run in runs:
        assert {"nll", "neg_elbo", "mse", "loss"} <= set(run["test"]) and "score" not in run["test"]
        assert run["test"]["nll"] <= run["test"]["neg_elbo"] + 1e-3
        if run["hparams"]["prior"] == "none":
            assert run["test"]["nll"] == pytest.approx(run["test"]["neg_elbo"])
    assert "-log p" in result.stdout
    table = run_cli(str(sweep), cwd=tmp_path, tool="table")
    assert table.returncode == 0, table.stderr[-3000:]
    header = (sweep / "table.md").read_text().splitlines()[0]
    assert "| task |" in header and "| prior |" in header and "| nll | neg_elbo |" in header and "score" not in header
    quadrants = next(
        path.parent
        for path in sweep.glob("*/metrics.json")
        if json.loads(path.read_text())["hparams"]["prior"] == "conditional"
    )
    evaluated = run_cli(str(quadrants), "--nll-samples", "4", cwd=tmp_path, tool="eval")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert {"nll", "neg_elbo", "mse"} <= set(json.loads((quadrants / "eval.json").read_text())["test"])
    sampled = run_cli(str(quadrants), "labels=[0,3]", "n=4", "out=completions.png", cwd=tmp_path, tool="sample")
    assert sampled.returncode == 0 and sampled.stderr.strip() == "", sampled.stderr[-3000:]
    assert (tmp_path / "completions.png").is_file()


@pytest.mark.slow  # trains, then fits and reuses two samplers through three CLI runs: 23 s
def test_fitted_samplers_are_saved_reused_and_labelled_with_classifier_metrics(tmp_path):
    """eval.sampler=gmm fits after training, is saved in samplers/ and labels metrics.json; the
    classifier metrics and their classifier's record are there; the exported PNGs grade to the
    recorded Score (scripts/grade_pngs.py: PIL, skimage, numpy); cvae-eval --sampler flow fits
    and saves a flow; cvae-sample sampler=gmm reuses the saved mixture."""
    run = tmp_path / "run"
    overrides = [
        "trainer.max_epochs=2",
        "eval.sampler=gmm",
        "eval.gmm_components=2",
        "eval.flow_steps=200",
        "eval.samples_per_class=20",
        "eval.save_images=true",
    ]
    result = run_cli(*FAST, *overrides, f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert (
        metrics["sampler"] == "gmm"
        and "z from gmm" in result.stdout
        and "samples classified as their class" in result.stdout
        and "sampler gmm: fitted in" in result.stdout
    )
    assert {"sample_accuracy", "classifier_fid", "sample_precision", "sample_recall", "classifier_accuracy"} <= set(
        metrics["test"]
    )
    assert 0 <= metrics["test"]["sample_accuracy"] <= 1 and metrics["classifier"]["test_accuracy"] > 0.8
    saved = run / "samplers" / f"{(run / metrics['best_checkpoint']).stem}-gmm.pt"
    assert saved.is_file()
    graded = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "grade_pngs.py"), str(run)], capture_output=True, text=True
    )
    assert graded.returncode == 0 and "| score_uncapped |" in graded.stdout, graded.stdout + graded.stderr[-3000:]

    result = run_cli(str(run), "--sampler", "flow", "--samples-per-class", "20", cwd=tmp_path, tool="eval")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "eval.json").read_text())["sampler"] == "flow"
    assert "sampler flow: step 200/200" in result.stderr and "sampler flow: fitted in" in result.stderr
    assert saved.with_name(saved.name.replace("-gmm", "-flow")).is_file()

    modified = saved.stat().st_mtime_ns
    result = run_cli(str(run), "sampler=gmm", "out=gmm.png", cwd=tmp_path, tool="sample")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "gmm.png").is_file() and saved.stat().st_mtime_ns == modified
    assert result.stdout == "gmm.png\n" and "fitting" not in result.stderr  # reused, not fitted again
