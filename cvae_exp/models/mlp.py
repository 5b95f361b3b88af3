"""Fully connected encoder and decoder (the report's GenModel with hidden_dims [400, 400])."""

import math

import torch
from torch import nn

from cvae_exp.errors import require_sizes
from cvae_exp.models.conditioning import ConditionedLayers, Conditioning


def _hidden_stack(in_features: int, hidden_dims: list[int], conditioning: Conditioning):
    widths = [in_features, *hidden_dims]
    layers = [nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])]
    return ConditionedLayers(layers, list(hidden_dims), conditioning), widths[-1]


class MLPEncoder(nn.Module):
    """q(z | x, c): flattened image -> hidden layers -> (mu, log sigma^2)."""

    def __init__(self, image_shape, latent_dim: int, conditioning: Conditioning, hidden_dims: list[int]):
        super().__init__()
        require_sizes("model.encoder.hidden_dims", hidden_dims)
        self.conditioning = conditioning
        in_features = math.prod(image_shape) + conditioning.extra_features
        self.hidden, width = _hidden_stack(in_features, hidden_dims, conditioning)
        self.mu = nn.Linear(width, latent_dim)
        self.logvar = nn.Linear(width, latent_dim)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.hidden(self.conditioning.join(x.flatten(1), condition), condition)
        return self.mu(hidden), self.logvar(hidden)


class MLPDecoder(nn.Module):
    """p(x | z, c): z -> hidden layers -> pixel logits of the image shape."""

    def __init__(self, image_shape, latent_dim: int, conditioning: Conditioning, hidden_dims: list[int]):
        super().__init__()
        require_sizes("model.decoder.hidden_dims", hidden_dims)
        self.conditioning = conditioning
        self.image_shape = tuple(image_shape)
        self.hidden, width = _hidden_stack(latent_dim + conditioning.extra_features, hidden_dims, conditioning)
        self.out = nn.Linear(width, math.prod(image_shape))

    def forward(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        hidden = self.hidden(self.conditioning.join(z, condition), condition)
        return self.out(hidden).view(-1, *self.image_shape)
