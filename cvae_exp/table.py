"""`cvae-table <sweep dir>`: one row per run of a sweep, beside the published numbers.

Reads every job's metrics.json (a job without one is shown as missing, not skipped)
and writes table.md, table.csv and table.png (published vs our Score per row). Runs
that differ only by seed are also summarised as mean and standard deviation in
table_seeds.md and table_seeds.csv.
"""

import argparse
import csv
import json
import statistics
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cvae_exp.errors import UserInputError, report_and_exit

COLUMNS = [
    "run", "epochs", "latent_dim", "lr", "report_score", "ssim", "mse", "fid",
    "score", "score_uncapped", "diff", "train_min", "status",
]
METRICS = ("ssim", "mse", "fid", "score", "score_uncapped")
SEED_COLUMNS = ["runs", "seeds", "epochs", "latent_dim", "lr", "report_score"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
DIGITS = {"ssim": 4, "mse": 4, "fid": 4, "score": 2, "score_uncapped": 2, "report_score": 2, "diff": 2, "train_min": 1}


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """Rows in job order; every job dir Hydra created counts, finished or not."""
    jobs = sorted((path.parent for path in sweep_dir.glob("*/.hydra")), key=_job_order)
    if not jobs:
        raise UserInputError(f"No runs found in {str(sweep_dir)!r}: expected job directories with a .hydra/ folder, as a Hydra multirun writes them (e.g. outputs/multiruns/<time>).")
    return [_row(job) for job in jobs]


def _job_order(job: Path):
    return (0, int(job.name)) if job.name.isdigit() else (1, job.name)


def _row(job: Path) -> dict[str, Any]:
    metrics_file = job / "metrics.json"
    if not metrics_file.is_file():
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        reference = cfg.get("reference") or {}
        return {
            "run": job.name, "epochs": cfg.trainer.max_epochs, "latent_dim": cfg.model.latent_dim, "lr": cfg.optim.lr,
            "report_score": reference.get("score"), "status": "missing (no metrics.json: failed or still running)",
        }
    metrics = json.loads(metrics_file.read_text())
    hparams, test, reference = metrics["hparams"], metrics.get("test", {}), metrics.get("reference") or {}
    row = {
        "run": job.name, "epochs": hparams["epochs"], "latent_dim": hparams["latent_dim"], "lr": hparams["lr"],
        "report_score": reference.get("score"), **{key: test.get(key) for key in ("ssim", "mse", "fid", "score", "score_uncapped")},
        "train_min": metrics["train_time_s"] / 60 if "train_time_s" in metrics else None,
        "status": metrics["status"] if "reason" not in metrics else f"{metrics['status']}: {metrics['reason']}",
        "hparams": hparams,
    }
    if row["score"] is not None and row["report_score"] is not None:
        row["diff"] = row["score"] - row["report_score"]
    return row


def group_by_seed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Completed runs whose hyperparameters are equal but for the seed, as mean and std."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "completed":
            key = tuple(sorted((name, str(value)) for name, value in row["hparams"].items() if name != "seed"))
            groups.setdefault(key, []).append(row)
    summaries = []
    for members in groups.values():
        first = members[0]
        summary = {"runs": len(members), "seeds": " ".join(str(m["hparams"]["seed"]) for m in members)}
        summary |= {key: first[key] for key in ("epochs", "latent_dim", "lr", "report_score")}
        for metric in METRICS:
            values = [m[metric] for m in members if m[metric] is not None]
            summary[f"{metric}_mean"] = statistics.mean(values) if values else None
            summary[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else None
        summaries.append(summary)
    return summaries


def _format(column: str, value: Any) -> str:
    if value is None:
        return ""
    column = column.removesuffix("_mean").removesuffix("_std")
    if column in DIGITS:
        return f"{value:+.{DIGITS[column]}f}" if column == "diff" else f"{value:.{DIGITS[column]}f}"
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


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"e{r['epochs']} z{r['latent_dim']} lr{r['lr']:g}" for r in rows]
    positions = range(len(rows))
    figure, axes = plt.subplots(figsize=(max(6, 0.8 * len(rows)), 4))
    width = 0.4
    axes.bar([p - width / 2 for p in positions], [r.get("report_score") or 0 for r in rows], width, label="report")
    axes.bar([p + width / 2 for p in positions], [r.get("score") or 0 for r in rows], width, label="ours")
    axes.set_xticks(list(positions), names, rotation=45, ha="right")
    axes.set_ylabel("Score (capped)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cvae-table", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun directory")
    parser.add_argument("--out", type=Path, help="where to write table.md/.csv/.png (default: the sweep dir)")
    args = parser.parse_args(argv)
    try:
        if not args.sweep_dir.is_dir():
            raise UserInputError(f"The sweep directory {str(args.sweep_dir)!r} does not exist; pass the directory of a Hydra multirun (e.g. outputs/multiruns/<time>).")
        rows = collect(args.sweep_dir)
    except UserInputError as error:
        report_and_exit(error, "cvae-table")
    out = args.out or args.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    write_markdown(rows, COLUMNS, out / "table.md")
    write_csv(rows, COLUMNS, out / "table.csv")
    plot(rows, out / "table.png")
    print((out / "table.md").read_text(), end="")
    seeds = group_by_seed(rows)
    if any(group["runs"] > 1 for group in seeds):
        write_markdown(seeds, SEED_COLUMNS, out / "table_seeds.md")
        write_csv(seeds, SEED_COLUMNS, out / "table_seeds.csv")
        print("\nOver seeds (mean, std):\n" + (out / "table_seeds.md").read_text(), end="")


if __name__ == "__main__":
    main()
