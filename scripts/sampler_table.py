"""The table and plot of scripts/reproduce_samplers.sh: for every run of a study directory
and every `eval-<sampler>.json` cvae-eval wrote in it, the lab's grader and the classifier
metrics against the run's training time.

    python scripts/sampler_table.py outputs/samplers/<time>    # writes table.md and table.png there
"""

import json
import sys
from pathlib import Path

from cvae_exp.schema import SAMPLERS

COLUMNS = (
    "run",
    "train_min",
    "sampler",
    "ssim",
    "mse",
    "fid",
    "score",
    "score_uncapped",
    "sample_accuracy",
    "classifier_fid",
    "sample_precision",
    "sample_recall",
)


def rows(study: Path) -> list[dict]:
    found = []
    for run in sorted(folder for folder in study.iterdir() if folder.is_dir()):
        for sampler in SAMPLERS:
            path = run / f"eval-{sampler}.json"
            if path.is_file():
                result = json.loads(path.read_text())
                found.append(
                    {
                        "run": run.name,
                        "train_min": result["train_time_s"] / 60,
                        "sampler": result["sampler"],
                        **result["test"],
                    }
                )
    return found


def markdown(table: list[dict]) -> str:
    def cell(value) -> str:
        return (
            f"{value:.4f}"
            if isinstance(value, float) and abs(value) < 1
            else f"{value:.2f}"
            if isinstance(value, float)
            else str(value)
        )

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[column]) for column in COLUMNS) + " |" for row in table]
    return "\n".join(lines) + "\n"


def plot(table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    panels = (
        ("score_uncapped", "Score (uncapped)"),
        ("sample_accuracy", "sample accuracy"),
        ("classifier_fid", "classifier FID (lower is better)"),
        ("sample_precision", "precision"),
        ("sample_recall", "recall"),
    )
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.2))
    markers = dict(zip(SAMPLERS, ("o", "s", "^")))
    for axis, (metric, title) in zip(axes, panels):
        for sampler in SAMPLERS:
            points = [row for row in table if row["sampler"] == sampler]
            axis.scatter(
                [row["train_min"] for row in points],
                [row[metric] for row in points],
                marker=markers[sampler],
                label=f"z from {sampler}",
            )
            for row in points if sampler == "prior" else ():  # one label per run: its samplers share its training time
                axis.annotate(
                    row["run"], (row["train_min"], row[metric]), fontsize=7, xytext=(4, 2), textcoords="offset points"
                )
        axis.set(title=title, xlabel="training time (min)")
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    study = Path(sys.argv[1])
    table = rows(study)
    if not table:
        sys.exit(
            f"sampler_table: no eval-<sampler>.json under the runs of {study}; run scripts/reproduce_samplers.sh first."
        )
    (study / "table.md").write_text(markdown(table))
    plot(table, study / "table.png")
    print(markdown(table), end="")


if __name__ == "__main__":
    main()
