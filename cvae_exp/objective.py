"""The objective: likelihood term + beta * KL per image, averaged over the batch, and the
densities it is made of."""

import math

import torch
import torch.nn.functional as F

from cvae_exp.config import LIKELIHOODS, LOSS_TERMS

LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) in closed form, one value per row."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def gaussian_kl_between(
    mu: torch.Tensor, logvar: torch.Tensor, prior_mu: torch.Tensor, prior_logvar: torch.Tensor
) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(prior_mu, diag exp(prior_logvar))) in closed form, per row."""
    mu, logvar, prior_mu, prior_logvar = mu.float(), logvar.float(), prior_mu.float(), prior_logvar.float()
    ratio = (logvar - prior_logvar).exp()
    return 0.5 * (ratio + (mu - prior_mu).pow(2) / prior_logvar.exp() - 1.0 - (logvar - prior_logvar)).sum(dim=-1)


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag exp(logvar)), summed over the last dimension (broadcasting)."""
    z, mu, logvar = z.float(), mu.float(), logvar.float()
    return -0.5 * ((z - mu).pow(2) / logvar.exp() + logvar + LOG_2PI).sum(dim=-1)


def diagonal_mixture_log_prob(
    z: torch.Tensor, means: torch.Tensor, logvars: torch.Tensor, log_weights: torch.Tensor
) -> torch.Tensor:
    """log sum_k w_k N(z; mu_k, diag exp(logvar_k)) for z of shape (..., D) and components of
    shape (K, D), or (N, K, D) for z of shape (..., N, D) (one mixture per row). The squared
    distances expand into matrix products, so (..., K, D) never exists in memory: a VampPrior's
    500 components under 32k importance samples at a time would need gigabytes."""
    z, means, precisions = z.float(), means.float(), torch.exp(-logvars.float())
    distances = (
        torch.einsum("...d,...kd->...k", z * z, precisions)
        - 2 * torch.einsum("...d,...kd->...k", z, means * precisions)
        + (means * means * precisions).sum(-1)
    )
    per_component = -0.5 * (distances + logvars.float().sum(-1) + z.shape[-1] * LOG_2PI)
    return torch.logsumexp(per_component + log_weights, dim=-1)


def _masked_sum(per_pixel: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-image sum over the target pixels (all pixels without a mask)."""
    if mask is not None:
        per_pixel = per_pixel * mask
    return per_pixel.flatten(1).sum(dim=1)


def gaussian_nll(x: torch.Tensor, logits: torch.Tensor, var: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """||x - sigmoid(logits)||^2 / (2 var) per image over the target pixels: -log N(x; mean,
    var I) without its constant D/2 log(2 pi var), as the report's loss writes it."""
    residual = x.float() - torch.sigmoid(logits.float())
    return _masked_sum(residual.pow(2), mask) / (2.0 * var)


def bernoulli_nll(x: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """-log Bernoulli(x; sigmoid(logits)) per image over the target pixels, from logits
    (stable under autocast). For x in (0, 1) (grayscale targets) it is the cross-entropy,
    not a log-likelihood."""
    return _masked_sum(F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none"), mask)


def gaussian_nll_constant(num_pixels: int | torch.Tensor, var: float) -> float | torch.Tensor:
    """The constant `gaussian_nll` leaves out; add it to compare with log-likelihoods."""
    return 0.5 * num_pixels * math.log(2 * math.pi * var)


class Objective:
    """Negative ELBO with a beta weight and an optional linear KL warm-up.

    `beta_at(step)` rises linearly from 0 to `beta` over `warmup_steps` optimiser steps.
    The KL term comes from the model's prior (cvae_exp/models/priors.py); the likelihood
    term covers the target pixels (`mask`, from the task; None: the whole image).
    """

    LIKELIHOODS = LIKELIHOODS
    TERMS = LOSS_TERMS  # the keys of what __call__ returns, in that order

    def __init__(self, likelihood: str = "gaussian", var: float = 0.5, beta: float = 1.0, warmup_steps: int = 0):
        if likelihood not in self.LIKELIHOODS:
            raise ValueError(f"loss.likelihood={likelihood!r} is not one of {self.LIKELIHOODS}")
        self.likelihood, self.var, self.beta, self.warmup_steps = likelihood, var, beta, warmup_steps

    def beta_at(self, step: int) -> float:
        if self.warmup_steps <= 0:
            return self.beta
        return self.beta * min(1.0, step / self.warmup_steps)

    def reconstruction(self, x: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.likelihood == "gaussian":
            return gaussian_nll(x, logits, self.var, mask)
        return bernoulli_nll(x, logits, mask)

    def log_likelihood(self, x: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x | z, c) per image over the target pixels, the Gaussian's constant included."""
        log_likelihood = -self.reconstruction(x, logits, mask)
        if self.likelihood == "gaussian":
            pixels = x[0].numel() if mask is None else mask.flatten(1).sum(dim=1)
            log_likelihood = log_likelihood - gaussian_nll_constant(pixels, self.var)
        return log_likelihood

    def __call__(self, x, logits, kl, beta: float, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        recon = self.reconstruction(x, logits, mask).mean()
        kl = kl.mean()
        return dict(zip(self.TERMS, (recon + beta * kl, recon, kl)))
