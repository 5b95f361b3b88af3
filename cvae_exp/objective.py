"""Objectives: what a model is trained to minimise, chosen by the config node `loss`
(`loss._target_`; its other keys are the objective's arguments).

The protocol: `objective(model, x, condition, mask, step)` runs the model's forward pass
on a batch and returns a LossOutput: the loss, its named terms (each a scalar, logged as
train/<name>, val/<name>, test/<name>; "loss" among them) and the model's output.
`step` is the optimiser step in training and None in validation and test, which use the
objective as configured (no warm-up). `schedule(step)` names the values that change with
the step (logged under train/ once per epoch), and `log_likelihood(x, logits, mask)` is
log p(x | z, c) for the likelihood estimate (cvae_exp/likelihood.py); an optional
`check(model)` refuses, before the run starts, a model the objective cannot train. An
objective with trainable parameters of its own (FactorVAE's discriminator) is an nn.Module
with `optimizer(parameters)`, which builds their optimizer, and `own_loss(result)`, which
they minimise after each step of the model's optimizer (cvae_exp/module.py then optimises
manually). A new objective is one class with this protocol plus one YAML file in
configs/loss/ (docs/extending.md). The packaged ones: the ELBO (beta-VAE), IWAE,
beta-TCVAE, FactorVAE, InfoVAE and VQ-VAE's.
The densities are in cvae_exp/distributions.py.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from cvae_exp.distributions import (
    LOG_2PI,
    bernoulli_nll,
    discretized_logistic_nll,
    gaussian_log_prob,
    gaussian_nll,
    gaussian_nll_constant,
)
from cvae_exp.models.cvae import CVAEOutput
from cvae_exp.models.priors import ConditionalPrior, StandardPrior
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

    def warmup_at(self, step: int | None) -> float:
        """The warm-up's fraction at an optimiser step: 1 without a warm-up, and in validation and test (None)."""
        if step is None or self.warmup_steps <= 0:
            return 1.0
        return min(1.0, step / self.warmup_steps)

    def beta_at(self, step: int | None) -> float:
        return self.beta * self.warmup_at(step)

    def schedule(self, step: int) -> dict[str, float]:
        return {"beta": self.beta_at(step)}

    def reconstruction(self, x: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.likelihood == "gaussian":
            return gaussian_nll(x, logits, self.var, mask)
        if self.likelihood == "logistic":
            return discretized_logistic_nll(x, logits, self.scale, mask)
        return bernoulli_nll(x, logits, mask)

    def check(self, model) -> None:
        """Refuse (ValueError) a model this objective cannot train: the ELBO trains every one with a
        Gaussian latent."""
        _require_gaussian(model, "elbo")

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
        terms = self.terms(x, output.logits, output.kl, self.beta_at(step), mask)
        return LossOutput(terms["loss"], terms, output)


def own_parameters(objective) -> bool:
    """Whether an objective has trainable parameters of its own, trained by its own optimizer."""
    return isinstance(objective, nn.Module) and any(True for _ in objective.parameters())


def _require_gaussian(model, objective: str) -> None:
    if getattr(model, "discrete_latent", False):
        raise ValueError(
            f"loss={objective} trains a Gaussian latent, and model={type(model).__name__.lower()} quantises its "
            "latent: train it with loss=vqvae"
        )


def _require_one_layer(model, objective: str) -> None:
    """For objectives whose terms treat z as one Gaussian layer (its dimensions' marginals, the prior's samples)."""
    if getattr(model, "stochastic_layers", 1) > 1:
        raise ValueError(
            f"loss={objective} treats z as one Gaussian layer, and model=hierarchical has "
            f"{model.stochastic_layers}: train it with loss=elbo or loss=iwae"
        )


def _require_latent(model, objective: str) -> None:
    _require_gaussian(model, objective)
    if not model.has_latent:
        raise ValueError(f"loss={objective} needs a latent variable; prior=none has none (pick another prior)")


class IWAE(ELBO):
    """The importance-weighted bound of Burda et al. (2016) with `samples` = K draws of
    z ~ q(z | x, c): loss = -log 1/K sum_k p(x | z_k, c) p(z_k | c)^beta / q(z_k | x, c)^beta,
    the plain reparameterised gradient. K = 1 is the ELBO with the one-sample KL. The terms
    recon and kl are the K samples' means, to compare with the ELBO's; the Gaussian
    likelihood leaves out its constant, as the ELBO's recon does."""

    def __init__(self, samples: int = 5, **elbo):
        if not (isinstance(samples, int) and samples >= 1):
            raise ValueError(f"loss.samples={samples!r} must be an integer >= 1 (importance samples per image)")
        super().__init__(**elbo)
        self.samples = samples

    def check(self, model) -> None:
        _require_latent(model, "iwae")

    def __call__(self, model, x, condition, mask=None, step=None) -> LossOutput:
        posterior = model.encode(x, condition)
        z = posterior.rsample(self.samples)  # (K, N, D)
        repeat = lambda t: None if t is None else t.repeat(self.samples, *[1] * (t.dim() - 1))  # noqa: E731
        logits = model.decode_logits(z.flatten(0, 1), repeat(condition))
        recon = self.reconstruction(repeat(x), logits, repeat(mask)).view(self.samples, len(x))
        kl = posterior.log_prob(z) - model.log_prior(z, condition)  # (K, N)
        log_weights = -recon - self.beta_at(step) * kl
        bound = torch.logsumexp(log_weights, dim=0) - math.log(self.samples)
        loss = -bound.mean()
        output = CVAEOutput(logits.view(self.samples, *x.shape)[0], posterior.mean, posterior.logvar, z[0], kl[0])
        return LossOutput(loss, {"loss": loss, "recon": recon.mean(), "kl": kl.mean()}, output)


def _pairwise_log_density(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log q(z_i,d | x_j, c_j) for every pair of a batch's rows: (N, N, D), [i, j, d]."""
    z, mean, logvar = z.float()[:, None], mean.float()[None], logvar.float()[None]
    return -0.5 * ((z - mean).pow(2) / logvar.exp() + logvar + LOG_2PI)


class BetaTCVAE(ELBO):
    """beta-TCVAE (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs"): the KL
    term split into the index-code mutual information, the total correlation of q(z) and
    the dimension-wise KL, loss = recon + alpha mi + beta tc + gamma dimwise_kl (the warm-up
    scales all three). q(z) and its marginals are estimated on the batch, each image's z
    against every row's posterior: minibatch weighted sampling (`estimator: mws`, the
    paper's and its reference code's, log q(z) = logsumexp_j log q(z | x_j) - log(N M)) or
    minibatch stratified sampling (`mss`, the paper's appendix: nearly unbiased terms; mws's
    terms carry offsets of order (D - 1) log N). N is `dataset_size`, the training set's
    size (set by the module from its data when null). The three terms sum to the ELBO's
    one-sample KL whatever the estimator; the dimension-wise KL needs a prior with
    independent dimensions, a diagonal Gaussian (prior=standard or conditional)."""

    ESTIMATORS = ("mws", "mss")

    def __init__(
        self,
        alpha: float = 1.0,
        gamma: float = 1.0,
        estimator: str = "mws",
        dataset_size: int | None = None,
        beta: float = 6.0,
        **elbo,
    ):
        if estimator not in self.ESTIMATORS:
            raise ValueError(f"loss.estimator={estimator!r} is not one of {self.ESTIMATORS}")
        for name, value in (("alpha", alpha), ("gamma", gamma), ("beta", beta)):
            if value < 0:
                raise ValueError(f"loss.{name}={value!r} must be >= 0")
        if dataset_size is not None and dataset_size < 2:
            raise ValueError(f"loss.dataset_size={dataset_size!r} must be an integer >= 2 (null: the training set's)")
        super().__init__(beta=beta, **elbo)
        self.alpha, self.gamma, self.estimator, self.dataset_size = alpha, gamma, estimator, dataset_size

    def schedule(self, step: int) -> dict[str, float]:
        fraction = self.warmup_at(step)
        return {"alpha": self.alpha * fraction, "beta": self.beta * fraction, "gamma": self.gamma * fraction}

    def log_weights(self, batch: int) -> torch.Tensor | float:
        """log of each pair's weight in the estimate of q(z_i): a constant for mws, a
        (M, M) matrix for mss (row i: z_i's sample; its own posterior, another's)."""
        n = self.dataset_size
        if self.estimator == "mws":
            return -math.log(n * batch)
        if batch < 2:
            return -math.log(n)
        # the paper's weights (Chen et al., appendix C.2): 1/N for z_i's own posterior, (N - M)/(N M)
        # for one other row, 1/M for the remaining M - 1, where M = batch - 1; each row sums to 1
        m, rows = batch - 1, torch.arange(batch)
        weights = torch.full((batch, batch), 1 / m)
        weights[rows, rows] = 1 / n
        weights[rows, (rows + 1) % batch] = (n - m) / (n * m)
        return weights.log()

    def decomposition(self, z, mean, logvar, log_prior) -> dict[str, torch.Tensor]:
        """Per-image mi, tc and dimwise_kl at the batch's samples z, from the posteriors
        (mean, logvar) and log p(z_i | c_i): each (N,)."""
        if self.dataset_size is None:
            raise ValueError("loss.dataset_size is null and no training data set it: give loss.dataset_size=<N>")
        pairs = _pairwise_log_density(z, mean, logvar)  # (N, N, D)
        weights = self.log_weights(len(z))
        if isinstance(weights, torch.Tensor):
            weights = weights.to(pairs.device)
            log_qz = torch.logsumexp(pairs.sum(2) + weights, dim=1)
            log_marginals = torch.logsumexp(pairs + weights[..., None], dim=1).sum(1)
        else:
            log_qz = torch.logsumexp(pairs.sum(2), dim=1) + weights
            log_marginals = (torch.logsumexp(pairs, dim=1) + weights).sum(1)
        log_posterior = gaussian_log_prob(z, mean, logvar)
        return {
            "mi": log_posterior - log_qz,
            "tc": log_qz - log_marginals,
            "dimwise_kl": log_marginals - log_prior,
        }

    def check(self, model) -> None:
        _require_latent(model, "beta_tcvae")
        _require_one_layer(model, "beta_tcvae")
        if type(model.prior) not in (StandardPrior, ConditionalPrior):
            raise ValueError(
                "loss=beta_tcvae splits off a dimension-wise KL, which needs a prior with independent dimensions: "
                f"prior=standard or prior=conditional, not {type(model.prior).__name__}"
            )

    def __call__(self, model, x, condition, mask=None, step=None) -> LossOutput:
        output = model(x, condition)
        parts = self.decomposition(output.z, output.mu, output.logvar, model.log_prior(output.z, condition))
        recon = self.reconstruction(x, output.logits, mask).mean()
        means = {name: value.mean() for name, value in parts.items()}
        weighted = self.alpha * means["mi"] + self.beta * means["tc"] + self.gamma * means["dimwise_kl"]
        loss = recon + self.warmup_at(step) * weighted
        kl = output.kl.mean()
        return LossOutput(loss, {"loss": loss, "recon": recon, "kl": kl, **means}, output)


def permute_dimensions(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each latent dimension shuffled across the batch on its own: draws from the product of
    the batch's marginals (Kim and Mnih 2018, Algorithm 1)."""
    order = torch.rand(z.shape, generator=generator).to(z.device).argsort(dim=0)
    return z.gather(0, order)


class FactorVAE(nn.Module, ELBO):
    """FactorVAE (Kim and Mnih 2018, "Disentangling by Factorising"): loss = recon + beta kl
    + gamma tc, where tc = E log D(z) / (1 - D(z)) is a discriminator's density-ratio
    estimate of the total correlation of q(z). The discriminator (an MLP of `layers` linear
    layers of `hidden` units, two logits: "from q(z)", "from the product of its marginals")
    has its own optimizer and loss, `discriminator` = the cross-entropy of telling the
    batch's z from the same z with each dimension permuted across the batch; it is trained
    after every step of the model's. The paper draws the permuted z from a second batch;
    this one permutes the batch's own (as PyTorch-VAE does), so each step reads one batch."""

    def __init__(
        self,
        latent_dim: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        gamma: float = 6.4,
        hidden: int = 1000,
        layers: int = 6,
        **elbo,
    ):
        nn.Module.__init__(self)
        ELBO.__init__(self, **elbo)
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma < 0:
            raise ValueError(f"loss.gamma={gamma!r} must be a number >= 0 (the total correlation's weight)")
        if isinstance(hidden, bool) or not (isinstance(hidden, int) and hidden >= 1):
            raise ValueError(f"loss.hidden={hidden!r} must be an integer >= 1 (the discriminator's width)")
        if isinstance(layers, bool) or not (isinstance(layers, int) and layers >= 2):
            raise ValueError(f"loss.layers={layers!r} must be an integer >= 2 (the discriminator's linear layers)")
        self.gamma = gamma
        self.optimizer = optimizer  # a factory: optimizer(parameters)
        widths = [latent_dim] + [hidden] * (layers - 1)
        blocks = [module for a, b in zip(widths, widths[1:]) for module in (nn.Linear(a, b), nn.LeakyReLU(0.2))]
        self.discriminator = nn.Sequential(*blocks, nn.Linear(widths[-1], 2))

    def schedule(self, step: int) -> dict[str, float]:
        fraction = self.warmup_at(step)
        return {"beta": self.beta * fraction, "gamma": self.gamma * fraction}

    def check(self, model) -> None:
        _require_latent(model, "factorvae")
        _require_one_layer(model, "factorvae")
        if self.discriminator[0].in_features != model.latent_dim:
            raise ValueError(
                f"loss.latent_dim={self.discriminator[0].in_features} differs from the model's latent_dim="
                f"{model.latent_dim} (configs/loss/factorvae.yaml reads it from model.latent_dim)"
            )

    def total_correlation(self, z: torch.Tensor) -> torch.Tensor:
        """The discriminator's estimate of log q(z) / prod_d q(z_d) per row: its logit difference."""
        logits = self.discriminator(z)
        return logits[:, 0] - logits[:, 1]

    def discriminator_loss(self, z: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the discriminator on z (class 0) and its permutation (class 1), z detached."""
        z = z.detach()
        joint, product = self.discriminator(z), self.discriminator(permute_dimensions(z))
        zeros = torch.zeros(len(z), dtype=torch.long, device=z.device)
        return 0.5 * (F.cross_entropy(joint, zeros) + F.cross_entropy(product, zeros + 1))

    def own_loss(self, result: LossOutput) -> torch.Tensor:
        return result.terms["discriminator"]

    def forward(self, model, x, condition, mask=None, step=None) -> LossOutput:
        output = model(x, condition)
        recon = self.reconstruction(x, output.logits, mask).mean()
        kl = output.kl.mean()
        tc = self.total_correlation(output.z).mean()
        loss = recon + self.warmup_at(step) * (self.beta * kl + self.gamma * tc)
        terms = {"loss": loss, "recon": recon, "kl": kl, "tc": tc, "discriminator": self.discriminator_loss(output.z)}
        return LossOutput(loss, terms, output)


def mmd(x: torch.Tensor, y: torch.Tensor, kernel: str, bandwidth: float) -> torch.Tensor:
    """The unbiased estimate of MMD^2 between the samples x (N, D) and y (M, D) (Gretton et al.
    2012), with k(a, b) = exp(-|a - b|^2 / C) (rbf) or C / (C + |a - b|^2) (imq), C = 2 D bandwidth^2."""
    scale = 2 * x.shape[1] * bandwidth**2

    def gram(a, b):
        distances = torch.cdist(a.float(), b.float()).pow(2)
        return torch.exp(-distances / scale) if kernel == "rbf" else scale / (scale + distances)

    def within(a):
        n = len(a)
        return (gram(a, a).sum() - gram(a, a).diagonal().sum()) / (n * (n - 1))

    return within(x) + within(y) - 2 * gram(x, y).mean()


class InfoVAE(ELBO):
    """InfoVAE with the MMD divergence (Zhao et al. 2019, "InfoVAE"; MMD-VAE at alpha = 1):
    loss = recon + (1 - alpha) beta kl + (alpha + lambda - 1) mmd, where mmd is the MMD^2
    between the batch's z ~ q(z | x, c) and as many draws of the prior p(z | c_i), the
    aggregate posterior against the prior's marginal over the batch's conditions."""

    KERNELS = ("rbf", "imq")

    def __init__(
        self, alpha: float = 0.0, mmd_lambda: float = 1000.0, kernel: str = "rbf", bandwidth: float = 1.0, **elbo
    ):
        if kernel not in self.KERNELS:
            raise ValueError(f"loss.kernel={kernel!r} is not one of {self.KERNELS}")
        if alpha > 1:
            raise ValueError(f"loss.alpha={alpha!r} must be <= 1 (the KL's weight is 1 - alpha)")
        if alpha + mmd_lambda - 1 < 0:
            raise ValueError(
                f"loss.alpha + loss.mmd_lambda - 1 = {alpha + mmd_lambda - 1!r} must be >= 0 (the MMD's weight)"
            )
        if bandwidth <= 0:
            raise ValueError(f"loss.bandwidth={bandwidth!r} must be > 0")
        super().__init__(**elbo)
        self.alpha, self.mmd_lambda, self.kernel, self.bandwidth = alpha, mmd_lambda, kernel, bandwidth

    def check(self, model) -> None:
        _require_latent(model, "infovae")
        _require_one_layer(model, "infovae")

    def __call__(self, model, x, condition, mask=None, step=None) -> LossOutput:
        output = model(x, condition)
        prior_z = model.prior.sample(condition)
        divergence = mmd(output.z, prior_z, self.kernel, self.bandwidth)
        recon = self.reconstruction(x, output.logits, mask).mean()
        kl = output.kl.mean()
        loss = recon + (1 - self.alpha) * self.beta_at(step) * kl + (self.alpha + self.mmd_lambda - 1) * divergence
        return LossOutput(loss, {"loss": loss, "recon": recon, "kl": kl, "mmd": divergence}, output)


class VectorQuantized(ELBO):
    """VQ-VAE's objective (van den Oord et al. 2017) for a model with a quantised latent
    (cvae_exp/models/vqvae.py): loss = recon + codebook + commitment * commitment term + beta * kl,
    each averaged over the batch. kl = -log p(codes | c) is KL(q || p) for the point-mass
    posterior; its gradient reaches only the prior over codes, which it trains. neg_elbo =
    -log p(x | z_q, c) + kl (the Gaussian's constant included) bounds -log p(x | c)."""

    def __init__(self, commitment: float = 0.25, **elbo):
        if commitment < 0:
            raise ValueError(f"loss.commitment={commitment!r} must be >= 0")
        super().__init__(**elbo)
        self.commitment = commitment

    def check(self, model) -> None:
        if not getattr(model, "discrete_latent", False):
            raise ValueError(
                f"loss=vqvae trains a model with a quantised latent (model=vqvae), not {type(model).__name__}"
            )

    def __call__(self, model, x, condition, mask=None, step=None) -> LossOutput:
        output = model(x, condition)
        recon = self.reconstruction(x, output.logits, mask).mean()
        kl, codebook, commitment = output.kl.mean(), output.codebook.mean(), output.commitment.mean()
        loss = recon + codebook + self.commitment * commitment + self.beta_at(step) * kl
        neg_elbo = -self.log_likelihood(x, output.logits, mask).mean() + kl
        terms = {"loss": loss, "recon": recon, "kl": kl, "codebook": codebook, "commitment": commitment}
        return LossOutput(loss, terms | {"neg_elbo": neg_elbo}, output)
