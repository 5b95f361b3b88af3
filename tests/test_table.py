"""cvae-table on a synthetic sweep: completed, failed and missing runs all show."""

import csv
import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from cvae_exp.table import main


def make_job(sweep, name, epochs=10, latent_dim=20, lr=0.005, reference=15.69, metrics=None, seed=42):
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    config = {"trainer": {"max_epochs": epochs}, "model": {"latent_dim": latent_dim}, "optim": {"lr": lr}, "reference": {"score": reference}}
    OmegaConf.save(OmegaConf.create(config), job / ".hydra" / "config.yaml")
    if metrics is not None:
        hparams = {"epochs": epochs, "latent_dim": latent_dim, "lr": lr, "seed": seed}
        (job / "metrics.json").write_text(json.dumps({"hparams": hparams, "reference": {"score": reference}, **metrics}))


def test_table_lists_every_job_with_the_difference_to_the_report(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    test = {"ssim": 0.74, "mse": 0.023, "fid": 4.5, "score": 24.0, "score_uncapped": 24.0}
    make_job(sweep, "0", metrics={"status": "completed", "test": test, "train_time_s": 120.0})
    make_job(sweep, "1", epochs=30, metrics={"status": "failed", "reason": "loss is NaN at step 7"})
    make_job(sweep, "10", epochs=50)
    main([str(sweep)])
    rows = list(csv.DictReader((sweep / "table.csv").open()))
    assert [row["run"] for row in rows] == ["0", "1", "10"]
    assert float(rows[0]["diff"]) == pytest.approx(24.0 - 15.69) and float(rows[0]["train_min"]) == 2.0
    assert rows[1]["status"] == "failed: loss is NaN at step 7" and rows[1]["score"] == ""
    assert rows[2]["status"].startswith("missing") and rows[2]["epochs"] == "50"
    markdown = (sweep / "table.md").read_text()
    assert "| 0 | 10 | 20 | 0.005 | 15.69 | 0.7400 | 0.0230 | 4.5000 | 24.00 | 24.00 | +8.31 | 2.0 | completed |" in markdown
    assert (sweep / "table.png").stat().st_size > 0
    assert markdown in capsys.readouterr().out
    assert not (sweep / "table_seeds.md").exists()  # no two runs differ by seed alone


def test_runs_that_differ_only_by_seed_are_summarised(tmp_path):
    sweep = tmp_path / "sweep"
    scores = {1: 20.0, 2: 21.0, 3: 23.0}
    for seed, score in scores.items():
        test = {"ssim": 0.7, "mse": 0.02, "fid": 5.0, "score": score, "score_uncapped": score}
        make_job(sweep, str(seed), seed=seed, metrics={"status": "completed", "test": test})
    make_job(sweep, "9", lr=0.001, seed=1, metrics={"status": "completed", "test": test})
    main([str(sweep)])
    groups = list(csv.DictReader((sweep / "table_seeds.csv").open()))
    assert [(g["runs"], g["seeds"]) for g in groups] == [("3", "1 2 3"), ("1", "1")]
    assert float(groups[0]["score_mean"]) == pytest.approx(np.mean(list(scores.values())))
    assert float(groups[0]["score_std"]) == pytest.approx(np.std(list(scores.values()), ddof=1))
    assert "| 3 | 1 2 3 | 10 | 20 | 0.005 | 15.69 |" in (sweep / "table_seeds.md").read_text()


@pytest.mark.parametrize("setup", ["absent", "empty"])
def test_table_refuses_a_directory_without_runs(tmp_path, capsys, setup):
    sweep = tmp_path / "sweep"
    if setup == "empty":
        sweep.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep)])
    assert exit_info.value.code == 2
    assert str(sweep) in capsys.readouterr().err
    assert not (sweep / "table.md").exists()
