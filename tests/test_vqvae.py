"""VQ-VAE (cvae_exp/models/vqvae.py, loss=vqvae): the quantiser against a brute-force nearest
neighbour, its straight-through gradient and codebook update against their definitions, the
prior over codes against enumeration and its own samples, the objective's terms against
their formula; then the model through the configs, the module and the CLI's refusals."""

import itertools
import math
import re

import pytest
import torch
from hydra.utils import instantiate
from torch.nn import functional as F

from cvae_exp.checks import validate
from cvae_exp.errors import UserInputError
from cvae_exp.models.conditioning import Conditioning
from cvae_exp.models.vqvae import CodePrior, VectorQuantizer
from cvae_exp.module import CVAEModule
from cvae_exp.objective import VectorQuantized
from tests.helpers import run_cli
from tests.test_failure_paths import assert_refused
from tests.test_seams import fit_and_test, module_and_data


def test_each_vector_gets_its_nearest_code():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(codebook_size=7, code_dim=3)
    torch.nn.init.normal_(quantizer.codebook.weight)
    z_e = torch.randn(5, 4, 3)
    z_q, codes, codebook, commitment = quantizer(z_e)
    nearest = torch.cdist(z_e.flatten(0, 1), quantizer.codebook.weight).argmin(1).view(5, 4)
    assert torch.equal(codes, nearest)
    assert torch.allclose(z_q, quantizer.codebook.weight[codes])
    expected = (z_e - quantizer.codebook.weight[codes]).pow(2).sum((1, 2))
    assert torch.allclose(codebook, expected) and torch.allclose(commitment, expected)


def test_the_straight_through_gradient_passes_the_decoders_gradient_to_the_encoder_unchanged():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(codebook_size=5, code_dim=2)
    z_e = torch.randn(3, 4, 2, requires_grad=True)
    weights = torch.randn(3, 4, 2)
    z_q, _, _, _ = quantizer(z_e)
    (z_q * weights).sum().backward()
    assert torch.equal(z_e.grad, weights)
    assert quantizer.codebook.weight.grad is None  # the decoder's loss does not move the codebook


def test_a_code_unused_for_the_set_steps_is_moved_onto_an_encoder_output_and_then_used():
    """Codes 1..3 sit far from every vector, so code 0 takes all: after 2 steps unused they
    restart on vectors of the batch, which then choose them; a code in use is never moved."""
    quantizer = VectorQuantizer(codebook_size=4, code_dim=2, restart_unused_codes=2).train()
    with torch.no_grad():
        quantizer.codebook.weight.copy_(torch.tensor([[0.0, 0.0], [50.0, 50.0], [60.0, 60.0], [70.0, 70.0]]))
    torch.manual_seed(0)
    z_e = torch.randn(8, 3, 2)
    _, codes, _, _ = quantizer(z_e)
    assert codes.eq(0).all() and quantizer.steps_unused.tolist() == [0, 1, 1, 1]
    _, codes, _, _ = quantizer(z_e)  # the second step unused: codes 1..3 move, and this step uses them
    moved = quantizer.codebook.weight[1:]
    assert torch.equal(quantizer.codebook.weight[0], torch.zeros(2))
    assert all(any(torch.equal(row, vector) for vector in z_e.flatten(0, 1)) for row in moved)
    nearest = torch.cdist(z_e.flatten(0, 1), quantizer.codebook.weight).argmin(1).view(8, 3)
    assert torch.equal(codes, nearest) and set(codes.unique().tolist()) > {0}
    assert quantizer.steps_unused[1:].eq(0).all()
    quantizer.eval()
    before = quantizer.codebook.weight.clone()
    for _ in range(3):
        quantizer(torch.zeros(2, 3, 2))  # evaluation never restarts
    assert torch.equal(quantizer.codebook.weight, before)


def test_without_restarts_the_quantizer_has_no_counter_and_keeps_its_checkpoint_keys():
    assert set(VectorQuantizer(4, 2).state_dict()) == {"codebook.weight"}
    with pytest.raises(Exception, match=r"model.restart_unused_codes=-1 must be an integer >= 0"):
        vqvae(restart_unused_codes=-1)


