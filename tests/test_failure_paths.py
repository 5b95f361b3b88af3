"""Failure paths through the console scripts: a sweep's launcher and sweeper values, folders
outside the working tree, what a diverged run says it keeps, a refused resume's advice, and
closing lines after a progress bar."""

import fcntl
import json
import os
import pty
import re
import select
import shlex
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from cvae_exp.checks import check_sweep
from tests.helpers import run_cli

FAST = [
    "model.encoder.hidden_dims=[32]",
    "model.decoder.hidden_dims=[32]",
    "callbacks.progress_bar.refresh_rate=0",
    "eval.samples_per_class=20",
    "eval.classifier_metrics=false",
]
OFFLINE = {  # every download fails at once, also where the network is up: urllib's proxy is a closed port
    **os.environ,
    **{name: "http://127.0.0.1:9" for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")},
    "no_proxy": "",
    "NO_PROXY": "",
}


def assert_refused(result: subprocess.CompletedProcess, tool: str, *fragments: str) -> None:
    """Exit 2 and one paragraph that holds `fragments`, no traceback."""
    message = result.stderr.strip()
    assert result.returncode == 2, message[-3000:]
    assert message.startswith(f"cvae-{tool}: error: ") and "\n" not in message, message
    assert all(fragment in message for fragment in fragments), message


BAD_SWEEPS = [
    (["-m", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs=0"),
    (["hparams_search=optuna", "hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0"),
    (["hparams_search=optuna", "hydra.sweeper.n_jobs=0"], "hydra.sweeper.n_jobs=0"),
    (["hparams_search=optuna", "hydra.sweeper.direction=up"], "hydra.sweeper.direction='up'"),
    (["hparams_search=optuna", "hydra.sweeper.direction=[maximize,minimize]"], "hydra.sweeper.direction=["),
    *(
        (["-m", "seed=1,2", "hydra/launcher=slurm", f"hydra.launcher.{key}=0"], f"hydra.launcher.{key}=0")
        for key in ("timeout_min", "nodes", "tasks_per_node", "cpus_per_task", "mem_gb")
    ),
    (["-m", "seed=1,2", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=-1"], "hydra.launcher.gpus_per_node=-1"),
    (["-m", "seed=1,2", "hydra/launcher=submitit_local", "hydra.launcher.nodes=0"], "hydra.launcher.nodes=0"),
]


@pytest.mark.parametrize("arguments,fragment", BAD_SWEEPS, ids=[" ".join(a) for a, _ in BAD_SWEEPS])
def test_bad_launcher_and_sweeper_values_are_refused_before_the_sweep_dir_exists(tmp_path, arguments, fragment):
    result = run_cli(*arguments, cwd=tmp_path)
    assert_refused(result, "train", f"Invalid config value {fragment}")
    assert list(tmp_path.iterdir()) == []  # no outputs/multiruns/<time>/, no multirun.yaml


GOOD_SWEEPS = [
    ["hydra/launcher=joblib"],  # n_jobs=-1: one job per CPU
    ["hydra/launcher=joblib", "hydra.launcher.n_jobs=-2"],  # all CPUs but one
    ["hydra/launcher=joblib", "hydra.launcher.n_jobs=3"],
    ["hparams_search=optuna"],
    ["hydra/sweeper=optuna"],  # the plugin's own defaults (direction: an Enum)
    ["hparams_search=optuna", "hydra.sweeper.direction=[minimize]"],
    ["hydra/launcher=slurm"],
    ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.mem_gb=null"],
    ["hydra/launcher=submitit_local"],
]


@pytest.mark.parametrize("overrides", GOOD_SWEEPS, ids=[" ".join(o) for o in GOOD_SWEEPS])
def test_launcher_and_sweeper_values_the_plugins_take_pass(overrides):
    with initialize_config_module("cvae_exp.configs", version_base="1.3"):
        check_sweep(compose("train", overrides=overrides, return_hydra_config=True))


@pytest.mark.slow  # a process that loads torch and the data: 6 s; .ci/run runs the slow tests
def test_a_missing_data_root_leaves_no_folder_behind(tmp_path):
    """torchvision makes <root>/MNIST/raw/ for its download; a failed one takes every folder
    it made with it, the missing ones above data.root too."""
    missing = tmp_path / "missing"
    result = run_cli("data=mnist", f"data.root={missing / 'a' / 'b'}", cwd=tmp_path, env=OFFLINE)
    assert_refused(result, "train", "could not be downloaded", str(missing / "a" / "b" / "MNIST" / "raw"))
    assert not missing.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # 6-9 s each
@pytest.mark.parametrize("data", ["mnist", "cifar10"])  # torchvision's MNIST layout; CIFAR's _fetch
def test_a_failed_download_into_an_existing_root_leaves_it_as_it_was(tmp_path, data):
    root = tmp_path / "datasets"
    root.mkdir()
    result = run_cli(f"data={data}", f"data.root={root}", cwd=tmp_path, env=OFFLINE)
    assert_refused(result, "train", "could not be downloaded")
    assert list(root.iterdir()) == []


def test_an_out_path_under_a_file_is_refused_before_any_work(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("a file, not a folder")
    sampled = run_cli("/no/such/run", f"out={notes / 'figures' / 'grid.png'}", cwd=tmp_path, tool="sample")
    assert_refused(sampled, "sample", "out=", "notes.txt is a file")
    evaluated = run_cli("/no/such/run", "--out", str(notes / "eval.json"), cwd=tmp_path, tool="eval")
    assert_refused(evaluated, "eval", "--out", "notes.txt is a file")
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    """A finished one-epoch digits run."""
    root = tmp_path_factory.mktemp("short")
    result = run_cli(*FAST, "trainer.max_epochs=1", f"hydra.run.dir={root / 'run'}", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "run"


@pytest.mark.slow  # trains a one-epoch run, samples and tests it: 30 s; .ci/run runs the slow tests
def test_sample_and_eval_make_a_new_out_folder_only_for_a_file_they_write(tmp_path, short_run):
    """A write that fails (XBM holds no colour grid) takes the folders made for it along."""
    failed = run_cli(str(short_run), f"out={tmp_path / 'new' / 'deeper' / 'grid.xbm'}", cwd=tmp_path, tool="sample")
    assert_refused(failed, "sample", "Cannot write out=", "XBM", "nothing was written")
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "new" / "deeper" / "grid.png"
    written = run_cli(str(short_run), f"out={out}", cwd=tmp_path, tool="sample")
    assert written.returncode == 0, written.stderr[-3000:]
    assert [path.name for path in out.parent.iterdir()] == ["grid.png"]
    report = tmp_path / "reports" / "eval.json"
    evaluated = run_cli(str(short_run), "--out", str(report), cwd=tmp_path, tool="eval")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert [path.name for path in report.parent.iterdir()] == ["eval.json"]
    assert json.loads(evaluated.stdout) == json.loads(report.read_text())  # stdout: the result alone


@pytest.mark.slow  # trains a one-epoch run and one more epoch from its checkpoint: 20 s
def test_a_refused_resume_suggests_ckpt_path_only_where_it_works(tmp_path, short_run):
    """The advice is the run's own command with the new value (and ckpt_path where it applies
    the value); followed as printed, it trains."""
    its = "cvae-train " + shlex.join(FAST)  # and trainer.max_epochs=1, which a resume below replaces or keeps
    other_model = run_cli(f"resume={short_run}", "trainer.max_epochs=2", "model.latent_dim=4", cwd=tmp_path)
    assert_refused(
        other_model,
        "train",
        "model.latent_dim",
    )
    assert other_model.stderr.strip().endswith(f": {its} trainer.max_epochs=2 model.latent_dim=4")
    assert "ckpt_path" not in other_model.stderr
    other_group = run_cli(f"resume={short_run}", "model=conv", cwd=tmp_path)
    assert_refused(other_group, "train", "model=conv")
    assert other_group.stderr.strip().endswith(f": {its} trainer.max_epochs=1 model=conv")
    other_lr = run_cli(f"resume={short_run}", "trainer.max_epochs=2", "optim.lr=0.01", cwd=tmp_path)
    assert_refused(other_lr, "train", "would restore that run's optimizer")
    assert other_lr.stderr.strip().endswith(f": {its} trainer.max_epochs=2 optim.lr=0.01")
    other_loss = run_cli(f"resume={short_run}", "trainer.max_epochs=2", "loss.beta=2", cwd=tmp_path)
    checkpoint = f"ckpt_path={short_run}/checkpoints/last.ckpt"
    assert_refused(other_loss, "train", "starts it from that run's weights")
    assert other_loss.stderr.strip().endswith(f": {its} trainer.max_epochs=2 loss.beta=2 {checkpoint}")
    assert list(tmp_path.iterdir()) == []
    advice = other_loss.stderr.strip().partition(": cvae-train ")[2]  # the command ends the message
    followed = run_cli(*shlex.split(advice), f"hydra.run.dir={tmp_path / 'new'}", cwd=tmp_path)
    assert followed.returncode == 0, followed.stderr[-3000:]
    assert "completed" in followed.stdout


POISON = '''
import torch
from lightning.pytorch.callbacks import Callback


class PoisonWeights(Callback):
    """Makes the loss non-finite from the start of epoch `epoch` on."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))
'''


@pytest.mark.slow  # two training runs: 15 s; .ci/run runs the slow tests
def test_divergence_names_the_checkpoints_on_disk(tmp_path):
    (tmp_path / "poison.py").write_text(POISON)
    poisoned = ["+callbacks.poison._target_=poison.PoisonWeights", "+callbacks.poison.epoch=1"]
    result = run_cli(*FAST, *poisoned, "trainer.max_epochs=3", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 1
    assert "Training diverged" in result.stderr and "Traceback" not in result.stderr
    assert (
        "Written before this step and kept: run/checkpoints/epoch_000.ckpt (the best by val/loss), "
        "run/checkpoints/last.ckpt (the latest)." in result.stderr
    ), result.stderr
    assert sorted(path.name for path in (tmp_path / "run" / "checkpoints").iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    assert "\n\n" not in result.stdout  # no terminal: no line ended for a progress bar
    none = run_cli(
        *FAST[:2], *FAST[3:], "callbacks=none", "optim.lr=1e9", f"hydra.run.dir={tmp_path / 'none'}", cwd=tmp_path
    )
    assert none.returncode == 1 and "No checkpoint was written: this run keeps none" in none.stderr, none.stderr
    assert not (tmp_path / "none" / "checkpoints").exists()


def run_on_terminal(*arguments: str, cwd: Path) -> tuple[int, str]:
    """`cvae-train` with a pseudo-terminal as its stdout and stderr, as in a user's shell:
    the exit status and all it wrote there."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 x 100: tqdm draws in its width
    process = subprocess.Popen(
        [sys.executable, "-m", "cvae_exp.train", *arguments], cwd=cwd, stdout=follower, stderr=follower
    )
    os.close(follower)
    output, deadline = b"", time.monotonic() + 600
    while time.monotonic() < deadline:
        if select.select([leader], [], [], 1)[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the process has closed the terminal
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(leader)
    return process.wait(timeout=60), output.decode(errors="replace").replace("\r\n", "\n")


@pytest.mark.slow  # a training run: 8 s; .ci/run runs the slow tests
def test_closing_lines_after_a_progress_bar_start_on_their_own_line(tmp_path):
    status, output = run_on_terminal(
        *FAST[:2], "callbacks.progress_bar.refresh_rate=1", "optim.lr=1e9", f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert status == 1, output[-3000:]
    assert "Epoch 0" in output  # the bar was drawn
    assert re.search(r"(^|\n)cvae-train: failed after \d+ s: Training diverged", output), output[-3000:]
    assert re.search(r"\ncvae-train: error: Training diverged", output), output[-3000:]
    assert "Epoch 0" not in output.split("cvae-train: failed")[1]  # the bar is not drawn again at exit
    assert "No checkpoint was written before this step: the first is written when an epoch ends." in output
    assert "[cvae-train][ERROR] - cvae-train: failed after" in (tmp_path / "run" / "train.log").read_text()  # no "\n"
