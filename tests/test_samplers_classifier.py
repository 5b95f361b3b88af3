"""Latent samplers (cvae_exp/samplers.py) and the classifier metrics (cvae_exp/classifier.py),
against known distributions and an independent numpy/scipy computation."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from scipy import linalg
from scipy.spatial.distance import cdist

from cvae_exp import classifier as classifier_module
from cvae_exp.classifier import Classifier, accuracy, classifier_metrics, load_or_train, precision_recall
from cvae_exp.data.batches import Split
from cvae_exp.samplers import FlowSampler, GaussianMixtureSampler


def known_mixtures(count_per_class: int, seed: int = 0):
    """Two classes in 2-D, each an equal mixture of two full-covariance Gaussians: (codes, labels, moments)."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[[-3.0, 0.0], [3.0, 1.0]], [[0.0, 4.0], [1.0, -4.0]]])
    scale_trils = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.3, 0.0], [-0.2, 0.8]]])
    codes, labels, moments = [], [], []
    for label in range(2):
        component = torch.randint(2, (count_per_class,), generator=generator)
        noise = torch.randn(count_per_class, 2, 1, generator=generator)
        codes.append(centers[label, component] + (scale_trils[component] @ noise).squeeze(-1))
        labels.append(torch.full((count_per_class,), label))
        mean = centers[label].mean(0)
        covariance = sum(0.5 * (s @ s.T + torch.outer(c - mean, c - mean)) for c, s in zip(centers[label], scale_trils))
        moments.append((mean.double(), covariance.double()))
    return torch.cat(codes), torch.cat(labels), moments


def assert_moments(samples: torch.Tensor, mean: torch.Tensor, covariance: torch.Tensor, tolerance: float):
    samples = samples.double()
    torch.testing.assert_close(samples.mean(0), mean, atol=tolerance, rtol=0)
    torch.testing.assert_close(torch.cov(samples.T), covariance, atol=4 * tolerance, rtol=0.05)


def test_gaussian_mixture_sampler_reproduces_a_known_mixtures_moments():
    """Fitted per class to 20k draws of a known 2-component mixture, 200k samples of each
    class have that class's mean and covariance (closed form of the mixture)."""
    codes, labels, moments = known_mixtures(20_000)
    sampler = GaussianMixtureSampler(num_classes=2, latent_dim=2, components=2, covariance="full")
    sampler.fit(codes, labels)
    torch.manual_seed(1)
    for label, (mean, covariance) in enumerate(moments):
        samples = sampler.sample(torch.full((200_000,), label))
        assert_moments(samples, mean, covariance, tolerance=0.05)


def test_gaussian_mixture_sampler_refuses_a_class_with_fewer_codes_than_components():
    codes, labels, _ = known_mixtures(3)
    with pytest.raises(ValueError, match="fewer than eval.gmm_components=5"):
        GaussianMixtureSampler(2, 2, components=5, covariance="diag").fit(codes, labels)


def test_flow_density_integrates_to_one_per_class():
    """exp(log_prob) of a randomly initialised flow sums to 1 over a fine 2-D grid, per class:
    the log-determinants of the couplings and the standardisation are right."""
    torch.manual_seed(2)
    flow = FlowSampler(num_classes=2, latent_dim=2, layers=4, steps=1)
    for coupling in flow.couplings:  # leave the identity start: a real transformation
        torch.nn.init.normal_(coupling.net[-1].weight, std=0.3)
    flow.center.copy_(torch.tensor([0.5, -0.5]))
    flow.scale.copy_(torch.tensor([1.5, 0.7]))
    axis = torch.linspace(-12, 12, 801)
    grid = torch.cartesian_prod(axis, axis)
    cell = (axis[1] - axis[0]) ** 2
    with torch.no_grad():
        for label in range(2):
            mass = (flow.log_prob(grid, torch.full((len(grid),), label)).exp() * cell).sum()
            assert abs(float(mass) - 1.0) < 5e-3


