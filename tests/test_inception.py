"""Inception FID (eval.inception_weights): the value against scipy's Frechet distance of the same
features, the whole path from the config to metrics.json with a small feature network in place of
Inception, torch-fidelity's Inception-v3 from a local file, and the refusals."""

import importlib
import json
import sys
import textwrap

import numpy as np
import pytest
import scipy.linalg
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from cvae_exp.checks import validate
from cvae_exp.errors import UserInputError
from cvae_exp.metrics.inception import WEIGHTS_FILE, WEIGHTS_URL, fid_metric, inception_fid
from tests.helpers import run_cli

# A feature network of a user's own, in their working directory: torch.load finds its class there
TINY_FEATURES = textwrap.dedent(
    '''
    import torch.nn.functional as F
    from torch import nn


    class TinyFeatures(nn.Module):
        """8 fixed projections of the 4x4-pooled pixels of uint8 images (N, 3, H, W)."""

        num_features = 8

        def __init__(self):
            super().__init__()
            self.project = nn.Linear(3 * 16, self.num_features)

        def forward(self, images):
            return self.project(F.adaptive_avg_pool2d(images.float() / 255, 4).flatten(1))
    '''
)
FAST = [
    "data=digits",
    "model.encoder.hidden_dims=[64]",
    "model.decoder.hidden_dims=[64]",
    "callbacks.progress_bar.refresh_rate=0",
    "trainer.max_epochs=1",
    "eval.samples_per_class=20",
    "eval.classifier_metrics=false",
    "eval.val_ssim_images=0",
]


@pytest.fixture
def tiny_features(tmp_path, monkeypatch):
    """(the saved network's path, the network): TinyFeatures, written to tmp_path/tiny.pt by torch.save."""
    (tmp_path / "tiny_features.py").write_text(TINY_FEATURES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tiny_features", raising=False)
    torch.manual_seed(0)
    network = importlib.import_module("tiny_features").TinyFeatures().eval()
    torch.save(network, tmp_path / "tiny.pt")
    return tmp_path / "tiny.pt", network


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The FID of two sets of features, as the FID paper writes it: scipy's matrix square root."""
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def features(network, images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return network(images.expand(-1, 3, -1, -1)).double().numpy()


@pytest.mark.parametrize("channels", [1, 3])
def test_the_fid_is_the_frechet_distance_of_the_features(tiny_features, channels):
    path, network = tiny_features
    generator = torch.Generator().manual_seed(0)
    real = torch.randint(0, 200, (100, channels, 12, 12), dtype=torch.uint8, generator=generator)
    generated = torch.randint(60, 256, (70, channels, 12, 12), dtype=torch.uint8, generator=generator)
    found = inception_fid(fid_metric(str(path), (channels, 12, 12)), real, generated, torch.device("cpu"))
    expected = frechet_distance(features(network, real), features(network, generated))
    assert expected > 0.01 and found == pytest.approx(expected, rel=1e-5)


@pytest.mark.slow  # a 95 MB Inception-v3 written and read back, and its forward passes at 299x299: about 10 s
def test_inception_v3_loads_from_a_local_file_without_network(tmp_path, monkeypatch):
    """A state dict of torch-fidelity's Inception-v3 (random weights here, in place of the real
    ones, which cannot be downloaded) gives a finite FID through the 2048 pool features."""
    from torch_fidelity import feature_extractor_inceptionv3 as fidelity

    with monkeypatch.context() as patched:  # the architecture alone: nothing to download or load
        patched.setattr(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patched.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(0)
        state = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    torch.save(state, tmp_path / WEIGHTS_FILE)
    metric = fid_metric(str(tmp_path / WEIGHTS_FILE), (1, 28, 28))
    assert metric.inception.features_list == ["2048"]
    generator = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8, generator=generator)
    assert np.isfinite(inception_fid(metric, real, real.flip(0) // 2, torch.device("cpu")))


def test_the_url_is_torch_fidelity_s():
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    assert WEIGHTS_URL == URL_INCEPTION_V3 and WEIGHTS_FILE == "weights-inception-2015-12-05-6726825d.pth"


def test_bad_weights_are_refused_before_training_with_where_to_get_them(tmp_path, compose_train, tiny_features):
    (tmp_path / "bad.pth").write_bytes(b"not a torch file")
    for value, reason in [("bad.pth", "cannot be loaded"), ("nowhere.pth", "there is no such file")]:
        with pytest.raises(UserInputError) as refused:
            validate(compose_train([f"eval.inception_weights={tmp_path / value}"]))
        message = str(refused.value)
        assert f"eval.inception_weights='{tmp_path / value}'" in message and reason in message
        assert WEIGHTS_URL in message and "\n" not in message
    with pytest.raises(UserInputError, match="needs grayscale or RGB images, and these have 2 channels"):
        fid_metric(str(tiny_features[0]), (2, 8, 8))


def test_a_missing_file_stops_cvae_train_with_one_paragraph_and_no_run_dir(tmp_path):
    result = run_cli("eval.inception_weights=inception.pth", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "eval.inception_weights='inception.pth': there is no such file" in result.stderr
    assert WEIGHTS_URL in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # two CLI jobs on the digits: about 20 s
def test_a_run_records_the_fid_of_its_test_images_and_samples_or_says_in_train_log_why_not(tmp_path, tiny_features):
    """Job 0 (null) notes in train.log alone that no Inception FID is computed; job 1 (the small
    network) records test/inception_fid, which is the Frechet distance between the test split and
    the samples it wrote as PNGs (eval.save_images), in that network's features."""
    _, network = tiny_features
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m", *FAST, "eval.save_images=true", "eval.inception_weights=null,tiny.pt", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    notice = "Inception FID (test/inception_fid) is not computed: eval.inception_weights is null"
    assert notice in (sweep / "0" / "train.log").read_text() and notice not in result.stdout
    assert "inception_fid" not in json.loads((sweep / "0" / "metrics.json").read_text())["test"]
    assert notice not in (sweep / "1" / "train.log").read_text()

    found = json.loads((sweep / "1" / "metrics.json").read_text())["test"]["inception_fid"]
    config = OmegaConf.load(sweep / "1" / ".hydra" / "config.yaml")
    test_images, _ = instantiate(config.data).images("test")
    samples = torch.stack(
        [torch.from_numpy(np.array(Image.open(png)))[None] for png in sorted((sweep / "1" / "gen").rglob("*.png"))]
    )
    assert len(samples) == 200
    assert found == pytest.approx(frechet_distance(features(network, test_images), features(network, samples)), 1e-4)
