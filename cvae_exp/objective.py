"""Objectives: what a model is trained to minimise, chosen by the config node `loss`
(`loss._target_`; its other keys are the objective's arguments).

The protocol: `objective(model, x, condition, mask, step)` runs the model's forward pass
on a batch and returns a LossOutput: the loss, its named terms (each a scalar, logged as
train/<name>, val/<name>, test/<name>; "loss" among them) and the model's output.
`step` is the optimiser step in training and None in validation and test, which use the
objective as configured (no warm-up). `schedule(step)` names the values that change with
the step (logged under train/ once per epoch), and `log_likelihood(x, logits, mask)` is
log p(x | z, c) for the likelihood estimate (cvae_exp/likelihood.py). A new objective is
one class with this protocol plus one YAML file in configs/loss/ (docs/extending.md).
The densities are in cvae_exp/distributions.py.
"""

from dataclasses import dataclass
from typing import Any

import torch

from cvae_exp.distributions import bernoulli_nll, discretized_logistic_nll, gaussian_nll, gaussian_nll_constant
from cvae_exp.schema import LIKELIHOODS, ELBOConfig


@dataclass
class LossOutput:
    """What an objective returns for a batch (pythae's output contract)."""

    loss: torch.Tensor  # the scalar the optimiser minimises
    terms: dict[str, torch.Tensor]  # named scalars, logged by the LightningModule; "loss" among them
    output: Any  # the model's forward output (cvae_exp/models/cvae.py: CVAEOutput)


class ELBO:
    """Negative ELBO with a beta weight and an optional linear KL warm-up (beta-VAE when
    beta != 1): terms loss = recon + beta * kl, recon and kl, each averaged over the batch.
    The likelihood: a Gaussian of variance `var` (without its constant), a Bernoulli, or a
    logistic of `scale` discretised to 8-bit pixel values (cvae_exp/distributions.py).

    `beta_at(step)` rises linearly from 0 to `beta` over `warmup_steps` optimiser steps.
    The KL term comes from the model's prior (cvae_exp/models/priors.py); the likelihood
    term covers the target pixels (`mask`, from the task; None: the whole image).
    """

    LIKELIHOODS = LIKELIHOODS

    def __init__(
        self,
        likelihood: str = ELBOConfig.likelihood,
        var: float = ELBOConfig.var,
        scale: float = ELBOConfig.scale,
        beta: float = ELBOConfig.beta,
        warmup_steps: int = ELBOConfig.warmup_steps,
    ):
        if likelihood not in self.LIKELIHOODS:
            raise ValueError(f"loss.likelihood={likelihood!r} is not one of {self.LIKELIHOODS}")
        self.likelihood, self.var, self.scale, self.beta, self.warmup_steps = likelihood, var, scale, beta, warmup_steps

    def beta_at(self, step: int) -> float:
        if self.warmup_steps <= 0:
            return self.beta
        return self.beta * min(1.0, step / self.warmup_steps)

    def schedule(self, step: int) -> dict[str, float]:
        return {"beta": self.beta_at(step)}

    def reconstruction(self, x: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.likelihood == "gaussian":
            return gaussian_nll(x, logits, self.var, mask)
        if self.likelihood == "logistic":
            return discretized_logistic_nll(x, logits, self.scale, mask)
        return bernoulli_nll(x, logits, mask)

    def log_likelihood(self, x: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """log p(x | z, c) per image over the target pixels, the Gaussian's constant included."""
        log_likelihood = -self.reconstruction(x, logits, mask)
        if self.likelihood == "gaussian":
            pixels = x[0].numel() if mask is None else mask.flatten(1).sum(dim=1)
            log_likelihood = log_likelihood - gaussian_nll_constant(pixels, self.var)
        return log_likelihood

    def terms(self, x, logits, kl, beta: float, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The batch means of the terms, from the decoder's logits and the per-image KL."""
        recon = self.reconstruction(x, logits, mask).mean()
        kl = kl.mean()
        return {"loss": recon + beta * kl, "recon": recon, "kl": kl}

    def __call__(self, model, x, condition, mask: torch.Tensor | None = None, step: int | None = None) -> LossOutput:
        output = model(x, condition)
        terms = self.terms(x, output.logits, output.kl, self.beta if step is None else self.beta_at(step), mask)
        return LossOutput(terms["loss"], terms, output)
