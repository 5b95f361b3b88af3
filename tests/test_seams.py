"""The seams a user extends: the objective's output contract, the DataModule's consumer
protocol, colour images past the lab's grader, the config source flags, the loaders."""

import functools
import math
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf

from cvae_exp import sample, visualize
from cvae_exp.compose import config_source
from cvae_exp.data import ImageSplits, TensorDataModule
from cvae_exp.data.sources import _whole, load_digits
from cvae_exp.errors import UserInputError
from cvae_exp.evaluation import grader_skipped
from cvae_exp.models import build_cvae
from cvae_exp.module import CVAEModule
from cvae_exp.objective import ELBO, LossOutput
from cvae_exp.tasks import AttributesTask
from cvae_exp.train import config_flags
from tests.test_models import CONFIGS, TINY, tiny


class ELBOPlusLatentNorm(ELBO):
    """The ELBO and one extra term, as a user's objective would add one."""

    def __call__(self, model, x, condition, mask=None, step=None):
        result = super().__call__(model, x, condition, mask, step)
        norm = result.output.z.pow(2).sum(1).mean()
        return LossOutput(
            result.loss + 0.1 * norm, {**result.terms, "loss": result.loss + 0.1 * norm, "norm": norm}, result.output
        )


def test_the_elbo_returns_its_loss_and_terms_from_the_models_forward_pass():
    """ELBO(model, x, c) is terms() of the same forward pass (same draws of z)."""
    cvae = tiny("mlp", "concat")
    images, labels = torch.rand(6, 1, 28, 28), torch.arange(6)
    torch.manual_seed(3)
    result = ELBO(beta=0.5, warmup_steps=10)(cvae, images, labels, step=4)
    torch.manual_seed(3)
    output = cvae(images, labels)
    expected = ELBO(beta=0.5).terms(images, output.logits, output.kl, beta=0.5 * 4 / 10)
    assert set(result.terms) == {"loss", "recon", "kl"} and result.loss is result.terms["loss"]
    for name, value in expected.items():
        torch.testing.assert_close(result.terms[name], value)
    torch.manual_seed(3)  # validation and test (step None) use the configured beta
    evaluated = ELBO(beta=0.5, warmup_steps=10)(cvae, images, labels)
    torch.testing.assert_close(evaluated.loss, expected["recon"] + 0.5 * expected["kl"])


def random_images(root, shape) -> ImageSplits:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, *shape), dtype=torch.uint8, generator=generator)
    labels = torch.arange(40) % 4
    return ImageSplits(images[:30], labels[:30], images[30:], labels[30:])


def random_source(shape):
    return functools.partial(random_images, shape=shape)  # picklable: the module saves it as a hyperparameter


