"""The data path, timed against baselines measured in the same run: every result is a ratio
of medians (each side's absolute numbers are printed beside it, for this machine only).

Three parts (--parts), each a goal of the data path:

  framework   the conv CVAE (model=conv) on coloured MNIST 3x32x32 (data=coloured_mnist
              task=attributes), trained by the framework (what `cvae-train` builds: run.build,
              default checkpoints and logger included) against a bare PyTorch loop over the same
              model, data, objective, optimizer and batch size (scripts/bare_loop.py's PlainLoop,
              with the model built for the task). Goal: framework/bare <= 1.10 per epoch.
  mmap        the same training with its batches from the memory-mapped cache through
              DataLoader (data.in_memory=false, data.num_workers=--mmap-workers) against the
              in-memory path (data.in_memory=true). Goal: mmap/in_memory <= 1.2 per epoch.
  throughput  images per second served by our path (the memory-mapped cache read batch by
              batch through TensorDataModule's DataLoader, --workers workers, uint8 batches turned
              into floats by its on_after_batch_transfer) against torchvision's ImageFolder +
              PIL + ToTensor() in a DataLoader with as many workers and the same batch size,
              reading only (no model), --batches batches after a warm-up batch, on (a) a
              CelebA-sized synthetic folder (scripts/make_image_folder.py: --folder-images
              images of 3 x --image-size x --image-size) and (b) coloured MNIST's training
              images, written once as PNG files for ImageFolder. Goal: ours/ImageFolder >= 3.

Both training parts read coloured MNIST from the memory-mapped cache (written once under
--work-dir, like a decoded dataset), so that the two paths of the mmap part differ only in
data.in_memory; the in-memory path copies it into tensors at setup, before any timing. Every
training run has one warm-up epoch and --epochs timed ones; the bare loop's epochs alternate
with the in-memory run's (framework, bare, framework, ...), and the in-memory and mmap runs,
like the two loaders of the throughput part, take turns --repeats times (their order swapped
every repeat), so that both sides see the same drift of a noisy machine. The ratio printed is
the median of the per-repeat ratios (each of the medians of that repeat's epochs).

The folders and caches are kept under --work-dir and reused by later runs (a folder is
written under a temporary name and renamed when complete; the cache checks itself).

    python scripts/benchmark_data.py --data-root /work/shared/data     # everything, full size
    python scripts/benchmark_data.py --parts throughput --folder-images 20000
    python scripts/benchmark_data.py --epochs 1 --repeats 1 --limit-batches 3 --batches 3 \\
        --folder-images 64 --mnist-images 64                             # does every part run?
"""

import argparse
import functools
import itertools
import logging
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from statistics import median

import numpy as np
import torch
from bare_loop import PlainLoop, tensor_batches  # scripts/bare_loop.py, beside this file
from benchmark import MNIST_FILES, EpochTimer, describe_machine, has_mnist  # scripts/benchmark.py
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import ToTensor

from cvae_exp.checks import validate
from cvae_exp.compose import compose_train
from cvae_exp.data import ImageSplits
from cvae_exp.data.cache import cached, files_key
from cvae_exp.data.datasets import load_coloured_mnist
from cvae_exp.models import build_cvae
from cvae_exp.run import build
from cvae_exp.schema import DataConfig

PARTS = ("framework", "mmap", "throughput")
GOALS = {"framework": ("<=", 1.10), "mmap": ("<=", 1.2), "throughput": (">=", 3.0)}
FOLDER_CLASSES = 10  # class subfolders of the synthetic folder (CelebA has none; the count does not change the reads)


@functools.cache
def mapped_coloured_mnist(root: Path, cache_dir: str, colours: int = 3, seed: int = 0) -> ImageSplits:
    """Coloured MNIST (load_coloured_mnist) decoded once into the memory-mapped cache and read from it:
    its images as MappedImages, as a decoded dataset of image files is served."""
    raw = Path(root) / "MNIST" / "raw"
    files = [raw / f"{name}.gz" if (raw / f"{name}.gz").is_file() else raw / name for name in MNIST_FILES]
    key = {"source": "coloured_mnist", "files": files_key(files), "colours": colours, "seed": seed}

    def chunks():
        data = load_coloured_mnist(Path(root), colours, seed)
        yield "train", data.train_images, data.train_labels
        yield "test", data.test_images, data.test_labels

    return cached("coloured_mnist", key, chunks, cache_dir)


