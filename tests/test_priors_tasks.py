"""Priors, tasks, the masked objective and the importance-sampled likelihood, each pinned
against an independent computation: torch.distributions, numpy, closed forms (a
linear-Gaussian model's exact marginal) or Monte Carlo estimates."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    kl_divergence,
)

import cvae_exp.likelihood as likelihood
from cvae_exp.distributions import diagonal_mixture_log_prob, gaussian_kl, gaussian_kl_between, gaussian_log_prob
from cvae_exp.likelihood import importance_sampled_nll
from cvae_exp.models.conditioning import Conditioning
from cvae_exp.models.cvae import DiagonalGaussian
from cvae_exp.models.priors import ConditionalPrior, MixturePrior, NoLatent, StandardPrior
from cvae_exp.objective import ELBO
from cvae_exp.tasks import HIDDEN, InpaintTask, QuadrantTask, SuperresTask

CONFIGS = Path(__file__).parents[1] / "configs"
NUM_CLASSES = 10
IMAGE_SHAPE = (1, 28, 28)
LATENT = 3


def normal(mu: torch.Tensor, logvar: torch.Tensor) -> Normal:
    return Normal(mu, torch.exp(0.5 * logvar))


def random_gaussians(seed: int, *shape: int) -> tuple[torch.Tensor, ...]:
    """Two diagonal Gaussians (mu, logvar, prior_mu, prior_logvar) of the given shape."""
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=generator) for _ in range(4))


def images(count: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, *IMAGE_SHAPE, generator=torch.Generator().manual_seed(seed))


def assert_within_standard_errors(estimate, truth, standard_error, how_many: float = 5.0):
    error = (torch.as_tensor(estimate, dtype=torch.float64) - torch.as_tensor(truth, dtype=torch.float64)).abs()
    bound = how_many * torch.as_tensor(standard_error, dtype=torch.float64) + 1e-6
    assert (error < bound).all(), (error, bound)


# 1. Closed-form Gaussian densities.


def test_gaussian_kl_between_matches_torch_distributions():
    """gaussian_kl_between == torch's KL(Normal || Normal), summed over latent dimensions."""
    mu, logvar, prior_mu, prior_logvar = random_gaussians(0, 5, 4)
    expected = kl_divergence(normal(mu, logvar), normal(prior_mu, prior_logvar)).sum(-1)
    torch.testing.assert_close(gaussian_kl_between(mu, logvar, prior_mu, prior_logvar), expected)


def test_gaussian_kl_between_matches_monte_carlo_estimate():
    """gaussian_kl_between == E_q[log q - log p] estimated from 200k samples (within 5 standard errors)."""
    parameters = random_gaussians(1, 3, 4)
    mu, logvar, prior_mu, prior_logvar = (tensor.double() for tensor in parameters)
    q, p = normal(mu, logvar), normal(prior_mu, prior_logvar)
    z = q.sample((200_000,))
    log_ratio = (q.log_prob(z) - p.log_prob(z)).sum(-1)
    assert_within_standard_errors(
        gaussian_kl_between(*parameters), log_ratio.mean(0), log_ratio.std(0) / math.sqrt(len(z))
    )


def test_gaussian_kl_between_a_standard_prior_is_gaussian_kl():
    """With prior N(0, I) the general KL is the standard one."""
    mu, logvar, _, _ = random_gaussians(2, 5, 4)
    torch.testing.assert_close(
        gaussian_kl_between(mu, logvar, torch.zeros_like(mu), torch.zeros_like(mu)), gaussian_kl(mu, logvar)
    )


