"""The VAE family's objectives (cvae_exp/objective.py) against independent computations:
IWAE's bound against log p(x) by quadrature, beta-TCVAE's estimators against closed forms
and a transcription of the paper's formula, the MMD against its closed form between
Gaussians; then each objective through the module and the CLI."""

import math

import lightning as L
import numpy as np
import pytest
import torch
from scipy.stats import norm

from cvae_exp.models.cvae import CVAEOutput, DiagonalGaussian
from cvae_exp.models.priors import MixturePrior
from cvae_exp.module import CVAEModule
from cvae_exp.objective import ELBO, IWAE, BetaTCVAE, FactorVAE, InfoVAE, mmd, permute_dimensions
from tests.helpers import run_cli
from tests.test_failure_paths import assert_refused
from tests.test_seams import fit_and_test, module_and_data


class OneLatentBernoulli:
    """p(z) = N(0, 1), p(x | z) = prod_i Bernoulli(x_i; sigmoid(a_i z + b_i)) over a 1x1x3
    image, and a fixed Gaussian q(z | x): small enough for log p(x) by quadrature."""

    has_latent = True
    a, b = torch.tensor([2.0, -1.5, 0.7], dtype=torch.float64), torch.tensor([0.3, 0.5, -1.0], dtype=torch.float64)

    def encode(self, x, condition):
        mean = 0.5 * x.flatten(1).sum(1, keepdim=True) - 0.5
        return DiagonalGaussian(mean, torch.full_like(mean, math.log(0.6)))

    def decode_logits(self, z, condition):
        return (z * self.a + self.b).view(len(z), 1, 1, 3)

    def log_prior(self, z, condition):
        return -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)

    def log_marginal(self, x) -> np.ndarray:
        """log p(x) per image by the trapezoid rule over z."""
        z = np.linspace(-12, 12, 48001)
        logits = z[:, None] * self.a.numpy() + self.b.numpy()  # (Z, 3)
        values = []
        for pixels in x.flatten(1).numpy():
            log_joint = norm.logpdf(z) - np.logaddexp(0, -np.where(pixels == 1, logits, -logits)).sum(1)
            values.append(np.log(np.trapezoid(np.exp(log_joint), z)))
        return np.array(values)


BINARY = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 0]], dtype=torch.float64).view(3, 1, 1, 3)


def test_the_iwae_bound_rises_with_k_to_log_p_x_by_quadrature():
    model, objective = OneLatentBernoulli(), None
    exact = model.log_marginal(BINARY).mean()
    bounds = {}
    for k in (1, 10, 2000):
        objective = IWAE(samples=k, likelihood="bernoulli")
        torch.manual_seed(0)
        bounds[k] = np.mean([-objective(model, BINARY, None).loss.item() for _ in range(20)])
    assert bounds[1] < bounds[10] < bounds[2000] <= exact + 1e-3
    assert bounds[2000] == pytest.approx(exact, abs=2e-3)
    assert exact - bounds[1] > 0.05  # q is not the posterior: the bound's gap is visible at K = 1


def test_iwae_with_one_sample_is_the_elbo_with_the_one_sample_kl():
    model = OneLatentBernoulli()
    torch.manual_seed(1)
    result = IWAE(samples=1, likelihood="bernoulli")(model, BINARY, None)
    torch.manual_seed(1)
    posterior = model.encode(BINARY, None)
    z = posterior.rsample(1)[0]
    probabilities = torch.sigmoid(model.decode_logits(z, None))
    recon = -torch.distributions.Bernoulli(probabilities).log_prob(BINARY).flatten(1).sum(1)
    q = torch.distributions.Normal(posterior.mean, (0.5 * posterior.logvar).exp()).log_prob(z).sum(1)
    p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    torch.testing.assert_close(result.loss, (recon + q - p).mean())
    torch.testing.assert_close(result.terms["kl"], (q - p).mean())
    assert isinstance(result.output, CVAEOutput) and result.output.logits.shape == BINARY.shape


