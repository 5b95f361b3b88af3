"""Strided-convolution encoder and transposed-convolution decoder.

Each layer halves (encoder) or doubles (decoder) the spatial size with a 4x4 kernel,
stride 2, padding 1, so any image whose sides divide by 2**len(channels) works
(1x28x28 with two layers, 3x32x32 with up to five).
"""

import torch
from torch import nn

from cvae_exp.errors import ModelConfigError, require_sizes
from cvae_exp.models.conditioning import ConditionedLayers, Conditioning


def bottleneck_size(image_shape, num_layers: int) -> tuple[int, int]:
    """Spatial size after `num_layers` halvings; ModelConfigError if a side does not divide."""
    _, height, width = image_shape
    factor = 2**num_layers
    if num_layers < 1:
        raise ModelConfigError(
            f"a conv network needs at least one layer, and this one has {num_layers}: give model.encoder.channels "
            f"and model.decoder.channels at least one entry each, or use model=mlp"
        )
    if height % factor or width % factor:
        most = next(n for n in range(num_layers, -1, -1) if height % 2**n == 0 and width % 2**n == 0)
        raise ModelConfigError(
            f"a conv network with {num_layers} layers needs image sides divisible by 2**{num_layers} = {factor} "
            f"({height} x {width} allows at most {most}): use at most {most} entries in model.encoder.channels "
            f"and model.decoder.channels, or model=mlp"
        )
    return height // factor, width // factor


def _down(a: int, b: int) -> nn.Conv2d:
    return nn.Conv2d(a, b, kernel_size=4, stride=2, padding=1)


def _up(a: int, b: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(a, b, kernel_size=4, stride=2, padding=1)


class ConvEncoder(nn.Module):
    """q(z | x, c): conv layers with `channels` out-channels -> linear heads (mu, log sigma^2)."""

    def __init__(self, image_shape, latent_dim: int, conditioning: Conditioning, channels: list[int]):
        super().__init__()
        require_sizes("model.encoder.channels", channels)
        height, width = bottleneck_size(image_shape, len(channels))
        self.conditioning = conditioning
        widths = [image_shape[0] + conditioning.extra_channels, *channels]
        layers = [_down(a, b) for a, b in zip(widths[:-1], widths[1:])]
        self.hidden = ConditionedLayers(layers, list(channels), conditioning)
        flat = channels[-1] * height * width
        self.mu = nn.Linear(flat, latent_dim)
        self.logvar = nn.Linear(flat, latent_dim)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.hidden(self.conditioning.join(x, condition), condition).flatten(1)
        return self.mu(hidden), self.logvar(hidden)


class ConvDecoder(nn.Module):
    """p(x | z, c): linear to a `channels[0]` feature map, transposed convs, pixel logits.

    `channels` is in decoder order (e.g. [64, 32]); the last layer maps to image channels.
    """

    def __init__(self, image_shape, latent_dim: int, conditioning: Conditioning, channels: list[int]):
        super().__init__()
        require_sizes("model.decoder.channels", channels)
        height, width = bottleneck_size(image_shape, len(channels))
        self.conditioning = conditioning
        self.start_shape = (channels[0], height, width)
        layers = [nn.Linear(latent_dim + conditioning.extra_features, channels[0] * height * width)]
        layers += [_up(a, b) for a, b in zip(channels[:-1], channels[1:])]
        # The linear layer's output is modulated as a flat vector, the others per channel.
        widths = [channels[0] * height * width, *channels[1:]]
        self.project = ConditionedLayers(layers[:1], widths[:1], conditioning)
        self.hidden = ConditionedLayers(layers[1:], widths[1:], conditioning)
        self.out = _up(channels[-1], image_shape[0])

    def forward(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        hidden = self.project(self.conditioning.join(z, condition), condition)
        hidden = self.hidden(hidden.view(-1, *self.start_shape), condition)
        return self.out(hidden)
