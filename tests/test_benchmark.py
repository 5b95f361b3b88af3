"""scripts/benchmark.py, run as a user runs it, on random data and a few batches per epoch."""

import csv
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
PATHS = ["framework_s", "framework_whole_s", "bare_s", "pipeline_w0_s", "pipeline_w2_s"]
RATIOS = ["framework/bare", "pipeline_w0/framework", "pipeline_w2/framework"]
COLUMNS = ["model", "batch_size", "precision", "data", *PATHS, *RATIOS, "eval_s", "eval/epoch"]


def test_smoke_run_times_every_path_and_writes_the_table(tmp_path):
    empty_root, out = tmp_path / "no_mnist", tmp_path / "benchmark.csv"
    empty_root.mkdir()
    flags = [
        "--models",
        "mlp",
        "--batch-sizes",
        "64",
        "--precisions",
        "32-true",
        "--epochs",
        "1",
        "--limit-batches",
        "3",
    ]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *flags, "--data-root", str(empty_root), "--out", str(out), "--device", "cpu"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data: random uint8 tensors" in result.stdout

    with out.open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 1 and list(rows[0]) == COLUMNS
    row = rows[0]
    assert (row["model"], row["batch_size"], row["precision"], row["data"]) == ("mlp", "64", "32-true", "random")
    assert all(float(row[column]) > 0 for column in COLUMNS[4:])
    assert float(row["framework_whole_s"]) > float(row["framework_s"])  # validation and checkpoints come on top

    header = next(line for line in result.stdout.splitlines() if line.split()[:1] == ["model"])
    assert header.split() == COLUMNS
