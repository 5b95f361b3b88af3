"""Priors p(z | c) of the CVAE, chosen by the config group `prior`.

Each gives the KL term of the ELBO for a batch, its log density (for importance-sampled
likelihoods, cvae_exp/likelihood.py; z may carry leading sample dimensions before the
batch's N rows) and samples; every sample the framework draws
(test-stage generation, TensorBoard grids, cvae-sample) comes from the model's prior.
A new prior is one subclass here plus one YAML file in configs/prior/.
"""

import math

import torch
from torch import nn

from cvae_exp.distributions import diagonal_mixture_log_prob, gaussian_kl, gaussian_kl_between, gaussian_log_prob
from cvae_exp.errors import require_size
from cvae_exp.models.conditioning import Conditioning


class StandardPrior(nn.Module):
    """p(z | c) = N(0, I): the condition enters through the decoder only (the lab's CVAE)."""

    has_latent = True

    def __init__(self, latent_dim: int, conditioning: Conditioning):
        super().__init__()
        self.latent_dim = latent_dim

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return gaussian_kl(mu, logvar)

    def log_prob(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z))

    def sample(self, condition: torch.Tensor) -> torch.Tensor:
        return torch.randn(len(condition), self.latent_dim, device=condition.device)

    def attach(self, encoder: nn.Module, image_shape: tuple[int, int, int]) -> None:
        """Called by the CVAE once its encoder exists; only a prior built on the encoder (VampPrior) keeps it."""


