"""Epoch times of the framework's training path against a bare PyTorch loop and against
the torchvision DataLoader pipeline most CVAE code uses, on MNIST-shaped data.

The framework path is what `cvae-train` builds (`cvae_exp.train.build` on the composed
config, default checkpoints and logger included); the other paths train the same CVAE on
the same objective with the config's optimizer. Every path runs one warm-up epoch, then `--epochs`
timed ones; their epochs alternate (framework, bare, pipelines, framework, ...) so that
all paths see the same drift of a noisy machine. Real MNIST is read when `<data-root>/MNIST/raw/` holds its four files;
otherwise random uint8 images of its shape (60k train / 10k test) stand in, since the
timings do not depend on the pixels.

    python scripts/benchmark.py          # the whole grid: 2 models x 2 batch sizes x 2 precisions
    python scripts/benchmark.py --models mlp --batch-sizes 1024 --precisions bf16-mixed --epochs 5
    python scripts/benchmark.py --models mlp --epochs 1 --limit-batches 5   # does every path run?
    python scripts/benchmark.py --whole-run 20    # cvae-train end to end against a bare loop

With --whole-run N, it times instead the whole of `cvae-train experiment=report_genmodel
trainer.max_epochs=N` as a user runs it (a subprocess: start-up, data, N epochs with
validation and checkpoints, the graded test of the best checkpoint), against the bare
loop of scripts/bare_loop.py training the same N epochs as a process of its own, the two in
turn --repeats times, and prints the median ratios (to the bare loop's training epochs, and
to the bare script end to end) and where the framework's time went (a last, profiled run:
Lightning's SimpleProfiler).

Prints the median training-phase epoch time of each path (seconds), the ratios
framework/bare and pipeline/framework, the framework's whole epoch (validation and
checkpointing included) and its test stage against one epoch (eval/epoch); writes the
same table as CSV (--out).
"""

import argparse
import csv
import functools
import itertools
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import lightning as L
import torch
from bare_loop import PlainLoop, now, tensor_batches  # scripts/bare_loop.py, beside this file
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets
from torchvision.transforms import ToTensor

from cvae_exp.checks import validate
from cvae_exp.classifier import load_or_train
from cvae_exp.compose import compose_train
from cvae_exp.data import ImageSplits
from cvae_exp.run import build

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@functools.cache
def random_mnist(root: Path) -> ImageSplits:
    """The framework's data source when MNIST is absent: its shapes and sizes, random content."""
    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=generator), torch.randint(
            0, 10, (n,), generator=generator
        )

    return ImageSplits(*split(60_000), *split(10_000))


def has_mnist(root: Path) -> bool:
    """torchvision reads MNIST offline from the four files, compressed or extracted."""
    raw = root / "MNIST" / "raw"
    return all((raw / name).is_file() or (raw / f"{name}.gz").is_file() for name in MNIST_FILES)


class EpochTimer(L.Callback):
    """Per framework epoch: the training phase (epoch start to the start of validation,
    which Lightning runs before `on_train_epoch_end`) and the whole epoch (validation,
    logging and checkpointing added). After each epoch it runs `between_epochs`, so that the
    other paths' epochs alternate with the framework's and see the same machine drift."""

    def __init__(self, between_epochs=lambda: None):
        self.between_epochs = between_epochs
        self.training: list[float] = []
        self.whole: list[float] = []
        self.start = 0.0
        self.in_training = False

    def on_train_epoch_start(self, trainer, module):
        self.start, self.in_training = now(trainer.strategy.root_device), True

    def on_validation_start(self, trainer, module):
        if not trainer.sanity_checking:
            self._end_training_phase(trainer)

    def on_train_epoch_end(self, trainer, module):
        self._end_training_phase(trainer)  # epochs without validation
        self.whole.append(now(trainer.strategy.root_device) - self.start)
        self.between_epochs()

    def _end_training_phase(self, trainer):
        if self.in_training:
            self.training.append(now(trainer.strategy.root_device) - self.start)
            self.in_training = False