@pytest.mark.slow  # 1,500 full-batch steps of a flow
def test_flow_sampler_learns_each_classs_moments_and_inverts_exactly():
    """Fitted to two Gaussian classes, samples have their moments; sample() inverts log_prob's map."""
    codes, labels, moments = known_mixtures(10_000, seed=3)
    flow = FlowSampler(num_classes=2, latent_dim=2, layers=6, steps=1500)
    flow.fit(codes, labels)
    torch.manual_seed(4)
    with torch.no_grad():
        for label, (mean, covariance) in enumerate(moments):
            assert_moments(flow.sample(torch.full((50_000,), label)), mean, covariance, tolerance=0.25)
        labels = torch.zeros(5, dtype=torch.long)
        u = z = torch.randn(5, 2)
        embedding = flow.embedding(labels)
        for coupling in reversed(flow.couplings):
            z = coupling.inverse(z, embedding)
        back = z
        for coupling in flow.couplings:
            back, _ = coupling(back, embedding)
        torch.testing.assert_close(back, u, atol=1e-5, rtol=0)


def numpy_fid(real: np.ndarray, fake: np.ndarray) -> float:
    """||mu_r - mu_f||^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2)), scipy's matrix square root."""
    mean_real, mean_fake = real.mean(0), fake.mean(0)
    cov_real, cov_fake = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root = linalg.sqrtm(cov_real @ cov_fake).real
    return float(((mean_real - mean_fake) ** 2).sum() + np.trace(cov_real + cov_fake - 2 * root))


def uint8_images(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(count, 1, 28, 28, generator=generator) * 255).to(torch.uint8)


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # an untrained net's dead ReLU features have zero variance
def test_classifier_metrics_match_numpy_and_known_labels():
    """classifier_fid equals the numpy/scipy Frechet distance of the same features, is ~0
    for identical sets; sample_accuracy is the fraction of known labels the argmax hits."""
    torch.manual_seed(5)
    classifier = Classifier((1, 28, 28), 10).eval()
    real, fake = uint8_images(600, 6), uint8_images(500, 7) // 2
    with torch.no_grad():
        predicted = classifier(fake.float() / 255).argmax(1)
        real_features, fake_features = (
            classifier.features(images.float() / 255).double().numpy() for images in (real, fake)
        )
    labels = predicted.clone()
    labels[:50] = (labels[:50] + 1) % 10  # 50 of 500 wrong: accuracy 0.9 exactly
    metrics = classifier_metrics(classifier, real, fake, labels)
    assert metrics["sample_accuracy"] == pytest.approx(0.9)
    assert accuracy(classifier, fake, predicted) == 1.0
    assert metrics["classifier_fid"] == pytest.approx(numpy_fid(real_features, fake_features), rel=1e-3, abs=1e-4)
    assert classifier_metrics(classifier, real, real, torch.zeros(len(real), dtype=torch.long))[
        "classifier_fid"
    ] == pytest.approx(0.0, abs=1e-3)
    assert not math.isnan(metrics["classifier_fid"])
    unconditional = classifier_metrics(classifier, real, fake, None)  # samples without a class to hit
    assert "sample_accuracy" not in unconditional and unconditional["classifier_fid"] == pytest.approx(
        metrics["classifier_fid"]
    )


def test_a_cached_classifier_serves_only_the_data_it_was_trained_for(tmp_path, compose_train, monkeypatch):
    """The cache is keyed by the dataset's name and a digest of its test split: other data under
    the same name (binarised images, another root) trains its own classifier into a file of its
    own, and the first one stays cached."""
    monkeypatch.setattr(classifier_module, "CLASSIFIER_STEPS", 5)
    datamodule = instantiate(compose_train(["data=digits"]).data)
    _, first = load_or_train(datamodule, str(tmp_path))
    written = Path(first["path"]).stat().st_mtime_ns
    _, again = load_or_train(datamodule, str(tmp_path))
    assert again == first and Path(first["path"]).stat().st_mtime_ns == written
    images, labels = datamodule.images("test")
    datamodule.splits["test"] = Split(255 - images, labels)
    _, other = load_or_train(datamodule, str(tmp_path))
    assert other["path"] != first["path"] and Path(other["path"]).is_file()
    datamodule.splits["test"] = Split(images, labels)
    _, back = load_or_train(datamodule, str(tmp_path))
    assert back == first and Path(first["path"]).stat().st_mtime_ns == written


