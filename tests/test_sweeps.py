"""Sweeps and scale-out: joblib, Optuna, SLURM configs, DDP on CPU, HParams in TensorBoard."""

import json

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from tests.helpers import run_cli

FAST = [
    "model.encoder.hidden_dims=[32]",
    "model.decoder.hidden_dims=[32]",
    "callbacks.progress_bar.refresh_rate=0",
    "eval.samples_per_class=20",
]


@pytest.mark.slow  # two jobs in parallel processes: 17 s; .ci/run runs the slow tests
def test_joblib_multirun_of_two_seeds_gives_a_table_with_a_seed_column(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        *FAST,
        "debug=fast",
        "seed=1,2",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {json.loads((sweep / job / "metrics.json").read_text())["hparams"]["seed"] for job in ("0", "1")} == {1, 2}
    assert "multirun finished: 2 debug" in result.stdout
    table = run_cli(str(sweep), cwd=tmp_path, tool="table")
    assert table.returncode == 0, table.stderr[-2000:]
    assert "seed" in (sweep / "table.md").read_text().splitlines()[0]


@pytest.mark.slow  # trains and resumes or sweeps real runs: over 10 s; .ci/run runs the slow tests
def test_optuna_search_maximises_the_returned_validation_metric(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        *FAST,
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "debug=fast",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"model.latent_dim", "loss.beta", "optim.lr"}
    ssims = [json.loads((sweep / job / "metrics.json").read_text())["val"]["ssim"] for job in ("0", "1")]
    assert best["best_value"] == pytest.approx(max(ssims))


@pytest.mark.parametrize("launcher,target", [("slurm", "SlurmLauncher"), ("joblib", "JoblibLauncher")])
def test_launcher_configs_compose(tmp_path, launcher, target):
    result = run_cli(f"hydra/launcher={launcher}", "--cfg", "hydra", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert target in yaml.safe_load(result.stdout)["hydra"]["launcher"]["_target_"]


@pytest.mark.slow  # two DDP processes: 17 s; .ci/run runs the slow tests
def test_ddp_trains_on_cpu_with_two_processes(tmp_path):
    run = tmp_path / "run"
    result = run_cli(
        *FAST,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.max_epochs=2",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed_backend=gloo" in (run / "train.log").read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 2
    assert metrics["test"]["score"] > 0


def test_tensorboard_holds_image_grids_and_the_hparams_with_final_test_metrics(tmp_path):
    run = tmp_path / "run"
    result = run_cli(*FAST, "trainer.max_epochs=1", f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert {
        "data",
        "model",
        "conditioning",
        "latent_dim",
        "beta",
        "lr",
        "epochs",
        "batch_size",
        "seed",
        "precision",
    } <= set(session.hparams)
    assert session.hparams["model"].string_value == "mlp" and session.hparams["latent_dim"].number_value == 20
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metric_tags = {info.name.tag for info in experiment.metric_infos}
    assert {"test/score", "test/ssim", "test/fid"} <= metric_tags and "hp_metric" not in metric_tags
    assert "hp_metric" not in events.Tags()["scalars"]
    images = {"samples/samples_by_class", "samples/reconstructions", "samples/label_swap", "samples/interpolation"}
    assert images <= set(events.Tags()["images"])
    grid = events.Images("samples/samples_by_class")[-1]
    assert (grid.height, grid.width) == (10 * 30 + 2, 8 * 30 + 2)  # one row per class, 8 samples, 2 px padding