def test_the_codebook_term_moves_each_used_code_to_its_vectors_mean_and_the_commitment_term_only_the_encoder():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(codebook_size=4, code_dim=2)
    torch.nn.init.normal_(quantizer.codebook.weight)
    z_e = torch.randn(6, 3, 2, requires_grad=True)
    _, codes, codebook, commitment = quantizer(z_e)
    codebook.sum().backward()
    assert z_e.grad is None or not z_e.grad.any()  # sg[z_e]: the codebook term leaves the encoder alone
    weight, flat, assigned = quantizer.codebook.weight.detach(), z_e.detach().flatten(0, 1), codes.flatten()
    for k in range(4):
        rows = flat[assigned == k]
        # d/de_k of sum ||e_k - z||^2 over the vectors z assigned to code k
        expected = 2 * (len(rows) * weight[k] - rows.sum(0)) if len(rows) else torch.zeros(2)
        assert torch.allclose(quantizer.codebook.weight.grad[k], expected, atol=1e-6)
        if len(rows):  # one step of size 1 / (2 n_k) lands on the mean of its vectors
            assert torch.allclose(weight[k] - quantizer.codebook.weight.grad[k] / (2 * len(rows)), rows.mean(0))
    quantizer.codebook.weight.grad = None
    z_e.grad = None
    _, codes, _, commitment = quantizer(z_e)
    commitment.sum().backward()
    assert quantizer.codebook.weight.grad is None
    assert torch.allclose(z_e.grad, 2 * (z_e - quantizer.codebook.weight[codes]).detach())


@pytest.mark.parametrize("autoregressive", [True, False])
@pytest.mark.parametrize("conditional", [True, False])
def test_the_prior_over_codes_is_a_distribution_and_samples_from_itself(autoregressive, conditional):
    """p(codes | c) sums to 1 over all K^M sequences; its samples' frequencies match it."""
    torch.manual_seed(0)
    prior = CodePrior(
        2, 3, Conditioning(num_classes=2), hidden=16, autoregressive=autoregressive, conditional=conditional
    )
    for parameter in prior.parameters():
        torch.nn.init.normal_(parameter)  # far from uniform
    sequences = torch.tensor(list(itertools.product(range(3), repeat=2)))
    for label in (0, 1):
        condition = torch.full((len(sequences),), label)
        probabilities = prior.log_prob(sequences, condition).exp()
        assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-5)
        draws = prior.sample(torch.full((20000,), label))
        frequencies = torch.stack([(draws == s).all(1).float().mean() for s in sequences])
        assert torch.allclose(frequencies, probabilities, atol=0.015), (frequencies, probabilities)
    other = prior.log_prob(sequences, torch.ones(len(sequences), dtype=torch.long))
    assert (not torch.allclose(prior.log_prob(sequences, torch.zeros(len(sequences), dtype=torch.long)), other)) == (
        conditional
    )


def vqvae(conditioning="Concat", **changes):
    model = {
        "_target_": "cvae_exp.models.VQVAE",
        "latent_dim": 8,
        "codebook_size": 5,
        "code_dim": 2,
        "encoder": {"_target_": "cvae_exp.models.mlp.MLPEncoder", "_partial_": True, "hidden_dims": [16]},
        "decoder": {"_target_": "cvae_exp.models.mlp.MLPDecoder", "_partial_": True, "hidden_dims": [16]},
        "code_prior": {"_target_": "cvae_exp.models.vqvae.CodePrior", "_partial_": True, "hidden": 8},
        **changes,
    }
    conditioning = instantiate({"_target_": f"cvae_exp.models.conditioning.{conditioning}", "_partial_": True})
    return instantiate(model, conditioning=conditioning, image_shape=[1, 4, 4], num_classes=3)


