"""The objective: likelihood term + beta * KL per image, averaged over the batch
(its densities are in cvae_exp/distributions.py)."""

import torch

from cvae_exp.distributions import bernoulli_nll, gaussian_nll, gaussian_nll_constant
from cvae_exp.schema import LIKELIHOODS, LOSS_TERMS


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
