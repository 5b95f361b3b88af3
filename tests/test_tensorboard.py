"""What TensorBoard shows of a sweep: runs named by the overrides that vary, those hparams first
in the HParams tab, the run's own metrics before Lightning's counters. The slow test opens the
dashboard of a real sweep in headless Chromium."""

import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from cvae_exp.loggers import TRAINER_GROUP, SweepTensorBoardLogger, hparams_records
from cvae_exp.summary import (
    NAME_LIMIT,
    SUMMARY_NAMES,
    run_name,
    run_summary,
    sweep_overrides,
    tensorboard_hparams,
    varied_overrides,
)

# A job of `-m data=digits model.latent_dim=8,16 seed=1,2 eval.classifier_metrics=false ...`, as Hydra
# records it (it writes the job's booleans capitalised)
SWEEP = ["data=digits", "model.latent_dim=8,16", "seed=1,2", "eval.classifier_metrics=false", "+trainer.max_time=10"]
JOB = ["data=digits", "model.latent_dim=8", "seed=1", "eval.classifier_metrics=False", "+trainer.max_time=10"]


def test_a_job_is_named_by_the_overrides_its_sweep_varies():
    assert varied_overrides(JOB, SWEEP) == ["model.latent_dim=8", "seed=1"]
    assert run_name(varied_overrides(JOB, SWEEP)) == "model.latent_dim=8,seed=1"
    optuna = ["model.latent_dim=choice(2, 4)", "optim.lr=tag(log, interval(1e-4, 1e-2))"]
    assert varied_overrides(["debug=fast", "model.latent_dim=4", "optim.lr=0.002"], optuna) == [
        "model.latent_dim=4",
        "optim.lr=0.002",
    ]
    assert varied_overrides(["model=conv", "seed=3"], None) == ["model=conv", "seed=3"]  # sweep unknown: all
    assert run_name([]) == ""  # a single run: no sub-directory


def test_a_run_name_is_one_directory_of_bounded_length():
    assert run_name(["data.root=/data/mnist", "seed=1"]) == "data.root=-data-mnist,seed=1"
    long = [f"model.encoder.hidden_dims=[{','.join(['512'] * 60)}]"]
    assert len(run_name(long)) == NAME_LIMIT and run_name(long) != run_name([long[0] + "0"])


def test_the_varied_hparams_come_first_and_every_value_is_a_scalar():
    summary = {"data": "digits", "model": "mlp", "experiment": None, "latent_dim": 8, "beta": 1.0, "seed": 1}
    hparams, differs = tensorboard_hparams(summary, ["model.latent_dim=8", "seed=1", "model.encoder.hidden_dims=[32]"])
    assert list(hparams)[:3] == ["latent_dim", "seed", "model.encoder.hidden_dims"]
    assert differs == {"latent_dim", "seed", "model.encoder.hidden_dims"}
    assert hparams["model.encoder.hidden_dims"] == "[32]" and hparams["experiment"] == "None"
    assert tensorboard_hparams(summary, []) == ({**summary, "experiment": "None"}, set())


def test_summary_names_name_the_config_keys_run_summary_reads(compose_train):
    cfg = compose_train(["model.latent_dim=7", "loss.beta=2.5", "optim.lr=0.003", "data.batch_size=64"])
    summary = run_summary(cfg, {"model": "mlp"})
    for key, name in SUMMARY_NAMES.items():
        value = OmegaConf.select(cfg, key)
        assert summary[name] == (str(value) if name == "precision" else value), key


def test_the_hparams_records_mark_the_varied_hparams_and_list_the_main_metrics_first():
    hparams = {"latent_dim": 8, "seed": 1, "data": "digits", "deterministic": False}
    experiment, start, end = (
        plugin_data_pb2.HParamsPluginData.FromString(record.value[0].metadata.plugin_data.content)
        for record in hparams_records(
            hparams, {"latent_dim", "seed"}, ["test/kl", "test/fid", "test/loss", "test/score"]
        )
    )
    infos = experiment.experiment.hparam_infos
    assert [(i.name, i.differs) for i in infos] == [("latent_dim", 1), ("seed", 1), ("data", 0), ("deterministic", 0)]
    tags = [m.name.tag for m in experiment.experiment.metric_infos]
    assert tags == ["test/score", "loss/test", "test/fid", "test/kl"]  # as TensorBoard shows them (tensorboard_tag)
    values = start.session_start_info.hparams
    assert values["latent_dim"].number_value == 8 and values["data"].string_value == "digits"
    assert values["deterministic"].HasField("bool_value") and start.session_start_info.group_name == ""
    assert end.session_end_info.status == 1  # STATUS_SUCCESS


def fake_sweep_job(sweep: Path, number: int, job: list[str]) -> Path:
    """A job directory as Hydra leaves it: .hydra/hydra.yaml of the job, multirun.yaml of the sweep."""
    run = sweep / str(number)
    (run / ".hydra").mkdir(parents=True)
    hydra = {"mode": "MULTIRUN", "sweep": {"dir": str(sweep)}, "sweeper": {"params": None}, "overrides": {"task": job}}
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": hydra}))
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": SWEEP}}}))
    return run


