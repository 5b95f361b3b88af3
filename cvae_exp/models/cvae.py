"""The CVAE: encoder q(z|x,c), decoder p(x|z,c) and prior p(z|c) (cvae_exp/models/priors.py).

Its methods are the model protocol that the objective, the evaluation, the samplers, the
grids and cvae-sample use (docs/extending.md): `forward(x, c)` -> CVAEOutput (what the
objective needs: decoder logits and the KL term), `encode(x, c)` -> the posterior
q(z | x, c) (`.mean`, `.rsample(k)`, `.log_prob(z)`), `decode(z, c)` -> pixel means,
`decode_logits(z, c)`, `log_prior(z, c)`, `sample_latent(c)` -> z ~ p(z | c),
`traversal_latent(z, c, dim)`, `sample(c, n)` and `reconstruct(x, c)`; the
attributes `latent_dim`, `image_shape`, `num_classes`, `has_latent`, `condition_kind`,
`labels_condition` and `is_conditional` say what the model is, so that a consumer that needs a Gaussian
latent or class labels can refuse with one line; a model whose latent is quantised (the VQ-VAE,
cvae_exp/models/vqvae.py) also sets `discrete_latent = True`, and one with several layers of
z (cvae_exp/models/hierarchical.py) `stochastic_layers`.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cvae_exp.distributions import gaussian_log_prob
from cvae_exp.models.conditioning import Conditioning
from cvae_exp.models.priors import StandardPrior


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + eps * sigma with eps ~ N(0, I): a sample that carries gradients to mu and logvar."""
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


@dataclass
class DiagonalGaussian:
    """q(z | x, c) = N(mean, diag exp(logvar)), one row per image."""

    mean: torch.Tensor  # (N, latent_dim)
    logvar: torch.Tensor  # (N, latent_dim), log sigma^2

    def rsample(self, samples: int | None = None) -> torch.Tensor:
        """A reparameterised draw, (N, D); with `samples` = k, k draws stacked first, (k, N, D)."""
        if samples is None:
            return reparameterize(self.mean, self.logvar)
        return reparameterize(
            self.mean.expand(samples, *self.mean.shape), self.logvar.expand(samples, *self.logvar.shape)
        )

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z | x, c), summed over the latent dimensions (z may have leading sample dimensions)."""
        return gaussian_log_prob(z, self.mean, self.logvar)


@dataclass
class CVAEOutput:
    """What one forward pass returns: decoder logits, the posterior it sampled from and
    the KL term of the ELBO (from the prior)."""

    logits: torch.Tensor  # (N, C, H, W); pixel means are sigmoid(logits)
    mu: torch.Tensor  # (N, latent_dim)
    logvar: torch.Tensor  # (N, latent_dim), log sigma^2
    z: torch.Tensor  # (N, latent_dim), the reparameterised sample
    kl: torch.Tensor  # (N,), KL(q(z|x,c) || p(z|c)), closed form or one-sample estimate


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

    @property
    def condition_kind(self) -> str:
        """class, vector (attribute values) or image (cvae_exp/models/conditioning.py)."""
        return self.decoder.conditioning.kind

    @property
    def has_latent(self) -> bool:
        """False for the deterministic baseline (prior=none): z is zero and there is no encoder."""
        return self.encoder is not None

    def encode(self, x: torch.Tensor, condition: torch.Tensor) -> DiagonalGaussian:
        """q(z | x, c); a point mass at zero without a latent variable."""
        if self.encoder is None:
            zeros = torch.zeros(len(x), self.latent_dim, device=x.device)
            return DiagonalGaussian(zeros, zeros)
        return DiagonalGaussian(*self.encoder(x, condition))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> CVAEOutput:
        posterior = self.encode(x, condition)
        mu, logvar = posterior.mean, posterior.logvar
        z = posterior.rsample() if self.encoder is not None else mu
        return CVAEOutput(self.decoder(z, condition), mu, logvar, z, self.prior.kl(mu, logvar, z, condition))

    def decode_logits(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The decoder's logits: pixel means are their sigmoid, and the objective's likelihood reads them."""
        return self.decoder(z, condition)

    def decode(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Pixel means in [0, 1]."""
        return torch.sigmoid(self.decode_logits(z, condition))

    def log_prior(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """log p(z | c) (z may carry leading sample dimensions before the batch's rows)."""
        return self.prior.log_prob(z, condition)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, condition: torch.Tensor, use_mean: bool = False) -> torch.Tensor:
        """Pixel means of the decoded posterior sample (or of its mean with `use_mean`)."""
        posterior = self.encode(x, condition)
        use_mean = use_mean or self.encoder is None
        return self.decode(posterior.mean if use_mean else posterior.rsample(), condition)

    def sample_latent(self, condition: torch.Tensor) -> torch.Tensor:
        """z ~ p(z | c), one row per condition: the model's whole latent, as `decode` reads it."""
        return self.prior.sample(condition)

    def traversal_latent(self, z: torch.Tensor, condition: torch.Tensor, dim: int) -> torch.Tensor:
        """The whole latent that a traversal decodes, given z = 0 with coordinate `dim` swept: z
        itself for one layer of z; a model whose layers depend on each other fills in the rest."""
        return z

    @torch.no_grad()
    def sample(self, condition: torch.Tensor, n: int = 1, sampler: nn.Module | None = None) -> torch.Tensor:
        """`n` images per condition from z ~ p(z | c), or from a fitted latent sampler
        (cvae_exp/samplers.py): shape (len(condition) * n, C, H, W), condition-major."""
        condition = condition.repeat_interleave(n, dim=0)
        z = self.sample_latent(condition) if sampler is None else sampler.sample(condition)
        return self.decode(z.to(next(self.decoder.parameters()).dtype), condition)  # float64 / bf16-true runs
