"""The objective: likelihood term + beta * KL per image, averaged over the batch."""

import math

import torch
import torch.nn.functional as F

from cvae_exp.config import LIKELIHOODS, LOSS_TERMS


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) in closed form, one value per row."""
    mu, logvar = mu.float(), logvar.float()
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def gaussian_nll(x: torch.Tensor, logits: torch.Tensor, var: float) -> torch.Tensor:
    """||x - sigmoid(logits)||^2 / (2 var) per image: -log N(x; mean, var I) without
    its constant D/2 log(2 pi var), as the report's loss writes it."""
    residual = x.float() - torch.sigmoid(logits.float())
    return residual.pow(2).flatten(1).sum(dim=1) / (2.0 * var)


def bernoulli_nll(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """-log Bernoulli(x; sigmoid(logits)) per image, from logits (stable under autocast)."""
    return F.binary_cross_entropy_with_logits(logits.float(), x.float(), reduction="none").flatten(1).sum(dim=1)


def gaussian_nll_constant(num_pixels: int, var: float) -> float:
    """The constant `gaussian_nll` leaves out; add it to compare with log-likelihoods."""
    return 0.5 * num_pixels * math.log(2 * math.pi * var)


class Objective:
    """Negative ELBO with a beta weight and an optional linear KL warm-up.

    `beta_at(step)` rises linearly from 0 to `beta` over `warmup_steps` optimiser steps.
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

    def reconstruction(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.likelihood == "gaussian":
            return gaussian_nll(x, logits, self.var)
        return bernoulli_nll(x, logits)

    def __call__(self, x, logits, mu, logvar, beta: float) -> dict[str, torch.Tensor]:
        recon = self.reconstruction(x, logits).mean()
        kl = gaussian_kl(mu, logvar).mean()
        return dict(zip(self.TERMS, (recon + beta * kl, recon, kl)))