def module_and_data(tmp_path, shape, loss, **eval):
    torch.manual_seed(0)
    data = dict(
        name="random", source=random_source(shape), root=str(tmp_path), image_shape=list(shape), num_classes=4,
        batch_size=8, val_size=8,
    )  # fmt: skip
    module = CVAEModule(
        model=OmegaConf.to_container(OmegaConf.merge(OmegaConf.load(CONFIGS / "model" / "mlp.yaml"), TINY["mlp"])),
        conditioning=OmegaConf.to_container(OmegaConf.load(CONFIGS / "conditioning" / "concat.yaml")),
        loss=loss,
        optim={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
        data=data,
        eval={"samples_per_class": 3, "classifier_metrics": False, **eval},
    )
    return module, TensorDataModule(**data)


def fit_and_test(module, data, tmp_path):
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    fitted = dict(trainer.callback_metrics)
    (tested,) = trainer.test(module, datamodule=data, verbose=False)
    return fitted, tested


def test_the_module_logs_whatever_terms_the_objective_returns(tmp_path):
    loss = {"_target_": f"{__name__}.ELBOPlusLatentNorm", "likelihood": "gaussian", "var": 0.5}
    module, data = module_and_data(tmp_path, (1, 28, 28), loss)
    fitted, tested = fit_and_test(module, data, tmp_path)
    for name in ("train/norm", "val/norm", "train/loss", "val/kl", "train/beta"):
        assert math.isfinite(fitted[name].item()), name
    assert math.isfinite(tested["test/norm"]) and "test/score" in tested


def test_colour_images_train_and_test_with_the_grader_skipped_and_said(tmp_path, caplog):
    """3x16x16 images: no val/ssim, no Score; test/mse and the objective's terms instead."""
    module, data = module_and_data(tmp_path, (3, 16, 16), {"likelihood": "gaussian", "var": 0.5})
    assert (
        grader_skipped(module.cvae)
        == "its images are [3, 16, 16], the grader's [1, 28, 28] ([channels, height, width])"
    )
    with caplog.at_level("INFO", logger="cvae_exp.module"):
        fitted, tested = fit_and_test(module, data, tmp_path)
    assert "val/ssim" not in fitted and "test/score" not in tested
    assert math.isfinite(tested["test/mse"]) and math.isfinite(tested["test/loss"])
    assert "The report's grader is skipped for this run: its images are [3, 16, 16]" in caplog.text


def test_the_datamodule_serves_its_consumers_images_and_the_source_splits(tmp_path):
    data = TensorDataModule(
        name="random", source=random_source((1, 28, 28)), root=str(tmp_path), image_shape=[1, 28, 28], num_classes=4,
        batch_size=8, val_size=8,
    )  # fmt: skip
    images, labels = data.images("test", 5)
    assert images.dtype == torch.uint8 and images.shape == (5, 1, 28, 28) and labels.tolist() == [2, 3, 0, 1, 2]
    assert [len(data.images(split)[0]) for split in ("train", "val", "test")] == [22, 8, 10]
    assert torch.equal(data.source_splits().test_images[:5], images)


def test_a_torchvision_split_held_as_arrays_becomes_channels_first_tensors():
    """CIFAR's layout: .data a (N, H, W, C) uint8 array, .targets a list."""
    data = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    images, labels = _whole(SimpleNamespace(data=data, targets=[3, 1]))
    assert images.shape == (2, 3, 4, 5) and images.is_contiguous() and labels.dtype == torch.int64
    assert images[1, 2, 3, 4].item() == data[1, 3, 4, 2] and labels.tolist() == [3, 1]
    grey, _ = _whole(SimpleNamespace(data=torch.zeros(2, 4, 5, dtype=torch.uint8), targets=torch.tensor([0, 1])))
    assert grey.shape == (2, 1, 4, 5)


def test_hydras_config_flags_reach_the_pre_compose_with_absolute_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conf").mkdir()
    source, arguments = config_flags(["-cd", "conf", "model.latent_dim=3", "--config-name=mine", "-m"])
    assert source.config_dir == str(tmp_path / "conf") and source.config_name == "mine"
    assert arguments == ["model.latent_dim=3", "-m", "--config-name", "mine", "--config-dir", str(tmp_path / "conf")]
    with pytest.raises(UserInputError, match="--config-path 'nowhere': no such directory"):
        config_source(config_path="nowhere")
    with pytest.raises(UserInputError, match="-cn needs a value"):
        config_flags(["-cn"])


def stripes(root, count: int = 48) -> ImageSplits:
    """Images with up to three vertical stripes; attribute j is 1 where stripe j is drawn."""
    generator = torch.Generator().manual_seed(0)
    attributes = torch.randint(0, 2, (count, 3), generator=generator)
    images = torch.randint(0, 40, (count, 1, 28, 28), dtype=torch.uint8, generator=generator)
    for stripe in range(3):
        images[attributes[:, stripe] == 1, :, :, stripe * 9 : stripe * 9 + 6] = 230
    return ImageSplits(images[:36], attributes[:36], images[36:], attributes[36:])


@pytest.mark.parametrize("network", ["mlp", "conv"])
@pytest.mark.parametrize("conditioning", ["concat", "film"])
def test_attribute_vectors_enter_every_network_and_conditioning(network, conditioning):
    cvae = build_cvae(
        OmegaConf.to_container(OmegaConf.merge(OmegaConf.load(CONFIGS / "model" / f"{network}.yaml"), TINY[network])),
        OmegaConf.to_container(OmegaConf.load(CONFIGS / "conditioning" / f"{conditioning}.yaml")),
        None,
        AttributesTask(3),
        {"image_shape": [1, 28, 28], "num_classes": 1},
    )
    assert cvae.condition_kind == "vector" and not cvae.labels_condition
    attributes = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.5, 0.0]])
    output = cvae(torch.rand(2, 1, 28, 28), attributes)
    assert output.logits.shape == (2, 1, 28, 28) and output.kl.shape == (2,)
    assert cvae.sample(attributes, n=3).shape == (6, 1, 28, 28)
    assert grader_skipped(cvae) == "its condition is a vector of attributes, not a class label"


