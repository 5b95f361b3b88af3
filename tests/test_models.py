"""The CVAE as the configs build it: shapes, conditioning, the report's GenModel, training."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cvae_exp.data import ImageSplits, TensorDataModule
from cvae_exp.metrics import quantize_uint8, ssim_per_image
from cvae_exp.models.conditioning import Concat, Conditioning, FiLMLayer
from cvae_exp.models.conv import ConvDecoder, ConvEncoder
from cvae_exp.module import CVAEModule
from cvae_exp.objective import ELBO

CONFIGS = Path(__file__).parents[1] / "configs"
NUM_CLASSES = 10
BATCH = 10
# The shipped architectures shrunk to a few units, so that every combination trains in milliseconds.
TINY = {
    "mlp": {"latent_dim": 4, "encoder": {"hidden_dims": [16, 16]}, "decoder": {"hidden_dims": [16, 16]}},
    "conv": {"latent_dim": 4, "encoder": {"channels": [4, 8]}, "decoder": {"channels": [8, 4]}},
}
MODELS = pytest.mark.parametrize("model", ["mlp", "conv"])
CONDITIONINGS = pytest.mark.parametrize("conditioning", ["none", "concat", "film"])
IMAGE_SHAPES = pytest.mark.parametrize("image_shape", [(1, 28, 28), (3, 32, 32)], ids=["1x28x28", "3x32x32"])


def load_config(group: str, name: str):
    return OmegaConf.load(CONFIGS / group / f"{name}.yaml")


def build(model: str, conditioning: str, image_shape=(1, 28, 28), overrides=None):
    config = OmegaConf.merge(load_config("model", model), overrides or {})
    return instantiate(
        config,
        conditioning=instantiate(load_config("conditioning", conditioning)),
        image_shape=list(image_shape),
        num_classes=NUM_CLASSES,
    )


def tiny(model: str, conditioning: str, image_shape=(1, 28, 28)):
    torch.manual_seed(0)
    return build(model, conditioning, image_shape, TINY[model])


def batch(image_shape) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(BATCH, *image_shape, generator=generator), torch.arange(BATCH) % NUM_CLASSES


def train(cvae, images, labels, steps: int = 1, lr: float = 1e-3) -> torch.Tensor:
    optimizer = torch.optim.Adam(cvae.parameters(), lr=lr)
    objective = ELBO()
    for _ in range(steps):
        output = cvae(images, labels)
        loss = objective.terms(images, output.logits, output.kl, beta=1.0)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.detach()


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in module.named_parameters()}


def unchanged(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    return [name for name, parameter in module.named_parameters() if torch.equal(parameter, before[name])]


@MODELS
@CONDITIONINGS
@IMAGE_SHAPES
def test_forward_sample_and_reconstruct_shapes(model, conditioning, image_shape):
    cvae = tiny(model, conditioning, image_shape)
    images, labels = batch(image_shape)
    output = cvae(images, labels)
    assert output.logits.shape == (BATCH, *image_shape)
    for latent in (output.mu, output.logvar, output.z):
        assert latent.shape == (BATCH, cvae.latent_dim)

    samples = cvae.sample(torch.tensor([3, 7, 7]), n=2)
    assert samples.shape == (6, *image_shape)
    assert samples.min() >= 0 and samples.max() <= 1

    reconstruction = cvae.reconstruct(images, labels, use_mean=True)
    assert reconstruction.shape == images.shape
    assert torch.equal(reconstruction, cvae.reconstruct(images, labels, use_mean=True))
    assert not torch.equal(cvae.reconstruct(images, labels), cvae.reconstruct(images, labels))


@MODELS
@CONDITIONINGS
@IMAGE_SHAPES
def test_one_adam_step_is_finite_and_moves_every_parameter(model, conditioning, image_shape):
    cvae = tiny(model, conditioning, image_shape)
    before = snapshot(cvae)
    loss = train(cvae, *batch(image_shape))
    assert torch.isfinite(loss)
    assert all(torch.isfinite(parameter.grad).all() for parameter in cvae.parameters())
    assert unchanged(cvae, before) == []


@MODELS
@pytest.mark.parametrize(("conditioning", "label_matters"), [("none", False), ("concat", True), ("film", True)])
def test_decoded_image_depends_on_label_only_when_conditioned(model, conditioning, label_matters):
    cvae = tiny(model, conditioning)
    images, labels = batch((1, 28, 28))
    train(cvae, images, labels, steps=3, lr=1e-2)
    z = torch.randn(4, cvae.latent_dim)
    with torch.no_grad():
        as_zeros, as_ones = (
            cvae.decode(z, torch.zeros(4, dtype=torch.long)),
            cvae.decode(z, torch.ones(4, dtype=torch.long)),
        )
    if label_matters:
        assert (as_zeros - as_ones).abs().max() > 1e-4
    else:
        assert torch.equal(as_zeros, as_ones)


@MODELS
def test_film_model_starts_as_the_unconditional_network(model):
    cvae = tiny(model, "film")
    z = torch.randn(4, cvae.latent_dim)
    with torch.no_grad():
        assert torch.equal(cvae.decode(z, torch.zeros(4, dtype=torch.long)), cvae.decode(z, torch.full((4,), 9)))


@pytest.mark.parametrize("hidden_shape", [(5, 6), (5, 6, 3, 4)], ids=["flat", "feature-map"])
def test_film_layer_is_identity_at_init_then_scales_and_shifts_features(hidden_shape):
    layer = FiLMLayer(Conditioning(NUM_CLASSES), num_features=6)
    hidden, labels = torch.randn(hidden_shape), torch.tensor([0, 3, 3, 9, 1])
    assert torch.equal(layer(hidden, labels), hidden)

    torch.nn.init.normal_(layer.scale_and_shift.weight)
    scale, shift = layer.scale_and_shift.weight[labels].detach().split(6, dim=1)
    feature_axis = (slice(None), slice(None)) + (None,) * (len(hidden_shape) - 2)
    expected = hidden * (1 + scale[feature_axis]) + shift[feature_axis]
    torch.testing.assert_close(layer(hidden, labels), expected)


def linear_parameters(in_features: int, out_features: int) -> int:
    return in_features * out_features + out_features


def test_mlp_concat_is_the_reports_genmodel():
    cvae = build("mlp", "concat")
    pixels, latent = 28 * 28, 20
    encoder = (
        linear_parameters(pixels + NUM_CLASSES, 400) + linear_parameters(400, 400) + 2 * linear_parameters(400, latent)
    )
    decoder = (
        linear_parameters(latent + NUM_CLASSES, 400) + linear_parameters(400, 400) + linear_parameters(400, pixels)
    )
    assert sum(parameter.numel() for parameter in cvae.parameters()) == encoder + decoder


@pytest.mark.parametrize(("network", "channels"), [(ConvEncoder, [32, 64, 128]), (ConvDecoder, [128, 64, 32])])
def test_conv_rejects_image_sides_it_cannot_halve_enough(network, channels):
    with pytest.raises(ValueError, match=r"28 x 28 allows at most 2"):
        network([1, 28, 28], 20, Concat(NUM_CLASSES), channels=channels)


def random_splits(root, num_train: int = 24, num_test: int = 20) -> ImageSplits:
    generator = torch.Generator().manual_seed(0)
    total = num_train + num_test
    images = torch.randint(0, 256, (total, 1, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.arange(total) % NUM_CLASSES  # every class in every split, as the grader needs
    return ImageSplits(images[:num_train], labels[:num_train], images[num_train:], labels[num_train:])


def tiny_module(
    tmp_path, conditioning: str, val_size: int, val_ssim_images: int
) -> tuple[CVAEModule, TensorDataModule]:
    """A small MLP CVAEModule and its DataModule over 24 random images, in batches of 8."""
    torch.manual_seed(0)
    data_args = dict(
        name="random",
        source=random_splits,
        root=str(tmp_path),
        image_shape=[1, 28, 28],
        num_classes=NUM_CLASSES,
        batch_size=8,
        val_size=val_size,
    )
    module = CVAEModule(
        model=OmegaConf.to_container(OmegaConf.merge(load_config("model", "mlp"), TINY["mlp"])),
        conditioning=OmegaConf.to_container(load_config("conditioning", conditioning)),
        loss={"likelihood": "gaussian", "var": 0.5, "beta": 1.0, "warmup_steps": 0},
        optim={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
        data=data_args,
        eval={
            "val_ssim_images": val_ssim_images,
            "recon_z": "sample",
            "samples_per_class": 3,
            "save_images": False,
            "classifier_metrics": False,
        },
    )
    return module, TensorDataModule(**data_args)


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_lightning_module_trains_on_cpu(precision, tmp_path):
    # 24 training images - 8 for validation = one epoch of two batches of 8.
    module, data = tiny_module(tmp_path, "film", val_size=8, val_ssim_images=1000)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        default_root_dir=tmp_path,
    )
    before = snapshot(module)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 2
    for name in ("train/loss", "val/loss"):
        assert math.isfinite(trainer.callback_metrics[name].item()), name
    assert unchanged(module, before) == []
    (graded,) = trainer.test(module, datamodule=data, verbose=False)
    for name in ("ssim", "mse", "fid", "score", "score_uncapped"):
        assert math.isfinite(graded[f"test/{name}"]), name


@pytest.mark.parametrize("val_size,graded", [(16, 11), (20, 18)])
def test_val_ssim_is_the_graders_ssim_over_the_first_images(tmp_path, monkeypatch, val_size, graded):
    """val/ssim: the grader's SSIM of the first `eval.val_ssim_images` validation images
    (11 of 16 across two batches of 8; 18 of 20, whose last batch holds 4); val/mse: the whole split."""
    module, data = tiny_module(tmp_path, "concat", val_size=val_size, val_ssim_images=graded)
    evaluate = module._evaluate
    monkeypatch.setattr(
        module,
        "_evaluate",
        lambda images, condition, mask, stage: (evaluate(images, condition, mask, stage), images.sqrt())[1],
    )  # known reconstructions
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    (metrics,) = trainer.validate(module, datamodule=data, verbose=False)
    images = data.images("val")[0].float() / 255
    expected_ssim = (
        ssim_per_image(quantize_uint8(images[:graded]), quantize_uint8(images[:graded].sqrt())).mean().item()
    )
    assert metrics["val/ssim"] == pytest.approx(expected_ssim, rel=1e-6)
    assert metrics["val/mse"] == pytest.approx((images - images.sqrt()).pow(2).mean().item(), rel=1e-5)