class ConditionalPrior(StandardPrior):
    """p(z | c) = N(mu(c), diag sigma^2(c)) from a prior network on the condition (Sohn et
    al., 2015); the KL between the two Gaussians is in closed form. Its heads start at
    zero, so training starts from N(0, I)."""

    def __init__(self, latent_dim: int, conditioning: Conditioning, hidden_dims: list[int]):
        super().__init__(latent_dim, conditioning)
        self.conditioning = conditioning
        widths = [conditioning.condition_features, *hidden_dims]
        layers = [layer for a, b in zip(widths[:-1], widths[1:]) for layer in (nn.Linear(a, b), nn.ReLU())]
        self.hidden = nn.Sequential(*layers)
        self.heads = nn.Linear(widths[-1], 2 * latent_dim)
        nn.init.zeros_(self.heads.weight)
        nn.init.zeros_(self.heads.bias)

    def parameters_for(self, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of p(z | c), one row per condition."""
        features = self.conditioning.as_features(condition, self.heads.weight.dtype)
        return self.heads(self.hidden(features)).float().chunk(2, dim=-1)

    def kl(self, mu, logvar, z, condition):
        return gaussian_kl_between(mu, logvar, *self.parameters_for(condition))

    def log_prob(self, z, condition):
        return gaussian_log_prob(z, *self.parameters_for(condition))

    def sample(self, condition):
        mu, logvar = self.parameters_for(condition)
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


class MixturePrior(StandardPrior):
    """p(z) = sum_k pi_k N(mu_k, diag sigma_k^2): a learned Gaussian mixture, shared by all
    conditions (by default one component per class). The KL to a mixture has no closed form:
    it is the one-sample Monte Carlo estimate log q(z | x, c) - log p(z) at the ELBO's z."""

    def __init__(self, latent_dim: int, conditioning: Conditioning, num_components: int | None = None):
        super().__init__(latent_dim, conditioning)
        components = conditioning.num_classes if num_components is None else num_components
        if num_components is not None:  # null: one per class
            require_size("prior.num_components", num_components)
        self.means = nn.Parameter(torch.randn(components, latent_dim))
        self.logvars = nn.Parameter(torch.zeros(components, latent_dim))
        self.weight_logits = nn.Parameter(torch.zeros(components))

    def kl(self, mu, logvar, z, condition):
        return gaussian_log_prob(z, mu, logvar) - self.log_prob(z, condition)

    def log_prob(self, z, condition):
        return diagonal_mixture_log_prob(z, self.means, self.logvars, self.weight_logits.log_softmax(0))

    def sample(self, condition):
        component = torch.multinomial(self.weight_logits.softmax(0), len(condition), replacement=True)
        noise = torch.randn(len(condition), self.latent_dim, device=condition.device)
        return self.means[component] + noise * torch.exp(0.5 * self.logvars[component])


class VampPrior(StandardPrior):
    """p(z | c) = 1/K sum_k q(z | u_k, c), the encoder's posteriors at K learned pseudo-inputs
    u_k (Tomczak and Welling, 2018, "VAE with a VampPrior"). The KL is the one-sample Monte Carlo
    estimate, as for MixturePrior. An encoder that ignores the condition (conditioning=none)
    is run on the K pseudo-inputs once per batch; a conditional one on every (u_k, c) pair,
    K times the batch."""

    def __init__(self, latent_dim: int, conditioning: Conditioning, num_pseudo_inputs: int = 500):
        super().__init__(latent_dim, conditioning)
        require_size("prior.num_pseudo_inputs", num_pseudo_inputs)
        self.num_pseudo_inputs = num_pseudo_inputs

    def attach(self, encoder, image_shape):
        # pixel values sigmoid(logits), starting near mid-grey; the encoder is shared, not a submodule
        self.pseudo_logits = nn.Parameter(0.01 * torch.randn(self.num_pseudo_inputs, *image_shape))
        object.__setattr__(self, "encoder", encoder)

    def components(self, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(z | u_k, c): shape (K, D) for an encoder that ignores c, else (N, K, D)."""
        inputs, count = torch.sigmoid(self.pseudo_logits), self.num_pseudo_inputs
        if not self.encoder.conditioning.is_conditional:
            mu, logvar = self.encoder(inputs, condition[:1].expand(count, *condition.shape[1:]))
            return mu.float(), logvar.float()
        rows = len(condition)
        mu, logvar = self.encoder(inputs.repeat(rows, 1, 1, 1), condition.repeat_interleave(count, dim=0))
        return mu.float().view(rows, count, -1), logvar.float().view(rows, count, -1)

    def kl(self, mu, logvar, z, condition):
        return gaussian_log_prob(z, mu, logvar) - self.log_prob(z, condition)

    def log_prob(self, z, condition):
        means, logvars = self.components(condition)
        return diagonal_mixture_log_prob(
            z, means, logvars, torch.full((self.num_pseudo_inputs,), -math.log(self.num_pseudo_inputs), device=z.device)
        )

    def sample(self, condition):
        means, logvars = self.components(condition)
        chosen = torch.randint(self.num_pseudo_inputs, (len(condition),), device=condition.device)
        if means.dim() == 2:
            means, logvars = means[chosen], logvars[chosen]
        else:
            rows = torch.arange(len(condition), device=condition.device)
            means, logvars = means[rows, chosen], logvars[rows, chosen]
        return means + torch.randn_like(means) * torch.exp(0.5 * logvars)


class NoLatent(StandardPrior):
    """No latent variable: the decoder sees the condition only, and z is zero. This is the
    deterministic baseline of the CVAE literature (Sohn et al.'s "NN"); its ELBO is its
    exact log-likelihood."""

    has_latent = False

    def kl(self, mu, logvar, z, condition):
        return torch.zeros(len(z), device=z.device)

    def log_prob(self, z, condition):
        return torch.zeros(z.shape[:-1], device=z.device)

    def sample(self, condition):
        return torch.zeros(len(condition), self.latent_dim, device=condition.device)


def prior_option(kind: type) -> str:
    """How a command line names a prior class: prior=<its file in configs/prior/> for ours, its
    class path for one of the user's own."""
    ours = {
        StandardPrior: "standard",
        ConditionalPrior: "conditional",
        MixturePrior: "mixture",
        VampPrior: "vamp",
        NoLatent: "none",
    }
    return f"prior={ours[kind]}" if kind in ours else f"{kind.__module__}.{kind.__qualname__}"