@pytest.mark.filterwarnings("ignore:Matrix is singular")
def test_the_cached_test_reference_gives_the_metrics_computed_without_it(tmp_path, compose_train, monkeypatch):
    """The test split's features and k-NN radii are cached with the classifier and reused for
    exactly those images (same metrics as without the cache); other real images are not served
    from it; a classifier cached without a reference gets one written back."""
    monkeypatch.setattr(classifier_module, "CLASSIFIER_STEPS", 5)
    datamodule = instantiate(compose_train(["data=digits"]).data)
    classifier, record = load_or_train(datamodule, str(tmp_path))
    test_images, _ = datamodule.images("test")
    generated = uint8_images(len(test_images), 9) // 3
    labels = torch.arange(len(test_images)) % 10
    cached = classifier_metrics(classifier, test_images, generated, labels)
    bare = Classifier(classifier.image_shape, classifier.num_classes).eval()
    bare.load_state_dict(classifier.state_dict())  # no reference: everything computed here
    assert cached == pytest.approx(classifier_metrics(bare, test_images, generated, labels), rel=1e-5, abs=1e-6)
    assert classifier.test_reference["images"] != classifier_module.fingerprint(test_images[:-1])
    assert classifier_metrics(classifier, test_images[:-1], generated, labels) == classifier_metrics(
        bare, test_images[:-1], generated, labels
    )
    saved = torch.load(record["path"], weights_only=False)
    del saved["test_reference"]
    torch.save(saved, record["path"])
    reloaded, _ = load_or_train(datamodule, str(tmp_path))
    assert torch.equal(reloaded.test_reference["features"], classifier.test_reference["features"])
    assert "test_reference" in torch.load(record["path"], weights_only=False)


