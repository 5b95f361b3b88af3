"""Bad input, interruptions and divergence: clear messages, nothing lost, nothing half-written."""

import json
import math
import os
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
from omegaconf import OmegaConf

from cvae_exp.errors import TrainingDiverged
from cvae_exp.module import CVAEModule
from cvae_exp.train import write_json
from tests.helpers import run_cli

FAST = ["model.encoder.hidden_dims=[32]", "model.decoder.hidden_dims=[32]", "callbacks.progress_bar.refresh_rate=0", "eval.samples_per_class=20"]


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
    (folder / "empty_root").mkdir()
    return {"truncated": truncated, "text": text, "no_checkpoint": no_checkpoint, "empty_root": folder / "empty_root"}


# (tool, arguments, a fragment the message must hold); {run}, {truncated}, ... are filled in.
BAD_INPUTS = [
    ("train", ["model.latent_dim=0"], "model.latent_dim=0"),
    ("train", ["model.latent_dim=abc"], "model.latent_dim"),
    ("train", ["loss.beta=-1"], "loss.beta=-1"),
    ("train", ["optim.lr=-0.1"], "optim.lr=-0.1"),
    ("train", ["loss.var=0"], "loss.var=0"),
    ("train", ["loss.likelihood=poisson"], "gaussian | bernoulli"),
    ("train", ["data.binarize=maybe"], "none | dynamic | static"),
    ("train", ["data.batch_size=0"], "data.batch_size=0"),
    ("train", ["trainer.precision=8-bit"], "bf16-mixed"),
    ("train", ["trainer.max_epochs=0"], "trainer.max_epochs=0"),
    ("train", ["seed=-1"], "seed=-1"),
    ("train", ["eval.recon_z=median"], "sample | mean"),
    ("train", ["model=transformer"], "mlp"),
    ("train", ["data=cifar"], "digits"),
    ("train", ["learning_rate=0.1"], "learning_rate"),
    ("train", ["model.latnt_dim=3"], "latnt_dim"),
    ("train", ["+trainer.max_epoch=3"], "trainer.max_epoch"),
    ("train", ["model=conv", "model.encoder.channels=[8,16,32]"], "[1, 28, 28]"),
    ("train", ["data=mnist", "data.root={empty_root}"], "data=digits"),
    ("train", ["ckpt_path=/no/such.ckpt"], "/no/such.ckpt"),
    ("train", ["ckpt_path={truncated}"], "truncated"),
    ("train", ["ckpt_path={text}"], "notes.ckpt"),
    ("train", ["ckpt_path={run}/checkpoints/last.ckpt", "model.latent_dim=5"], "another model"),
    ("train", ["resume={no_checkpoint}"], "checkpoints/last.ckpt"),
    ("train", ["resume={run}", "model=conv"], "model=conv"),
    ("eval", ["/no/such/run"], "/no/such/run"),
    ("eval", ["{truncated}"], "truncated.ckpt"),
    ("table", ["/no/such/sweep"], "/no/such/sweep"),
]


@pytest.mark.parametrize("tool,arguments,fragment", BAD_INPUTS, ids=[" ".join(a) for _, a, _ in BAD_INPUTS])
def test_bad_input_fails_clearly_and_writes_nothing(tmp_path, trained_run, broken_files, tool, arguments, fragment):
    places = {"run": trained_run, **broken_files}
    arguments = [argument.format(**places) for argument in arguments]
    before = _snapshot(trained_run)
    result = run_cli(*arguments, cwd=tmp_path, tool=tool)
    assert result.returncode != 0
    assert fragment.format(**places) in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no run dir, no outputs/
    assert _snapshot(trained_run) == before  # the existing run is untouched


def _snapshot(folder: Path) -> dict[str, float]:
    return {str(path): path.stat().st_mtime for path in folder.rglob("*")}


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    arguments = [*FAST, "data.batch_size=16", "trainer.deterministic=true", "trainer.max_epochs=4"]
    assert run_cli(*arguments, f"hydra.run.dir={tmp_path / 'whole'}", cwd=tmp_path).returncode == 0

    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "cvae_exp.train", *arguments, f"hydra.run.dir={killed}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
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
    assert resumed["test"] == whole["test"]
    assert len(list((killed / "tensorboard").glob("events.*"))) > len(list((tmp_path / "whole" / "tensorboard").glob("events.*")))


def test_resume_may_extend_the_number_of_epochs(tmp_path, trained_run):
    run = tmp_path / "run"
    run.mkdir()
    for source in trained_run.rglob("*"):  # a copy, to leave the shared run as it is
        target = run / source.relative_to(trained_run)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_file():
            target.write_bytes(source.read_bytes())
    result = run_cli(f"resume={run}", "trainer.max_epochs=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 3
    assert "max_epochs: 3" in (run / ".hydra" / "config.yaml").read_text()


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
    module = CVAEModule(**{key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "conditioning", "data", "loss", "optim", "eval")})
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/loss", save_last=True)
    trainer = L.Trainer(
        max_epochs=5, accelerator="cpu", logger=False, enable_progress_bar=False,
        callbacks=[checkpoint, PoisonWeights(epoch=2)], default_root_dir=tmp_path,
    )
    with pytest.raises(TrainingDiverged) as error:
        trainer.fit(module, datamodule=instantiate(cfg.data))
    steps_per_epoch = math.ceil(1200 / cfg.data.batch_size)
    assert f"at step {2 * steps_per_epoch}, epoch 2" in str(error.value) and "optim.lr=0.001" in str(error.value)
    best = torch.load(checkpoint.best_model_path, weights_only=False)
    assert best["epoch"] == 1
    assert all(torch.isfinite(value).all() for value in best["state_dict"].values())


def test_a_diverging_job_fails_alone_in_a_multirun(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", *FAST, "debug=fast", "optim.lr=1e-3,1e9", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode != 0
    statuses = {json.loads((sweep / job / "metrics.json").read_text())["status"] for job in ("0", "1")}
    assert statuses == {"completed", "failed"}
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