def test_the_kl_term_is_minus_log_p_of_the_codes_and_trains_the_prior_alone():
    torch.manual_seed(0)
    model, x, labels = vqvae(), torch.rand(6, 1, 4, 4).round(), torch.tensor([0, 1, 2, 0, 1, 2])
    objective = VectorQuantized(likelihood="bernoulli", commitment=0.25)
    result = objective(model, x, labels)
    output = result.output
    assert torch.allclose(output.kl, -model.code_prior.log_prob(output.codes, labels))
    recon = F.binary_cross_entropy_with_logits(output.logits, x, reduction="none").sum((1, 2, 3)).mean()
    expected = recon + output.codebook.mean() + 0.25 * output.commitment.mean() + output.kl.mean()
    assert result.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert result.terms["neg_elbo"].item() == pytest.approx((recon + output.kl.mean()).item(), rel=1e-6)
    result.terms["kl"].backward()
    assert all(p.grad is None for p in [*model.encoder.parameters(), *model.decoder.parameters()])
    assert model.quantizer.codebook.weight.grad is None
    assert any(p.grad is not None and p.grad.any() for p in model.code_prior.parameters())


def test_samples_decode_codes_of_the_codebook():
    torch.manual_seed(0)
    model = vqvae()
    images = model.sample(torch.tensor([0, 2]), n=3)
    assert images.shape == (6, 1, 4, 4) and ((images >= 0) & (images <= 1)).all()
    posterior = model.encode(torch.rand(2, 1, 4, 4), torch.tensor([0, 1]))
    assert torch.equal(posterior.rsample(), posterior.mean) and posterior.rsample(3).shape == (3, 2, 8)
    with pytest.raises(ValueError, match="point mass"):
        posterior.log_prob(posterior.mean)


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"latent_dim": 7}, "model.latent_dim=7 must be a multiple of model.code_dim=2"),
        ({"codebook_size": 1}, "model.codebook_size=1 must be an integer >= 2"),
        ({"codebook_size": 64.0}, "model.codebook_size=64.0 must be an integer >= 2"),
        (
            {"code_prior": {"_target_": "cvae_exp.models.vqvae.CodePrior", "_partial_": True, "hidden": 2.5}},
            "model.code_prior.hidden=2.5 must be an integer >= 1",
        ),
        ({"prior": {"_target_": "cvae_exp.models.priors.MixturePrior", "_partial_": True}}, "takes prior=standard"),
    ],
)
def test_a_vqvae_refuses_what_it_cannot_be(changes, fragment):
    with pytest.raises(Exception, match=fragment):
        vqvae(**changes)


def test_the_module_trains_and_tests_a_vqvae(tmp_path):
    loss = {"_target_": "cvae_exp.objective.VectorQuantized", "likelihood": "bernoulli"}
    module, data = module_and_data(tmp_path, (1, 28, 28), loss)
    module = CVAEModule(
        **{**module.hparams, "model": {**module.hparams["model"], "_target_": "cvae_exp.models.VQVAE", "code_dim": 4}}
    )
    fitted, tested = fit_and_test(module, data, tmp_path)
    for name in ("train/codebook", "train/commitment", "val/kl", "val/neg_elbo"):
        assert math.isfinite(fitted[name].item()), name
    assert math.isfinite(tested["test/neg_elbo"]) and "test/score" in tested


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["model=vqvae"], "loss=vqvae"),  # the ELBO's Gaussian latent
        (["model=vqvae", "loss=iwae"], "loss=vqvae"),
        (["loss=vqvae"], "model=vqvae"),
        (
            ["model=vqvae", "loss=vqvae", "prior=conditional"],
            "takes prior=standard, the default, not prior=conditional.",
        ),
        (["model=vqvae", "loss=vqvae", "model.code_prior.hidden=0"], "[1, 28, 28]: model.code_prior.hidden=0 must"),
        (["model=vqvae", "loss=vqvae", "eval.nll_samples=10"], "eval.nll_samples=10"),
        (["model=vqvae", "loss=vqvae", "eval.sampler=gmm"], "model=vqvae"),
        (["model=vqvae", "loss=vqvae", "loss.commitment=-1"], "loss.commitment=-1"),
    ],
)
def test_what_a_vqvae_cannot_take_is_refused_before_the_run(compose_train, overrides, fragment):
    with pytest.raises(UserInputError, match=re.escape(fragment)):
        validate(compose_train(overrides), devices_here=False)