def numpy_precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkaanniemi et al.'s definition, brute force in float64 with scipy's distances."""

    def radii(points):
        return np.sort(cdist(points, points), axis=1)[:, k]  # column 0 is the point itself

    def inside(queries, points):
        return float((cdist(queries, points) <= radii(points)[None, :]).any(axis=1).mean())

    return inside(fake, real), inside(real, fake)


def test_precision_recall_match_numpy_and_known_cases():
    """Against a brute-force float64 computation on random features (chunks of 1024 crossed);
    identical sets give 1 and 1, far-away samples 0 and 0, samples from one of the data's two
    modes precision about 1 and recall about 1/2."""
    generator = torch.Generator().manual_seed(8)
    real, fake = torch.randn(1500, 8, generator=generator), 1.2 * torch.randn(1300, 8, generator=generator) + 0.3
    expected = numpy_precision_recall(real.double().numpy(), fake.double().numpy(), k=3)
    assert precision_recall(real, fake, k=3) == pytest.approx(expected, abs=2e-3)
    assert precision_recall(real, real.clone(), k=3) == (1.0, 1.0)
    assert precision_recall(real, fake + 100.0, k=3) == (0.0, 0.0)
    modes = torch.tensor([[-50.0, 0.0], [50.0, 0.0]])  # in 2-D, 1000 points per mode cover their mode's bulk

    def draw(mode: int, count: int = 1000) -> torch.Tensor:
        return modes[mode] + torch.randn(count, 2, generator=generator)

    precision, recall = precision_recall(torch.cat([draw(0), draw(1)]), draw(0), k=3)
    assert precision > 0.95 and 0.45 < recall < 0.52


def _logit_classifier(attributes: int) -> Classifier:
    """A classifier whose head passes its input through: the 'features' given are the logits."""
    classifier = Classifier((1, 8, 8), attributes)
    classifier.head = torch.nn.Identity()
    return classifier


def test_attribute_accuracies_against_sklearn():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    generator = torch.Generator().manual_seed(0)
    rare = torch.rand(500, 6, generator=generator) < torch.tensor([0.05, 0.1, 0.3, 0.5, 0.7, 0.9])
    logits = torch.randn(500, 6, generator=generator) + 1.5 * (rare.float() * 2 - 1)  # informative, with errors
    vectors = rare.float()
    classifier = _logit_classifier(6)
    predicted = (logits > 0).numpy()
    plain = classifier_module.attribute_accuracies(classifier, None, vectors, logits)
    expected = [accuracy_score(vectors[:, j].numpy(), predicted[:, j]) for j in range(6)]
    assert plain.tolist() == pytest.approx(expected)
    balanced = classifier_module.attribute_balanced_accuracy(classifier, logits, vectors)
    expected = np.mean([balanced_accuracy_score(vectors[:, j].numpy(), predicted[:, j]) for j in range(6)])
    assert balanced == pytest.approx(expected)
    # predicting every attribute absent: the plain accuracy is the absent share, the balanced one 0.5
    nothing = torch.full((500, 6), -1.0)
    assert classifier_module.attribute_balanced_accuracy(classifier, nothing, vectors) == pytest.approx(0.5)
    # an attribute present in every vector has no true-negative rate: it is left out
    vectors[:, 0] = 1
    kept = [balanced_accuracy_score(vectors[:, j].numpy(), predicted[:, j]) for j in range(1, 6)]
    assert classifier_module.attribute_balanced_accuracy(classifier, logits, vectors) == pytest.approx(np.mean(kept))


def test_group_accuracies_take_the_most_likely_attribute_of_each_group():
    classifier = _logit_classifier(5)
    logits = torch.tensor([[2.0, 1.0, 0.0, 0.1, 0.2], [0.0, 1.0, 3.0, 0.5, 0.4], [5.0, 0.0, 0.0, -1.0, -2.0]])
    vectors = torch.tensor([[1.0, 0, 0, 0, 1], [0, 1, 0, 1, 0], [1, 0, 0, 1, 0]])
    found = classifier_module.group_accuracies(classifier, logits, vectors, {"digit": 3, "colour": 2})
    assert found == {"digit": pytest.approx(2 / 3), "colour": pytest.approx(1.0)}


@pytest.mark.parametrize(
    "binarize, likelihood, binary",
    [("dynamic", "bernoulli", True), ("static", "bernoulli", True)]
    + [("none", "bernoulli", False), ("dynamic", "gaussian", False)],
)
def test_samples_of_a_model_of_binary_images_are_compared_as_binary_draws(binarize, likelihood, binary):
    """On binarised data a Bernoulli model's samples are x ~ Bernoulli(mean), binary as the
    test images they are compared with; elsewhere the pixel means themselves."""
    from types import SimpleNamespace

    from cvae_exp.module import CVAEModule

    means = torch.tensor([0, 64, 128, 191, 255], dtype=torch.uint8).repeat(4000, 1)
    module = SimpleNamespace(hparams=SimpleNamespace(data={"binarize": binarize}), objective=SimpleNamespace())
    module.objective.likelihood = likelihood
    samples = CVAEModule._as_the_data(module, means)
    if not binary:
        assert samples is means
        return
    assert samples.dtype == torch.uint8 and set(samples.unique().tolist()) <= {0, 255}
    frequency = (samples == 255).float().mean(0)
    expected = means[0].float() / 255
    standard_error = (expected * (1 - expected) / len(means)).sqrt()
    assert torch.all((frequency - expected).abs() <= 5 * standard_error + 1e-6), (frequency, expected)
    assert torch.equal(samples, CVAEModule._as_the_data(module, means))  # seeded: the same draws every run
