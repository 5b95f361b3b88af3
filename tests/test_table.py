"""cvae-table on synthetic sweeps: completed, failed, missing and damaged runs all show,
with a column for every hyperparameter the sweep varied."""

import csv
import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from cvae_exp.table import main

HPARAMS = {
    "data": "mnist",
    "model": "mlp",
    "conditioning": "concat",
    "experiment": "report_genmodel",
    "latent_dim": 20,
    "likelihood": "gaussian",
    "beta": 1.0,
    "lr": 0.005,
    "epochs": 10,
    "batch_size": 1024,
    "seed": 42,
    "precision": "32-true",
}


def make_job(sweep, name, metrics=None, reference=15.69, source=None, **changes):
    """A job dir as cvae-train writes it; `changes` are hyperparameters."""
    hparams = {**HPARAMS, **changes}
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    config = {
        "seed": hparams["seed"],
        "data": {"name": hparams["data"], "batch_size": hparams["batch_size"]},
        "trainer": {"max_epochs": hparams["epochs"], "precision": hparams["precision"]},
        "model": {"latent_dim": hparams["latent_dim"]},
        "loss": {"likelihood": hparams["likelihood"], "beta": hparams["beta"]},
        "optim": {"lr": hparams["lr"]},
        "reference": {"score": reference, **({"source": source} if source else {})} if reference is not None else None,
    }
    OmegaConf.save(OmegaConf.create(config), job / ".hydra" / "config.yaml")
    choices = {key: hparams[key] for key in ("model", "conditioning", "experiment")}
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": choices}}}), job / ".hydra" / "hydra.yaml")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps({"hparams": hparams, "reference": config["reference"], **metrics}))
    return job


def completed(score, **test):
    return {
        "status": "completed",
        "test": {"ssim": 0.7, "mse": 0.02, "fid": 5.0, "score": score, "score_uncapped": score, **test},
    }


