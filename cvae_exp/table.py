"""`cvae-table <sweep dir> [<sweep dir> ...]`: one row per run of a sweep, beside the published numbers.

Reads every job's metrics.json (a job without one is shown as missing, a damaged one as
unreadable, never skipped) and writes table.md, table.csv and table.png (the Score per
run, beside the published one where the runs reproduce a table). Besides epochs, latent
size and learning rate, every hyperparameter the sweep varied gets a column. Runs that
differ only by seed are also summarised as mean and standard deviation in
table_seeds.md and table_seeds.csv. Several sweeps (each run of one named <sweep>/<job>)
make one table: sweeps that differ in what Hydra cannot sweep together.
"""

import argparse
import csv
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cvae_exp.errors import UserInputError, report_and_exit
from cvae_exp.preflight import display_path
from cvae_exp.summary import run_summary

SHOWN = ["epochs", "latent_dim", "lr"]  # always shown; other hyperparameters when they vary
# Columns where any run has them: the lab's grader, likelihoods, the dataset classifier's metrics
# of samples, the disentanglement metrics, and the reconstruction term (what runs of different
# objectives are matched on).
METRICS = (
    "ssim",
    "mse",
    "fid",
    "score",
    "score_uncapped",
    "nll",
    "neg_elbo",
    "sample_accuracy",
    "classifier_fid",
    "sample_precision",
    "sample_recall",
    "classifier_accuracy",  # the classifier's own test accuracy, beside the metrics it serves
    "mig",
    "factorvae_score",
    "dci_disentanglement",
    "sap",
    "recon",
)
PLOTTED = {
    "score": "Score (capped)",
    "nll": "-log p(target | condition), nats",
    "mse": "test MSE over the target pixels",
}  # the first some run has
DIGITS = {
    "ssim": 4,
    "mse": 4,
    "fid": 4,
    "score": 2,
    "score_uncapped": 2,
    "nll": 2,
    "neg_elbo": 2,
    "sample_accuracy": 3,
    "classifier_fid": 2,
    "sample_precision": 3,
    "sample_recall": 3,
    "classifier_accuracy": 3,
    "mig": 3,
    "factorvae_score": 3,
    "dci_disentanglement": 3,
    "sap": 3,
    "recon": 2,
    "report_score": 2,
    "diff": 2,
    "train_min": 1,
    "beta": 4,
}


def collect(sweep_dirs: list[Path]) -> list[dict[str, Any]]:
    """Rows in sweep and job order; every job dir Hydra created counts, finished or not."""
    rows = []
    for sweep_dir in sweep_dirs:
        jobs = sorted((path.parent for path in sweep_dir.glob("*/.hydra")), key=_job_order)
        if not jobs:
            one_run = (
                f"; {str(sweep_dir)!r} is one run: pass the directory that holds it and its neighbours, "
                f"{str(sweep_dir.parent)!r}"
                if (sweep_dir / ".hydra").is_dir()
                else ""
            )
            raise UserInputError(
                f"No runs found in {str(sweep_dir)!r}: expected job directories with a .hydra/ folder, as a Hydra "
                f"multirun writes them (e.g. outputs/multiruns/<time>){one_run}."
            )
        named = len(sweep_dirs) > 1
        rows += [_row(job) | ({"run": f"{sweep_dir.name}/{job.name}"} if named else {}) for job in jobs]
    return rows


def _job_order(job: Path):
    return (0, int(job.name)) if job.name.isdigit() else (1, job.name)


