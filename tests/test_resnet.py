"""model=resnet: shapes for grey and colour images, every conditioning, the residual path, training."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cvae_exp.models.conditioning import Concat
from cvae_exp.models.resnet import ResidualBlock, ResNetDecoder, ResNetEncoder
from cvae_exp.objective import ELBO

CONFIGS = Path(__file__).parents[1] / "configs"
NUM_CLASSES = 10
# configs/model/resnet.yaml shrunk to a few channels and one block per stage.
TINY = {"latent_dim": 4, "encoder": {"channels": [4, 8], "blocks": 1}, "decoder": {"channels": [8, 4], "blocks": 1}}
TINY_DEEP = {  # three stages of two blocks: 64x64 -> 8x8
    "latent_dim": 4,
    "encoder": {"channels": [4, 4, 8], "blocks": 2},
    "decoder": {"channels": [8, 4, 4], "blocks": 2},
}
CONDITIONINGS = pytest.mark.parametrize("conditioning", ["none", "concat", "film"])
CASES = pytest.mark.parametrize(
    ("image_shape", "overrides"),
    [((1, 28, 28), TINY), ((3, 32, 32), TINY), ((3, 64, 64), TINY_DEEP)],
    ids=["1x28x28", "3x32x32", "3x64x64"],
)


def build(conditioning: str, image_shape, overrides=TINY):
    torch.manual_seed(0)
    config = OmegaConf.merge(OmegaConf.load(CONFIGS / "model" / "resnet.yaml"), overrides)
    return instantiate(
        config,
        conditioning=instantiate(OmegaConf.load(CONFIGS / "conditioning" / f"{conditioning}.yaml")),
        image_shape=list(image_shape),
        num_classes=NUM_CLASSES,
    )


def batch(image_shape, size: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(size, *image_shape, generator=generator), torch.arange(size) % NUM_CLASSES


@CONDITIONINGS
@CASES
def test_forward_and_sample_shapes_with_a_batch_of_one(conditioning, image_shape, overrides):
    cvae = build(conditioning, image_shape, overrides).eval()
    images, labels = batch(image_shape, size=1)
    output = cvae(images, labels)
    assert output.logits.shape == (1, *image_shape)
    for latent in (output.mu, output.logvar, output.z):
        assert latent.shape == (1, cvae.latent_dim)
    assert cvae.sample(torch.tensor([3]), n=2).shape == (2, *image_shape)
    assert cvae.reconstruct(images, labels, use_mean=True).shape == images.shape


@CONDITIONINGS
def test_train_and_eval_compute_the_same_thing(conditioning):
    """GroupNorm keeps no batch statistics: eval() changes nothing, and an image's output
    does not depend on the others in its batch."""
    cvae = build(conditioning, (3, 32, 32))
    images, labels = batch((3, 32, 32))
    with torch.no_grad():
        trained = cvae.reconstruct(images, labels, use_mean=True)
        evaluated = cvae.eval().reconstruct(images, labels, use_mean=True)
        alone = cvae.reconstruct(images[:1], labels[:1], use_mean=True)
    torch.testing.assert_close(trained, evaluated)
    torch.testing.assert_close(alone, evaluated[:1])


@pytest.mark.parametrize(("network", "channels"), [(ResNetEncoder, [8, 16, 32]), (ResNetDecoder, [32, 16, 8])])
def test_rejects_image_sides_it_cannot_halve_enough(network, channels):
    with pytest.raises(ValueError, match=r"28 x 28 allows at most 2"):
        network([1, 28, 28], 4, Concat(NUM_CLASSES), channels=channels)
    with pytest.raises(ValueError, match=r"30 x 30 allows at most 1"):
        network([3, 30, 30], 4, Concat(NUM_CLASSES), channels=channels[:2])


@pytest.mark.parametrize("network", [ResNetEncoder, ResNetDecoder])
def test_rejects_a_stage_without_blocks(network):
    with pytest.raises(ValueError, match=r"blocks=0 must be an integer >= 1"):
        network([3, 32, 32], 4, Concat(NUM_CLASSES), channels=[4, 8], blocks=0)


def test_a_block_with_its_last_conv_zeroed_passes_its_input_through():
    block = ResidualBlock(6, 6, groups=3)
    x = torch.randn(2, 6, 8, 8)
    assert isinstance(block.skip, torch.nn.Identity)
    assert not torch.allclose(block(x), x)  # the residual branch adds something at init
    torch.nn.init.zeros_(block.conv2.weight)
    torch.nn.init.zeros_(block.conv2.bias)
    assert torch.equal(block(x), x)


@pytest.mark.parametrize(("resample", "size"), [(None, 8), ("down", 4), ("up", 16)])
def test_a_block_that_changes_the_shape_adds_a_projection_skip(resample, size):
    block = ResidualBlock(4, 6, resample, groups=2)
    x = torch.randn(2, 4, 8, 8)
    assert isinstance(block.skip, torch.nn.Conv2d) and block.skip.kernel_size == (1, 1)
    assert block(x).shape == (2, 6, size, size)
    torch.nn.init.zeros_(block.conv2.weight)
    torch.nn.init.zeros_(block.conv2.bias)
    upsampled = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest") if resample == "up" else x
    torch.testing.assert_close(block(x), block.skip(upsampled))


def elbo(cvae, images, labels) -> torch.Tensor:
    torch.manual_seed(2)  # the same posterior sample each time
    output = cvae(images, labels)
    return ELBO().terms(images, output.logits, output.kl, beta=1.0)["loss"]


@CONDITIONINGS
def test_a_few_adam_steps_lower_the_negative_elbo(conditioning):
    cvae = build(conditioning, (3, 32, 32))
    images, labels = batch((3, 32, 32))
    optimizer = torch.optim.Adam(cvae.parameters(), lr=3e-3)
    with torch.no_grad():
        before = elbo(cvae, images, labels)
    for _ in range(8):
        loss = elbo(cvae, images, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.isfinite(parameter.grad).all() for parameter in cvae.parameters())
    with torch.no_grad():
        after = elbo(cvae, images, labels)
    # Uniform noise leaves about 256 nats of reconstruction error that no model removes; the steps take off 10.
    assert after < before - 5, (before, after)
