"""How the condition enters a network.

A condition is of one of three kinds (cvae_exp/tasks.py makes it from a batch): a class
label (int64, shape (N,); `condition_shape` None), a vector of attribute values (float,
(N, D); `condition_shape` (D,)), or an image-like tensor (float, (N, C, H, W)): observed
quadrants, a masked image, a low-resolution image. Each network (encoder, decoder, prior) gets its own `Conditioning`
instance and calls it at two points: `join` on its input (features or image channels) and
one `modulator` per hidden layer. A new method is one subclass here plus one YAML file in
configs/conditioning/.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class Conditioning(nn.Module):
    """Base class: the condition is ignored (an unconditional VAE). It also says how a
    condition reads as a flat vector (`as_features`: a one-hot label, the attribute vector
    or the flattened image) and as image channels (`as_maps`: constant maps of the label's
    one-hot code or of the attribute values, or the resized image)."""

    is_conditional = False

    def __init__(self, num_classes: int, condition_shape: tuple[int, int, int] | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.condition_shape = None if condition_shape is None else tuple(condition_shape)

    @property
    def condition_features(self) -> int:
        return self.num_classes if self.condition_shape is None else math.prod(self.condition_shape)

    @property
    def condition_channels(self) -> int:
        return self.num_classes if self.condition_shape is None else self.condition_shape[0]

    def as_features(self, condition: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.condition_shape is None:
            return F.one_hot(condition, self.num_classes).to(dtype)
        return condition.flatten(1).to(dtype)

    @property
    def kind(self) -> str:
        """class, vector or image."""
        return "class" if self.condition_shape is None else "vector" if len(self.condition_shape) == 1 else "image"

    def as_maps(self, condition: torch.Tensor, size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        if self.kind != "image":
            return self.as_features(condition, dtype)[:, :, None, None].expand(-1, -1, *size)
        return F.interpolate(condition.to(dtype), size=size, mode="nearest")

    @property
    def extra_features(self) -> int:
        """Features that `join` adds to a flat input."""
        return 0

    @property
    def extra_channels(self) -> int:
        """Channels that `join` adds to an image input."""
        return 0

    def join(self, inputs: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return inputs

    def modulator(self, num_features: int) -> nn.Module:
        return Unmodulated()


class Unmodulated(nn.Module):
    def forward(self, hidden: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return hidden


class Concat(Conditioning):
    """The condition concatenated to the input: as features for flat inputs (a one-hot
    label, a flattened image condition), as channels for images (constant label maps,
    the image condition resized to the input's size)."""

    is_conditional = True

    @property
    def extra_features(self) -> int:
        return self.condition_features

    @property
    def extra_channels(self) -> int:
        return self.condition_channels

    def join(self, inputs: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        if inputs.dim() == 4:
            return torch.cat([inputs, self.as_maps(condition, inputs.shape[2:], inputs.dtype)], dim=1)
        return torch.cat([inputs, self.as_features(condition, inputs.dtype)], dim=1)


class FiLM(Conditioning):
    """Feature-wise scale and shift of every hidden layer (Perez et al., 2018), from a
    per-layer condition encoder initialised to zero, so training starts at the identity
    (the unconditional network): a label embedding, or a linear map of an image condition."""

    is_conditional = True

    def modulator(self, num_features: int) -> nn.Module:
        return FiLMLayer(self, num_features)


class FiLMLayer(nn.Module):
    def __init__(self, conditioning: Conditioning, num_features: int):
        super().__init__()
        self.labels = conditioning.condition_shape is None
        if self.labels:
            self.scale_and_shift = nn.Embedding(conditioning.num_classes, 2 * num_features)
        else:
            self.scale_and_shift = nn.Sequential(
                nn.Flatten(), nn.Linear(conditioning.condition_features, 2 * num_features)
            )
            nn.init.zeros_(self.scale_and_shift[1].bias)
        nn.init.zeros_(self.scale_and_shift.weight if self.labels else self.scale_and_shift[1].weight)

    def forward(self, hidden: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        if not self.labels:
            condition = condition.to(self.scale_and_shift[1].weight.dtype)
        scale, shift = self.scale_and_shift(condition).to(hidden.dtype).chunk(2, dim=1)
        if hidden.dim() == 4:
            scale, shift = scale[:, :, None, None], shift[:, :, None, None]
        return hidden * (1 + scale) + shift


class ConditionedLayers(nn.Module):
    """`layer -> modulator -> ReLU` for each layer: the hidden stack of every network."""

    def __init__(self, layers: list[nn.Module], widths: list[int], conditioning: Conditioning):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.modulators = nn.ModuleList(conditioning.modulator(width) for width in widths)

    def forward(self, hidden: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        for layer, modulate in zip(self.layers, self.modulators):
            hidden = F.relu(modulate(layer(hidden), condition))
        return hidden
