"""The CVAE: encoder q(z|x,c), decoder p(x|z,c), standard normal prior p(z) = N(0, I)."""

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from cvae_exp.models.conditioning import Conditioning


@dataclass
class CVAEOutput:
    """What one forward pass returns: decoder logits and the posterior it sampled from."""

    logits: torch.Tensor  # (N, C, H, W); pixel means are sigmoid(logits)
    mu: torch.Tensor  # (N, latent_dim)
    logvar: torch.Tensor  # (N, latent_dim), log sigma^2
    z: torch.Tensor  # (N, latent_dim), the reparameterised sample


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + eps * sigma with eps ~ N(0, I): a sample that carries gradients to mu and logvar."""
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


class CVAE(nn.Module):
    """Wires an architecture (encoder and decoder factories) to a conditioning method.

    `encoder`, `decoder` and `conditioning` are factories (Hydra `_partial_` configs);
    encoder and decoder each get their own conditioning instance.
    """

    def __init__(
        self,
        encoder: Callable[..., nn.Module],
        decoder: Callable[..., nn.Module],
        conditioning: Callable[..., Conditioning],
        latent_dim: int,
        image_shape: tuple[int, int, int],
        num_classes: int,
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.encoder = encoder(image_shape, latent_dim, conditioning(num_classes))
        self.decoder = decoder(image_shape, latent_dim, conditioning(num_classes))

    @property
    def is_conditional(self) -> bool:
        """Whether labels reach the networks (decides the report's Score form)."""
        return self.encoder.conditioning.is_conditional

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> CVAEOutput:
        mu, logvar = self.encoder(x, labels)
        z = reparameterize(mu, logvar)
        return CVAEOutput(self.decoder(z, labels), mu, logvar, z)

    def decode(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Pixel means in [0, 1]."""
        return torch.sigmoid(self.decoder(z, labels))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, labels: torch.Tensor, use_mean: bool = False) -> torch.Tensor:
        """Pixel means of the decoded posterior sample (or of its mean with `use_mean`)."""
        mu, logvar = self.encoder(x, labels)
        return self.decode(mu if use_mean else reparameterize(mu, logvar), labels)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, n: int = 1) -> torch.Tensor:
        """`n` images per label from z ~ N(0, I): shape (len(labels) * n, C, H, W), label-major."""
        labels = labels.repeat_interleave(n)
        z = torch.randn(len(labels), self.latent_dim, device=labels.device)
        return self.decode(z, labels)
