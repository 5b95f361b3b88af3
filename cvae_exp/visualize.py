"""Image grids from a trained CVAE, for TensorBoard (`add_image`) and PNG files (`save_image`).

Every function returns a float (C, H, W) grid in [0, 1] made by `torchvision.utils.make_grid`,
one row per label (or style, or image pair) and one column per image in that row. Grids of
one-channel images come back with three channels, as `make_grid` writes them.

Random draws of z use torch's global RNG, as `CVAE.sample` does: call `torch.manual_seed`
first for a repeatable grid.
"""

import functools

import torch
from torchvision.utils import make_grid

from cvae_exp.models import CVAE

GRID_PADDING = 2


def _inference(draw):
    """Draw without gradients in eval mode, then give the model back in the mode it came in,
    so that a callback can draw grids in the middle of training."""

    @functools.wraps(draw)
    def wrapper(cvae: CVAE, *args, **kwargs) -> torch.Tensor:
        was_training = cvae.training
        cvae.eval()
        try:
            with torch.no_grad():
                return draw(cvae, *args, **kwargs)
        finally:
            cvae.train(was_training)

    return wrapper


@_inference
def class_samples(cvae: CVAE, labels: torch.Tensor, n: int, sampler=None) -> torch.Tensor:
    """Row i: `n` images of class labels[i] from z ~ p(z | label), the model's prior, or
    from a fitted latent sampler (cvae_exp/samplers.py)."""
    labels = checked_labels(cvae, labels)
    _check_at_least("n", n, 1)
    return _grid(cvae.sample(labels, n, sampler), columns=n)


