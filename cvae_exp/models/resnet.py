"""Residual convolutional encoder and decoder, for colour images such as 3x32x32 and 3x64x64.

Deeper than conv.py's one layer per halving without harder optimisation: each stage halves
(encoder) or doubles (decoder) the spatial size in its first residual block and holds
`blocks` blocks in all, at the width of its `channels` entry, so any image whose sides
divide by 2**len(channels) works. A block is pre-activation (He et al., 2016):
norm -> ReLU -> 3x3 conv, twice, added to an identity skip, or to a 1x1 projection where
the block changes the width or the size. The condition enters as in conv.py: `join` at the
input, and one modulator (FiLM) after each stage through `ConditionedLayers`.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from cvae_exp.errors import require_size, require_sizes
from cvae_exp.models.conditioning import ConditionedLayers, Conditioning
from cvae_exp.models.conv import bottleneck_size


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    # GroupNorm normalises each image on its own: no batch statistics, so a batch of 1
    # works, and eval() computes exactly what train() does (BatchNorm would switch to
    # running averages at eval time, and those drift with FiLM and small batches).
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class ResidualBlock(nn.Module):
    """x -> skip(x) + conv(ReLU(norm(conv(ReLU(norm(x)))))), with `resample` None, "down"
    (the first conv has stride 2) or "up" (nearest-neighbour doubling before the first conv)."""

    def __init__(self, in_channels: int, out_channels: int, resample: str | None = None, groups: int = 8):
        super().__init__()
        if resample not in (None, "down", "up"):
            raise ValueError(f"resample must be None, 'down' or 'up', not {resample!r}")
        stride = 2 if resample == "down" else 1
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest") if resample == "up" else nn.Identity()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        same_shape = in_channels == out_channels and resample is None
        self.skip = nn.Identity() if same_shape else nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.conv1(self.upsample(F.relu(self.norm1(x))))
        hidden = self.conv2(F.relu(self.norm2(hidden)))
        return self.skip(self.upsample(x)) + hidden


def _stages(widths: list[int], blocks: int, resample: str, groups: int) -> list[nn.Sequential]:
    """One stage per pair of widths: a resampling block from the first to the second, then `blocks` - 1 more."""
    return [
        nn.Sequential(
            ResidualBlock(a, b, resample, groups), *(ResidualBlock(b, b, None, groups) for _ in range(blocks - 1))
        )
        for a, b in zip(widths[:-1], widths[1:])
    ]


class ResNetEncoder(nn.Module):
    """q(z | x, c): a 3x3 stem conv to `channels[0]`, one downsampling stage per `channels`
    entry -> linear heads (mu, log sigma^2)."""

    def __init__(
        self,
        image_shape,
        latent_dim: int,
        conditioning: Conditioning,
        channels: list[int],
        blocks: int = 2,
        groups: int = 8,
    ):
        super().__init__()
        require_sizes("model.encoder.channels", channels)
        height, width = bottleneck_size(image_shape, len(channels))
        require_size("model.encoder.blocks", blocks)  # each stage resamples in its first block
        self.conditioning = conditioning
        in_channels = image_shape[0] + conditioning.extra_channels
        self.stem = nn.Conv2d(in_channels, channels[0], kernel_size=3, padding=1)
        stages = _stages([channels[0], *channels], blocks, "down", groups)
        self.hidden = ConditionedLayers(stages, list(channels), conditioning)
        flat = channels[-1] * height * width
        self.mu = nn.Linear(flat, latent_dim)
        self.logvar = nn.Linear(flat, latent_dim)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.stem(self.conditioning.join(x, condition))
        hidden = self.hidden(hidden, condition).flatten(1)
        return self.mu(hidden), self.logvar(hidden)


class ResNetDecoder(nn.Module):
    """p(x | z, c): linear to a `channels[0]` feature map, one upsampling stage per
    `channels` entry, a 3x3 conv to pixel logits.

    `channels` is in decoder order (e.g. [64, 32]), as in ConvDecoder.
    """

    def __init__(
        self,
        image_shape,
        latent_dim: int,
        conditioning: Conditioning,
        channels: list[int],
        blocks: int = 2,
        groups: int = 8,
    ):
        super().__init__()
        require_sizes("model.decoder.channels", channels)
        height, width = bottleneck_size(image_shape, len(channels))
        require_size("model.decoder.blocks", blocks)  # each stage resamples in its first block
        self.conditioning = conditioning
        self.start_shape = (channels[0], height, width)
        flat = channels[0] * height * width
        # The linear layer's output is modulated as a flat vector, the stages per channel.
        self.project = ConditionedLayers(
            [nn.Linear(latent_dim + conditioning.extra_features, flat)], [flat], conditioning
        )
        stages = _stages([channels[0], *channels], blocks, "up", groups)
        self.hidden = ConditionedLayers(stages, list(channels), conditioning)
        self.out = nn.Conv2d(channels[-1], image_shape[0], kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        hidden = self.project(self.conditioning.join(z, condition), condition)
        hidden = self.hidden(hidden.view(-1, *self.start_shape), condition)
        return self.out(hidden)