def gaussian_batch(count: int, covariance: np.ndarray, posterior_var: float, seed: int = 0):
    """Posterior means drawn from N(0, covariance), posteriors N(mean, posterior_var I) and one z
    from each: the aggregate posterior tends to N(0, covariance + posterior_var I)."""
    generator = torch.Generator().manual_seed(seed)
    dim = len(covariance)
    root = torch.linalg.cholesky(torch.tensor(covariance, dtype=torch.float64))
    mean = torch.randn(count, dim, generator=generator, dtype=torch.float64) @ root.T
    logvar = torch.full_like(mean, math.log(posterior_var))
    z = mean + math.sqrt(posterior_var) * torch.randn(count, dim, generator=generator, dtype=torch.float64)
    return z, mean, logvar


def standard_log_prior(z):
    return torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)


def test_minibatch_stratified_sampling_recovers_a_gaussian_aggregates_known_terms():
    """Aggregate N(0, C), C = S + s^2 I: TC = (sum log C_dd - log det C) / 2, MI = (log det C -
    D log s^2) / 2, dimension-wise KL = sum_d KL(N(0, C_dd) || N(0, 1))."""
    covariance, posterior_var = np.array([[1.0, 0.8], [0.8, 1.0]]), 0.25
    c = covariance + posterior_var * np.eye(2)
    tc = 0.5 * (np.log(np.diag(c)).sum() - np.linalg.slogdet(c)[1])
    mi = 0.5 * (np.linalg.slogdet(c)[1] - 2 * math.log(posterior_var))
    dimwise = sum(0.5 * (v - 1 - math.log(v)) for v in np.diag(c))
    z, mean, logvar = gaussian_batch(3000, covariance, posterior_var)
    parts = BetaTCVAE(estimator="mss", dataset_size=10**7).decomposition(z, mean, logvar, standard_log_prior(z))
    assert parts["tc"].mean().item() == pytest.approx(tc, abs=0.03)  # 0.264
    assert parts["mi"].mean().item() == pytest.approx(mi, abs=0.05)  # 1.35
    assert parts["dimwise_kl"].mean().item() == pytest.approx(dimwise, abs=0.03)  # 0.027


