"""`cvae-sample <checkpoint or run dir> [key=value ...]`: draw an image grid from a trained CVAE.

    cvae-sample outputs/runs/<time> labels=[0,3,3,7] n=16 out=grid.png
    cvae-sample outputs/runs/<time> mode=interpolate steps=9
    cvae-sample outputs/runs/<time>/checkpoints/last.ckpt mode=traverse dim=0 span=3 steps=11

Keys (defaults in brackets):
  labels  classes, one grid row each [every class]
  attributes  for a run of task=attributes: attribute vectors, one grid row each, e.g.
          attributes=[[1,0,1],[0,1,1]] [the first 8 test images' vectors, beside the images]
  mode    grid: n samples per label | interpolate: steps images between two random z
          | traverse: z = 0 with coordinate `dim` swept over [-span, span] in steps [grid]
  n       samples per row in mode=grid [8]
  dim, span, steps   for mode=traverse (steps also for interpolate) [0, 3.0, 11]
  seed    seed of the z draws [0]
  sampler where z comes from: prior (the run's p(z|c)) | gmm | flow (fitted per class to the
          training split's posterior means, saved in <run dir>/samplers/ and reused) [prior]
  out     the image file to write; a missing folder is made for it (and removed if the
          write fails) [samples.png]
  data_root  where the test images are, for image-conditioned runs [where the run found them]

For a run of an image-conditioned task (task=quadrants, inpaint, superres), mode=grid
draws completions: one row per test image (the first of each class in `labels`, or the
first 8 test images), with its condition, n predictions from z ~ p(z|c) and the truth;
for task=attributes without `attributes`, the same rows without the condition.
"""

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from PIL import Image

from cvae_exp.errors import UserInputError, report_and_exit
from cvae_exp.eval import find_checkpoint, load_module, show_progress
from cvae_exp.files import atomic_path, check_output_path, undone_on_failure
from cvae_exp.schema import SAMPLERS

MODES = ("grid", "interpolate", "traverse")
KEYS = (
    "labels (class numbers, e.g. [0,3]), attributes (vectors, e.g. [[1,0],[0,1]]), n (int), out (image path), "
    "mode (grid|interpolate|traverse), dim (int), "
    "span (float), steps (int), seed (int), sampler (prior|gmm|flow), data_root (path)"
)


@dataclass
class SampleConfig:
    labels: list[int] | None = None  # None: every class
    attributes: list[Any] | None = None  # task=attributes: one vector of numbers per row (visualize checks them)
    n: int = 8
    out: str = "samples.png"
    mode: str = "grid"
    dim: int = 0
    span: float = 3.0
    steps: int = 11
    seed: int = 0
    sampler: str = "prior"
    data_root: str | None = None  # where the dataset lives (image-conditioned runs), if not where the run found it


def parse_overrides(overrides: list[str]) -> SampleConfig:
    """`key=value` arguments onto the typed defaults, checked one at a time so that an
    error names the argument at fault."""
    config = OmegaConf.structured(SampleConfig)
    for override in overrides:
        if "=" not in override:
            raise UserInputError(f"{override!r} is not a key=value argument; the keys are {KEYS}.")
        try:
            config = OmegaConf.merge(config, OmegaConf.from_dotlist([override]))
        except (OmegaConfBaseException, yaml.YAMLError) as error:
            reason = "not valid YAML" if isinstance(error, yaml.YAMLError) else str(error).splitlines()[0]
            raise UserInputError(f"{override!r} cannot be used ({reason}); the keys are {KEYS}.") from None
    config = OmegaConf.to_object(config)
    if config.sampler not in SAMPLERS:
        raise UserInputError(f"sampler={config.sampler!r} is not a sampler; choose one of {', '.join(SAMPLERS)}.")
    if config.mode not in MODES:
        raise UserInputError(f"mode={config.mode!r} is not a mode; choose one of {', '.join(MODES)}.")
    if Image.registered_extensions().get(Path(config.out).suffix.lower()) not in Image.SAVE:
        raise UserInputError(
            f"out={config.out!r} needs the file extension of an image format that PIL writes, such as .png or "
            ".jpg, which picks the format."
        )
    check_output_path(Path(config.out), f"out={config.out!r}")
    return config