def test_task_attributes_trains_tests_and_draws_grids_and_cvae_sample(tmp_path, caplog):
    torch.manual_seed(0)
    data = dict(
        name="stripes", source=stripes, root=str(tmp_path), image_shape=[1, 28, 28], num_classes=1, batch_size=12,
        val_size=12, attributes=3,
    )  # fmt: skip
    module = CVAEModule(
        model=OmegaConf.to_container(OmegaConf.merge(OmegaConf.load(CONFIGS / "model" / "mlp.yaml"), TINY["mlp"])),
        conditioning=OmegaConf.to_container(OmegaConf.load(CONFIGS / "conditioning" / "film.yaml")),
        loss={"likelihood": "gaussian", "var": 0.5},
        optim={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
        data=data,
        eval={"classifier_metrics": False},
        task={"_target_": "cvae_exp.tasks.AttributesTask", "num_attributes": 3},
    )
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", filename="last")
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, logger=False, callbacks=[checkpoint], enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    datamodule = TensorDataModule(**data)
    trainer.fit(module, datamodule=datamodule)
    with caplog.at_level("INFO", logger="cvae_exp.module"):
        (tested,) = trainer.test(module, datamodule=datamodule, verbose=False)
    assert math.isfinite(tested["test/mse"]) and "test/score" not in tested
    assert "its condition is a vector of attributes" in caplog.text

    images, attributes = datamodule.images("val", 4)
    grid = visualize.completions(module.cvae, module.task, images.float() / 255, attributes, n=2)
    assert grid.shape[1:] == (4 * 28 + 5 * 2, 3 * 28 + 4 * 2)  # per row: 2 samples and the image, no condition
    rows = visualize.condition_samples(module.cvae, torch.tensor([[1, 0, 0], [0, 1, 1]]), n=5)
    assert rows.shape[1:] == (2 * 28 + 3 * 2, 5 * 28 + 6 * 2)
    # the toggles: one z per row, decoded under the vector and under it with each attribute switched
    vectors = torch.tensor([[1, 0, 0], [0, 1, 1]])
    torch.manual_seed(5)
    toggles = visualize.attribute_toggles(module.cvae, vectors)
    torch.manual_seed(5)
    z = torch.randn(2, module.cvae.latent_dim)
    switched = torch.tensor([[1, 0, 0], [0, 0, 0], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1], [0, 0, 1], [0, 1, 0]])
    with torch.no_grad():
        expected = module.cvae.decode(z.repeat_interleave(4, dim=0), switched.float())
    step = 28 + 2
    cell = lambda r, c: toggles[0, 2 + r * step : 2 + r * step + 28, 2 + c * step : 2 + c * step + 28]  # noqa: E731
    for index in range(8):
        torch.testing.assert_close(cell(index // 4, index % 4), expected[index, 0])

    out = tmp_path / "attributes.png"
    sample.main([str(checkpoint.best_model_path), "attributes=[[1,0,0],[0,1,1]]", "n=3", f"out={out}"])
    assert out.is_file()
    with pytest.raises(SystemExit) as refused:
        sample.main([str(checkpoint.best_model_path), "labels=[0]", f"out={tmp_path / 'labels.png'}"])
    assert refused.value.code == 2 and not (tmp_path / "labels.png").exists()


def test_attribute_data_and_class_data_are_told_apart():
    with pytest.raises(UserInputError, match=r"data.attributes=3: the digits labels are class numbers"):
        TensorDataModule(
            name="digits", source=load_digits, root=".", image_shape=[1, 28, 28], num_classes=10, batch_size=8,
            val_size=10, attributes=3,
        ).setup()  # fmt: skip
    with pytest.raises(UserInputError, match=r"data.attributes=2: the stripes labels are vectors of 3"):
        TensorDataModule(
            name="stripes", source=stripes, root=".", image_shape=[1, 28, 28], num_classes=1, batch_size=8,
            val_size=10, attributes=2,
        ).setup()  # fmt: skip
    with pytest.raises(ValueError, match="task=attributes needs a dataset with attribute vectors"):
        AttributesTask(0)


def test_colour_images_under_the_discretised_logistic_report_psnr_ssim_and_bits_per_dimension(tmp_path):
    """An 8-bit likelihood: test/bits_per_dim is test/nll over the 3x16x16 values in bits; the
    reconstructions' PSNR and per-channel SSIM stand in for the grader's."""
    loss = {"likelihood": "logistic", "scale": 0.1}
    module, data = module_and_data(tmp_path, (3, 16, 16), loss, nll_samples=4)
    _, tested = fit_and_test(module, data, tmp_path)
    assert tested["test/bits_per_dim"] == pytest.approx(tested["test/nll"] / (3 * 16 * 16 * math.log(2)), rel=1e-5)
    assert 0 < tested["test/psnr"] < 60 and -1 <= tested["test/ssim"] <= 1
    gaussian, data = module_and_data(tmp_path, (3, 16, 16), {"likelihood": "gaussian"}, nll_samples=4)
    _, tested = fit_and_test(gaussian, data, tmp_path)
    assert "test/bits_per_dim" not in tested and "test/nll" in tested  # a density, not pixel probabilities
