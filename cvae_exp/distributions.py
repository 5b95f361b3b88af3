"""Densities of the ELBO's terms: Gaussian KLs and log densities, mixtures, and the
per-image likelihoods of the decoder (over the target pixels of a mask)."""

import math

import torch
import torch.nn.functional as F

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


def discretized_logistic_nll(
    x: torch.Tensor, logits: torch.Tensor, scale: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """-log P(x) per image over the target pixels, for 8-bit pixels x in {0, 1/255, ..., 1}
    under a logistic of mean sigmoid(logits) and `scale`, discretised to the 256 bins
    (PixelCNN++, Salimans et al. 2017, with one component): P(k) is the logistic's mass
    between the bin's edges (k -+ 1/2) / 255, the end bins taking the tails, so that the 256
    probabilities sum to 1 and bits per dimension compare with the literature. The mass of an
    inner bin, sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(b - a)), is taken in
    logs, which stays finite however far the bin is from the mean."""
    centred = x.float() - torch.sigmoid(logits.float())
    plus, minus = (centred + 0.5 / 255) / scale, (centred - 0.5 / 255) / scale
    log_below_plus = -F.softplus(-plus)  # log sigmoid(plus): the mass of bin 0
    log_above_minus = -F.softplus(minus)  # log sigmoid(-minus): the mass of bin 255
    log_inner = log_below_plus + log_above_minus + math.log(-math.expm1(-1 / (255 * scale)))
    log_prob = torch.where(x < 0.5 / 255, log_below_plus, torch.where(x > 1 - 0.5 / 255, log_above_minus, log_inner))
    return -_masked_sum(log_prob, mask)