def test_posteriors_equal_to_the_prior_give_zero_terms_under_mss_and_mws_offsets_of_log_n():
    """q(z | x) = N(0, I) for every x: q(z) is N(0, I), so MI, TC and the dimension-wise KL are 0.
    MSS's weights sum to 1 per row and give 0 exactly; MWS's 1/(N M) gives MI log N and TC
    (D - 1) log N, the offsets its terms carry wherever posteriors overlap."""
    dim, n = 4, 5000
    z = torch.randn(64, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    zeros = torch.zeros_like(z)
    for estimator, mi, tc in (("mss", 0.0, 0.0), ("mws", math.log(n), (dim - 1) * math.log(n))):
        parts = BetaTCVAE(estimator=estimator, dataset_size=n).decomposition(z, zeros, zeros, standard_log_prior(z))
        for name, expected in (("mi", mi), ("tc", tc), ("dimwise_kl", -mi - tc)):
            assert parts[name].tolist() == pytest.approx([expected] * 64, abs=1e-3), (estimator, name)


def test_minibatch_weighted_sampling_is_the_papers_formula_written_out():
    """Chen et al. (2018), section 4.1: log q(z_i) ~ log 1/(N M) sum_j q(z_i | x_j), each marginal alike."""
    z, mean, logvar = gaussian_batch(7, np.eye(3), 0.5, seed=2)
    n, m = 100, len(z)
    parts = BetaTCVAE(estimator="mws", dataset_size=n).decomposition(z, mean, logvar, standard_log_prior(z))
    std = np.exp(0.5 * logvar.numpy())
    for i in range(m):
        density = [[norm.pdf(z[i, d].item(), mean[j, d].item(), std[j, d]) for d in range(3)] for j in range(m)]
        log_qz = math.log(sum(math.prod(row) for row in density) / (n * m))
        log_marginals = sum(math.log(sum(row[d] for row in density) / (n * m)) for d in range(3))
        log_q = sum(norm.logpdf(z[i, d].item(), mean[i, d].item(), std[i, d]) for d in range(3))
        log_p = norm.logpdf(z[i].numpy()).sum()
        assert parts["mi"][i].item() == pytest.approx(log_q - log_qz, rel=1e-5, abs=1e-5)
        assert parts["tc"][i].item() == pytest.approx(log_qz - log_marginals, rel=1e-5, abs=1e-5)
        assert parts["dimwise_kl"][i].item() == pytest.approx(log_marginals - log_p, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("estimator", BetaTCVAE.ESTIMATORS)
def test_beta_tcvae_terms_sum_to_the_one_sample_kl_and_weight_as_configured(estimator):
    from tests.test_models import tiny

    cvae = tiny("mlp", "concat")
    images, labels = torch.rand(16, 1, 28, 28), torch.arange(16) % 10
    objective = BetaTCVAE(alpha=0.5, beta=4.0, gamma=2.0, estimator=estimator, dataset_size=1000, warmup_steps=10)
    torch.manual_seed(0)
    result = objective(cvae, images, labels, step=5)
    torch.manual_seed(0)
    output = cvae(images, labels)
    one_sample_kl = (output.logvar * -0.5 - 0.5 * (output.z - output.mu).pow(2) / output.logvar.exp()).sum(1) + (
        0.5 * output.z.pow(2)
    ).sum(1)  # log q(z | x) - log N(z; 0, I), the 2 pi terms cancelling
    terms = result.terms
    torch.testing.assert_close(terms["mi"] + terms["tc"] + terms["dimwise_kl"], one_sample_kl.mean())
    recon = ELBO().reconstruction(images, output.logits).mean()
    weighted = 0.5 * terms["mi"] + 4.0 * terms["tc"] + 2.0 * terms["dimwise_kl"]
    torch.testing.assert_close(result.loss, recon + 0.5 * weighted)  # half-way through the warm-up
    assert objective.schedule(5) == {"alpha": 0.25, "beta": 2.0, "gamma": 1.0}


def test_beta_tcvae_refuses_a_prior_whose_dimensions_are_not_independent():
    from tests.test_models import tiny

    cvae = tiny("mlp", "concat")
    cvae.prior = MixturePrior(cvae.latent_dim, cvae.decoder.conditioning, num_components=3)
    with pytest.raises(ValueError, match="prior=standard or prior=conditional, not MixturePrior"):
        BetaTCVAE(dataset_size=10).check(cvae)


def rbf_mmd_between_gaussians(dim, mean_gap, s1, s2, bandwidth):
    """MMD^2 of N(m1, s1^2 I) and N(m2, s2^2 I) under exp(-|a - b|^2 / (2 h^2)), h^2 = D bandwidth^2:
    E k over two independent draws of N(m, s^2 I) and N(m', t^2 I) is
    (h^2 / (h^2 + s^2 + t^2))^(D/2) exp(-|m - m'|^2 / (2 (h^2 + s^2 + t^2)))."""
    h2 = dim * bandwidth**2

    def expected(s, t, gap):
        return (h2 / (h2 + s**2 + t**2)) ** (dim / 2) * math.exp(-(gap**2) / (2 * (h2 + s**2 + t**2)))

    return expected(s1, s1, 0.0) + expected(s2, s2, 0.0) - 2 * expected(s1, s2, mean_gap)


@pytest.mark.parametrize(("gap", "s1", "s2"), [(0.0, 1.0, 1.0), (1.5, 1.0, 1.0), (0.0, 0.5, 1.0), (1.0, 0.7, 1.3)])
def test_the_mmd_estimate_matches_its_closed_form_between_gaussians(gap, s1, s2):
    generator = torch.Generator().manual_seed(0)
    dim, count = 3, 4000
    x = s1 * torch.randn(count, dim, generator=generator, dtype=torch.float64)
    x[:, 0] += gap
    y = s2 * torch.randn(count, dim, generator=generator, dtype=torch.float64)
    expected = rbf_mmd_between_gaussians(dim, gap, s1, s2, bandwidth=1.0)
    assert mmd(x, y, "rbf", 1.0).item() == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize("kernel", InfoVAE.KERNELS)
def test_the_mmd_is_the_unbiased_u_statistic_written_out(kernel):
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(5, 2, generator=generator), 0.5 + torch.randn(4, 2, generator=generator)
    scale = 2 * 2 * 0.8**2

    def k(a, b):
        distance = float(((a - b) ** 2).sum())
        return math.exp(-distance / scale) if kernel == "rbf" else scale / (scale + distance)

    def within(s):
        pairs = [k(s[i], s[j]) for i in range(len(s)) for j in range(len(s)) if i != j]
        return sum(pairs) / len(pairs)

    cross = sum(k(a, b) for a in x for b in y) / (len(x) * len(y))
    assert mmd(x, y, kernel, 0.8).item() == pytest.approx(within(x) + within(y) - 2 * cross, rel=1e-5)


def test_infovae_weighs_its_kl_and_mmd_as_zhao_et_al():
    from tests.test_models import tiny

    cvae = tiny("mlp", "concat")
    images, labels = torch.rand(12, 1, 28, 28), torch.arange(12) % 10
    for alpha, lam in ((0.0, 1000.0), (1.0, 10.0), (0.5, 2.0)):
        torch.manual_seed(0)
        result = InfoVAE(alpha=alpha, mmd_lambda=lam)(cvae, images, labels)
        terms = result.terms
        expected = terms["recon"] + (1 - alpha) * terms["kl"] + (alpha + lam - 1) * terms["mmd"]
        torch.testing.assert_close(result.loss, expected)


@pytest.mark.parametrize(
    ("target", "arguments", "terms"),
    [
        ("IWAE", {"samples": 3}, ()),
        ("BetaTCVAE", {"estimator": "mss"}, ("mi", "tc", "dimwise_kl")),
        ("InfoVAE", {"mmd_lambda": 10.0}, ("mmd",)),
    ],
)
def test_each_objective_trains_and_tests_through_the_module_with_its_terms_logged(tmp_path, target, arguments, terms):
    loss = {"_target_": f"cvae_exp.objective.{target}", "likelihood": "gaussian", **arguments}
    module, data = module_and_data(tmp_path, (1, 28, 28), loss)
    fitted, tested = fit_and_test(module, data, tmp_path)
    for name in ("loss", "recon", "kl", *terms):
        assert math.isfinite(fitted[f"train/{name}"].item()) and math.isfinite(tested[f"test/{name}"]), name
    if target == "BetaTCVAE":
        assert module.objective.dataset_size == 22  # the training split of module_and_data's 30 images


@pytest.mark.parametrize(
    ("objective", "arguments", "message"),
    [
        (BetaTCVAE, {"estimator": "exact"}, "loss.estimator='exact' is not one of ('mws', 'mss')"),
        (BetaTCVAE, {"gamma": -1.0}, "loss.gamma=-1.0 must be >= 0"),
        (InfoVAE, {"kernel": "laplace"}, "loss.kernel='laplace' is not one of ('rbf', 'imq')"),
        (InfoVAE, {"alpha": 0.5, "mmd_lambda": 0.2}, "must be >= 0 (the MMD's weight)"),
        (IWAE, {"samples": 0}, "loss.samples=0 must be an integer >= 1"),
    ],
)
def test_bad_objective_arguments_are_refused_naming_the_value(objective, arguments, message):
    with pytest.raises(ValueError) as error:
        objective(**arguments)
    assert message in str(error.value)


def test_the_cli_refuses_an_objective_that_cannot_train_the_model_before_anything_is_written(tmp_path, mnist_root):
    result = run_cli("loss=beta_tcvae", "prior=mixture", f"data.root={mnist_root}", cwd=tmp_path)
    assert_refused(result, "train", "Invalid config at loss: ", "needs a prior with independent dimensions")
    assert list(tmp_path.iterdir()) == []


def correlated_pairs(count: int, rho: float, generator: torch.Generator) -> torch.Tensor:
    """Draws of a 2-D Gaussian with unit variances and correlation rho: TC = -log(1 - rho^2) / 2."""
    first, noise = torch.randn(2, count, generator=generator)
    return torch.stack([first, rho * first + math.sqrt(1 - rho**2) * noise], 1)


@pytest.mark.parametrize("rho", [0.0, 0.8])
def test_the_factorvae_discriminator_estimates_a_gaussians_known_total_correlation(rho):
    """Trained on its own loss alone, the discriminator's logit difference is the density ratio
    q(z) / prod_d q(z_d), whose mean is the closed-form TC of a correlated Gaussian."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    objective = FactorVAE(latent_dim=2, hidden=64, layers=3, optimizer=lambda p: torch.optim.Adam(p, lr=2e-3))
    optimizer = objective.optimizer(objective.parameters())
    for _ in range(1500):
        loss = objective.discriminator_loss(correlated_pairs(512, rho, generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        estimate = objective.total_correlation(correlated_pairs(20000, rho, generator)).mean().item()
    assert estimate == pytest.approx(-0.5 * math.log(1 - rho**2), abs=0.06)


def test_permuting_dimensions_keeps_each_marginal_and_breaks_the_dependence():
    z = correlated_pairs(5000, 0.9, torch.Generator().manual_seed(1))
    permuted = permute_dimensions(z, torch.Generator().manual_seed(2))
    for d in range(2):
        torch.testing.assert_close(permuted[:, d].sort().values, z[:, d].sort().values)
    assert torch.corrcoef(z.T)[0, 1] > 0.89 and abs(torch.corrcoef(permuted.T)[0, 1]) < 0.05


class RecordingFactorVAE(FactorVAE):
    """Records, at each step, the discriminator's weights and the gradient of its own loss alone."""

    def own_loss(self, result):
        loss = super().own_loss(result)
        weights = list(self.discriminator.parameters())
        self.recorded = [p.detach().clone() for p in weights], torch.autograd.grad(loss, weights, retain_graph=True)
        return loss


def test_factorvae_steps_the_model_then_its_discriminator_each_on_its_own_loss(tmp_path):
    loss = {
        "_target_": f"{__name__}.RecordingFactorVAE", "likelihood": "gaussian", "latent_dim": 4, "hidden": 16,
        "layers": 2, "warmup_steps": 1000,
        "optimizer": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.5},
    }  # fmt: skip
    module, data = module_and_data(tmp_path, (1, 28, 28), loss)
    model_optimizer, discriminator_optimizer = module.configure_optimizers()
    assert {id(p) for p in model_optimizer.param_groups[0]["params"]} == {id(p) for p in module.cvae.parameters()}
    assert [id(p) for p in discriminator_optimizer.param_groups[0]["params"]] == [
        id(p) for p in module.objective.discriminator.parameters()
    ]
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 1  # one step per batch, not one per optimizer
    before, gradients = module.objective.recorded
    for weight, old, gradient in zip(module.objective.discriminator.parameters(), before, gradients):
        torch.testing.assert_close(weight.detach(), old - 0.5 * gradient)  # its own loss's gradient, nothing else


def test_factorvae_trains_and_tests_through_the_module_and_keeps_its_discriminator_in_the_checkpoint(tmp_path):
    loss = {
        "_target_": "cvae_exp.objective.FactorVAE", "likelihood": "gaussian", "latent_dim": 4, "hidden": 16,
        "layers": 2, "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
    }  # fmt: skip
    module, data = module_and_data(tmp_path, (1, 28, 28), loss)
    untrained = [p.detach().clone() for p in module.objective.parameters()]
    fitted, tested = fit_and_test(module, data, tmp_path)
    for name in ("loss", "recon", "kl", "tc", "discriminator"):
        assert math.isfinite(fitted[f"train/{name}"].item()) and math.isfinite(tested[f"test/{name}"]), name
    assert fitted["train/gamma"].item() == pytest.approx(6.4)
    assert all(not torch.equal(p, q) for p, q in zip(module.objective.parameters(), untrained))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "f.ckpt")
    loaded = CVAEModule.load_from_checkpoint(tmp_path / "f.ckpt", weights_only=False)
    for p, q in zip(loaded.objective.parameters(), module.objective.parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches=2: is not supported with"),
        ("+trainer.gradient_clip_val=1.0", "Invalid config value trainer.gradient_clip_val=1.0: is not supported"),
        ("model.latent_dim=4", None),
    ],
)
def test_the_cli_runs_factorvae_and_refuses_what_manual_optimisation_cannot_do(tmp_path, mnist_root, override, message):
    arguments = ["loss=factorvae", "loss.hidden=16", "loss.layers=2", override, f"data.root={mnist_root}"]
    if message is not None:
        assert_refused(run_cli(*arguments, cwd=tmp_path), "train", message)
        assert list(tmp_path.iterdir()) == []
        return
    result = run_cli(*arguments, "debug=fast", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def test_float16_loss_scaling_is_refused_for_an_objective_with_its_own_optimizer(tmp_path):
    """16-mixed needs a GPU, so the CLI refuses it on this machine first; the objective's check
    refuses it wherever it runs."""
    from omegaconf import OmegaConf

    from cvae_exp.checks import _check_objective
    from cvae_exp.errors import UserInputError

    loss = OmegaConf.create({"_target_": "cvae_exp.objective.FactorVAE", "latent_dim": 4, "hidden": 8, "layers": 2,
                             "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True}})  # fmt: skip
    module, _ = module_and_data(tmp_path, (1, 28, 28), {"likelihood": "gaussian"})
    with pytest.raises(UserInputError, match=r"trainer.precision='16-mixed': is not supported with"):
        _check_objective(loss, module.cvae, OmegaConf.create({"precision": "16-mixed"}))
    _check_objective(loss, module.cvae, OmegaConf.create({"precision": "bf16-mixed"}))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss.gamma=abc"], "loss.gamma='abc' must be a number >= 0"),
        (["loss.hidden=0"], "loss.hidden=0 must be an integer >= 1"),
        (["loss.optimizer.lr=-1"], "Invalid config at loss.optimizer: Invalid learning rate: -1"),
        (["+loss.optimizer.momentum=0.9"], "Invalid config at loss.optimizer:"),
        (["+trainer.gradient_clip_val=0"], None),  # Lightning's "no clipping"
    ],
)
def test_factorvaes_own_arguments_are_checked_before_the_run(compose_train, overrides, message):
    from cvae_exp.checks import validate
    from cvae_exp.errors import UserInputError

    cfg = compose_train(["loss=factorvae", "loss.layers=2", *overrides])
    if message is None:
        validate(cfg, devices_here=False)
        return
    with pytest.raises(UserInputError) as refusal:
        validate(cfg, devices_here=False)
    assert message in str(refusal.value)


class CriticWithoutOptimizer(torch.nn.Module, ELBO):
    """An objective with a parameter of its own and no way to train it."""

    def __init__(self, **elbo):
        torch.nn.Module.__init__(self)
        ELBO.__init__(self, **elbo)
        self.scale = torch.nn.Parameter(torch.ones(()))


def test_an_objective_with_parameters_but_without_their_optimizer_is_refused(compose_train):
    from cvae_exp.checks import validate
    from cvae_exp.errors import UserInputError

    cfg = compose_train([f"loss._target_={__name__}.CriticWithoutOptimizer"])
    with pytest.raises(UserInputError, match=r"optimizer\(parameters\)` and `own_loss\(result\)`"):
        validate(cfg, devices_here=False)


SMALL_FACTORVAE = ["loss=factorvae", "loss.hidden=8", "loss.layers=2"]


@pytest.mark.parametrize(
    ("saved", "continued", "refused"),
    [
        (["loss=elbo"], SMALL_FACTORVAE, "objective.discriminator.0."),
        (SMALL_FACTORVAE, ["loss=elbo"], "objective.discriminator.0."),
        (SMALL_FACTORVAE, ["loss=factorvae", "loss.hidden=12", "loss.layers=2"], "objective.discriminator.0."),
        (SMALL_FACTORVAE, SMALL_FACTORVAE, None),
    ],
)
def test_ckpt_path_continues_only_under_the_objective_it_was_trained_with(
    compose_train, tmp_path, saved, continued, refused
):
    from cvae_exp.checks import validate
    from cvae_exp.errors import UserInputError
    from cvae_exp.run import build_module

    # what the check reads of a Lightning checkpoint: the weights, and the epoch it ended
    torch.save({"state_dict": build_module(compose_train(saved)).state_dict(), "epoch": 0}, tmp_path / "saved.ckpt")
    cfg = compose_train([*continued, f"ckpt_path={tmp_path / 'saved.ckpt'}"])
    if refused is None:
        validate(cfg, devices_here=False)
        return
    with pytest.raises(UserInputError, match="the checkpoint's objective has other parameters") as refusal:
        validate(cfg, devices_here=False)
    assert refused in str(refusal.value)