class PILImages(Dataset):
    """What torchvision's MNIST does per sample, over tensors: a PIL image, then the transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels, self.transform = images, labels, ToTensor()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index, 0].numpy())), int(self.labels[index])


def loader_batches(dataset: Dataset, batch_size: int, workers: int, limit: int | None):
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    return lambda: itertools.islice(loader, limit)


def benchmark(overrides: list[str], real: bool, root: Path, args, device: torch.device) -> dict:
    """One row of the table: every path on one (model, batch size, precision), their
    epochs alternating; each path's first epoch is a warm-up and left out."""
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = validate(compose_train(overrides, run_dir))
        datamodule = instantiate(cfg.data)
        datamodule.setup()
        images, labels = datamodule.images("train")  # the framework's 50k training images, for every path
        batch_size, limit = cfg.data.batch_size, args.limit_batches
        pipeline_data = (
            Subset(datasets.MNIST(root, train=True, download=True, transform=ToTensor()), range(len(labels)))
            if real
            else PILImages(images, labels)
        )
        loops = {
            "bare": PlainLoop(cfg, tensor_batches(images, labels, batch_size, limit, device), device),
            "pipeline_w0": PlainLoop(cfg, loader_batches(pipeline_data, batch_size, 0, limit), device),
            "pipeline_w2": PlainLoop(cfg, loader_batches(pipeline_data, batch_size, 2, limit), device),
        }
        timer = EpochTimer(between_epochs=lambda: [loop.epoch() for loop in loops.values()])
        _, module, trainer = build(cfg, extra_callbacks=[timer])
        trainer.fit(module, datamodule=datamodule)
        start = now(device)
        trainer.test(module, datamodule=datamodule, verbose=False)
        eval_s = now(device) - start
    framework, bare, w0, w2 = (
        median(times[1:]) for times in (timer.training, *(loop.times for loop in loops.values()))
    )
    row = {
        "framework_s": framework,
        "framework_whole_s": median(timer.whole[1:]),
        "bare_s": bare,
        "pipeline_w0_s": w0,
        "pipeline_w2_s": w2,
    }
    row |= {
        "framework/bare": framework / bare,
        "pipeline_w0/framework": w0 / framework,
        "pipeline_w2/framework": w2 / framework,
    }
    row |= {"eval_s": eval_s, "eval/epoch": eval_s / framework}
    return {key: round(value, 4) for key, value in row.items()}


PROFILE_ROW = re.compile(r"^\|\s+(\S.*?)\s*\t\|\s+([-\d.e]+)\s*\t\|\s+(\d+)\s*\t\|\s+([-\d.e]+)\s*\t\|")
PHASES = {  # SimpleProfiler actions -> the phase they belong to
    "training steps": ("run_training_batch",),
    "validation steps": ("[Strategy]SingleDeviceStrategy.validation_step",),
    "checkpoint writes": ("save_checkpoint",),
    "image grids": ("[Callback]ImageLogger.on_validation_epoch_end", "[Callback]ImageLogger.on_fit_end"),
    "test steps + grading": (
        "[Strategy]SingleDeviceStrategy.test_step",
        "[LightningModule]CVAEModule.on_test_epoch_end",
    ),
}


def run_cli(overrides: list[str], run_dir: Path) -> tuple[float, dict]:
    """`cvae-train` as a user runs it; its wall time and metrics.json."""
    command = [
        sys.executable,
        "-m",
        "cvae_exp.train",
        *overrides,
        f"hydra.run.dir={run_dir}",
        "callbacks.progress_bar.refresh_rate=0",
    ]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"cvae-train failed:\n{result.stderr[-3000:]}")
    return wall, json.loads((run_dir / "metrics.json").read_text())


def profiled_phases(log: Path) -> dict[str, float]:
    """Total seconds per phase from the SimpleProfiler reports in a run's train.log (each
    stage's report repeats the earlier stages' actions: the largest total counts)."""
    totals: dict[str, float] = {}
    for line in log.read_text().splitlines():
        match = PROFILE_ROW.match(line)
        if match:
            totals[match.group(1)] = max(totals.get(match.group(1), 0.0), float(match.group(4)))
    return {phase: sum(totals.get(action, 0.0) for action in actions) for phase, actions in PHASES.items()}


def bare_script_config(cfg: DictConfig, path: Path) -> Path:
    """The nodes of `cfg` that scripts/bare_loop.py builds its model and loop from, resolved."""
    nodes = {
        key: OmegaConf.to_container(cfg[key], resolve=True)
        for key in ("model", "conditioning", "data", "loss", "optim")
    }
    OmegaConf.save(nodes | {"seed": cfg.seed, "trainer": {"precision": cfg.trainer.precision}}, path)
    return path