def test_table_lists_every_job_with_the_difference_to_the_report(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    make_job(sweep, "0", metrics={**completed(24.0, ssim=0.74, mse=0.023, fid=4.5), "train_time_s": 120.0})
    make_job(sweep, "1", epochs=30, metrics={"status": "failed", "reason": "loss is NaN at step 7"})
    make_job(sweep, "10", epochs=50)
    main([str(sweep)])
    rows = list(csv.DictReader((sweep / "table.csv").open()))
    assert [row["run"] for row in rows] == ["0", "1", "10"]
    assert float(rows[0]["diff"]) == pytest.approx(24.0 - 15.69) and float(rows[0]["train_min"]) == 2.0
    assert rows[1]["status"] == "failed: loss is NaN at step 7" and rows[1]["score"] == ""
    assert rows[2]["status"].startswith("missing") and rows[2]["epochs"] == "50"
    markdown = (sweep / "table.md").read_text()
    assert markdown.splitlines()[0] == (
        "| run | epochs | latent_dim | lr | report_score | ssim | mse | fid | score | score_uncapped | diff | "
        "train_min | status |"
    )
    assert (
        "| 0 | 10 | 20 | 0.005 | 15.69 | 0.7400 | 0.0230 | 4.5000 | 24.00 | 24.00 | +8.31 | 2.0 | completed |"
        in markdown
    )
    assert (sweep / "table.png").stat().st_size > 0
    assert markdown in capsys.readouterr().out
    assert not (sweep / "table_seeds.md").exists()  # no two runs differ by seed alone


def test_every_varied_hyperparameter_gets_a_column_and_lr_is_rounded(tmp_path):
    sweep = tmp_path / "sweep"
    make_job(sweep, "0", reference=None, seed=1, beta=1.0, lr=0.0020000000000000005, metrics=completed(20.0))
    make_job(sweep, "1", reference=None, seed=2, beta=4.0, lr=0.0020000000000000005, metrics=completed(21.0))
    make_job(
        sweep, "2", reference=None, seed=2, beta=4.0, conditioning="film", lr=0.0020000000000000005
    )  # missing: from its config
    main([str(sweep)])
    lines = (sweep / "table.md").read_text().splitlines()
    assert lines[0] == (
        "| run | epochs | latent_dim | lr | conditioning | beta | seed | ssim | mse | fid | score | "
        "score_uncapped | train_min | status |"
    )
    assert lines[2].startswith("| 0 | 10 | 20 | 0.002 | concat | 1 | 1 |")
    assert lines[4].startswith("| 2 | 10 | 20 | 0.002 | film | 4 | 2 |") and "missing" in lines[4]
    assert "report" not in (sweep / "table.csv").read_text()


def test_runs_that_differ_only_by_seed_are_summarised(tmp_path):
    sweep = tmp_path / "sweep"
    scores = {1: 20.0, 2: 21.0, 3: 23.0}
    for seed, score in scores.items():
        make_job(sweep, str(seed), seed=seed, metrics=completed(score))
    make_job(sweep, "9", lr=0.001, seed=1, metrics=completed(20.0))
    main([str(sweep)])
    groups = list(csv.DictReader((sweep / "table_seeds.csv").open()))
    assert [(g["runs"], g["seeds"], g["lr"]) for g in groups] == [("3", "1 2 3", "0.005"), ("1", "1", "0.001")]
    assert float(groups[0]["score_mean"]) == pytest.approx(np.mean(list(scores.values())))
    assert float(groups[0]["score_std"]) == pytest.approx(np.std(list(scores.values()), ddof=1))
    assert "| 3 | 1 2 3 | 10 | 20 | 0.005 |" in (sweep / "table_seeds.md").read_text()


def test_repeats_of_one_seed_are_no_spread_over_seeds(tmp_path):
    sweep = tmp_path / "sweep"
    for job in ("0", "1"):
        make_job(sweep, job, seed=42, metrics=completed(20.0))
    make_job(sweep, "2", lr=0.001, metrics=completed(21.0))
    main([str(sweep)])
    assert not (sweep / "table_seeds.md").exists()


def test_runs_that_reproduce_a_published_row_name_it(tmp_path):
    """Jobs of a reproduction (longest first, say) are told apart by the row they reproduce."""
    sweep = tmp_path / "sweep"
    make_job(sweep, "0", epochs=50, reference=24.22, source="report Table 3, row 13", metrics=completed(25.0))
    make_job(sweep, "1", source="report Table 3, row 1")  # missing: from its config
    main([str(sweep)])
    lines = (sweep / "table.md").read_text().splitlines()
    assert lines[0].startswith("| run | reference | epochs |")
    assert lines[2].startswith("| 0 | report Table 3, row 13 | 50 |") and lines[3].startswith(
        "| 1 | report Table 3, row 1 | 10 |"
    )


def test_a_damaged_metrics_file_gets_its_row_and_a_warning_naming_it(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    make_job(sweep, "0", metrics=completed(20.0))
    damaged = make_job(sweep, "1", epochs=30) / "metrics.json"
    damaged.write_text('{"status": "compl')
    main([str(sweep)])
    rows = list(csv.DictReader((sweep / "table.csv").open()))
    assert rows[0]["status"] == "completed" and rows[1]["status"].startswith("unreadable metrics.json")
    assert rows[1]["epochs"] == "30"
    assert str(damaged) in capsys.readouterr().err


@pytest.mark.parametrize("setup", ["absent", "empty", "file", "one run"])
def test_table_refuses_a_directory_without_runs(tmp_path, capsys, setup):
    sweep = tmp_path / "sweep"
    if setup == "empty":
        sweep.mkdir()
    if setup == "one run":
        (sweep / ".hydra").mkdir(parents=True)
    if setup == "file":
        sweep.write_text("not a sweep")
    with pytest.raises(SystemExit) as exit_info:
        main([str(sweep)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert str(sweep) in error and ("is one run: pass the directory that holds it" in error) == (setup == "one run")
    assert sorted(tmp_path.iterdir()) == ([sweep] if setup != "absent" else [])


def test_several_sweeps_make_one_table_with_their_disentanglement_columns(tmp_path):
    """As scripts/reproduce_disentanglement.sh runs it: one sweep per objective, whose runs are
    named <sweep>/<job> and grouped over seeds per objective."""
    disentangled = {"mig": 0.2, "factorvae_score": 0.7, "dci_disentanglement": 0.3, "sap": 0.05, "recon": 40.0}
    for objective, beta in (("beta_vae", 4.0), ("factorvae", 1.0)):
        for seed in (0, 1):
            test = {**disentangled, "mig": disentangled["mig"] + seed / 10}
            make_job(tmp_path / objective, str(seed), reference=None, experiment=objective, beta=beta, seed=seed)
            job = tmp_path / objective / str(seed)
            hparams = {**HPARAMS, "experiment": objective, "beta": beta, "seed": seed}
            (job / "metrics.json").write_text(json.dumps({"hparams": hparams, "status": "completed", "test": test}))
    out = tmp_path / "table"
    main([str(tmp_path / "beta_vae"), str(tmp_path / "factorvae"), "--out", str(out)])
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [row["run"] for row in rows] == ["beta_vae/0", "beta_vae/1", "factorvae/0", "factorvae/1"]
    lines = (out / "table.md").read_text().splitlines()
    assert lines[0] == (
        "| run | epochs | latent_dim | lr | experiment | beta | seed | mig | factorvae_score | "
        "dci_disentanglement | sap | recon | train_min | status |"
    )
    assert lines[3].startswith("| beta_vae/1 | 10 | 20 | 0.005 | beta_vae | 4 | 1 | 0.300 | 0.700 |")
    groups = list(csv.DictReader((out / "table_seeds.csv").open()))
    assert [(g["experiment"], g["seeds"]) for g in groups] == [("beta_vae", "0 1"), ("factorvae", "0 1")]
    assert float(groups[0]["mig_mean"]) == pytest.approx(0.25)
    assert float(groups[0]["mig_std"]) == pytest.approx(np.std([0.2, 0.3], ddof=1))


def test_several_sweeps_need_a_place_for_their_table(tmp_path, capsys):
    for name in ("a", "b"):
        make_job(tmp_path / name, "0", metrics=completed(20.0))
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "a"), str(tmp_path / "b")])
    assert exit_info.value.code == 2
    assert "--out" in capsys.readouterr().err
    assert not list(tmp_path.glob("*/table*"))


def test_runs_of_one_study_show_the_classifier_metrics_and_the_likelihoods(tmp_path):
    """As scripts/reproduce_family.sh runs it: separate runs of one directory, one model each;
    a model without a posterior density (VQ-VAE) has neg_elbo and no nll."""
    study = tmp_path / "study"
    classified = {"sample_accuracy": 0.95, "classifier_fid": 12.345, "sample_precision": 0.8, "sample_recall": 0.6}
    classified["classifier_accuracy"] = 0.994
    make_job(study, "cvae", model="mlp", metrics=completed(20.0, nll=90.123, neg_elbo=95.0, **classified))
    make_job(study, "vqvae", model="vqvae", metrics=completed(21.0, neg_elbo=99.0, **classified))
    main([str(study)])
    rows = {row["run"]: row for row in csv.DictReader((study / "table.csv").open())}
    assert rows["cvae"]["nll"] == "90.123" and rows["vqvae"]["nll"] == ""
    header = (study / "table.md").read_text().splitlines()[0]
    assert (
        "| nll | neg_elbo | sample_accuracy | classifier_fid | sample_precision | sample_recall | classifier_accuracy |"
        in header
    )
    assert "| 90.12 | 95.00 | 0.950 | 12.35 | 0.800 | 0.600 | 0.994 |" in (study / "table.md").read_text()