def _row(job: Path) -> dict[str, Any]:
    metrics_file = job / "metrics.json"
    try:
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
        if metrics is not None and not isinstance(metrics.get("hparams"), dict):
            raise ValueError("it has no hparams")
    except ValueError as error:
        print(f"cvae-table: warning: {metrics_file} cannot be read ({error}); its row says so.", file=sys.stderr)
        return {"run": job.name, **_configured(job), "status": f"unreadable metrics.json: {error}"}
    if metrics is None:
        return {"run": job.name, **_configured(job), "status": "missing (no metrics.json: still running, or killed)"}
    test, reference = metrics.get("test", {}), metrics.get("reference") or {}
    row = {
        "run": job.name,
        **{key: value for key, value in _configured(job).items() if key != "report_score"},
        **metrics["hparams"],
        "report_score": reference.get("score"),
        "reference": reference.get("source"),
        **{key: test.get(key) for key in METRICS},
        "train_min": metrics["train_time_s"] / 60 if "train_time_s" in metrics else None,
        "status": metrics["status"] if "reason" not in metrics else f"{metrics['status']}: {metrics['reason']}",
    }
    if row["score"] is not None and row["report_score"] is not None:
        row["diff"] = row["score"] - row["report_score"]
    return row


def _configured(job: Path) -> dict[str, Any]:
    """What a job without readable metrics was set to run, from its saved config."""
    try:
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        choices = OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra.runtime.choices
        reference = cfg.get("reference") or {}
        return {
            **run_summary(cfg, choices),
            "report_score": reference.get("score"),
            "reference": reference.get("source"),
        }
    except Exception:  # a damaged job dir still gets its row
        return {}


def metrics_in(rows: list[dict[str, Any]]) -> list[str]:
    """The metrics some run has: the lab's grader for the label task, test/nll and
    test/neg_elbo where eval.nll_samples was set (all grader columns when no run finished)."""
    return [m for m in METRICS if any(row.get(m) is not None for row in rows)] or list(METRICS[:5])


def varied_in(rows: list[dict[str, Any]]) -> list[str]:
    """The hyperparameters that differ between runs, besides those always shown."""
    hyper = list(
        dict.fromkeys(
            key
            for row in rows
            for key in row
            if key not in ("run", "reference", "status", "report_score", "diff", "train_min", *METRICS)
        )
    )
    return [key for key in hyper if key not in SHOWN and len({str(row.get(key)) for row in rows}) > 1]


def columns_for(rows: list[dict[str, Any]]) -> list[str]:
    """run, the published row it reproduces (reference.source) if any, the shown and varied
    hyperparameters, the published score if any, metrics, status."""
    published = ["report_score"] if any(row.get("report_score") is not None for row in rows) else []
    sourced = ["reference"] if any(row.get("reference") for row in rows) else []
    return [
        "run",
        *sourced,
        *SHOWN,
        *varied_in(rows),
        *published,
        *metrics_in(rows),
        *(["diff"] if published else []),
        "train_min",
        "status",
    ]


