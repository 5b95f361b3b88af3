"""The two-layer hierarchical VAE (cvae_exp/models/hierarchical.py): the precision-weighted
posterior against the product of Gaussians, the posterior's and the prior's log densities
against torch.distributions, the KL term against a Monte Carlo estimate of the joint KL;
then the model under the ELBO and IWAE through the module, and the refusals."""

import math
import re

import pytest
import torch
from hydra.utils import instantiate
from torch.distributions import Normal

from cvae_exp.checks import validate
from cvae_exp.errors import UserInputError
from cvae_exp.models.hierarchical import precision_weighted
from cvae_exp.module import CVAEModule
from tests.test_seams import fit_and_test, module_and_data


def hierarchical(prior="StandardPrior", conditioning="Concat", **prior_arguments):
    torch.manual_seed(0)
    model = {
        "_target_": "cvae_exp.models.HierarchicalVAE",
        "latent_dim": 3,
        "top_dim": 2,
        "top_hidden": [8],
        "encoder": {"_target_": "cvae_exp.models.mlp.MLPEncoder", "_partial_": True, "hidden_dims": [16]},
        "decoder": {"_target_": "cvae_exp.models.mlp.MLPDecoder", "_partial_": True, "hidden_dims": [16]},
    }
    return instantiate(
        model,
        conditioning=instantiate({"_target_": f"cvae_exp.models.conditioning.{conditioning}", "_partial_": True}),
        prior=instantiate({"_target_": f"cvae_exp.models.priors.{prior}", "_partial_": True, **prior_arguments}),
        image_shape=[1, 4, 4],
        num_classes=3,
    )


def test_the_precision_weighted_posterior_is_the_normalised_product_of_the_two_gaussians():
    torch.manual_seed(0)
    mean_a, logvar_a, mean_b, logvar_b = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    mean, logvar = precision_weighted(mean_a, logvar_a, mean_b, logvar_b)
    points = torch.randn(7, 4, 5) * 3
    product = Normal(mean_a, (0.5 * logvar_a).exp()).log_prob(points) + Normal(mean_b, (0.5 * logvar_b).exp()).log_prob(
        points
    )
    difference = product - Normal(mean, (0.5 * logvar).exp()).log_prob(points)
    assert torch.allclose(difference, difference[:1].expand_as(difference), atol=1e-4)  # constant in the point


def transcribed_log_densities(model, posterior, z, labels):
    """log q(z1, z2 | x, c) and log p(z1, z2 | c) from the model's parts, with torch.distributions."""
    z1, z2 = z[..., :3], z[..., 3:]
    normal = lambda mean, logvar: Normal(mean, (0.5 * logvar).exp())  # noqa: E731
    prior_mean, prior_logvar = model.top_down(z2, labels)
    precision = (-posterior.up_logvar).exp() + (-prior_logvar).exp()
    q1_mean = (posterior.up_mean * (-posterior.up_logvar).exp() + prior_mean * (-prior_logvar).exp()) / precision
    log_q = normal(posterior.top_mean, posterior.top_logvar).log_prob(z2).sum(-1) + Normal(
        q1_mean, precision.rsqrt()
    ).log_prob(z1).sum(-1)
    log_p = Normal(0.0, 1.0).log_prob(z2).sum(-1) + normal(prior_mean, prior_logvar).log_prob(z1).sum(-1)
    return log_q, log_p


def test_the_posterior_and_prior_densities_are_those_of_the_two_layers():
    model = hierarchical()
    x, labels = torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    posterior = model.encode(x, labels)
    z = posterior.rsample(4)
    assert z.shape == (4, 5, 5)
    log_q, log_p = transcribed_log_densities(model, posterior, z, labels)
    assert torch.allclose(posterior.log_prob(z), log_q, atol=1e-4)
    assert torch.allclose(model.log_prior(z, labels), log_p, atol=1e-4)


def test_the_kl_term_estimates_the_kl_between_the_joint_posterior_and_prior():
    """The forward pass's KL (closed form in z1 at a sampled z2) averages to the Monte Carlo
    mean of log q(z1, z2) - log p(z1, z2) over joint draws."""
    model = hierarchical()
    x, labels = torch.rand(2, 1, 4, 4), torch.tensor([0, 2])
    with torch.no_grad():
        for parameter in model.parameters():  # a posterior far from the prior
            parameter.mul_(3)
        draws = 40000
        repeated_x, repeated_labels = x.repeat(draws, 1, 1, 1), labels.repeat(draws)
        kl = model(repeated_x, repeated_labels).kl.view(draws, 2).mean(0)
        posterior = model.encode(x, labels)
        z = posterior.rsample(draws)
        log_q, log_p = transcribed_log_densities(model, posterior, z, labels)
        monte_carlo = (log_q - log_p).mean(0)
        spread = (log_q - log_p).std(0) / math.sqrt(draws)
    assert (kl > 0.5).all()
    assert torch.allclose(kl, monte_carlo, atol=float(5 * spread.max())), (kl, monte_carlo, spread)


