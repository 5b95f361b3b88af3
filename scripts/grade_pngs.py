"""Grade a run's exported PNGs (`eval.save_images=true`: recon/recon_<i>.png for test image i,
gen/<label>/<i>.png) with the lab's formula, as the lab's grader does from files and
independently of the framework's batched grader: PIL reads the PNGs, skimage computes the
SSIM, numpy the MSE and the simplified FID. Prints them beside the run's metrics.json (or
the cvae-eval JSON given by --metrics) and exits 1 if they differ.

    python scripts/grade_pngs.py outputs/runs/<date_time> [--data-root data] [--metrics eval.json]
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from PIL import Image
from skimage.metrics import structural_similarity

from cvae_exp.eval import find_checkpoint

TOLERANCE = 1e-4  # float32 batched arithmetic against float64 numpy


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.uint8)


def simplified_fid(generated: np.ndarray, real: np.ndarray) -> float:
    """The protocol's per-class pixel-space distance: images scaled to [0, 1], flattened."""
    generated, real = (images.reshape(len(images), -1) / 255.0 for images in (generated, real))
    mu_g, mu_r, var_g, var_r = generated.mean(0), real.mean(0), generated.var(0), real.var(0)
    return float(((mu_g - mu_r) ** 2).sum() + (var_g + var_r - 2 * np.sqrt(var_g * var_r)).sum())


def grade(run: Path, data_root: str | None) -> dict[str, float]:
    hparams = torch.load(find_checkpoint(run), map_location="cpu", weights_only=False)[
        "hyper_parameters"
    ]  # the run's data and latent size
    datamodule = instantiate(dict(hparams["data"], **({"root": data_root} if data_root else {})))
    datamodule.setup("test")
    images, labels = (tensor.numpy() for tensor in datamodule.images("test"))
    originals = images[:, 0]  # one channel: the lab's grayscale digits
    reconstructions = np.stack([read_png(run / "recon" / f"recon_{index}.png") for index in range(len(originals))])
    ssim = float(np.mean([structural_similarity(o, r, data_range=255) for o, r in zip(originals, reconstructions)]))
    mse = float(np.mean(((originals / 255.0 - reconstructions / 255.0) ** 2).reshape(len(originals), -1).mean(1)))
    classes = sorted(int(folder.name) for folder in (run / "gen").iterdir())
    fids = [
        simplified_fid(
            np.stack([read_png(path) for path in (run / "gen" / str(c)).glob("*.png")]), originals[labels == c]
        )
        for c in classes
    ]
    fid = float(np.mean(fids))
    bonus = 0.2 + (1 - hparams["model"]["latent_dim"] / 784)
    uncapped = (ssim * 10 + max(0.1 - mse, 0) * 100 + max(10 - fid, 0)) * bonus
    return {"ssim": ssim, "mse": mse, "fid": fid, "score": min(uncapped, 30.0), "score_uncapped": uncapped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run directory written with eval.save_images=true")
    parser.add_argument("--data-root", help="where the dataset lives, if not where the run found it")
    parser.add_argument("--metrics", type=Path, help="the JSON to compare with [<run>/metrics.json]")
    args = parser.parse_args()
    if not (args.run / "recon").is_dir() or not (args.run / "gen").is_dir():
        sys.exit(
            f"grade_pngs: {args.run} has no recon/ and gen/ folders; train or evaluate it with "
            "eval.save_images=true (cvae-eval --save-images)."
        )
    from_files = grade(args.run, args.data_root)
    recorded = json.loads((args.metrics or args.run / "metrics.json").read_text())["test"]
    print("| metric | from the PNG files | recorded by the run | difference |\n|---|---|---|---|")
    for name, value in from_files.items():
        print(f"| {name} | {value:.4f} | {recorded[name]:.4f} | {value - recorded[name]:+.1e} |")
    if any(abs(value - recorded[name]) > TOLERANCE * max(1.0, abs(value)) for name, value in from_files.items()):
        sys.exit(
            f"grade_pngs: the PNG files grade differently from the recorded metrics (tolerance {TOLERANCE} relative)."
        )


if __name__ == "__main__":
    main()