def test_gaussian_log_prob_matches_torch_distributions_with_broadcasting():
    """gaussian_log_prob == Normal.log_prob summed over the last dimension, for z of shape
    (N, D) and for z of shape (K, N, D) against (N, D) parameters."""
    mu, logvar, _, _ = random_gaussians(3, 5, 4)
    z = torch.randn(7, 5, 4, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(gaussian_log_prob(z[0], mu, logvar), normal(mu, logvar).log_prob(z[0]).sum(-1))
    broadcast = gaussian_log_prob(z, mu, logvar)
    assert broadcast.shape == (7, 5)
    torch.testing.assert_close(broadcast, normal(mu, logvar).log_prob(z).sum(-1))


# 2. ConditionalPrior.

CONDITIONS = pytest.mark.parametrize("condition_shape", [None, IMAGE_SHAPE], ids=["labels", "image"])


def conditions(condition_shape, count: int = 6) -> torch.Tensor:
    if condition_shape is None:
        return torch.arange(count) % NUM_CLASSES
    return images(count, seed=5) * 2 - 1


def conditional_prior(condition_shape, randomise: bool) -> ConditionalPrior:
    torch.manual_seed(0)
    prior = ConditionalPrior(LATENT, Conditioning(NUM_CLASSES, condition_shape), hidden_dims=[8])
    if randomise:
        torch.nn.init.normal_(prior.heads.weight, std=0.5)
        torch.nn.init.normal_(prior.heads.bias, std=0.5)
    return prior


@CONDITIONS
def test_conditional_prior_starts_as_the_standard_normal(condition_shape):
    """At initialisation parameters_for is (0, 0) for every condition, so the KL is gaussian_kl."""
    prior, condition = conditional_prior(condition_shape, randomise=False), conditions(condition_shape)
    mu, logvar, _, _ = random_gaussians(6, len(condition), LATENT)
    prior_mu, prior_logvar = prior.parameters_for(condition)
    assert torch.equal(prior_mu, torch.zeros(len(condition), LATENT)) and torch.equal(
        prior_logvar, torch.zeros(len(condition), LATENT)
    )
    with torch.no_grad():
        torch.testing.assert_close(prior.kl(mu, logvar, mu, condition), gaussian_kl(mu, logvar))


@CONDITIONS
def test_conditional_prior_kl_and_log_prob_match_torch_distributions(condition_shape):
    """With random heads: kl == KL(q || Normal(*parameters_for(c))) and log_prob == its
    Normal.log_prob, both from torch.distributions; the prior differs across conditions."""
    prior, condition = conditional_prior(condition_shape, randomise=True), conditions(condition_shape)
    mu, logvar, z, _ = random_gaussians(7, len(condition), LATENT)
    with torch.no_grad():
        prior_mu, prior_logvar = prior.parameters_for(condition)
        assert not torch.allclose(prior_mu[0], prior_mu[1]) and not torch.allclose(prior_logvar[0], prior_logvar[1])
        p = normal(prior_mu, prior_logvar)
        torch.testing.assert_close(prior.kl(mu, logvar, z, condition), kl_divergence(normal(mu, logvar), p).sum(-1))
        torch.testing.assert_close(prior.log_prob(z, condition), p.log_prob(z).sum(-1))


@CONDITIONS
def test_conditional_prior_samples_have_its_mean_and_variance(condition_shape):
    """sample() over 20k copies of each condition: per-dimension mean and variance match
    parameters_for within 5 standard errors."""
    prior, condition = conditional_prior(condition_shape, randomise=True), conditions(condition_shape, count=3)
    copies = 20_000
    with torch.no_grad():
        mu, logvar = prior.parameters_for(condition)
        torch.manual_seed(1)
        z = prior.sample(condition.repeat_interleave(copies, dim=0)).double().view(len(condition), copies, LATENT)
    variance = logvar.double().exp()
    assert_within_standard_errors(z.mean(1), mu, variance.sqrt() / math.sqrt(copies))
    assert_within_standard_errors(z.var(1), variance, variance * math.sqrt(2 / (copies - 1)))


# 3. MixturePrior.


def mixture_prior(components: int = 4) -> MixturePrior:
    torch.manual_seed(0)
    prior = MixturePrior(LATENT, Conditioning(NUM_CLASSES), num_components=components)
    with torch.no_grad():
        torch.nn.init.normal_(prior.means, std=1.5)
        torch.nn.init.normal_(prior.logvars, mean=0.5, std=0.5)
        torch.nn.init.normal_(prior.weight_logits)
    return prior


def torch_mixture(prior: MixturePrior) -> MixtureSameFamily:
    means, logvars, logits = (
        parameter.detach().double() for parameter in (prior.means, prior.logvars, prior.weight_logits)
    )
    return MixtureSameFamily(Categorical(logits=logits), Independent(normal(means, logvars), 1))


def test_mixture_prior_has_one_component_per_class_by_default():
    prior = MixturePrior(LATENT, Conditioning(NUM_CLASSES))
    assert prior.means.shape == prior.logvars.shape == (NUM_CLASSES, LATENT) and prior.weight_logits.shape == (
        NUM_CLASSES,
    )


def test_mixture_prior_log_prob_matches_torch_mixture_same_family():
    """log_prob == MixtureSameFamily(Categorical, Independent(Normal)).log_prob, for z of
    shape (N, D) and (K, N, D)."""
    prior = mixture_prior()
    z = 2 * torch.randn(5, 6, LATENT, generator=torch.Generator().manual_seed(1))
    condition = torch.zeros(6, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(
            prior.log_prob(z[0], condition), torch_mixture(prior).log_prob(z[0].double()).float()
        )
        torch.testing.assert_close(prior.log_prob(z, condition), torch_mixture(prior).log_prob(z.double()).float())


def test_mixture_prior_samples_have_the_mixtures_moments():
    """Mean and per-dimension variance of 200k samples match the mixture's closed-form
    moments (numpy: mean sum pi_k mu_k, variance sum pi_k (sigma_k^2 + mu_k^2) - mean^2)."""
    prior = mixture_prior()
    count = 200_000
    torch.manual_seed(2)
    with torch.no_grad():
        z = prior.sample(torch.zeros(count, dtype=torch.long)).double().numpy()
    weights = np.exp(prior.weight_logits.detach().double().numpy())
    weights /= weights.sum()
    means, variances = prior.means.detach().double().numpy(), np.exp(prior.logvars.detach().double().numpy())
    mean = weights @ means
    variance = weights @ (variances + means**2) - mean**2
    assert z.shape == (count, LATENT)
    assert_within_standard_errors(z.mean(0), mean, np.sqrt(variance / count))
    squared_deviation = (z - z.mean(0)) ** 2
    assert_within_standard_errors(z.var(0), variance, squared_deviation.std(0) / math.sqrt(count))


def test_mixture_prior_kl_is_log_q_minus_log_p_and_averages_to_the_kl():
    """kl(mu, logvar, z, c) == log q(z) - log p(z) from torch.distributions at the given z;
    averaged over 100k z ~ q it matches an independent Monte Carlo KL (other samples,
    torch.distributions densities) within 5 combined standard errors."""
    prior = mixture_prior()
    mu, logvar, z, _ = random_gaussians(3, 4, LATENT)
    condition = torch.zeros(4, dtype=torch.long)
    with torch.no_grad():
        expected = normal(mu.double(), logvar.double()).log_prob(z.double()).sum(-1) - torch_mixture(prior).log_prob(
            z.double()
        )
        torch.testing.assert_close(prior.kl(mu, logvar, z, condition).double(), expected, rtol=1e-5, atol=1e-5)

        q = normal(mu.double(), logvar.double())
        draws = 100_000
        torch.manual_seed(4)
        ours = prior.kl(mu, logvar, q.sample((draws,)).float(), condition).double()  # (draws, N)
        torch.manual_seed(5)
        other = q.sample((draws,))
        reference = q.log_prob(other).sum(-1) - torch_mixture(prior).log_prob(other)
    standard_error = torch.sqrt((ours.var(0) + reference.var(0)) / draws)
    assert_within_standard_errors(ours.mean(0), reference.mean(0), standard_error)
    assert (ours.mean(0) > 0).all()


def test_diagonal_mixture_log_prob_matches_torch_for_shared_and_per_row_components():
    """The expanded-square form equals MixtureSameFamily.log_prob in float64, for components
    shared by all rows (K, D) and one mixture per row (N, K, D), z with a sample dimension."""
    generator = torch.Generator().manual_seed(6)
    z = 2 * torch.randn(5, 6, LATENT, generator=generator)
    log_weights = torch.randn(7, generator=generator).log_softmax(0)
    for shape in [(7, LATENT), (6, 7, LATENT)]:
        means, logvars = 1.5 * torch.randn(*shape, generator=generator), torch.randn(*shape, generator=generator)
        mixture = MixtureSameFamily(
            Categorical(logits=log_weights.double()), Independent(normal(means.double(), logvars.double()), 1)
        )
        torch.testing.assert_close(
            diagonal_mixture_log_prob(z, means, logvars, log_weights).double(),
            mixture.log_prob(z.double()),
            rtol=1e-5,
            atol=1e-5,
        )


# 4. The VampPrior and NoLatent inside a CVAE.

TINY_MLP = {"latent_dim": 4, "encoder": {"hidden_dims": [16]}, "decoder": {"hidden_dims": [16]}}


def load_config(group: str, name: str):
    return OmegaConf.load(CONFIGS / group / f"{name}.yaml")


def vamp_cvae(conditioning: str, pseudo_inputs: int = 5):
    torch.manual_seed(0)
    return instantiate(
        OmegaConf.merge(load_config("model", "mlp"), TINY_MLP),
        conditioning=instantiate(load_config("conditioning", conditioning)),
        prior=instantiate(OmegaConf.merge(load_config("prior", "vamp"), {"num_pseudo_inputs": pseudo_inputs})),
        image_shape=list(IMAGE_SHAPE),
        num_classes=NUM_CLASSES,
    )


@pytest.mark.parametrize("conditioning", ["none", "concat"])
def test_vamp_prior_is_the_uniform_mixture_of_posteriors_at_its_pseudo_inputs(conditioning):
    """log p(z | c) == log of the uniform MixtureSameFamily of q(z | u_k, c), the encoder run on
    each pseudo-input (and each row's label) one at a time; z with a sample dimension."""
    cvae = vamp_cvae(conditioning)
    labels = torch.tensor([0, 3, 7])
    z = torch.randn(4, 3, TINY_MLP["latent_dim"], generator=torch.Generator().manual_seed(7))
    inputs = torch.sigmoid(cvae.prior.pseudo_logits.detach())
    with torch.no_grad():
        for row, label in enumerate(labels):
            posteriors = [cvae.encoder(u[None], label[None]) for u in inputs]
            means, logvars = (torch.cat(part).double() for part in zip(*posteriors))
            mixture = MixtureSameFamily(
                Categorical(logits=torch.zeros(len(inputs), dtype=torch.float64)),
                Independent(normal(means, logvars), 1),
            )
            torch.testing.assert_close(
                cvae.prior.log_prob(z, labels)[:, row].double(),
                mixture.log_prob(z[:, row].double()),
                rtol=1e-5,
                atol=1e-5,
            )


def test_vamp_prior_samples_have_the_mixtures_moments_and_its_pseudo_inputs_learn():
    """Samples (200k, encoder ignoring the label) have the uniform mixture's mean; the KL's
    gradient reaches the pseudo-inputs, and the shared encoder is stored once in the state dict."""
    cvae = vamp_cvae("none", pseudo_inputs=3)
    count = 200_000
    with torch.no_grad():
        means, logvars = cvae.prior.components(torch.zeros(1, dtype=torch.long))
        torch.manual_seed(8)
        z = cvae.prior.sample(torch.zeros(count, dtype=torch.long))
    mean = means.mean(0)
    variance = (logvars.exp() + means**2).mean(0) - mean**2
    assert_within_standard_errors(z.mean(0), mean, torch.sqrt(variance / count))
    output = cvae(images(4), torch.zeros(4, dtype=torch.long))
    output.kl.sum().backward()
    assert cvae.prior.pseudo_logits.grad.abs().sum() > 0
    assert not any(key.startswith("prior.encoder") for key in cvae.state_dict())


def no_latent_cvae(task):
    torch.manual_seed(0)
    return instantiate(
        OmegaConf.merge(load_config("model", "mlp"), TINY_MLP),
        conditioning=instantiate(load_config("conditioning", "concat")),
        prior=instantiate(load_config("prior", "none")),
        image_shape=list(IMAGE_SHAPE),
        num_classes=NUM_CLASSES,
        condition_shape=task.condition_shape(IMAGE_SHAPE),
    )


@pytest.mark.parametrize("likelihood_name", ELBO.LIKELIHOODS)
def test_no_latent_cvae_has_no_encoder_zero_kl_and_an_exact_likelihood(likelihood_name):
    """prior=none: no encoder, z = 0, kl = 0, and importance_sampled_nll (any K) returns the
    exact -log p(x | c) over the target pixels (torch.distributions), the same for nll and
    neg_elbo."""
    task = QuadrantTask(observed=2)
    cvae = no_latent_cvae(task)
    assert isinstance(cvae.prior, NoLatent) and cvae.encoder is None
    x = images(4, seed=6)
    if likelihood_name == "bernoulli":
        x = x.round()
    if likelihood_name == "logistic":
        x = (x * 255).round() / 255
    condition, mask = task(x, torch.arange(4))
    with torch.no_grad():
        output = cvae(x, condition)
        assert torch.equal(output.kl, torch.zeros(4)) and torch.equal(output.z, torch.zeros(4, cvae.latent_dim))
        logits = cvae.decoder(torch.zeros(4, cvae.latent_dim), condition)
        assert torch.equal(output.logits, logits)
    objective = ELBO(likelihood_name, var=0.5)
    if likelihood_name == "gaussian":
        per_pixel = Normal(torch.sigmoid(logits), math.sqrt(0.5)).log_prob(x)
    elif likelihood_name == "logistic":  # the bin's mass, by the logistic's CDF (scale 0.05)
        cdf = lambda edge: torch.sigmoid((edge - torch.sigmoid(logits.double())) / 0.05)  # noqa: E731
        upper = torch.where(x > 1 - 0.5 / 255, 1.0, cdf(x.double() + 0.5 / 255))
        lower = torch.where(x < 0.5 / 255, 0.0, cdf(x.double() - 0.5 / 255))
        per_pixel = (upper - lower).log().float()
    else:
        per_pixel = Bernoulli(logits=logits).log_prob(x)
    exact = -(per_pixel * mask).sum(dim=(1, 2, 3))
    for samples in (1, 10):
        nll, neg_elbo = importance_sampled_nll(cvae, objective, x, condition, mask, samples)
        assert torch.equal(nll, neg_elbo)
        assert torch.equal(nll, -objective.log_likelihood(x, logits, mask))
        torch.testing.assert_close(nll, exact)


# 5. Tasks.


@pytest.mark.parametrize(
    ("observed", "seen_quadrants"),
    [(1, ["bottom-left"]), (2, ["top-left", "bottom-left"]), (3, ["top-left", "top-right", "bottom-left"])],
)
def test_quadrant_task_hides_pyros_quadrants(observed, seen_quadrants):
    """Pyro's tutorial: 1 sees the bottom-left quadrant, 2 the left half, 3 all but the
    bottom-right. The target covers the other 588 / 392 / 196 of 784 pixels; the condition is
    the image where seen, -1 elsewhere; complete() takes the prediction where hidden."""
    task = QuadrantTask(observed)
    x = images(3, seed=7)
    condition, mask = task(x, torch.arange(3))
    quadrants = {
        "top-left": (slice(0, 14), slice(0, 14)),
        "top-right": (slice(0, 14), slice(14, 28)),
        "bottom-left": (slice(14, 28), slice(0, 14)),
        "bottom-right": (slice(14, 28), slice(14, 28)),
    }
    seen = np.zeros((28, 28), dtype=bool)
    for name in seen_quadrants:
        seen[quadrants[name]] = True
    seen = torch.from_numpy(seen).expand_as(x)
    assert task.condition_shape(IMAGE_SHAPE) == IMAGE_SHAPE
    assert mask.shape == x.shape and ((mask == 0) | (mask == 1)).all()
    assert mask[0].sum() == 784 - 196 * observed
    assert torch.equal(mask.bool(), ~seen)
    assert torch.equal(condition[seen], x[seen]) and (condition[~seen] == HIDDEN).all()
    prediction = torch.rand(x.shape, generator=torch.Generator().manual_seed(8))
    completed = task.complete(condition, prediction)
    assert torch.equal(completed[~seen], prediction[~seen]) and torch.equal(completed[seen], x[seen])


@pytest.mark.parametrize("observed", [0, 4])
def test_quadrant_task_rejects_other_quadrant_counts(observed):
    with pytest.raises(ValueError, match="observed"):
        QuadrantTask(observed)


def test_inpaint_task_hides_one_rectangle_per_image():
    """Each hole is a full height x width rectangle inside the image, its height and width
    drawn apart from min_size..max_size (every size drawn over 300 images, and not only
    squares); the condition is (image with -1 in the hole, hole mask), the target is the
    hole, and complete() fills the hole from the prediction."""
    task = InpaintTask(min_size=3, max_size=9)
    x = images(300, seed=9)
    condition, mask = task(x, torch.zeros(300, dtype=torch.long), torch.Generator().manual_seed(0))
    assert task.condition_shape(IMAGE_SHAPE) == (2, 28, 28) and condition.shape == (300, 2, 28, 28)
    hole = condition[:, 1].numpy()
    heights, widths = [], []
    for index, rectangle in enumerate(hole):
        rows, columns = np.nonzero(rectangle.any(1))[0], np.nonzero(rectangle.any(0))[0]
        assert rectangle.sum() == len(rows) * len(columns), index  # full
        assert rows[-1] - rows[0] == len(rows) - 1 and columns[-1] - columns[0] == len(columns) - 1, index  # contiguous
        heights.append(len(rows))
        widths.append(len(columns))
    assert set(heights) == set(widths) == set(range(3, 10))
    assert np.mean(np.array(heights) != np.array(widths)) > 0.5  # about 6/7 of the holes are not square
    assert set(np.unique(hole)) <= {0.0, 1.0}
    assert torch.equal(mask, condition[:, 1:])
    inside = mask.bool()
    assert torch.equal(condition[:, :1][~inside], x[~inside]) and (condition[:, :1][inside] == HIDDEN).all()
    prediction = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
    completed = task.complete(condition, prediction)
    assert torch.equal(completed[inside], prediction[inside]) and torch.equal(completed[~inside], x[~inside])


def test_inpaint_task_holes_follow_the_generator_seed():
    task, x = InpaintTask(), images(16, seed=10)
    first, _ = task(x, None, torch.Generator().manual_seed(3))
    again, _ = task(x, None, torch.Generator().manual_seed(3))
    other, _ = task(x, None, torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert not torch.equal(first[:, 1], other[:, 1])


def test_inpaint_task_rejects_holes_larger_than_the_image():
    with pytest.raises(ValueError, match="max_size"):
        InpaintTask(min_size=8, max_size=29).condition_shape(IMAGE_SHAPE)
    with pytest.raises(ValueError):
        InpaintTask(min_size=9, max_size=8)


@pytest.mark.parametrize("factor", [4, 2])
def test_superres_condition_is_the_block_mean(factor):
    """The condition is the image averaged over factor x factor blocks (numpy reshape-mean);
    the target is every pixel."""
    task, x = SuperresTask(factor), images(3, seed=11)
    condition, mask = task(x, torch.arange(3))
    side = 28 // factor
    expected = x.double().numpy().reshape(3, 1, side, factor, side, factor).mean(axis=(3, 5))
    assert task.condition_shape(IMAGE_SHAPE) == (1, side, side) and mask is None
    np.testing.assert_allclose(condition.double().numpy(), expected, rtol=1e-6, atol=1e-6)


def test_superres_rejects_a_factor_that_does_not_divide_the_image():
    with pytest.raises(ValueError, match="factor"):
        SuperresTask(3).condition_shape(IMAGE_SHAPE)


# 6. The objective with a mask.


@pytest.fixture
def masked_batch():
    """Images in [0, 1], logits, and a random 0/1 mask of target pixels."""
    generator = torch.Generator().manual_seed(12)
    x = torch.rand(4, 1, 6, 5, generator=generator)
    logits = 3 * torch.randn(4, 1, 6, 5, generator=generator)
    mask = (torch.rand(4, 1, 6, 5, generator=generator) < 0.4).float()
    return x, logits, mask


def numpy_reconstruction(likelihood_name: str, x, logits, mask, var: float = 0.5):
    x, logits = x.double().numpy(), logits.double().numpy()
    mean = 1 / (1 + np.exp(-logits))
    if likelihood_name == "gaussian":
        per_pixel = (x - mean) ** 2 / (2 * var)
    elif likelihood_name == "logistic":  # the mass of x's 8-bit bin under the logistic's CDF (scale 0.05)
        cdf = lambda edge: 1 / (1 + np.exp(-(edge - mean) / 0.05))  # noqa: E731
        upper = np.where(x > 1 - 0.5 / 255, 1.0, cdf(x + 0.5 / 255))
        lower = np.where(x < 0.5 / 255, 0.0, cdf(x - 0.5 / 255))
        per_pixel = -np.log(upper - lower)
    else:
        per_pixel = -(x * np.log(mean) + (1 - x) * np.log(1 - mean))
    mask = np.ones_like(x) if mask is None else mask.double().numpy()
    return (per_pixel * mask).reshape(len(x), -1).sum(1)


@pytest.mark.parametrize("use_mask", [True, False], ids=["mask", "all-pixels"])
@pytest.mark.parametrize("likelihood_name", ELBO.LIKELIHOODS)
def test_masked_reconstruction_matches_numpy(masked_batch, likelihood_name, use_mask):
    """reconstruction sums the numpy per-pixel loss over the target pixels only (all without a mask)."""
    x, logits, mask = masked_batch
    x = (x * 255).round() / 255 if likelihood_name == "logistic" else x  # 8-bit pixel values
    mask = mask if use_mask else None
    got = ELBO(likelihood_name, var=0.5).reconstruction(x, logits, mask)
    np.testing.assert_allclose(
        got.double().numpy(), numpy_reconstruction(likelihood_name, x, logits, mask), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("use_mask", [True, False], ids=["mask", "all-pixels"])
@pytest.mark.parametrize("var", [0.1, 0.5, 2.0])
def test_masked_gaussian_log_likelihood_matches_torch_distributions(masked_batch, var, use_mask):
    """log_likelihood == Normal(sigmoid(logits), sqrt(var)).log_prob(x) summed over the target
    pixels, the constant included (over as many pixels as each image's mask holds)."""
    x, logits, mask = masked_batch
    per_pixel = Normal(torch.sigmoid(logits), math.sqrt(var)).log_prob(x)
    expected = (per_pixel * mask if use_mask else per_pixel).sum(dim=(1, 2, 3))
    torch.testing.assert_close(
        ELBO("gaussian", var=var).log_likelihood(x, logits, mask if use_mask else None), expected
    )


@pytest.mark.parametrize("use_mask", [True, False], ids=["mask", "all-pixels"])
def test_masked_bernoulli_log_likelihood_matches_torch_distributions(masked_batch, use_mask):
    """On binary x, log_likelihood == Bernoulli(logits).log_prob(x) summed over the target pixels."""
    x, logits, mask = masked_batch
    x = x.round()
    per_pixel = Bernoulli(logits=logits).log_prob(x)
    expected = (per_pixel * mask if use_mask else per_pixel).sum(dim=(1, 2, 3))
    torch.testing.assert_close(ELBO("bernoulli").log_likelihood(x, logits, mask if use_mask else None), expected)


def test_masked_objective_is_masked_reconstruction_plus_beta_kl(masked_batch):
    """__call__ with a mask: loss = mean masked reconstruction (numpy) + beta * mean KL."""
    x, logits, mask = masked_batch
    kl = torch.tensor([0.5, 1.0, 2.0, 4.0])
    terms = ELBO("gaussian", var=0.5).terms(x, logits, kl, beta=0.3, mask=mask)
    recon = numpy_reconstruction("gaussian", x, logits, mask).mean()
    assert tuple(terms) == ("loss", "recon", "kl")
    assert terms["recon"].item() == pytest.approx(recon, rel=1e-5)
    assert terms["kl"].item() == pytest.approx(1.875)
    assert terms["loss"].item() == pytest.approx(recon + 0.3 * 1.875, rel=1e-5)


# 7. Importance sampling against a linear-Gaussian model's exact marginal.

PIXELS, LATENTS, NOISE = 5, 2, 0.5  # x | z ~ N(W z + b, NOISE^2 I_PIXELS), z ~ N(0, I_LATENTS)


class LinearGaussian:
    """The model protocol that log_weights uses (encode, decode_logits, log_prior, has_latent):
    z ~ N(0, I), x | z ~ N(W z + b, s^2 I), and a diagonal
    q(z | x) = the exact posterior, shifted by `shift` posterior standard deviations, its
    variance times `inflate`. W has orthogonal columns, so the exact posterior is diagonal."""

    def __init__(self, shift: float = 0.0, inflate: float = 1.0):
        generator = torch.Generator().manual_seed(13)
        orthonormal, _ = torch.linalg.qr(torch.randn(PIXELS, LATENTS, generator=generator, dtype=torch.float64))
        self.W = orthonormal * torch.tensor([1.5, 0.7], dtype=torch.float64)
        self.b = torch.randn(PIXELS, generator=generator, dtype=torch.float64)
        self.W32, self.b32 = self.W.float(), self.b.float()
        self.shift, self.inflate = shift, inflate
        self.has_latent = True
        self.log_prior = StandardPrior(LATENTS, Conditioning(1)).log_prob

    def exact_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        covariance = torch.linalg.inv(torch.eye(LATENTS, dtype=torch.float64) + self.W.T @ self.W / NOISE**2)
        assert torch.allclose(covariance, torch.diag(covariance.diagonal()))
        mean = (x.double() - self.b) @ self.W @ covariance.T / NOISE**2
        return mean, covariance.diagonal().expand_as(mean)

    def encode(self, x, condition):
        mean, variance = self.exact_posterior(x)
        mean = mean + self.shift * variance.sqrt()
        return DiagonalGaussian(mean.float(), (variance * self.inflate).log().float())

    def decode_logits(self, z, condition):
        return z @ self.W32.T + self.b32

    def marginal(self) -> MultivariateNormal:
        covariance = self.W @ self.W.T + NOISE**2 * torch.eye(PIXELS, dtype=torch.float64)
        return MultivariateNormal(self.b, covariance)

    def data(self, count: int, seed: int = 14) -> torch.Tensor:
        """`count` draws of x from the model, flat (count, PIXELS), float32."""
        torch.manual_seed(seed)
        return self.marginal().sample((count,)).float()


class IdentityGaussianObjective:
    """log p(x | z) = Normal(logits, NOISE).log_prob(x) summed over pixels (identity link)."""

    def log_likelihood(self, x, logits, mask):
        return Normal(logits, NOISE).log_prob(x).sum(-1)


def importance_nll(model, x, samples):
    return importance_sampled_nll(
        model, IdentityGaussianObjective(), x, torch.zeros(len(x), dtype=torch.long), None, samples
    )


def test_linear_gaussian_posterior_is_diagonal_and_the_marginal_is_exact():
    """Sanity of the stand-in: log p(x) (MultivariateNormal) == log p(x|z) + log p(z) - log q(z|x)
    at the exact posterior's mean, computed with torch.distributions only."""
    model = LinearGaussian()
    x = model.data(4).double()
    mean, variance = model.exact_posterior(x)
    joint = Normal(mean @ model.W.T + model.b, NOISE).log_prob(x).sum(-1) + Normal(0.0, 1.0).log_prob(mean).sum(-1)
    torch.testing.assert_close(
        joint - Normal(mean, variance.sqrt()).log_prob(mean).sum(-1), model.marginal().log_prob(x)
    )


@pytest.mark.parametrize("samples", [1, 10, 1000])
def test_importance_sampling_with_the_exact_posterior_is_exact(samples):
    """q = p(z | x): every importance weight is p(x), so nll and neg_elbo equal -log p(x)
    (MultivariateNormal) for any K."""
    model = LinearGaussian()
    x = model.data(4)
    torch.manual_seed(0)
    nll, neg_elbo = importance_nll(model, x, samples)
    truth = -model.marginal().log_prob(x.double()).float()
    torch.testing.assert_close(nll, truth, rtol=0, atol=1e-4)
    torch.testing.assert_close(neg_elbo, truth, rtol=0, atol=1e-4)


@pytest.mark.parametrize("rows_per_chunk", [1, 7, 12])
def test_importance_sampling_in_chunks_is_still_exact(monkeypatch, rows_per_chunk):
    """With ROWS_PER_CHUNK smaller than the batch or than K x batch, the K weights come from
    several decoder passes; with the exact posterior the estimate is still -log p(x)."""
    monkeypatch.setattr(likelihood, "ROWS_PER_CHUNK", rows_per_chunk)
    model = LinearGaussian()
    x = model.data(4)
    torch.manual_seed(0)
    log_w = likelihood.log_weights(model, IdentityGaussianObjective(), x, torch.zeros(4, dtype=torch.long), None, 10)
    assert log_w.shape == (10, 4)
    nll, neg_elbo = importance_nll(model, x, 10)
    truth = -model.marginal().log_prob(x.double()).float()
    torch.testing.assert_close(log_w, -truth.expand(10, 4), rtol=0, atol=1e-4)
    torch.testing.assert_close(nll, truth, rtol=0, atol=1e-4)
    torch.testing.assert_close(neg_elbo, truth, rtol=0, atol=1e-4)


def test_importance_sampling_with_a_wrong_posterior_tightens_towards_the_truth():
    """q with its mean shifted by 2.5 posterior standard deviations and its variance tripled
    (ELBO gap about 7 nats): nll <= neg_elbo row by row; over repeats of 3 images the mean
    estimate decreases with K = 1, 10, 100, 1000; K = 1 is further from -log p(x)
    (MultivariateNormal) than K = 1000 for every image, and K = 1000 is within 0.06 nats of
    it on average (0.15 per image). The repeat counts keep every step of the decrease more
    than 5 standard errors wide."""
    model = LinearGaussian(shift=2.5, inflate=3.0)
    count = 3
    x = model.data(count)
    truth = -model.marginal().log_prob(x.double())
    torch.manual_seed(0)
    per_image, pooled = {}, {}
    for samples, repeats in ((1, 400), (10, 400), (100, 400), (1000, 50)):
        nll, neg_elbo = importance_nll(model, x.repeat(repeats, 1), samples)  # row r * count + i is image i
        assert (nll <= neg_elbo).all()
        errors = nll.double().view(repeats, count) - truth
        per_image[samples], pooled[samples] = errors.mean(0), errors.mean()
    assert pooled[1] > pooled[10] > pooled[100] > pooled[1000], pooled
    assert (per_image[1] > 1.0).all() and (per_image[1].abs() > per_image[1000].abs()).all(), per_image
    assert pooled[1000].abs() < 0.06 and (per_image[1000].abs() < 0.15).all(), per_image[1000]