def test_the_logger_of_a_sweep_job_logs_to_its_name_with_the_losses_first_and_lightnings_counters_last(tmp_path):
    run = fake_sweep_job(tmp_path / "sweep", 0, JOB)
    assert sweep_overrides(run) == ["model.latent_dim=8", "seed=1"]  # a resumed job reads the same files
    assert sweep_overrides(tmp_path) == []  # a single run (no .hydra, no Hydra running)
    logger = SweepTensorBoardLogger(str(run), name="tensorboard", default_hp_metric=False)
    assert Path(logger.log_dir) == run / "tensorboard" / "model.latent_dim=8,seed=1"
    assert type(pickle.loads(pickle.dumps(logger))) is SweepTensorBoardLogger  # as a spawned process gets it
    logger.log_metrics({"epoch": 0, "lr-Adam": 1e-3, "train/loss": 2.0, "train/kl": 1.0, "val/mse": 0.1}, step=1)
    logger.log_hyperparams({"data": "digits", "latent_dim": 8, "seed": 1}, metrics={"test/score": 0.5})
    logger.finalize("success")
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert set(events.Tags()["scalars"]) == {
        "loss/train",
        "train/kl",
        "val/mse",
        f"{TRAINER_GROUP}/epoch",
        f"{TRAINER_GROUP}/lr-Adam",
    }
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [(i.name, i.differs) for i in experiment.hparam_infos] == [("latent_dim", 1), ("seed", 1), ("data", 0)]
    assert sorted(run.glob("tensorboard/*/hparams.yaml"))  # Lightning's record of the hparams stays


# --- The dashboard of a real sweep --------------------------------------------------------------

SWEEP_RUN = [
    "-m",
    "data=digits",
    "model.latent_dim=2,4",
    "seed=1,2",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "eval.classifier_metrics=false",
    "eval.samples_per_class=10",
    "callbacks.progress_bar.refresh_rate=0",
]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # Chromium's sandbox does not run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1600,1000",
    "--virtual-time-budget=20000",  # virtual milliseconds for the page to fetch and draw its data
]
TENSORBOARD_SERVING = re.compile(r"TensorBoard \S+ at (http://\S+?)/? ")


def stop(process: subprocess.Popen) -> None:
    """End a process started in its own session, with the children it started."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def chromium(url: str, output: list[str], profile: Path, timeout: float = 120) -> str:
    """Run headless Chromium once on `url` (a fresh profile each time); its stdout."""
    profile.mkdir()
    process = subprocess.Popen(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *output, url],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, _ = process.communicate(timeout=timeout)
    finally:
        stop(process)
    assert process.returncode == 0, f"chromium exited with {process.returncode}"
    return stdout


def fetch(url: str, body: dict | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_for(condition, what: str, seconds: float = 90):
    """Poll `condition` until it returns something true, for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def tensorboard(tmp_path):
    """start(logdir) -> the URL of a TensorBoard serving `logdir` on the loopback interface."""
    started = []

    def start(logdir: Path) -> str:
        log = tmp_path / "tensorboard.log"
        with log.open("w") as output:
            command = ["tensorboard", "--logdir", str(logdir), "--host", "127.0.0.1", "--port", "0"]
            started.append(subprocess.Popen(command, stdout=output, stderr=output, start_new_session=True))
        served = wait_for(lambda: TENSORBOARD_SERVING.search(log.read_text()), "TensorBoard to serve", 60)
        return served.group(1)

    yield start
    for process in started:
        stop(process)


@pytest.mark.slow  # a sweep of four short jobs, TensorBoard and two Chromium pages: about 1 min
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)")
def test_the_dashboard_of_a_sweep_names_runs_by_their_overrides_and_shows_the_varied_hparams(tmp_path, tensorboard):
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "cvae_exp.train", *SWEEP_RUN, f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = {}
    for job in range(4):
        hparams = json.loads((sweep / str(job) / "metrics.json").read_text())["hparams"]
        expected[f"{job}/tensorboard/model.latent_dim={hparams['latent_dim']},seed={hparams['seed']}"] = hparams
    url = tensorboard(sweep)

    # What the page fetches: the runs, the HParams tab's experiment and its sessions
    assert wait_for(lambda: set(fetch(f"{url}/data/runs")) == set(expected), "the four runs")
    experiment = wait_for(
        lambda: (
            (found := fetch(f"{url}/data/plugin/hparams/experiment", {"experimentName": ""}))["hparamInfos"] and found
        ),
        "the HParams experiment",
    )
    infos = experiment["hparamInfos"]
    assert [(info["name"], info["differs"]) for info in infos[:2]] == [("latent_dim", True), ("seed", True)]
    assert not any(info["differs"] for info in infos[2:])  # the dashboard ticks the first five: these two first
    assert [m["name"]["tag"] for m in experiment["metricInfos"][:2]] == ["test/score", "loss/test"]
    tags = fetch(f"{url}/data/plugin/scalars/tags")
    for run in expected:
        assert {"loss/train", "loss/val", "loss/test", f"{TRAINER_GROUP}/epoch"} <= set(tags[run])
        assert "epoch" not in tags[run] and "train/loss" not in tags[run]

    # What a user sees: the Time Series page (TensorBoard's first) lists the runs by name and its
    # card groups in TensorBoard's order, by tag: the losses first, Lightning's counters last
    page = chromium(f"{url}/#timeseries", ["--dump-dom"], tmp_path / "profile-timeseries")
    for run in expected:
        assert run in page, run
    groups = re.findall(r'class="group-title" title="([^"]+)"', page)
    assert groups[0] == "loss" and groups[-1] == TRAINER_GROUP, groups
    assert {"samples", "train", "val", "test"} <= set(groups[1:-1]), groups
    assert "epoch" not in groups
    # The HParams tab draws in shadow DOM, out of reach of --dump-dom: one screenshot to look at
    screenshot = tmp_path / "hparams.png"
    chromium(f"{url}/#hparams", [f"--screenshot={screenshot}"], tmp_path / "profile-hparams")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000, screenshot
    print(f"HParams tab: {screenshot}")
