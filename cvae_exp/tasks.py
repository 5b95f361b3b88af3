"""Tasks: what the CVAE is conditioned on and which pixels it must predict, chosen by the
config group `task`.

A task turns a batch (images in [0, 1], labels) into (condition, mask): the condition the
networks and the prior see (a label, a vector of attributes, or an image-like tensor) and the mask of target pixels
that the likelihood and the metrics cover (None: the whole image). The encoder q(z | x, c)
sees the whole image. A new task is one class here plus one YAML file in configs/task/.
"""

import torch
import torch.nn.functional as F

HIDDEN = -1.0  # the value of an unobserved pixel in a condition (as in Pyro's CVAE tutorial)


class LabelTask:
    """p(x | label): the class label is the condition, every pixel the target."""

    name = "label"
    condition_kind = "class"  # class | vector | image: how conditioning, grids and cvae-sample address it

    def condition_shape(self, image_shape: tuple[int, int, int]) -> tuple[int, int, int] | None:
        return None  # a label

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None):
        return labels, None

    def show(self, condition: torch.Tensor, image_shape) -> torch.Tensor:
        raise NotImplementedError("a label is not an image")

    def complete(self, condition: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
        return prediction


class QuadrantTask(LabelTask):
    """Sohn et al.'s MNIST task, with Pyro's quadrants: `observed` = 1 (the bottom-left
    quadrant is seen), 2 (the left half) or 3 (all but the bottom-right). The condition is
    the image with unobserved pixels set to -1; the target is the unobserved pixels."""

    name = "quadrants"
    condition_kind = "image"
    OBSERVED = {1: ((1, 0),), 2: ((0, 0), (1, 0)), 3: ((0, 0), (0, 1), (1, 0))}  # (row, column) of each seen quadrant

    def __init__(self, observed: int = 1):
        if observed not in self.OBSERVED:
            raise ValueError(
                f"task.observed={observed!r} is not 1, 2 or 3 (observed quadrants: 1 bottom-left, 2 left half, "
                "3 all but bottom-right)"
            )
        self.observed = observed

    def condition_shape(self, image_shape):
        return tuple(image_shape)

    def seen(self, images: torch.Tensor) -> torch.Tensor:
        """1 on observed pixels, 0 elsewhere, shaped (1, 1, H, W)."""
        height, width = images.shape[-2:]
        seen = torch.zeros(1, 1, height, width, device=images.device)
        for row, column in self.OBSERVED[self.observed]:
            seen[..., row * height // 2 : (row + 1) * height // 2, column * width // 2 : (column + 1) * width // 2] = 1
        return seen

    def __call__(self, images, labels, generator=None):
        seen = self.seen(images)
        return torch.where(seen.bool(), images, HIDDEN), (1 - seen).expand_as(images)

    def show(self, condition, image_shape):
        return condition.clamp(min=0) + 0.5 * (condition == HIDDEN)  # unobserved pixels in grey

    def complete(self, condition, prediction):
        return torch.where(condition == HIDDEN, prediction, condition)


class InpaintTask(QuadrantTask):
    """A random rectangle of each image is hidden (its height and its width drawn apart from
    `min_size`..`max_size` pixels, anywhere in the image); the condition is the image with
    the hole at -1 and the hole's mask as a second channel, the target the hidden pixels.
    Validation and test draw their rectangles from a fixed seed per batch, so every epoch
    sees the same holes."""

    name = "inpaint"

    def __init__(self, min_size: int = 8, max_size: int = 16):
        if not 1 <= min_size <= max_size:
            raise ValueError(
                f"task.min_size={min_size!r} and task.max_size={max_size!r} must satisfy 1 <= min_size <= max_size"
            )
        self.min_size, self.max_size = min_size, max_size

    def condition_shape(self, image_shape):
        channels, height, width = image_shape
        if self.max_size > min(height, width):
            raise ValueError(
                f"task.max_size={self.max_size} does not fit in the {height}x{width} images; allowed: at most "
                f"{min(height, width)}"
            )
        return (channels + 1, height, width)

    def __call__(self, images, labels, generator=None):
        count, _, height, width = images.shape

        def span(length: int) -> torch.Tensor:
            """Per image, which of `length` rows (or columns) the hole covers."""
            sides = torch.randint(self.min_size, self.max_size + 1, (count,), generator=generator)
            starts = (torch.rand(count, generator=generator) * (length - sides + 1)).long()  # anywhere the hole fits
            positions = torch.arange(length)
            return ((positions >= starts[:, None]) & (positions < (starts + sides)[:, None])).to(images.device)

        inside_rows, inside_columns = span(height), span(width)
        hole = (inside_rows[:, :, None] & inside_columns[:, None, :])[:, None].float()
        condition = torch.cat([torch.where(hole.bool(), HIDDEN, images), hole], dim=1)
        return condition, hole.expand_as(images)

    def show(self, condition, image_shape):
        return super().show(condition[:, :-1], image_shape)

    def complete(self, condition, prediction):
        return super().complete(condition[:, :-1], prediction)


class SuperresTask(LabelTask):
    """Super-resolution: the condition is the image averaged over `factor` x `factor`
    blocks (factor 4: 7x7 from 28x28, factor 2: 14x14); every pixel is the target."""

    name = "superres"
    condition_kind = "image"

    def __init__(self, factor: int = 4):
        if not isinstance(factor, int) or factor < 2:
            raise ValueError(f"task.factor={factor!r} must be an integer >= 2 (4: 28x28 -> 7x7, 2: 28x28 -> 14x14)")
        self.factor = factor

    def condition_shape(self, image_shape):
        channels, height, width = image_shape
        if height % self.factor or width % self.factor:
            allowed = [factor for factor in range(2, min(height, width) + 1) if height % factor == 0 == width % factor]
            raise ValueError(
                f"task.factor={self.factor} does not divide the {height}x{width} images; allowed: "
                f"{', '.join(map(str, allowed))}"
            )
        return (channels, height // self.factor, width // self.factor)

    def __call__(self, images, labels, generator=None):
        return F.avg_pool2d(images, self.factor), None

    def show(self, condition, image_shape):
        return F.interpolate(condition, size=tuple(image_shape[1:]), mode="nearest")


class AttributesTask(LabelTask):
    """p(x | a): a vector of `num_attributes` attribute values (multi-hot, or real values) is the
    condition, every pixel the target. The dataset's labels are those vectors (data.attributes)."""

    name = "attributes"
    condition_kind = "vector"

    def __init__(self, num_attributes: int):
        if not isinstance(num_attributes, int) or num_attributes < 1:
            raise ValueError(
                f"task=attributes needs a dataset with attribute vectors (data.attributes >= 1), got {num_attributes!r}"
            )
        self.num_attributes = num_attributes

    def condition_shape(self, image_shape):
        return (self.num_attributes,)

    def __call__(self, images, labels, generator=None):
        return labels.float(), None

    def show(self, condition, image_shape):
        return None  # a vector has no picture: grids show samples and the truth only
