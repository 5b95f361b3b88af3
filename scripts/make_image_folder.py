"""Write a folder of synthetic colour images, one subfolder per class, in torchvision's
ImageFolder layout: something to try data=image_folder on, and the folder that
scripts/benchmark_data.py reads. Class k is a filled square of the k-th hue at a random
place and size on a noisy background; files alternate between PNG and JPEG.

    python scripts/make_image_folder.py shapes --classes 3 --per-class 60 --size 40
"""

import argparse
import colorsys
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image


def write_class(folder: Path, label: int, classes: int, count: int, size: int, seed: int) -> None:
    rng = np.random.default_rng([seed, label])
    colour = np.array(colorsys.hsv_to_rgb(label / classes, 0.9, 0.95)) * 255
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image = rng.integers(0, 80, (size, size, 3)).astype(np.float64)
        side = int(rng.integers(size // 4, size // 2 + 1))
        top, left = rng.integers(0, size - side + 1, 2)
        image[top : top + side, left : left + side] = colour
        pixels = Image.fromarray(image.astype(np.uint8))
        pixels.save(folder / f"{index:06d}.{'png' if index % 2 else 'jpg'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the folder to write (must not exist)")
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--size", type=int, default=40, help="height and width in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists; give a new folder")
    if args.classes < 1 or args.per_class < 1 or args.size < 4:
        parser.error("--classes and --per-class must be >= 1 and --size >= 4")
    with ProcessPoolExecutor(min(args.classes, os.cpu_count() or 1)) as pool:
        jobs = [
            pool.submit(write_class, args.out / f"class{k}", k, args.classes, args.per_class, args.size, args.seed)
            for k in range(args.classes)
        ]
        for job in jobs:
            job.result()
    print(f"wrote {args.classes * args.per_class} images in {args.classes} class folders under {args.out}")


if __name__ == "__main__":
    main()
