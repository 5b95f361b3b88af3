"""scripts/benchmark.py, run as a user runs it, on random data and a few batches per epoch; and
scripts/benchmark_data.py at its smallest sizes."""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
PATHS = ["framework_s", "framework_whole_s", "bare_s", "pipeline_w0_s", "pipeline_w2_s"]
RATIOS = ["framework/bare", "pipeline_w0/framework", "pipeline_w2/framework"]
COLUMNS = ["model", "batch_size", "precision", "data", *PATHS, *RATIOS, "eval_s", "eval/epoch"]


@pytest.mark.slow  # runs every benchmark path once
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


DATA_SCRIPT = SCRIPT.with_name("benchmark_data.py")
DATA_RATIOS = [  # the start of each ratio line scripts/benchmark_data.py prints
    "framework/bare (training phase per epoch): ratio ",
    "framework whole epoch/bare (validation and checkpoints added): ratio ",
    "mmap/in_memory (training phase per epoch; 0 workers): ratio ",
    "mmap/in_memory (whole epoch, validation and checkpoints added; 0 workers): ratio ",
    "ours/ImageFolder images per second, synthetic folder ",
    "ours/ImageFolder images per second, coloured MNIST ",
]


@pytest.mark.slow  # about 15 s on idle cores, 50 s on busy ones
def test_data_benchmark_smoke_run_prints_every_ratio(tmp_path, mnist_root):
    """scripts/benchmark_data.py with its smallest sizes: every part runs and prints its ratio."""
    flags = ["--epochs", "1", "--repeats", "1", "--limit-batches", "2", "--batches", "1", "--batch-size", "16"]
    flags += ["--folder-images", "40", "--mnist-images", "40", "--device", "cpu"]
    flags += ["--data-root", str(mnist_root), "--work-dir", str(tmp_path / "work")]
    result = subprocess.run(
        [sys.executable, str(DATA_SCRIPT), *flags],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("machine: ") and "torch " in lines[0] and " threads" in lines[0]
    for start in DATA_RATIOS:
        line = next((line for line in lines if line.startswith(start)), None)
        assert line is not None, f"no line starting {start!r} in:\n{result.stdout}"
        assert float(re.search(r" ratio (\d+\.\d+)", line).group(1)) > 0
    assert (tmp_path / "work" / "cache").is_dir() and (tmp_path / "work" / "synthetic-40x64").is_dir()
    assert (tmp_path / "work" / "coloured_mnist_png-40").is_dir()
