"""Bad input, interruptions and divergence: clear messages, nothing lost, nothing half-written."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel

from cvae_exp import eval as evaluate
from cvae_exp import sample, table, train
from cvae_exp.errors import TrainingDiverged
from cvae_exp.files import first_process, write_json
from cvae_exp.run import build_module
from tests.helpers import run_cli

FAST = [
    "model.encoder.hidden_dims=[32]",
    "model.decoder.hidden_dims=[32]",
    "callbacks.progress_bar.refresh_rate=0",
    "eval.samples_per_class=20",
    "eval.classifier_metrics=false",  # the checkpoint cases need no classifier
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A finished 2-epoch digits run (latent_dim 20) for the checkpoint cases."""
    root = tmp_path_factory.mktemp("trained")
    result = run_cli(*FAST, "trainer.max_epochs=2", f"hydra.run.dir={root / 'run'}", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run"


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory, trained_run) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("broken")
    truncated = folder / "truncated.ckpt"
    truncated.write_bytes((trained_run / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    text = folder / "notes.ckpt"
    text.write_text("not a checkpoint")
    no_checkpoint = folder / "run_without_checkpoint"
    (no_checkpoint / ".hydra").mkdir(parents=True)
    (no_checkpoint / ".hydra" / "config.yaml").write_text("seed: 1\n")
    damaged_metrics = folder / "run_with_damaged_metrics"
    damaged_metrics.mkdir()
    (damaged_metrics / "metrics.json").write_text('{"status": "compl')
    truncated_last = folder / "run_with_truncated_last"
    shutil.copytree(trained_run, truncated_last)
    (truncated_last / "checkpoints" / "last.ckpt").write_bytes(truncated.read_bytes())
    (folder / "empty_root").mkdir()
    return {
        "truncated": truncated,
        "text": text,
        "no_checkpoint": no_checkpoint,
        "damaged_metrics": damaged_metrics,
        "truncated_last": truncated_last,
        "empty_root": folder / "empty_root",
    }


# (tool, arguments, fragments the message must hold); {run}, {truncated}, ... are filled in.
BAD_INPUTS = [
    ("train", ["model.latent_dim=0"], ["model.latent_dim=0", ">= 1"]),
    ("train", ["model.latent_dim=abc"], ["model.latent_dim", "abc"]),
    ("train", ["loss.beta=-1"], ["loss.beta=-1", ">= 0"]),
    ("train", ["optim.lr=-0.1"], ["optim.lr=-0.1", "> 0"]),
    ("train", ["loss.var=0"], ["loss.var=0", "> 0"]),
    ("train", ["loss.likelihood=poisson"], ["poisson", "gaussian | bernoulli"]),
    ("train", ["loss.warmup_steps=-1"], ["loss.warmup_steps=-1", ">= 0"]),
    ("train", ["data.binarize=maybe"], ["maybe", "none | dynamic | static"]),
    ("train", ["data.batch_size=0"], ["data.batch_size=0", ">= 1"]),
    ("train", ["data.val_size=5000"], ["data.val_size=5000", "between 1 and 1499"]),
    ("train", ["data.num_classes=5"], ["data.num_classes=5", "data.num_classes=10"]),
    ("train", ["data.image_shape=[1,32,32]"], ["data.image_shape=[1, 32, 32]", "[1, 28, 28]"]),
    ("train", ["trainer.precision=8-bit"], ["8-bit", "bf16-mixed"]),
    ("train", ["trainer.max_epochs=0"], ["trainer.max_epochs=0", ">= 1"]),
    ("train", ["trainer=gpu"], ["trainer.accelerator='gpu'", "trainer=cpu"]),
    ("train", ["trainer.precision=16-mixed", "trainer=cpu"], ["trainer.precision='16-mixed'", "bf16-mixed"]),
    ("train", ["trainer.accelerator=tpu"], ["tpu", "auto | cpu | gpu"]),
    ("train", ["seed=-1"], ["seed=-1", ">= 0"]),
    ("train", ["eval.recon_z=median"], ["median", "sample | mean"]),
    ("train", ["eval.samples_per_class=0"], ["eval.samples_per_class=0", ">= 1"]),
    ("train", ["optimized_metric=val/foo"], ["val/foo", "val/ssim"]),
    ("train", ["callbacks.images.every_n_epochs=0"], ["callbacks.images", "every_n_epochs=0", ">= 1"]),
    ("train", ["callbacks.model_checkpoint.monitor=val/foo"], ["monitor='val/foo'", "val/loss"]),
    ("train", ["eval.nll_samples=-1"], ["eval.nll_samples=-1", ">= 0"]),
    ("train", ["task=quadrants", "task.observed=4"], ["task.observed=4", "1, 2 or 3"]),
    (
        "train",
        ["task=superres", "task.factor=3"],
        ["task.factor=3", "28x28", "allowed: 2, 4, 7, 14, 28", "configs/task/"],
    ),
    ("train", ["task=inpaint", "task.max_size=40"], ["task.max_size=40", "28x28", "allowed: at most 28"]),
    (
        "train",
        ["task=quadrants", "optimized_metric=val/ssim"],
        ["optimized_metric='val/ssim'", "no val/ssim"],
    ),
    ("train", ["task=colorize"], ["colorize", "quadrants"]),
    ("train", ["optim._target_=torch.optim.SGD", "+optim.momentum=-1"], ["optim", "momentum", "torch.optim class"]),
    ("train", ["optim._target_=torch.optim.Nadamm"], ["optim", "Nadamm", "torch.optim class"]),
    ("train", ["prior=mixture", "prior.num_components=0"], ["prior.num_components=0", ">= 1"]),
    ("train", ["model=hierarchical", "model.top_dim=2.0"], ["model.top_dim=2.0 must be an integer >= 1"]),
    ("train", ["model.encoder.hidden_dims=[0]"], ["model.encoder.hidden_dims=[0] must hold integers >= 1"]),
    ("train", ["model.decoder.hidden_dims=256"], ["model.decoder.hidden_dims=256 must be a list of integers"]),
    ("train", ["+trainer.max_time=abc"], ["trainer.max_time='abc'", "DD:HH:MM:SS"]),
    ("train", ["prior=flow"], ["flow", "conditional"]),
    ("train", ["model=transformer"], ["transformer", "mlp"]),
    ("train", ["conditioning=attention"], ["attention", "film"]),
    ("train", ["data=cifar"], ["cifar", "digits"]),
    ("train", ["learning_rate=0.1"], ["learning_rate", "+key=value"]),
    ("train", ["model.latnt_dim=3"], ["latnt_dim"]),
    ("train", ["+trainer.max_epoch=3"], ["trainer.max_epoch", "max_epochs"]),
    (
        "train",
        ["model=conv", "model.encoder.channels=[8,16,32]"],
        ["[1, 28, 28]", "model.encoder.channels", "allows at most 2"],
    ),
    (
        "train",
        ["model=conv", "model.encoder.channels=[]"],
        ["at least one layer", "model.encoder.channels", "model=mlp"],
    ),
    ("train", ["data=mnist", "data.root={empty_root}"], ["{empty_root}", "data=digits"]),
    ("train", ["ckpt_path=/no/such.ckpt"], ["/no/such.ckpt", "existing checkpoint"]),
    ("train", ["ckpt_path={truncated}"], ["truncated.ckpt", "truncated"]),
    ("train", ["ckpt_path={text}"], ["notes.ckpt", "cannot be read"]),
    ("train", ["ckpt_path={run}/checkpoints/last.ckpt", "model.latent_dim=5"], ["another model", "resume=<run dir>"]),
    (
        "train",
        ["ckpt_path={run}/checkpoints/last.ckpt", *FAST[:2], "trainer.max_epochs=1"],
        ["trainer.max_epochs=1", "2 epochs", "trainer.max_epochs=3"],
    ),
    ("train", ["hydra.run.dir={text}/run"], ["notes.ckpt is a file", "writable"]),
    ("train", ["hydra.run.dir=/proc/cvae-exp/run"], ["/proc/cvae-exp/run", "writable"]),
    ("train", ["-m", "model.latent_dim=2,0"], ["job 1", "model.latent_dim=0"]),
    ("train", ["-m", "resume={run}", "seed=1,2"], ["resume=", "multirun"]),
    ("train", ["model.latent_dim=0", "--cfg", "job"], ["model.latent_dim=0"]),
    ("train", ["resume={no_checkpoint}"], ["checkpoints/last.ckpt is missing"]),
    ("train", ["resume=/no/such/run"], ["/no/such/run", "not a run directory"]),
    ("train", ["resume={run}", "model=conv"], ["model=conv", "only values"]),
    (
        "train",
        ["resume={run}", "trainer.max_epochs=3", "model.latent_dim=5"],
        ["model.latent_dim", "to 5", "Start a new run"],
    ),
    ("train", ["resume={run}"], ["is finished after 2 epochs", "trainer.max_epochs=3"]),
    ("train", ["resume={run}", "trainer.max_epochs=1"], ["trainer.max_epochs=1", "2 epochs"]),
    ("train", ["resume={truncated_last}"], ["last.ckpt cannot be read", "epoch_001.ckpt is intact (2 epochs)"]),
    ("eval", ["/no/such/run"], ["/no/such/run", ".ckpt"]),
    ("eval", ["{truncated}"], ["truncated.ckpt", "cvae-train"]),
    ("eval", ["{no_checkpoint}"], ["run_without_checkpoint", "checkpoints/"]),
    ("eval", ["{damaged_metrics}"], ["metrics.json", "not valid JSON"]),
    ("eval", ["{run}", "--samples-per-class", "0"], ["--samples-per-class 0", ">= 1"]),
    ("eval", ["{run}", "--recon-z", "median"], ["median", "sample"]),
    ("eval", ["{run}", "--sampler", "banana"], ["banana", "gmm"]),
    ("train", ["eval.sampler=banana"], ["eval.sampler='banana'", "prior | gmm | flow"]),
    ("train", ["task=quadrants", "eval.sampler=gmm"], ["'gmm'", "task=label"]),
    ("train", ["eval.gmm_covariance=tied"], ["eval.gmm_covariance='tied'", "full | diag"]),
    ("sample", ["{run}", "sampler=banana"], ["sampler='banana'", "prior, gmm, flow"]),
    ("sample", [], ["missing the checkpoint"]),
    ("sample", ["/no/such/run"], ["/no/such/run"]),
    ("sample", ["{run}", "mode=spiral"], ["mode='spiral'", "grid, interpolate, traverse"]),
    ("sample", ["{run}", "labels=[99]"], ["99", "0..9"]),
    ("sample", ["{run}", "out=grid.txt"], ["grid.txt", ".png"]),
    ("table", ["/no/such/sweep"], ["/no/such/sweep", "multirun"]),
    ("table", ["{empty_root}"], ["No runs found", "empty_root"]),
    ("table", ["{text}"], ["notes.ckpt", "not a directory"]),
]
MAINS = {"train": train.main, "eval": evaluate.main, "sample": sample.main, "table": table.main}


@pytest.mark.parametrize(
    "tool,arguments,fragments", BAD_INPUTS, ids=[f"{tool} " + " ".join(a) for tool, a, _ in BAD_INPUTS]
)
def test_bad_input_fails_in_one_paragraph_and_changes_no_file(
    tmp_path, monkeypatch, capsys, trained_run, broken_files, tool, arguments, fragments
):
    """Each tool's console-script entry point, in-process (the subprocesses of test_train_e2e
    and test_sample check the installed scripts): non-zero exit, no traceback, one
    paragraph naming the value, no new file here and no changed byte in the runs given."""
    if "trainer=gpu" in arguments and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    places = {"run": trained_run, **broken_files}
    arguments = [argument.format(**places) for argument in arguments]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", [f"cvae-{tool}", *arguments])
    before = _snapshot(trained_run.parent) | _snapshot(broken_files["text"].parent)
    with pytest.raises(SystemExit) as exited:
        MAINS[tool]([*arguments]) if tool != "train" else MAINS[tool]()
    message = capsys.readouterr().err.strip()
    assert exited.value.code not in (0, None)
    assert all(fragment.format(**places) in message for fragment in fragments), message
    assert "Traceback" not in message and "\n\n" not in message
    assert message.startswith((f"cvae-{tool}: error: ", "usage: ")), message
    assert list(tmp_path.iterdir()) == []  # no run dir, no outputs/
    assert _snapshot(trained_run.parent) | _snapshot(broken_files["text"].parent) == before


def test_full_error_shows_the_traceback_and_still_stops_before_writing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setattr(sys, "argv", ["cvae-train", "data.val_size=5000"])
    with pytest.raises(SystemExit) as exited:
        train.main()
    message = capsys.readouterr().err
    assert exited.value.code == 2
    assert "Traceback" in message and "cvae-train: error: Invalid config value data.val_size=5000" in message
    assert list(tmp_path.iterdir()) == []


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes (and every folder) below `folder`."""
    return {str(path): path.read_bytes() if path.is_file() else b"<dir>" for path in folder.rglob("*")}


@pytest.mark.slow  # three training processes: 24 s; .ci/run runs the slow tests
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    arguments = [*FAST, "data.batch_size=16", "trainer.deterministic=true", "trainer.max_epochs=4"]
    assert run_cli(*arguments, f"hydra.run.dir={tmp_path / 'whole'}", cwd=tmp_path).returncode == 0

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "cvae_exp.train", *arguments, f"hydra.run.dir={killed}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "last.ckpt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # into the second epoch
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "metrics.json").exists()

    result = run_cli(f"resume={killed}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    resumed = json.loads((killed / "metrics.json").read_text())
    assert resumed["epochs"] == 4
    assert resumed["resumes"][0]["after"] == {"status": "killed (no metrics.json)"}  # how the first segment ended
    assert resumed["test"] == whole["test"]
    assert len(list((killed / "tensorboard").glob("events.*"))) > len(
        list((tmp_path / "whole" / "tensorboard").glob("events.*"))
    )


@pytest.mark.slow  # trains and resumes or sweeps real runs: over 10 s; .ci/run runs the slow tests
def test_resume_keeps_the_history_of_the_run(tmp_path, trained_run):
    """Longer training in the same dir: the original overrides stay, the config holds the
    new max_epochs, each resume is recorded, and the training time adds up."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # a copy, to leave the shared run as it is
    overrides_before = (run / ".hydra" / "overrides.yaml").read_bytes()
    first = json.loads((run / "metrics.json").read_text())
    for epochs in (3, 4):
        result = run_cli(f"resume={run}", f"trainer.max_epochs={epochs}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "cvae-train: completed" in result.stdout and f"({epochs} epochs in all)" in result.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 4 and metrics["train_time_s"] > first["train_time_s"]
    assert [resume["overrides"] for resume in metrics["resumes"]] == [
        ["trainer.max_epochs=3"],
        ["trainer.max_epochs=4"],
    ]
    assert [resume["after"]["status"] for resume in metrics["resumes"]] == ["completed", "completed"]
    assert (run / ".hydra" / "overrides.yaml").read_bytes() == overrides_before
    assert "max_epochs: 4" in (run / ".hydra" / "config.yaml").read_text()
    assert metrics["best_checkpoint"].startswith("checkpoints/epoch_")


@pytest.mark.slow  # trains and resumes or sweeps real runs: over 10 s; .ci/run runs the slow tests
def test_a_copied_run_resumes_in_its_own_checkpoints(tmp_path, trained_run):
    """The checkpoint callback's record of best and last follows the copy: last.ckpt is
    replaced (no last-v1.ckpt), and resuming again to the same epochs is refused."""
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(trained_run, copy)
    result = run_cli(f"resume={copy}", "trainer.max_epochs=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(path.name for path in (copy / "checkpoints").iterdir())
    assert not [name for name in names if "-v" in name], names
    assert torch.load(copy / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 2
    again = run_cli(f"resume={copy}", "trainer.max_epochs=3", cwd=tmp_path)
    assert again.returncode == 2 and "is finished after 3 epochs" in again.stderr


class ScriptedValidationLoss(BoringModel):
    """Logs val/loss from a script, one value per epoch."""

    def __init__(self, losses: list[float]):
        super().__init__()
        self.losses = losses

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.losses[self.current_epoch])


def test_last_ckpt_is_the_last_epoch_when_it_is_not_the_best(compose_train, tmp_path):
    """The default callbacks keep the best epoch and, in last.ckpt, the last one, which
    `resume=` continues from; Lightning's own save_last kept a copy of the best."""
    cfg = compose_train()
    callbacks = [
        instantiate(cfg.callbacks[name], dirpath=str(tmp_path)) for name in ("model_checkpoint", "last_checkpoint")
    ]
    trainer = L.Trainer(
        max_epochs=3,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(ScriptedValidationLoss([3.0, 1.0, 2.0]))
    assert sorted(path.name for path in tmp_path.glob("*.ckpt")) == ["epoch_001.ckpt", "last.ckpt"]
    assert trainer.checkpoint_callback.best_model_path == str(tmp_path / "epoch_001.ckpt")
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["epoch"] == 2


def test_a_copied_or_moved_run_evaluates_itself(tmp_path, trained_run, monkeypatch, capsys):
    """metrics.json names the best checkpoint relative to the run dir."""
    copy, moved = tmp_path / "copy", tmp_path / "elsewhere" / "moved"
    shutil.copytree(trained_run, copy)
    shutil.copytree(trained_run, moved)
    original = {path.name for path in trained_run.iterdir()}
    monkeypatch.setattr(sys, "argv", ["cvae-eval"])
    for run in (copy, moved):
        evaluate.main([str(run), "--samples-per-class", "20"])
        evaluated = json.loads((run / "eval.json").read_text())
        assert evaluated["checkpoint"] == json.loads((run / "metrics.json").read_text())["best_checkpoint"]
    assert {path.name for path in trained_run.iterdir()} == original  # no eval.json in the original


class PoisonWeights(Callback):
    """Makes the loss non-finite from the start of epoch `epoch` on."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))


def test_divergence_stops_with_the_step_and_keeps_the_last_finite_checkpoint(compose_train, tmp_path):
    cfg = compose_train(FAST)
    module = build_module(cfg)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/loss", save_last=True)
    trainer = L.Trainer(
        max_epochs=5,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        callbacks=[checkpoint, PoisonWeights(epoch=2)],
        default_root_dir=tmp_path,
    )
    with pytest.raises(TrainingDiverged) as error:
        trainer.fit(module, datamodule=instantiate(cfg.data))
    steps_per_epoch = math.ceil(1200 / cfg.data.batch_size)
    assert f"at step {2 * steps_per_epoch}, epoch 2" in str(error.value) and "optim.lr=0.001" in str(error.value)
    assert "32-true" not in str(error.value)  # the run is in float32 already: no advice to switch to it
    best = torch.load(checkpoint.best_model_path, weights_only=False)
    assert best["epoch"] == 1
    assert all(torch.isfinite(value).all() for value in best["state_dict"].values())


@pytest.mark.slow  # a two-job multirun: 11 s; .ci/run runs the slow tests
def test_a_diverging_job_fails_alone_in_a_multirun(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", *FAST, "debug=fast", "optim.lr=1e-3,1e9", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode != 0
    statuses = {json.loads((sweep / job / "metrics.json").read_text())["status"] for job in ("0", "1")}
    assert statuses == {"debug", "failed"}
    assert "multirun finished: 1 debug, 1 failed (jobs 1)" in result.stdout and "Traceback" not in result.stderr
    failed = json.loads((sweep / "1" / "metrics.json").read_text())
    assert "diverged" in failed["reason"] and "optim.lr=1000000000.0" in failed["reason"]
    table = run_cli(str(sweep), cwd=tmp_path, tool="table")
    assert table.returncode == 0 and "failed: Training diverged" in (sweep / "table.md").read_text()


def test_json_is_replaced_atomically(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"status": "completed"})
    with pytest.raises(TypeError):
        write_json(path, {"status": object()})
    assert json.loads(path.read_text()) == {"status": "completed"}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@pytest.mark.parametrize(
    "environment, first",
    [({}, True), ({"LOCAL_RANK": "1"}, False), ({"RANK": "2"}, False), ({"SLURM_PROCID": "1"}, False)]
    + [({"LOCAL_RANK": "0", "RANK": "0", "SLURM_PROCID": "0"}, True)],
)
def test_one_process_of_a_run_writes_its_records(monkeypatch, environment, first):
    """DDP starts the command once per device (LOCAL_RANK, RANK), srun once per task
    (SLURM_PROCID, with no LOCAL_RANK): only the first claims the run and records resumes."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert first_process() is first


def test_a_callback_set_to_null_is_left_out(compose_train):
    """callbacks.images=null, as Hydra users drop one callback of a group."""
    from cvae_exp.callbacks import ImageLogger
    from cvae_exp.run import build

    cfg = compose_train(["debug=fast", "callbacks.images=null"])
    _, _, trainer = build(cfg)
    assert not any(isinstance(callback, ImageLogger) for callback in trainer.callbacks)
    assert any(isinstance(callback, ModelCheckpoint) for callback in trainer.callbacks)