def test_cvae_train_refuses_a_vqvae_under_the_elbo_in_one_paragraph(tmp_path):
    result = run_cli("model=vqvae", "debug=fast", cwd=tmp_path)
    assert_refused(result, "train", "loss=vqvae")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("mode", ["interpolate", "traverse"])
def test_grids_between_or_around_codes_are_refused_and_the_code_samples_drawn(mode):
    """The decoder has seen only code vectors: mode=interpolate and mode=traverse are refused
    with one line, the TensorBoard callback draws neither those nor the label swap."""
    from cvae_exp import visualize
    from cvae_exp.callbacks import standard_normal_latent

    model = vqvae()
    with pytest.raises(ValueError, match="model=vqvae cannot draw a"):
        if mode == "interpolate":
            visualize.latent_interpolation(model, torch.tensor([0, 1]), steps=3)
        else:
            visualize.traversal(model, torch.tensor([0]), dim=0)
    assert not standard_normal_latent(model)
    torch.manual_seed(0)
    z = model.sample_latent(torch.tensor([0, 1, 2]))
    codebook = model.quantizer.codebook.weight
    assert all(any(torch.equal(vector, code) for code in codebook) for vector in z.view(-1, 2))


@pytest.mark.slow  # trains a short VQ-VAE run, then refuses three commands on it: 30 s
def test_cvae_eval_sample_and_resume_refuse_on_a_vqvae_run_what_it_cannot_do(tmp_path):
    run = tmp_path / "run"
    trained = run_cli("model=vqvae", "loss=vqvae", "debug=fast", f"hydra.run.dir={run}", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    before = sorted(path.relative_to(run) for path in run.rglob("*"))
    nll = run_cli(str(run), "--nll-samples", "10", cwd=tmp_path, tool="eval")
    assert_refused(nll, "eval", "--nll-samples 10", "point mass", "test/neg_elbo")
    interpolated = run_cli(str(run), "mode=interpolate", cwd=tmp_path, tool="sample")
    assert_refused(interpolated, "sample", "model=vqvae cannot draw an interpolation", "mode=grid")
    resumed = run_cli(f"resume={run}", "trainer.max_epochs=2", "model.codebook_size=64", cwd=tmp_path)
    advice = "cvae-train model=vqvae loss=vqvae debug=fast trainer.max_epochs=2 model.codebook_size=64"
    assert_refused(resumed, "train", "Cannot change model.codebook_size (to 64, saved 128)")
    assert resumed.stderr.strip().endswith(f": {advice}")  # unpunctuated: it copies as it stands
    assert sorted(path.relative_to(run) for path in run.rglob("*")) == before


def test_a_vqvaes_own_arguments_are_hyperparameters_of_its_run(compose_train):
    """metrics.json's hparams, TensorBoard's HParams and cvae-table's columns tell runs of
    another model.codebook_size apart; the networks' nested nodes stay out."""
    from cvae_exp.summary import run_summary

    summary = run_summary(compose_train(["model=vqvae", "loss=vqvae", "model.codebook_size=16"]))
    assert summary["model"] == "vqvae" and summary["model.codebook_size"] == 16 and summary["model.code_dim"] == 4
    assert not any(key.startswith(("model.encoder", "model.decoder", "model.latent_dim")) for key in summary)


def test_an_unconditional_vqvae_has_an_unconditional_prior_over_its_codes():
    """conditioning=none: the label reaches neither the networks nor p(codes), even where
    model.code_prior.conditional says true."""
    prior = {"_target_": "cvae_exp.models.vqvae.CodePrior", "_partial_": True, "hidden": 8, "conditional": True}
    model = vqvae(conditioning="Conditioning", code_prior=prior)
    assert not model.is_conditional and model.code_prior.condition is None
    log_p = model.code_prior.log_prob(torch.tensor([[0, 1, 2, 3]] * 2), torch.tensor([0, 2]))
    assert log_p[0] == log_p[1]