def bare_script(config: Path, root: Path, epochs: int, limit: int | None, device: torch.device) -> tuple[float, float]:
    """scripts/bare_loop.py as its own process: its wall time from start to exit, and the
    sum of its training epochs."""
    command = [
        sys.executable,
        str(Path(__file__).with_name("bare_loop.py")),
        str(config),
        str(epochs),
        "--data-root",
        str(root),
        "--device",
        device.type,
    ]
    command += ["--limit-batches", str(limit)] if limit else []
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"bare_loop.py failed:\n{result.stderr[-3000:]}")
    return wall, sum(json.loads(result.stdout.splitlines()[-1])["epochs_s"])


def whole_run(args, root: Path, real: bool, device: torch.device, common: list[str]) -> None:
    """`cvae-train` end to end against scripts/bare_loop.py training the same epochs, each
    as its own process, --repeats times in turn (run, loop, run, loop, ...) so that both see
    the same drift of a noisy machine; then one profiled run for the split by phase."""
    epochs = args.whole_run
    limits = [override for override in common if override.startswith("++trainer.limit_")]  # --limit-batches: smoke runs
    overrides = [
        "experiment=report_genmodel",
        f"trainer.max_epochs={epochs}",
        f"data.root='{root}'",
        f"trainer.accelerator={device.type}",
        *limits,
    ]
    if not real:
        raise SystemExit(f"--whole-run needs MNIST under {root}/MNIST/raw (see README)")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        cfg = validate(compose_train(overrides, folder / "bare"))
        if cfg.eval.classifier_metrics:  # trained on first use and cached: a user's later runs do not pay for it
            datamodule = instantiate(cfg.data)
            datamodule.setup()
            load_or_train(datamodule, cfg.eval.classifier_dir)
        runs, bare_config = [], bare_script_config(cfg, folder / "bare.yaml")
        for repeat in range(args.repeats):
            wall, metrics = run_cli(overrides, folder / f"plain{repeat}")
            bare_wall, bare_epochs = bare_script(bare_config, root, epochs, args.limit_batches, device)
            runs.append({"wall": wall, "metrics": metrics, "bare_wall": bare_wall, "bare_epochs": bare_epochs})
            print(
                f"repeat {repeat + 1}: cvae-train end to end {wall:.1f} s; bare script {bare_wall:.1f} s end to end, "
                f"{bare_epochs:.1f} s of it training epochs; ratios {wall / bare_epochs:.2f} and {wall / bare_wall:.2f}"
            )
        # without the sanity check, which the plain runs do before their fit's timer starts
        # (it falls in the first row below): its validation steps would count twice
        _, profiled = run_cli(
            [*overrides, "++trainer.profiler=simple", "++trainer.num_sanity_val_steps=0"], folder / "profiled"
        )
        phases = profiled_phases(folder / "profiled" / "train.log")
    median_run = sorted(runs, key=lambda run: run["wall"] / run["bare_epochs"])[len(runs) // 2]
    wall, bare_epochs, bare_wall, metrics = (
        median_run["wall"],
        median_run["bare_epochs"],
        median_run["bare_wall"],
        median_run["metrics"],
    )
    print(
        f"\ncvae-train experiment=report_genmodel trainer.max_epochs={epochs}, end to end: {wall:.1f} s; "
        f"bare script: {bare_wall:.1f} s end to end, its {epochs} training epochs {bare_epochs:.1f} s"
    )
    to_epochs = ", ".join(f"{run['wall'] / run['bare_epochs']:.2f}" for run in runs)
    to_script = ", ".join(f"{run['wall'] / run['bare_wall']:.2f}" for run in runs)
    print(f"ratio whole run / bare training epochs: {wall / bare_epochs:.2f} (the median of {len(runs)}: {to_epochs})")
    print(
        "ratio whole run / bare script end to end (its Python start, imports and MNIST read included): "
        f"{wall / bare_wall:.2f} (same runs: {to_script})"
    )
    print(
        "\nwhere the framework's time went, in seconds: the median run's fit took "
        f"{metrics['train_time_s']:.1f} s, the profiled run's {profiled['train_time_s']:.1f} s;"
    )
    print(
        "the phases come from the profiled run, the first row from the median one (its wall time less its fit "
        "and test):"
    )
    fit_rest = profiled["train_time_s"] - sum(
        phases[p] for p in ("training steps", "validation steps", "checkpoint writes", "image grids")
    )
    rows = {
        "start-up, data, checks, sanity check, other": wall - metrics["train_time_s"] - phases["test steps + grading"],
        **phases,
        "rest of the fit (Lightning's loop, logging)": fit_rest,
    }
    for phase, seconds in rows.items():
        print(f"  {phase:<58} {seconds:7.2f}")
    training = phases["training steps"] / epochs
    per_epoch = (phases["validation steps"] + phases["checkpoint writes"]) / epochs
    print(
        f"\nper epoch: training steps {training:.2f} s, validation + checkpoint writes {per_epoch:.2f} s "
        f"({100 * per_epoch / training:.0f}% of training)"
    )
    print(f"the bare script's start (Python, imports, MNIST read, model): {bare_wall - bare_epochs:.1f} s")


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())