@_inference
def reconstructions(cvae: CVAE, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """First row the images, second row their reconstructions from the posterior mean
    (the model's best guess, without the sampling noise)."""
    labels = checked_labels(cvae, labels)
    images = _checked_images(cvae, images, labels)
    return _grid(torch.cat([images, cvae.reconstruct(images, labels, use_mean=True)]), columns=len(images))


@_inference
def label_swap(cvae: CVAE, n_styles: int) -> torch.Tensor:
    """Row i: one z ~ N(0, I) decoded under every class 0..num_classes-1. A well-trained
    conditional model keeps the style (slant, thickness) along the row and changes the class;
    an unconditional one draws the same image in every column. (Meant for the standard
    prior: under a conditional prior one z is not a draw for every class.)"""
    _check_at_least("n_styles", n_styles, 1)
    z = torch.randn(n_styles, cvae.latent_dim, device=_device(cvae)).repeat_interleave(cvae.num_classes, dim=0)
    labels = torch.arange(cvae.num_classes, device=z.device).repeat(n_styles)
    return _grid(cvae.decode(z, labels), columns=cvae.num_classes)


@_inference
def interpolation(
    cvae: CVAE,
    start_images: torch.Tensor,
    start_labels: torch.Tensor,
    end_images: torch.Tensor,
    end_labels: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """Row i: `steps` images decoded from the line between the posterior means of
    start_images[i] and end_images[i], all under start_labels[i].

    z holds the style and the label the class, so a row shows one class morphing in style;
    pick pairs of the same label, or the end of the row is the end image's style drawn as
    the start image's class.
    """
    start_labels = checked_labels(cvae, start_labels, name="start_labels")
    end_labels = checked_labels(cvae, end_labels, name="end_labels")
    if len(start_labels) != len(end_labels):
        raise ValueError(
            f"start_labels has {len(start_labels)} entries and end_labels {len(end_labels)}: pass one end "
            "image per start image"
        )
    start = cvae.encode(_checked_images(cvae, start_images, start_labels, name="start_images"), start_labels).mean
    end = cvae.encode(_checked_images(cvae, end_images, end_labels, name="end_images"), end_labels).mean
    return _interpolate(cvae, start, end, start_labels, steps)


@_inference
def latent_interpolation(cvae: CVAE, labels: torch.Tensor, steps: int, sampler=None) -> torch.Tensor:
    """Row i: `steps` images of class labels[i] along the line between two z ~ p(z | label)
    (or the fitted sampler): `interpolation` without data."""
    labels = checked_labels(cvae, labels)
    _require_continuous(cvae, "an interpolation")
    start, end = (sampler.sample if sampler else cvae.sample_latent)(labels.repeat(2)).view(2, len(labels), -1)
    return _interpolate(cvae, start, end, labels, steps)


@_inference
def traversal(cvae: CVAE, labels: torch.Tensor, dim: int, span: float = 3.0, steps: int = 11) -> torch.Tensor:
    """Row i: class labels[i] decoded from z = 0 with coordinate `dim` swept over
    [-span, span]: what that one latent coordinate controls (a hierarchical model's z1 follows
    its z2 through `traversal_latent`)."""
    labels = checked_labels(cvae, labels)
    _check_at_least("steps", steps, 2)
    _require_continuous(cvae, "a traversal")
    if not 0 <= dim < cvae.latent_dim:
        layers = (
            f" (0..{cvae.bottom_dim - 1} are z1, model.latent_dim; {cvae.bottom_dim}..{cvae.latent_dim - 1} are z2, "
            "model.top_dim)"
            if getattr(cvae, "stochastic_layers", 1) == 2
            else ""
        )
        raise ValueError(
            f"dim={dim} is not a latent coordinate: the model's latent has {cvae.latent_dim} coordinates, so dim "
            f"must be in 0..{cvae.latent_dim - 1}{layers}"
        )
    z = torch.zeros(len(labels) * steps, cvae.latent_dim, device=labels.device)
    z[:, dim] = torch.linspace(-span, span, steps, device=labels.device).repeat(len(labels))
    labels = labels.repeat_interleave(steps)
    return _grid(cvae.decode(cvae.traversal_latent(z, labels, dim), labels), columns=steps)


def _require_continuous(cvae: CVAE, grid: str) -> None:
    """Points between codes are no codes: a VQ-VAE's decoder has only seen its code vectors."""
    if getattr(cvae, "discrete_latent", False):
        raise ValueError(
            f"model=vqvae cannot draw {grid}: its decoder reads code vectors of its codebook, and the points "
            "between or around them are not codes; mode=grid draws its codes from the prior over codes"
        )


@_inference
def completions(cvae: CVAE, task, images: torch.Tensor, labels: torch.Tensor, n: int) -> torch.Tensor:
    """For a task that conditions on an image or on attributes (cvae_exp/tasks.py), row i: the
    condition of images[i] where it is a picture (unobserved pixels grey), `n` predictions
    from z ~ p(z | c) (the observed pixels kept), and the image itself."""
    _check_at_least("n", n, 1)
    images = images.to(_device(cvae))
    condition, _ = task(images, labels.to(images.device), torch.Generator().manual_seed(0))
    predictions = task.complete(condition.repeat_interleave(n, dim=0), cvae.sample(condition, n).float())
    shown = task.show(condition, cvae.image_shape)  # None: a vector of attributes
    columns = [predictions.view(len(images), n, *cvae.image_shape), images[:, None]]
    rows = torch.cat(columns if shown is None else [shown[:, None], *columns], dim=1)
    return _grid(rows.flatten(0, 1), columns=rows.shape[1])


@_inference
def condition_samples(cvae: CVAE, conditions: torch.Tensor, n: int) -> torch.Tensor:
    """Row i: `n` images from z ~ p(z | c) for the attribute vector conditions[i]."""
    _check_at_least("n", n, 1)
    return _grid(cvae.sample(checked_vectors(cvae, conditions), n), columns=n)


@_inference
def attribute_toggles(cvae: CVAE, conditions: torch.Tensor) -> torch.Tensor:
    """Row i: one z ~ N(0, I) decoded under the multi-hot vector conditions[i] (first column),
    then under it with each attribute in turn switched (1 to 0, 0 to 1), z held fixed: what
    each attribute changes, style kept."""
    conditions = conditions.float().to(_device(cvae))
    rows, width = conditions.shape
    toggled = conditions[:, None, :].repeat(1, width + 1, 1)
    flips = torch.arange(width, device=conditions.device)
    toggled[:, 1 + flips, flips] = 1 - toggled[:, 1 + flips, flips]
    z = torch.randn(rows, 1, cvae.latent_dim, device=conditions.device).expand(rows, width + 1, cvae.latent_dim)
    return _grid(cvae.decode(z.flatten(0, 1), toggled.flatten(0, 1)), columns=width + 1)


def _interpolate(cvae: CVAE, start: torch.Tensor, end: torch.Tensor, labels: torch.Tensor, steps: int) -> torch.Tensor:
    """Decode `steps` evenly spaced points from start[i] to end[i] (both included) under labels[i]."""
    _check_at_least("steps", steps, 2)
    weights = torch.linspace(0, 1, steps, device=start.device)
    z = torch.lerp(start[:, None], end[:, None], weights[None, :, None]).flatten(0, 1)
    return _grid(cvae.decode(z, labels.repeat_interleave(steps)), columns=steps)


def _grid(images: torch.Tensor, columns: int) -> torch.Tensor:
    # White padding: the digits are white on black and would run into each other on black.
    return make_grid(images.float().cpu(), nrow=columns, padding=GRID_PADDING, pad_value=1.0)


def _device(cvae: CVAE) -> torch.device:
    return next(cvae.parameters()).device


def checked_labels(cvae: CVAE, labels, name: str = "labels") -> torch.Tensor:
    labels = torch.as_tensor(labels, device=_device(cvae))
    if (
        labels.dim() != 1
        or len(labels) == 0
        or labels.is_floating_point()
        or not ((labels >= 0) & (labels < cvae.num_classes)).all()
    ):
        raise ValueError(
            f"{name}={labels.tolist()} must be a non-empty list of class numbers in 0..{cvae.num_classes - 1}"
        )
    return labels


def checked_vectors(cvae: CVAE, conditions, name: str = "attributes") -> torch.Tensor:
    """Attribute vectors as a float tensor on the model's device, or a ValueError that names them."""
    conditions = torch.as_tensor(conditions)
    width = cvae.condition_shape[0]
    if conditions.dim() != 2 or conditions.shape[1] != width or len(conditions) == 0:
        raise ValueError(f"{name}={conditions.tolist()} must be a non-empty list of vectors of {width} values")
    return conditions.float().to(_device(cvae))


def _checked_images(cvae: CVAE, images: torch.Tensor, labels: torch.Tensor, name: str = "images") -> torch.Tensor:
    expected = (len(labels), *cvae.image_shape)
    if tuple(images.shape) != expected:
        raise ValueError(
            f"{name} has shape {tuple(images.shape)}, expected {expected}: one {cvae.image_shape} image per label"
        )
    return images.to(labels.device)


def _check_at_least(name: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ValueError(f"{name}={value} is too small: it must be at least {minimum}")