class TaskLoop(PlainLoop):
    """scripts/bare_loop.py's loop for any task: the CVAE built as CVAEModule builds it (the task
    sets the condition's shape) and each batch's labels turned into the task's condition, as the
    framework's training step does; PlainLoop.epoch trains on them."""

    def __init__(self, cfg, batches, device: torch.device):
        torch.manual_seed(cfg.seed)
        task = instantiate(cfg.task)
        nodes = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "conditioning", "data")}
        prior = OmegaConf.to_container(cfg.prior, resolve=True) if cfg.get("prior") is not None else None
        self.model = build_cvae(nodes["model"], nodes["conditioning"], prior, task, nodes["data"]).to(device)
        self.optimizer = instantiate(cfg.optim)(self.model.parameters())
        self.objective = instantiate(cfg.loss)
        self.bf16 = cfg.trainer.precision == "bf16-mixed"
        self.times: list[float] = []
        self.device = device
        self.batches = lambda: ((images, task(images, labels)[0]) for images, labels in batches())


def training_overrides(args, root: Path, device: torch.device) -> list[str]:
    """data=coloured_mnist task=attributes model=conv, its images from the memory-mapped cache."""
    overrides = [
        "data=coloured_mnist",
        "task=attributes",
        "model=conv",
        f"data.root='{root}'",
        f"data.batch_size={args.batch_size}",
        f"data.source._target_={mapped_coloured_mnist.__module__}.mapped_coloured_mnist",
        f"++data.source.cache_dir='{args.cache_dir}'",
        f"trainer.accelerator={device.type}",
        f"trainer.max_epochs={args.epochs + 1}",
        "callbacks.progress_bar.refresh_rate=0",  # printing would be timed too
    ]
    if args.limit_batches:
        overrides += [f"++trainer.limit_{stage}_batches={args.limit_batches}" for stage in ("train", "val")]
    return overrides


def fit(overrides: list[str], args, device: torch.device, bare: bool) -> tuple[EpochTimer, TaskLoop | None]:
    """One training run of the framework; with `bare`, a bare loop over the same training images
    trains one epoch after each of the framework's."""
    with tempfile.TemporaryDirectory(dir=args.work_dir) as run_dir:
        cfg = validate(compose_train(overrides, run_dir))
        loops: list[TaskLoop] = []
        timer = EpochTimer(between_epochs=lambda: [loop.epoch() for loop in loops])
        datamodule, module, trainer = build(cfg, extra_callbacks=[timer])
        if bare:
            datamodule.setup()
            images, labels = datamodule.images("train")  # the framework's training images
            batches = tensor_batches(images, labels, cfg.data.batch_size, args.limit_batches, device)
            loops.append(TaskLoop(cfg, batches, device))
        trainer.fit(module, datamodule=datamodule)
    return timer, (loops[0] if loops else None)


def goal(part: str, ratio: float) -> str:
    sign, target = GOALS[part]
    met = ratio <= target if sign == "<=" else ratio >= target
    return f"goal {sign} {target:g}: {'met' if met else 'NOT met'}"


def per_repeat(ratios: list[float]) -> str:
    return ", ".join(f"{ratio:.3f}" for ratio in ratios)


def training_parts(parts: list[str], args, root: Path, device: torch.device) -> None:
    """framework/bare and mmap/in_memory: the in-memory run (with the bare loop's epochs between
    its own) and the mmap run in turn, --repeats times."""
    common = training_overrides(args, root, device)
    in_memory = [*common, "data.in_memory=true"]
    mapped = [*common, "data.in_memory=false", f"data.num_workers={args.mmap_workers}"]
    framework, bare, mmap = [], [], []  # per repeat: (training phases, whole epochs) of the timed epochs
    for repeat in range(args.repeats):
        runs = [("in_memory", in_memory)] + ([("mmap", mapped)] if "mmap" in parts else [])
        for name, overrides in runs if repeat % 2 == 0 else runs[::-1]:
            timer, loop = fit(overrides, args, device, bare=name == "in_memory" and "framework" in parts)
            times = (timer.training[1:], timer.whole[1:])  # the first epoch is a warm-up
            (framework if name == "in_memory" else mmap).append(times)
            if loop is not None:
                bare.append(loop.times[1:])
        print(f"repeat {repeat + 1} of {args.repeats} done", flush=True)

    what = f"conv CVAE, coloured MNIST 3x32x32, batch {args.batch_size}, {args.epochs} timed epochs x {args.repeats}"
    print(f"\nseconds per epoch are medians over every timed epoch; ratios the median of the repeats' ({what})")
    if "framework" in parts:
        ratios = [median(ours) / median(theirs) for (ours, _), theirs in zip(framework, bare)]
        ratio = median(ratios)
        print(
            f"framework/bare (training phase per epoch): ratio {ratio:.3f} ({goal('framework', ratio)}); "
            f"framework {median(sum((t for t, _ in framework), [])):.3f} s, "
            f"bare loop {median(sum(bare, [])):.3f} s; per repeat {per_repeat(ratios)}"
        )
        ratios = [median(whole) / median(theirs) for (_, whole), theirs in zip(framework, bare)]
        print(
            f"framework whole epoch/bare (validation and checkpoints added): ratio {median(ratios):.3f}; "
            f"framework {median(sum((w for _, w in framework), [])):.3f} s; per repeat {per_repeat(ratios)}"
        )
    if "mmap" in parts:
        for index, phase in enumerate(("training phase per epoch", "whole epoch, validation and checkpoints added")):
            ratios = [median(ours[index]) / median(theirs[index]) for ours, theirs in zip(mmap, framework)]
            ratio = median(ratios)
            print(
                f"mmap/in_memory ({phase}; {args.mmap_workers} workers): ratio {ratio:.3f} "
                f"({goal('mmap', ratio)}); mmap {median(sum((m[index] for m in mmap), [])):.3f} s, "
                f"in-memory {median(sum((f[index] for f in framework), [])):.3f} s; per repeat {per_repeat(ratios)}"
            )