def group_by_seed(rows: list[dict[str, Any]], varied: list[str]) -> list[dict[str, Any]]:
    """Completed runs whose hyperparameters are equal but for the seed, as mean and std (not
    repeats of one seed: those are no spread over seeds)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "completed":
            groups.setdefault(tuple(str(row.get(key)) for key in varied if key != "seed"), []).append(row)
    summaries = []
    for members in groups.values():
        if len({str(m.get("seed")) for m in members}) < len(members):
            continue
        summary = {"runs": len(members), "seeds": " ".join(str(m.get("seed")) for m in members)}
        summary |= {key: members[0].get(key) for key in varied if key != "seed"}
        for metric in METRICS:
            values = [m[metric] for m in members if m.get(metric) is not None]
            summary[f"{metric}_mean"] = statistics.mean(values) if values else None
            summary[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else None
        summaries.append(summary)
    return summaries


def _format(column: str, value: Any) -> str:
    if value is None:
        return ""
    column = column.removesuffix("_mean").removesuffix("_std")
    if column == "lr":
        return f"{value:g}"
    if column in DIGITS and isinstance(value, (int, float)):
        return (
            f"{value:+.{DIGITS[column]}f}"
            if column == "diff"
            else f"{value:.{DIGITS[column]}g}"
            if column == "beta"
            else f"{value:.{DIGITS[column]}f}"
        )
    return str(value)


def write_markdown(rows: list[dict[str, Any]], columns: list[str], path: Path) -> None:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_format(c, row.get(c)) for c in columns) + " |" for row in rows]
    path.write_text("\n".join(lines) + "\n")


def write_csv(rows: list[dict[str, Any]], columns: list[str], path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows({c: row.get(c) for c in columns} for row in rows)


def plot(rows: list[dict[str, Any]], labels: list[str], path: Path) -> None:
    """The Score per run (else test/nll, else test/mse), labelled by the hyperparameters in
    `labels`; the published Score beside it only where the runs have one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [  # the keys a run has (a VQ-VAE's loss.commitment, not beside CVAEs)
        "  ".join(f"{key}={_format(key, row[key])}" for key in labels if row.get(key) is not None) or row["run"]
        for row in rows
    ]
    positions = range(len(rows))  # horizontal bars, the first run on top: a label of any length reads in one line
    published = any(row.get("report_score") is not None for row in rows)
    figure, axes = plt.subplots(figsize=(6, max(3, 0.35 * len(rows) * (1 + published))))
    height = 0.4 if published else 0.8
    if published:
        axes.barh(
            [p - height / 2 for p in positions], [r.get("report_score") or 0 for r in rows], height, label="report"
        )
    metric = next((m for m in PLOTTED if any(r.get(m) is not None for r in rows)), "score")
    axes.barh([p + height / 2 * published for p in positions], [r.get(metric) or 0 for r in rows], height, label="ours")
    axes.set_yticks(list(positions), names, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel(PLOTTED[metric])
    if published:
        axes.legend()
    figure.savefig(path, dpi=120, bbox_inches="tight")  # the labels' width, whatever it is, is kept in the image
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cvae-table", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", type=Path, nargs="+", metavar="sweep_dir", help="a Hydra multirun directory")
    parser.add_argument(
        "--out", type=Path, help="where to write table.md/.csv/.png (default: the sweep dir; needed for several)"
    )
    args = parser.parse_args(argv)
    out = args.out or args.sweep_dirs[0]
    try:
        for sweep_dir in args.sweep_dirs:
            if not sweep_dir.is_dir():
                raise UserInputError(
                    f"The sweep directory {str(sweep_dir)!r} does not exist or is not a directory; pass the "
                    "directory of a Hydra multirun (e.g. outputs/multiruns/<time>)."
                )
        if len(args.sweep_dirs) > 1 and args.out is None:
            raise UserInputError(
                f"{len(args.sweep_dirs)} sweep directories make one table: say where it goes with --out <directory>."
            )
        rows = collect(args.sweep_dirs)
        if out.exists() and not out.is_dir():
            raise UserInputError(
                f"--out {str(out)!r} is a file; pass a directory for table.md, table.csv and table.png."
            )
    except UserInputError as error:
        report_and_exit(error, "cvae-table")
    columns, varied = columns_for(rows), SHOWN + varied_in(rows)
    out.mkdir(parents=True, exist_ok=True)
    write_markdown(rows, columns, out / "table.md")
    write_csv(rows, columns, out / "table.csv")
    plot(rows, [c for c in varied if len({str(r.get(c)) for r in rows}) > 1], out / "table.png")
    seeds = group_by_seed(rows, varied)
    seeds_written = any(group["runs"] > 1 for group in seeds)
    if seeds_written:
        seed_columns = ["runs", "seeds", *[c for c in varied if c != "seed"]] + [
            f"{m}_{s}" for m in metrics_in(rows) for s in ("mean", "std")
        ]
        write_markdown(seeds, seed_columns, out / "table_seeds.md")
        write_csv(seeds, seed_columns, out / "table_seeds.csv")
    written = ["table.md", "table.csv", "table.png"] + (["table_seeds.md", "table_seeds.csv"] if seeds_written else [])
    try:  # every file is written first: a reader that stops early (| head) cuts the printout only
        print((out / "table.md").read_text(), end="")
        if seeds_written:
            print("\nOver seeds (mean, std):\n" + (out / "table_seeds.md").read_text(), end="")
        print(f"\ncvae-table: wrote {', '.join(written)} in {display_path(out)}", flush=True)
    except BrokenPipeError:  # Python's advice: point stdout at devnull, so that its flush at exit cannot fail
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    main()
