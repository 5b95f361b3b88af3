"""The CVAE: encoder q(z|x,c), decoder p(x|z,c) and prior p(z|c) (cvae_exp/models/priors.py)."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cvae_exp.models.conditioning import Conditioning
from cvae_exp.models.priors import StandardPrior


@dataclass
class CVAEOutput:
    """What one forward pass returns: decoder logits, the posterior it sampled from and
    the KL term of the ELBO (from the prior)."""

    logits: torch.Tensor  # (N, C, H, W); pixel means are sigmoid(logits)
    mu: torch.Tensor  # (N, latent_dim)
    logvar: torch.Tensor  # (N, latent_dim), log sigma^2
    z: torch.Tensor  # (N, latent_dim), the reparameterised sample
    kl: torch.Tensor  # (N,), KL(q(z|x,c) || p(z|c)), closed form or one-sample estimate


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + eps * sigma with eps ~ N(0, I): a sample that carries gradients to mu and logvar."""
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


class CVAE(nn.Module):
    """Wires an architecture (encoder and decoder factories) to a conditioning method and a prior.

    `encoder`, `decoder`, `conditioning` and `prior` are factories (Hydra `_partial_`
    configs); each network gets its own conditioning instance. The condition is a class
    label (`condition_shape` None) or a tensor of `condition_shape` (cvae_exp/tasks.py).
    A prior without a latent variable (NoLatent) builds no encoder.
    """

    def __init__(
        self,
        encoder: Callable[..., nn.Module],
        decoder: Callable[..., nn.Module],
        conditioning: Callable[..., Conditioning],
        latent_dim: int,
        image_shape: tuple[int, int, int],
        num_classes: int,
        condition_shape: tuple[int, int, int] | None = None,
        prior: Callable[..., StandardPrior] = StandardPrior,
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.condition_shape = None if condition_shape is None else tuple(condition_shape)
        spec = dict(num_classes=num_classes, condition_shape=self.condition_shape)
        self.prior = prior(latent_dim, Conditioning(**spec))
        self.encoder = encoder(image_shape, latent_dim, conditioning(**spec)) if self.prior.has_latent else None
        self.decoder = decoder(image_shape, latent_dim, conditioning(**spec))
        if self.encoder is not None:
            self.prior.attach(self.encoder, self.image_shape)

    @property
    def is_conditional(self) -> bool:
        """Whether the condition reaches the decoder (decides the report's Score form)."""
        return self.decoder.conditioning.is_conditional

    @property
    def labels_condition(self) -> bool:
        return self.condition_shape is None

    def posterior(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(z | x, c); zeros without a latent variable."""
        if self.encoder is None:
            zeros = torch.zeros(len(x), self.latent_dim, device=x.device)
            return zeros, zeros
        return self.encoder(x, condition)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> CVAEOutput:
        mu, logvar = self.posterior(x, condition)
        z = reparameterize(mu, logvar) if self.encoder is not None else mu
        return CVAEOutput(self.decoder(z, condition), mu, logvar, z, self.prior.kl(mu, logvar, z, condition))

    def decode(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Pixel means in [0, 1]."""
        return torch.sigmoid(self.decoder(z, condition))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, condition: torch.Tensor, use_mean: bool = False) -> torch.Tensor:
        """Pixel means of the decoded posterior sample (or of its mean with `use_mean`)."""
        mu, logvar = self.posterior(x, condition)
        return self.decode(mu if use_mean or self.encoder is None else reparameterize(mu, logvar), condition)

    @torch.no_grad()
    def sample(self, condition: torch.Tensor, n: int = 1, sampler: nn.Module | None = None) -> torch.Tensor:
        """`n` images per condition from z ~ p(z | c), or from a fitted latent sampler
        (cvae_exp/samplers.py): shape (len(condition) * n, C, H, W), condition-major."""
        condition = condition.repeat_interleave(n, dim=0)
        z = (
            (sampler or self.prior).sample(condition).to(next(self.decoder.parameters()).dtype)
        )  # float64 / bf16-true runs
        return self.decode(z, condition)