def describe_machine(device: torch.device) -> str:
    """The line a benchmark prints first: CPU, torch, threads and the device it runs on."""
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    return (
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs; torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads; device {device}{gpu}"
    )


def print_table(rows: list[dict]) -> None:
    cells = [list(rows[0])] + [
        [f"{value:.3f}" if isinstance(value, float) else str(value) for value in row.values()] for row in rows
    ]
    widths = [max(len(row[column]) for row in cells) for column in range(len(cells[0]))]
    for row in cells:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per path, after one warm-up epoch")
    parser.add_argument("--models", nargs="+", default=["mlp", "conv"], choices=["mlp", "conv"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 1024])
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"], choices=["32-true", "bf16-mixed"])
    parser.add_argument(
        "--data-root", type=Path, default=Path("data"), help="a directory holding MNIST/raw/ (else random data)"
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmark/benchmark.csv"))
    parser.add_argument(
        "--limit-batches",
        type=int,
        default=None,
        help="for smoke runs: at most K batches per epoch in every path and stage",
    )
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    parser.add_argument(
        "--whole-run",
        type=int,
        metavar="N",
        help="time cvae-train end to end (report model, N epochs) against a bare loop",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="with --whole-run: timed pairs of a run and a bare loop, in turn (the median is reported)",
    )
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error("--epochs must be at least 1 (a median needs a timed epoch)")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    root, real = args.data_root.resolve(), has_mnist(args.data_root.resolve())
    print(describe_machine(device))
    print(
        f"data: MNIST from {root}"
        if real
        else (
            "data: random uint8 tensors of MNIST's shape (60k train / 10k test, seed 0): no MNIST files in "
            f"{root}/MNIST/raw"
        )
    )
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)  # no per-run banners between the results

    common = [
        "data=mnist",
        f"data.root='{root}'",
        f"trainer.accelerator={device.type}",
        f"trainer.max_epochs={args.epochs + 1}",
    ]
    common += ["callbacks.progress_bar.refresh_rate=0"]  # printing would be timed too
    if not real:
        common += [f"data.source._target_={random_mnist.__module__}.random_mnist", "~data.source.dataset"]
        common += [
            "eval.classifier_metrics=false"
        ]  # a classifier of random pixels measures nothing, and must not be cached as MNIST's
    if args.limit_batches:
        common += [f"++trainer.limit_{stage}_batches={args.limit_batches}" for stage in ("train", "val", "test")]
    if args.whole_run:
        return whole_run(args, root, real, device, common)
    rows = []
    for model, batch_size, precision in itertools.product(args.models, args.batch_sizes, args.precisions):
        overrides = [*common, f"model={model}", f"data.batch_size={batch_size}", f"trainer.precision={precision}"]
        config = {
            "model": model,
            "batch_size": batch_size,
            "precision": precision,
            "data": "mnist" if real else "random",
        }
        rows.append(config | benchmark(overrides, real, root, args, device))

    print(
        "\nmedian epoch times in seconds (training phase; framework_whole_s adds validation and checkpoints), "
        f"{args.epochs} timed epochs after 1 warm-up"
    )
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