def test_samples_come_from_the_two_layers_and_decode_z1():
    model = hierarchical()
    torch.manual_seed(1)
    z = model.sample_latent(torch.zeros(20000, dtype=torch.long))
    z2 = z[:, 3:]
    assert z2.mean(0).abs().max() < 0.03 and (z2.std(0) - 1).abs().max() < 0.03  # p(z2) = N(0, I)
    images = model.sample(torch.tensor([0, 1]), n=3)
    assert images.shape == (6, 1, 4, 4)
    assert torch.equal(model.decode_logits(z[:2], torch.tensor([0, 0])), model.decoder(z[:2, :3], torch.tensor([0, 0])))


@pytest.mark.parametrize(
    "loss",
    [
        {"_target_": "cvae_exp.objective.ELBO", "likelihood": "bernoulli"},
        {"_target_": "cvae_exp.objective.IWAE", "likelihood": "bernoulli", "samples": 3},
    ],
)
def test_the_module_trains_a_hierarchical_vae_and_estimates_its_likelihood(tmp_path, loss):
    module, data = module_and_data(tmp_path, (1, 28, 28), loss, nll_samples=20)
    model = {**module.hparams["model"], "_target_": "cvae_exp.models.HierarchicalVAE", "top_dim": 2, "top_hidden": [8]}
    module = CVAEModule(**{**module.hparams, "model": model})
    _, tested = fit_and_test(module, data, tmp_path)
    assert math.isfinite(tested["test/nll"]) and tested["test/nll"] <= tested["test/neg_elbo"] + 1e-3


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["model=hierarchical", "loss=beta_tcvae"], "loss=beta_tcvae treats z as one Gaussian layer"),
        (["model=hierarchical", "loss=factorvae"], "loss=factorvae treats z as one Gaussian layer"),
        (["model=hierarchical", "loss=infovae"], "loss=infovae treats z as one Gaussian layer"),
        (
            ["model=hierarchical", "prior=vamp"],
            "[1, 28, 28]: model=hierarchical puts the prior on its top layer z2; prior=vamp does not apply there "
            "(prior=standard, conditional or mixture).",
        ),
        (["model=hierarchical", "prior=none"], "prior=none does not apply there"),
        (["model=hierarchical", "model.top_dim=0"], "model.top_dim=0"),
    ],
)
def test_what_a_hierarchical_vae_cannot_take_is_refused_before_the_run(compose_train, overrides, fragment):
    with pytest.raises(UserInputError, match=re.escape(fragment)):
        validate(compose_train(overrides), devices_here=False)


@pytest.mark.parametrize("prior, arguments", [("ConditionalPrior", {"hidden_dims": [8]}), ("MixturePrior", {})])
def test_the_top_layer_takes_the_runs_prior(prior, arguments):
    model = hierarchical(prior=prior, **arguments)
    assert model.prior.latent_dim == 2
    x, labels = torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 2])
    output = model(x, labels)
    assert output.z.shape == (3, 5) and torch.isfinite(output.kl).all()
    z = model.encode(x, labels).rsample(2)
    assert torch.isfinite(model.log_prior(z, labels)).all()


def test_a_latent_interpolation_runs_between_draws_of_both_layers():
    """cvae-sample mode=interpolate: the line's ends are z = [z1, z2] ~ p(z1 | z2, c) p(z2 | c)."""
    from cvae_exp import visualize
    from cvae_exp.callbacks import standard_normal_latent

    model = hierarchical()
    torch.manual_seed(0)
    grid = visualize.latent_interpolation(model, torch.tensor([0, 1]), steps=4)
    assert grid.shape == (3, 2 * 4 + 3 * 2, 4 * 4 + 5 * 2)  # 2 rows and 4 columns of 4x4 images, padding 2
    assert not standard_normal_latent(model)  # p(z1 | z2, c): one z is no draw under every label


def test_a_traversal_of_either_layer_moves_what_the_decoder_reads():
    """The decoder reads z1: sweeping a z2 coordinate moves z1 = the mean of p(z1 | z2, c), and
    sweeping a z1 coordinate sets it there, over that mean at z2 = 0."""
    model = hierarchical().eval()
    labels = torch.tensor([0, 0, 0])
    z = torch.zeros(3, 5)
    z[:, 3] = torch.tensor([-2.0, 0.0, 2.0])  # a coordinate of z2 (z1 has 3)
    with torch.no_grad():
        filled = model.traversal_latent(z, labels, dim=3)
        expected = model.top_down(z[:, 3:], labels)[0]
        assert torch.equal(filled[:, 3:], z[:, 3:]) and torch.allclose(filled[:, :3], expected)
        assert not torch.allclose(filled[0, :3], filled[2, :3])
        bottom = torch.zeros(3, 5)
        bottom[:, 1] = torch.tensor([-2.0, 0.0, 2.0])
        at_zero = model.top_down(torch.zeros(3, 2), labels)[0]
        filled = model.traversal_latent(bottom, labels, dim=1)
        assert torch.equal(filled[:, 1], bottom[:, 1]) and torch.allclose(filled[:, [0, 2]], at_zero[:, [0, 2]])
    from cvae_exp import visualize

    swept, still = (visualize.traversal(model, torch.tensor([0]), dim=3, span=span, steps=3) for span in (2.0, 0.0))
    assert not torch.allclose(swept, still)
    with pytest.raises(ValueError, match=re.escape("must be in 0..4 (0..2 are z1, model.latent_dim; 3..4 are z2")):
        visualize.traversal(model, torch.tensor([0]), dim=5)