# ---- throughput: reading only ----


def write_png_class(folder: Path, images: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, pixels in enumerate(images):
        Image.fromarray(pixels).save(folder / f"{index:06d}.png")


def finished_folder(path: Path, write) -> Path:
    """`path` if it exists, else written by `write(temporary path)` and renamed into place when complete."""
    if path.exists():
        return path
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    write(temporary)
    temporary.rename(path)
    return path


def synthetic_folder(args) -> Path:
    """--folder if it exists; else a folder of about --folder-images images written by make_image_folder.py."""
    per_class = -(-args.folder_images // FOLDER_CLASSES)
    path = args.folder or args.work_dir / f"synthetic-{per_class * FOLDER_CLASSES}x{args.image_size}"

    def write(temporary: Path) -> None:
        print(f"writing {per_class * FOLDER_CLASSES} images into {path} ...", flush=True)
        script = Path(__file__).with_name("make_image_folder.py")
        flags = ["--classes", str(FOLDER_CLASSES), "--per-class", str(per_class), "--size", str(args.image_size)]
        subprocess.run([sys.executable, str(script), str(temporary), *flags], check=True, stdout=subprocess.DEVNULL)

    return finished_folder(path, write)


def coloured_mnist_pngs(args, root: Path) -> Path:
    """Coloured MNIST's first --mnist-images training images as RGB PNG files, a folder per digit."""
    data = load_coloured_mnist(root)
    count = min(args.mnist_images or len(data.train_labels), len(data.train_labels))
    path = args.work_dir / f"coloured_mnist_png-{count}"

    def write(temporary: Path) -> None:
        print(f"writing {count} coloured MNIST images as PNG files into {path} ...", flush=True)
        images = data.train_images[:count].permute(0, 2, 3, 1).numpy()
        digits = data.train_labels[:count, :10].argmax(1).numpy()
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            jobs = [pool.submit(write_png_class, temporary / str(d), images[digits == d]) for d in np.unique(digits)]
            for job in jobs:
                job.result()

    return finished_folder(path, write)


def images_per_second(loader: DataLoader, batches: int, convert=lambda batch: batch) -> tuple[float, int]:
    """Images per second over `batches` batches after a warm-up one (which starts the workers), and how many."""
    iterator = iter(loader)
    convert(next(iterator))
    served, start = 0, time.perf_counter()
    for batch in itertools.islice(iterator, batches):
        served += len(convert(batch)[0])
    elapsed = time.perf_counter() - start
    del iterator
    if not served:
        raise SystemExit("the loader held no more than the warm-up batch: give more images or a smaller batch size")
    return served / elapsed, served


def our_loader(overrides: list[str], args):
    """TensorDataModule's training DataLoader over the memory-mapped cache, and its uint8 -> float step."""
    overrides = [*overrides, f"data.batch_size={args.batch_size}", "data.in_memory=false"]
    with tempfile.TemporaryDirectory(dir=args.work_dir) as run_dir:
        cfg = compose_train([*overrides, f"data.num_workers={args.workers}"], run_dir)
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    return datamodule.train_dataloader(), lambda batch: datamodule.on_after_batch_transfer(batch, 0)


def compare_loaders(name: str, overrides: list[str], folder: Path, args) -> None:
    """Ours against ImageFolder on one dataset, in turn --repeats times."""
    ours, theirs = [], []
    for repeat in range(args.repeats):
        order = ("ours", "imagefolder") if repeat % 2 == 0 else ("imagefolder", "ours")
        for side in order:
            if side == "ours":
                loader, convert = our_loader(overrides, args)
                rate, served = images_per_second(loader, args.batches, convert)
                ours.append(rate)
            else:
                dataset = ImageFolder(str(folder), transform=ToTensor())
                loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
                rate, served = images_per_second(loader, args.batches)
                theirs.append(rate)
            del loader  # stops its workers before the other side's start
    ratios = [a / b for a, b in zip(ours, theirs)]
    ratio = median(ratios)
    print(
        f"ours/ImageFolder images per second, {name}: ratio {ratio:.2f} ({goal('throughput', ratio)}); "
        f"ours {median(ours):.0f}/s, ImageFolder+PIL+ToTensor {median(theirs):.0f}/s "
        f"({served} images after a warm-up batch, batch {args.batch_size}, {args.workers} workers); "
        f"per repeat {', '.join(f'{r:.2f}' for r in ratios)}",
        flush=True,
    )


def throughput(args, root: Path, real: bool) -> None:
    folder = synthetic_folder(args)
    classes = sum(1 for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    overrides = [
        "data=image_folder",
        f"data.source.path='{folder}'",
        f"data.source.image_size={args.image_size}",
        "data.source.test_size=1",  # the cache's test split (a folder without train/ and test/ needs one)
        f"data.source.cache_dir='{args.cache_dir}'",
        f"data.num_classes={classes}",
        "data.val_size=1",
    ]
    print(f"decoding {folder} into the cache, if not done already ...", flush=True)
    our_loader(overrides, args)  # the cache is written once, before any timing
    size = f"3x{args.image_size}x{args.image_size}"
    compare_loaders(f"synthetic folder ({folder.name}, {size})", overrides, folder, args)
    if not real:
        print(f"ours/ImageFolder on coloured MNIST: skipped, no MNIST files in {root}/MNIST/raw")
        return
    pngs = coloured_mnist_pngs(args, root)
    overrides = [
        "data=coloured_mnist",
        f"data.root='{root}'",
        f"data.source._target_={mapped_coloured_mnist.__module__}.mapped_coloured_mnist",
        f"++data.source.cache_dir='{args.cache_dir}'",
    ]
    compare_loaders(f"coloured MNIST (3x32x32; ImageFolder on {pngs.name})", overrides, pngs, args)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument(
        "--data-root", type=Path, default=Path("data"), help="a directory holding MNIST/raw/ (coloured MNIST's source)"
    )
    parser.add_argument(
        "--work-dir", type=Path, default=Path("outputs/benchmark_data"), help="where folders and caches are kept"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where the memory-mapped caches are written, and reused by later runs (default: <work-dir>/cache)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="turns of each pair of paths (the median is reported)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per training run, after one warm-up epoch")
    parser.add_argument("--limit-batches", type=int, default=None, help="for smoke runs: at most K batches per epoch")
    parser.add_argument("--batches", type=int, default=200, help="throughput: timed batches after a warm-up batch")
    parser.add_argument("--batch-size", type=int, default=128, help="of every path (coloured MNIST's config: 128)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of both loaders of throughput")
    parser.add_argument(
        "--mmap-workers",
        type=int,
        default=DataConfig.num_workers,
        help="DataLoader workers of the mmap path (default: data.num_workers's)",
    )
    parser.add_argument(
        "--folder-images", type=int, default=200_000, help="images of the synthetic folder (CelebA's train split: 162k)"
    )
    parser.add_argument("--image-size", type=int, default=64, help="height and width of the synthetic folder's images")
    parser.add_argument(
        "--folder",
        type=Path,
        default=None,
        help="the synthetic folder: used as it is where it exists (its images all --image-size square), else written "
        "there (default: <work-dir>/synthetic-<N>x<size>)",
    )
    parser.add_argument(
        "--mnist-images", type=int, default=None, help="coloured MNIST images written as PNGs (default: all 60k)"
    )
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    args = parser.parse_args()
    args.parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    if not args.parts or set(args.parts) - set(PARTS):
        parser.error(f"--parts takes a comma-separated list of {', '.join(PARTS)}")
    for name in ("repeats", "epochs", "batches", "batch_size", "folder_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("workers", "mmap_workers"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be 0 (batches read in the training process) or more")
    args.work_dir = args.work_dir.resolve()
    args.folder = args.folder.resolve() if args.folder else None
    args.cache_dir = (args.cache_dir or args.work_dir / "cache").expanduser().resolve()
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    root = args.data_root.resolve()
    real = has_mnist(root)
    print(describe_machine(device))
    print(f"parts: {', '.join(args.parts)}; work dir {args.work_dir}; data root {root}", flush=True)
    training = [part for part in args.parts if part in ("framework", "mmap")]
    if training and not real:
        raise SystemExit(f"the {' and '.join(training)} parts need MNIST's files in {root}/MNIST/raw (--data-root)")
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)  # no per-run banners between the results
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if training:
        training_parts(training, args, root, device)
    if "throughput" in args.parts:
        print()
        throughput(args, root, real)


if __name__ == "__main__":
    main()
