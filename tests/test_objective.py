"""Pin every objective formula against torch.distributions or a Monte Carlo estimate."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from cvae_exp.distributions import (
    bernoulli_nll,
    discretized_logistic_nll,
    gaussian_kl,
    gaussian_nll,
    gaussian_nll_constant,
)
from cvae_exp.models.cvae import reparameterize
from cvae_exp.objective import ELBO

IMAGE_SHAPE = (1, 6, 5)


@pytest.fixture
def posterior() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(3, 4, generator=generator)
    logvar = torch.randn(3, 4, generator=generator)
    return mu, logvar


@pytest.fixture
def images_and_logits() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(5, *IMAGE_SHAPE, generator=generator)
    logits = 3 * torch.randn(5, *IMAGE_SHAPE, generator=generator)
    return images, logits


def reference_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    posterior = Normal(mu, torch.exp(0.5 * logvar))
    return kl_divergence(posterior, Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)


def test_gaussian_kl_matches_torch_distributions(posterior):
    torch.testing.assert_close(gaussian_kl(*posterior), reference_kl(*posterior))


def test_gaussian_kl_matches_monte_carlo_estimate(posterior):
    mu, logvar = (tensor.double() for tensor in posterior)
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    z = q.sample((200_000,))
    log_ratio = (q.log_prob(z) - p.log_prob(z)).sum(-1)  # (samples, rows)
    estimate = log_ratio.mean(0)
    standard_error = log_ratio.std(0) / math.sqrt(len(log_ratio))
    error = (gaussian_kl(*posterior).double() - estimate).abs()
    assert (error < 5 * standard_error + 1e-5).all(), (error, standard_error)


@pytest.mark.parametrize("var", [0.1, 0.5, 2.0])
def test_gaussian_nll_plus_constant_is_normal_log_likelihood(images_and_logits, var):
    images, logits = images_and_logits
    log_likelihood = Normal(torch.sigmoid(logits), math.sqrt(var)).log_prob(images).sum(dim=(1, 2, 3))
    num_pixels = math.prod(IMAGE_SHAPE)
    torch.testing.assert_close(
        gaussian_nll(images, logits, var) + gaussian_nll_constant(num_pixels, var), -log_likelihood
    )


def test_gaussian_nll_with_variance_half_is_squared_error(images_and_logits):
    images, logits = images_and_logits
    squared_error = (images - torch.sigmoid(logits)).pow(2).sum(dim=(1, 2, 3))
    torch.testing.assert_close(gaussian_nll(images, logits, var=0.5), squared_error)


def test_bernoulli_nll_matches_torch_distributions(images_and_logits):
    _, logits = images_and_logits
    binary = torch.bernoulli(torch.full_like(logits, 0.5), generator=torch.Generator().manual_seed(2))
    expected = -Bernoulli(logits=logits).log_prob(binary).sum(dim=(1, 2, 3))
    torch.testing.assert_close(bernoulli_nll(binary, logits), expected)


def test_bernoulli_nll_is_exact_for_extreme_logits():
    logits = torch.tensor([80.0, -80.0, 80.0, -80.0]).view(4, 1, 1, 1)
    binary = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(4, 1, 1, 1)
    # Confident and right costs ~e^-80; confident and wrong costs ~80 nats.
    torch.testing.assert_close(bernoulli_nll(binary, logits), torch.tensor([0.0, 0.0, 80.0, 80.0]))


def test_bernoulli_nll_is_finite_under_bf16_autocast(images_and_logits):
    _, logits = images_and_logits
    logits = torch.cat([logits, torch.full_like(logits[:1], 80.0), torch.full_like(logits[:1], -80.0)]).bfloat16()
    binary = torch.bernoulli(torch.full(logits.shape, 0.5), generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nll = bernoulli_nll(binary, logits)
    assert nll.dtype == torch.float32 and torch.isfinite(nll).all()
    expected = -Bernoulli(logits=logits.float()).log_prob(binary).sum(dim=(1, 2, 3))
    torch.testing.assert_close(nll, expected)


def test_reparameterize_gradients_are_analytic(posterior, monkeypatch):
    mu, logvar = (tensor.clone().requires_grad_() for tensor in posterior)
    eps = torch.randn_like(mu)
    monkeypatch.setattr(torch, "randn_like", lambda tensor: eps)
    z = reparameterize(mu, logvar)
    z.sum().backward()
    std = torch.exp(0.5 * logvar.detach())
    torch.testing.assert_close(z.detach(), mu.detach() + eps * std)
    torch.testing.assert_close(mu.grad, torch.ones_like(mu))
    torch.testing.assert_close(logvar.grad, 0.5 * eps * std)
    assert (logvar.grad != 0).all()


def test_reparameterize_samples_have_posterior_mean_and_std():
    torch.manual_seed(0)
    mean, std = torch.tensor([1.0, -2.0, 0.0]), torch.tensor([2.0, 0.5, 1.0])
    num_samples = 100_000
    z = reparameterize(mean.expand(num_samples, 3), (2 * std.log()).expand(num_samples, 3))
    torch.testing.assert_close(z.mean(0), mean, rtol=0, atol=(5 * std / math.sqrt(num_samples)).max().item())
    torch.testing.assert_close(z.std(0), std, rtol=0.02, atol=0)


@pytest.mark.parametrize(("step", "expected_beta"), [(0, 0.0), (5, 1.0), (10, 2.0), (25, 2.0)])
def test_beta_warms_up_linearly(step, expected_beta):
    assert ELBO(beta=2.0, warmup_steps=10).beta_at(step) == pytest.approx(expected_beta)


@pytest.mark.parametrize("step", [0, 7])
def test_beta_without_warmup_is_constant(step):
    assert ELBO(beta=0.3).beta_at(step) == 0.3


def independent_reconstruction(likelihood: str, images: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    if likelihood == "gaussian":  # var 0.5
        return (images - torch.sigmoid(logits)).pow(2).sum(dim=(1, 2, 3))
    if likelihood == "logistic":  # scale 0.05: each pixel's bin mass by the definition
        bins = (images * 255).round().long()
        masses = [
            logistic_bin_probabilities(float(mean), 0.05)[bin_]
            for mean, bin_ in zip(torch.sigmoid(logits).flatten(), bins.flatten())
        ]
        return -torch.stack(masses).log().view(images.shape).sum(dim=(1, 2, 3)).float()
    return -Bernoulli(logits=logits).log_prob(images).sum(dim=(1, 2, 3))


@pytest.mark.parametrize("likelihood", ELBO.LIKELIHOODS)
def test_objective_is_reconstruction_plus_beta_kl(likelihood, images_and_logits):
    images, logits = images_and_logits
    images = {"bernoulli": images.round(), "logistic": (images * 255).round() / 255}.get(likelihood, images)
    mu, logvar = torch.randn(5, 4), torch.randn(5, 4)
    terms = ELBO(likelihood=likelihood, var=0.5).terms(images, logits, gaussian_kl(mu, logvar), beta=0.7)
    recon = independent_reconstruction(likelihood, images, logits).mean()
    kl = reference_kl(mu, logvar).mean()
    torch.testing.assert_close(terms["recon"], recon)
    torch.testing.assert_close(terms["kl"], kl)
    torch.testing.assert_close(terms["loss"], recon + 0.7 * kl)


def test_unknown_likelihood_is_rejected():
    with pytest.raises(ValueError, match="laplace"):
        ELBO(likelihood="laplace")


def logistic_bin_probabilities(mean: float, scale: float) -> torch.Tensor:
    """The 256 bins' masses by the definition, in float64: the logistic's CDF at the bin edges
    (k -+ 1/2) / 255, with the end bins taking the tails."""
    edges = (torch.arange(257, dtype=torch.float64) - 0.5) / 255
    cdf, survival = torch.sigmoid((edges - mean) / scale), torch.sigmoid((mean - edges) / scale)
    cdf[0], cdf[-1], survival[0], survival[-1] = 0.0, 1.0, 1.0, 0.0
    # above the mean, the difference of survival functions: the CDFs there are 1 - tiny and cancel
    above = (edges[:-1] + 0.5 / 255) > mean
    return torch.where(above, survival[:-1] - survival[1:], cdf[1:] - cdf[:-1])


@pytest.mark.parametrize("mean,scale", [(0.5, 0.05), (0.02, 0.01), (0.97, 0.2), (0.3, 0.001)])
def test_the_discretized_logistic_sums_to_one_and_matches_its_definition(mean, scale):
    values = (torch.arange(256, dtype=torch.float32) / 255).view(256, 1, 1, 1)
    logits = torch.logit(torch.tensor(mean)).expand_as(values)
    nll = discretized_logistic_nll(values, logits, scale)
    probabilities = torch.exp(-nll.double())
    assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-5)
    expected = logistic_bin_probabilities(mean, scale)
    far = expected < 1e-300  # bins beyond float64's reach: compare the log where the definition has one
    torch.testing.assert_close(-nll.double()[~far], expected[~far].log(), rtol=1e-4, atol=1e-4)
    assert torch.isfinite(nll).all()  # even a bin 300 scales from the mean has a finite -log P


def test_the_elbo_with_the_logistic_likelihood_is_its_negative_log_probability(images_and_logits):
    images, logits = images_and_logits
    eight_bit = (images * 255).round() / 255
    objective = ELBO(likelihood="logistic", scale=0.1)
    torch.testing.assert_close(
        objective.log_likelihood(eight_bit, logits), -discretized_logistic_nll(eight_bit, logits, 0.1)
    )
