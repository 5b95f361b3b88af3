"""A CVAE with two stochastic layers, inferred top-down as in the ladder VAE (Sønderby et al.
2016): z2 on top, z1 below it, x generated from z1.

    p(x, z1, z2 | c) = p(z2 | c) p(z1 | z2, c) p(x | z1, c)
    q(z1, z2 | x, c) = q(z2 | x, c) q(z1 | x, z2, c)

The architecture's encoder gives a bottom-up estimate N(m, s^2) of z1; a small network on it
gives q(z2 | x, c). The top-down network on z2 gives p(z1 | z2, c) = N(mu_p, sigma_p^2), and
q(z1 | x, z2, c) is its precision-weighted product with the bottom-up estimate, so the
posterior and the prior share the top-down path. p(z2 | c) is the run's prior (`prior=`). The
KL term is KL(q(z2) || p(z2)) (as the prior gives it, closed form for standard and
conditional) plus KL(q(z1 | z2) || p(z1 | z2)) in closed form at the sampled z2: an unbiased
estimate of the KL between the joint posteriors. z is [z1, z2] wherever the model protocol
hands it out (samples, posterior draws, log densities), so importance-sampled likelihoods,
IWAE and the fitted samplers work on the whole latent.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cvae_exp.distributions import gaussian_kl_between, gaussian_log_prob
from cvae_exp.errors import ModelConfigError, require_size, require_sizes
from cvae_exp.models.conditioning import Conditioning
from cvae_exp.models.cvae import CVAE, CVAEOutput, reparameterize
from cvae_exp.models.priors import NoLatent, StandardPrior, VampPrior, prior_option


def precision_weighted(
    mean_a: torch.Tensor, logvar_a: torch.Tensor, mean_b: torch.Tensor, logvar_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, logvar) of the Gaussian proportional to N(mean_a, var_a) N(mean_b, var_b)."""
    precision_a, precision_b = torch.exp(-logvar_a), torch.exp(-logvar_b)
    var = 1 / (precision_a + precision_b)
    return (mean_a * precision_a + mean_b * precision_b) * var, torch.log(var)


def _mlp(widths: list[int]) -> nn.Sequential:
    layers = [nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])]
    return nn.Sequential(*[m for layer in layers[:-1] for m in (layer, nn.ReLU())], layers[-1])


