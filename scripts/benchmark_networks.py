"""Training steps of the colour networks in four numeric set-ups, timed against float32 in the
same run: channels_last memory format, bf16 autocast, and both. Every result is a ratio of
medians; each side's milliseconds per step are printed beside it, for this machine only.

Each (model, image size) builds the CVAE that `cvae-train model=<model> task=attributes`
builds for coloured MNIST (3x32x32, 13 attributes) or CelebA (3x64x64, 40 attributes) and
trains it with the config's optimizer and objective on random images: the arithmetic is
that of the real data. The set-ups take turns, --steps steps each, --repeats times (their
order rotated every repeat), after one warm-up turn each.

    python scripts/benchmark_networks.py                                   # conv and resnet, 32 and 64
    python scripts/benchmark_networks.py --models resnet --sizes 64 --steps 5 --repeats 1
"""

import argparse
import itertools
import time
from statistics import median

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cvae_exp.compose import compose_train
from cvae_exp.models import build_cvae

DATA = {32: "coloured_mnist", 64: "celeba"}
SETUPS = ("float32", "channels_last", "bf16", "bf16+channels_last")


def trainer(model: str, size: int, batch_size: int, setup: str):
    """A function that runs one training step of `setup` on one fixed batch."""
    cfg = compose_train([f"model={model}", f"data={DATA[size]}", "task=attributes"], output_dir=".")
    torch.manual_seed(0)
    task = instantiate(cfg.task)
    nodes = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "conditioning", "data")}
    prior = OmegaConf.to_container(cfg.prior, resolve=True) if cfg.get("prior") is not None else None
    network = build_cvae(nodes["model"], nodes["conditioning"], prior, task, nodes["data"])
    objective = instantiate(cfg.loss)
    channels_last = "channels_last" in setup
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    optimizer = instantiate(cfg.optim)(network.parameters())
    shape = list(cfg.data.image_shape)
    images = torch.randint(0, 256, (batch_size, *shape), dtype=torch.uint8).float() / 255
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    vectors = (torch.rand(batch_size, cfg.data.attributes) < 0.3).float()
    condition = task(images, vectors)[0]

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=setup.startswith("bf16")):
            output = network(images, condition)
            loss = objective.terms(images, output.logits, output.kl, objective.beta)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["conv", "resnet"], choices=["conv", "resnet"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 64], choices=sorted(DATA))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per turn")
    parser.add_argument("--repeats", type=int, default=5, help="turns of every set-up")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}; ms per step")
    for model, size in itertools.product(args.models, args.sizes):
        steps = {setup: trainer(model, size, args.batch_size, setup) for setup in SETUPS}
        times: dict[str, list[float]] = {setup: [] for setup in SETUPS}
        for setup in SETUPS:  # warm-up: allocations, oneDNN's kernel choices
            steps[setup]()
        for repeat in range(args.repeats):
            order = SETUPS[repeat % len(SETUPS) :] + SETUPS[: repeat % len(SETUPS)]
            for setup in order:
                start = time.perf_counter()
                for _ in range(args.steps):
                    steps[setup]()
                times[setup].append((time.perf_counter() - start) / args.steps * 1000)
        base = times["float32"]
        row = [f"{model} 3x{size}x{size}: float32 {median(base):.1f}"]
        for setup in SETUPS[1:]:
            ratio = median(ours / theirs for ours, theirs in zip(times[setup], base))
            row.append(f"{setup} {median(times[setup]):.1f} (x{ratio:.2f} the time)")
        print("; ".join(row), flush=True)


if __name__ == "__main__":
    main()