def draw(module, config: SampleConfig, checkpoint: Path):
    """The grid of `config.mode` (a tensor), seeded; values out of range for this model
    (a label, dim) are the user's to fix, not a bug. torch loads here, once the arguments
    have passed their checks."""
    import torch

    from cvae_exp import visualize
    from cvae_exp.samplers import fitted_sampler

    cvae = module.cvae
    labels = torch.tensor(range(cvae.num_classes) if config.labels is None else config.labels)
    sampler = fitted_sampler(module, config.sampler, checkpoint, dataset(module, config))
    torch.manual_seed(config.seed)
    try:
        if cvae.condition_kind == "vector" and config.attributes is not None:
            _require_grid(module, config)
            return visualize.condition_samples(cvae, _attribute_vectors(config.attributes), config.n)
        if not cvae.labels_condition:
            return completions(module, labels if config.labels is not None else None, config)
        if config.mode == "grid":
            return visualize.class_samples(cvae, labels, config.n, sampler)
        if config.mode == "interpolate":
            return visualize.latent_interpolation(cvae, labels, config.steps, sampler)
        return visualize.traversal(cvae, labels, config.dim, config.span, config.steps)
    except ValueError as error:  # an argument out of range for this model
        raise UserInputError(f"{error}.") from None


def completions(module, labels, config: SampleConfig):
    """Completions of test images for a task that conditions on images or attributes: the
    condition comes from data."""
    from cvae_exp import visualize

    _require_grid(module, config)
    if labels is not None and module.cvae.condition_kind == "vector":
        raise UserInputError(
            f"labels={labels.tolist()} picks test images by class; this run conditions on attribute vectors: pass "
            "attributes=[[...], ...] (one vector per row), or neither for the first 8 test images."
        )
    data = dataset(module, config)
    images, test_labels = data.images("test")
    if labels is None:
        index = list(range(8))
    else:
        missing = sorted(set(labels.tolist()) - set(test_labels.tolist()))
        if missing:
            raise ValueError(f"labels={labels.tolist()}: no test image has class {missing[0]}")
        index = [int((test_labels == label).nonzero()[0]) for label in labels.tolist()]
    return visualize.completions(module.cvae, module.task, images[index].float() / 255, test_labels[index], config.n)


def _attribute_vectors(attributes: list):
    import torch

    try:
        return torch.tensor(attributes, dtype=torch.float32)
    except (TypeError, ValueError):
        raise ValueError(f"attributes={attributes} must be a list of equally long lists of numbers") from None


def _require_grid(module, config: SampleConfig) -> None:
    if config.mode != "grid":
        raise UserInputError(
            f"mode={config.mode} draws from labels; this run's task ({type(module.task).__name__}) conditions "
            f"on {'attributes' if module.cvae.condition_kind == 'vector' else 'images'}, so only mode=grid applies."
        )


def dataset(module, config: SampleConfig):
    """The run's datamodule, at data_root if given."""
    from hydra.utils import instantiate

    return instantiate(dict(module.hparams.data, **({"root": config.data_root} if config.data_root else {})))


def save_atomically(grid, out: Path) -> None:
    """Write through a temporary file in the same directory and rename, so that a viewer
    never shows half an image and a failed write leaves nothing behind, not even the folders
    made for it: a user names a new folder (out=figures/grid.png) and gets it with the image."""
    from torchvision.utils import save_image

    try:
        with undone_on_failure(out.parent):
            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(out) as temporary:
                save_image(grid, temporary)
    except (OSError, ValueError) as error:  # PIL: a format that cannot hold this grid; a full disk
        raise UserInputError(
            f"Cannot write out={str(out)!r}: {' '.join(str(error).split())}; nothing was written. Choose another "
            "path or format (.png holds any grid)."
        ) from None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    show_progress()
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    try:
        if not argv:
            raise UserInputError(
                "missing the checkpoint: pass a .ckpt file or a run directory first, then key=value arguments "
                "(see cvae-sample --help)."
            )
        config = parse_overrides(argv[1:])
        checkpoint = find_checkpoint(Path(argv[0]))
        grid = draw(load_module(checkpoint), config, checkpoint)
        save_atomically(grid, Path(config.out))
    except UserInputError as error:
        report_and_exit(error, "cvae-sample")
    print(config.out)


if __name__ == "__main__":
    main()