@dataclass
class TwoLayerPosterior:
    """q(z1, z2 | x, c) for one batch; z = [z1, z2] along the last dimension."""

    model: "HierarchicalVAE"  # its top-down path gives q(z1 | x, z2, c) for each z2
    up_mean: torch.Tensor  # (N, D1), the bottom-up estimate of z1
    up_logvar: torch.Tensor
    top_mean: torch.Tensor  # (N, D2), q(z2 | x, c)
    top_logvar: torch.Tensor
    condition: torch.Tensor

    def lower(self, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) of q(z1 | x, z2, c); z2 may carry leading sample dimensions."""
        return precision_weighted(self.up_mean, self.up_logvar, *self.model.top_down(z2, self.condition))

    @property
    def mean(self) -> torch.Tensor:
        """[E q(z1 | x, z2 = its mean), the mean of z2]: the code of samplers, metrics and grids."""
        return torch.cat([self.lower(self.top_mean)[0], self.top_mean], dim=-1)

    @property
    def logvar(self) -> torch.Tensor:
        """[log var of q(z1 | x, z2 = its mean), that of z2], beside `mean`."""
        return torch.cat([self.lower(self.top_mean)[1], self.top_logvar], dim=-1)

    def rsample(self, samples: int | None = None) -> torch.Tensor:
        """A reparameterised draw, (N, D1 + D2); with `samples` = k, (k, N, D1 + D2)."""
        shape = self.top_mean.shape if samples is None else (samples, *self.top_mean.shape)
        z2 = reparameterize(self.top_mean.expand(shape), self.top_logvar.expand(shape))
        return torch.cat([reparameterize(*self.lower(z2)), z2], dim=-1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.model.split(z)
        return gaussian_log_prob(z2, self.top_mean, self.top_logvar) + gaussian_log_prob(z1, *self.lower(z2))


class HierarchicalVAE(CVAE):
    """Two stochastic layers: `latent_dim` units in z1 (the architecture's encoder and decoder
    work on it) and `top_dim` in z2, with `top_hidden` hidden layers in the networks between
    them. The model's `latent_dim` is D1 + D2, the size of z = [z1, z2]."""

    stochastic_layers = 2  # objectives that factorise one Gaussian layer refuse it

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
        top_dim: int = 16,
        top_hidden: tuple[int, ...] = (256,),
    ):
        kind = getattr(prior, "func", prior)
        if kind in (NoLatent, VampPrior):
            raise ModelConfigError(
                f"model=hierarchical puts the prior on its top layer z2; {prior_option(kind)} does not apply there "
                "(prior=standard, conditional or mixture)"
            )
        require_size("model.top_dim", top_dim)
        require_sizes("model.top_hidden", top_hidden)
        super().__init__(encoder, decoder, conditioning, latent_dim, image_shape, num_classes, condition_shape)
        spec = dict(num_classes=num_classes, condition_shape=self.condition_shape)
        self.prior = prior(top_dim, Conditioning(**spec))
        self.bottom_dim, self.top_dim, self.latent_dim = latent_dim, top_dim, latent_dim + top_dim
        self.condition_features = Conditioning(**spec)  # how p(z1 | z2, c) reads the condition
        extra = self.condition_features.condition_features if self.is_conditional else 0
        self.up = _mlp([2 * latent_dim, *top_hidden, 2 * top_dim])
        self.down = _mlp([top_dim + extra, *top_hidden, 2 * latent_dim])

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z[..., : self.bottom_dim], z[..., self.bottom_dim :]

    def top_down(self, z2: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) of p(z1 | z2, c), in float32; z2 may carry leading sample dimensions."""
        inputs = z2.to(self.down[0].weight.dtype)
        if self.is_conditional:
            features = self.condition_features.as_features(condition, inputs.dtype)
            inputs = torch.cat([inputs, features.expand(*z2.shape[:-1], -1)], dim=-1)
        return self.down(inputs).float().chunk(2, dim=-1)

    def encode(self, x: torch.Tensor, condition: torch.Tensor) -> TwoLayerPosterior:
        up_mean, up_logvar = (t.float() for t in self.encoder(x, condition))
        bottom_up = torch.cat([up_mean, up_logvar], dim=1).to(self.up[0].weight.dtype)
        top_mean, top_logvar = self.up(bottom_up).float().chunk(2, dim=1)
        return TwoLayerPosterior(self, up_mean, up_logvar, top_mean, top_logvar, condition)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> CVAEOutput:
        posterior = self.encode(x, condition)
        z2 = reparameterize(posterior.top_mean, posterior.top_logvar)
        prior_mean, prior_logvar = self.top_down(z2, condition)
        mean, logvar = precision_weighted(posterior.up_mean, posterior.up_logvar, prior_mean, prior_logvar)
        z1 = reparameterize(mean, logvar)
        kl = self.prior.kl(posterior.top_mean, posterior.top_logvar, z2, condition) + gaussian_kl_between(
            mean, logvar, prior_mean, prior_logvar
        )
        logits = self.decoder(z1.to(next(self.decoder.parameters()).dtype), condition)
        cat = lambda a, b: torch.cat([a, b], dim=1)  # noqa: E731
        return CVAEOutput(logits, cat(mean, posterior.top_mean), cat(logvar, posterior.top_logvar), cat(z1, z2), kl)

    def decode_logits(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.split(z)[0], condition)

    def log_prior(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """log p(z1, z2 | c) = log p(z2 | c) + log p(z1 | z2, c)."""
        z1, z2 = self.split(z)
        return self.prior.log_prob(z2, condition) + gaussian_log_prob(z1, *self.top_down(z2, condition))

    def traversal_latent(self, z: torch.Tensor, condition: torch.Tensor, dim: int) -> torch.Tensor:
        """The decoder reads z1 alone, so z1 is the mean of p(z1 | z2, c) at the traversal's z2:
        a coordinate of z2 moves it through the top-down path, one of z1 replaces its mean there."""
        z1, z2 = self.split(z)
        mean = self.top_down(z2, condition)[0].to(z.dtype).clone()  # a view of top_down's output otherwise
        if dim < self.bottom_dim:
            mean[:, dim] = z1[:, dim]
        return torch.cat([mean, z2], dim=-1)

    def sample_latent(self, condition: torch.Tensor) -> torch.Tensor:
        """z = [z1, z2] ~ p(z1 | z2, c) p(z2 | c), one row per condition."""
        z2 = self.prior.sample(condition)
        return torch.cat([reparameterize(*self.top_down(z2, condition)), z2], dim=-1)
