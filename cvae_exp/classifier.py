"""Metrics beyond the lab's grader, in the feature space of a classifier of the dataset.

`sample_accuracy`: the classifier's accuracy on class-conditional samples against the class
they were drawn for (does the condition control the output?). `classifier_fid`: the Frechet
distance between test images and all samples in the classifier's penultimate features
(torchmetrics' FrechetInceptionDistance over this network's features: Inception features of
upscaled 28x28 digits measure little). `sample_precision` and `sample_recall`: the k-NN
precision and recall of Kynkaanniemi et al. (2019) in the same features (our own: torchmetrics
has none), which split the FID into fidelity (samples inside the test images' manifold) and
coverage (test images inside the samples'). The classifier is a small CNN trained by
the framework on the dataset's official training set on first use (1500 minibatches, at
most 30 epochs) and cached, with its official test accuracy and a digest of the test split it
serves, in eval.classifier_dir (~/.cache/cvae_exp/classifiers/<dataset>.pt, or
$CVAE_EXP_CACHE/classifiers); our own training loop, a few lines for well under a minute
of training, where a Lightning run would cost more than the training.
"""

import hashlib
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

log = logging.getLogger(__name__)
CLASSIFIER_STEPS = 1500  # minibatches of 128: 4 epochs of MNIST
CLASSIFIER_EPOCHS_AT_MOST = 30  # a small dataset (digits) stops earlier
FEATURES = 128
NEIGHBOURS = 3  # k of the k-NN precision and recall, as Kynkaanniemi et al. recommend


class Classifier(nn.Module):
    """Two conv blocks and a 128-unit feature layer; takes images in [0, 1]."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.image_shape, self.num_classes = tuple(image_shape), num_classes
        self.features = nn.Sequential(
            nn.Conv2d(image_shape[0], 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * 16, FEATURES), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(FEATURES, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class _Features(nn.Module):
    """torchmetrics' FID feature extractor for features the classifier computed beforehand,
    so that one pass over the generated images serves both the FID and the accuracy."""

    num_features = FEATURES

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@torch.no_grad()
def features(classifier: Classifier, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The penultimate features of uint8 `images` (batches of 256: the fastest on a CPU)."""
    device = next(classifier.parameters()).device
    return torch.cat([classifier.features(x.to(device).float() / 255) for x in images.split(batch_size)])


def fingerprint(images: torch.Tensor, labels: torch.Tensor) -> str:
    """A digest of a split, so that a cached classifier is only reused for the data it knows."""
    return hashlib.sha1(images.contiguous().cpu().numpy().tobytes() + labels.cpu().numpy().tobytes()).hexdigest()


def train_classifier(splits, image_shape, num_classes: int, seed: int = 0) -> tuple[Classifier, float]:
    """A classifier trained on `splits.train_*` (uint8 images) and its accuracy on `splits.test_*`.
    The global random state is left as it was: the test stage's draws do not depend on it."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        classifier = Classifier(image_shape, num_classes)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
        images, labels = splits.train_images.clone(), splits.train_labels.clone()  # not inference tensors
        steps = min(CLASSIFIER_STEPS, CLASSIFIER_EPOCHS_AT_MOST * len(labels) // 128)
        with torch.enable_grad():
            for _ in range(steps):
                batch = torch.randint(len(labels), (128,))
                loss = F.cross_entropy(classifier(images[batch].float() / 255), labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    classifier.eval()
    return classifier, accuracy(classifier, splits.test_images, splits.test_labels)


def accuracy(classifier: Classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of uint8 `images` classified as `labels`."""
    with torch.no_grad():
        predicted = classifier.head(features(classifier, images)).argmax(1)
    return (predicted == labels.to(predicted.device)).float().mean().item()


@torch.inference_mode(False)  # Lightning's test stage runs in inference mode, where nothing trains
def load_or_train(datamodule, directory: str) -> tuple[Classifier, dict]:
    """The dataset's classifier cached in `directory` (eval.classifier_dir), trained and cached
    first if missing; with a record of where it is and its test accuracy. A directory that
    cannot be written keeps it in memory for this run."""
    path = Path(directory).expanduser() / f"{datamodule.name}.pt"
    datamodule.setup("test")
    data = fingerprint(*datamodule.splits["test"])  # not the shapes alone: another source may share the name
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved.get("data") == data and saved["num_classes"] == datamodule.num_classes:
            classifier = Classifier(datamodule.image_shape, datamodule.num_classes)
            classifier.load_state_dict(saved["state_dict"])
            return classifier.eval(), {"path": str(path), "test_accuracy": saved["test_accuracy"]}
    log.info(f"Training a classifier of {datamodule.name} for the classifier metrics (once: it is cached as {path}) ...")
    classifier, test_accuracy = train_classifier(datamodule.source(root=datamodule.root), datamodule.image_shape, datamodule.num_classes)
    log.info(f"... its accuracy on the test set: {test_accuracy:.1%}")
    record = {"path": str(path), "test_accuracy": test_accuracy}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        state = {"state_dict": classifier.state_dict(), "test_accuracy": test_accuracy}
        torch.save({**state, "data": data, "num_classes": datamodule.num_classes}, temporary)
        temporary.replace(path)
    except OSError:
        record["path"] = None  # trained for this run only
    return classifier, record


@torch.no_grad()
def classifier_metrics(classifier: Classifier, real: torch.Tensor, generated: torch.Tensor, generated_labels: torch.Tensor | None) -> dict[str, float]:
    """sample_accuracy of `generated` (uint8) against `generated_labels` (None: samples of an
    unconditional model, which have no class to hit); classifier_fid, sample_precision and
    sample_recall between `real` and `generated` (uint8) in the classifier's features."""
    classifier = classifier.to(generated.device)
    real, fake = features(classifier, real), features(classifier, generated)
    fid = FrechetInceptionDistance(feature=_Features()).to(generated.device)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    precision, recall = precision_recall(real, fake)
    metrics = {"classifier_fid": float(fid.compute()), "sample_precision": precision, "sample_recall": recall}
    if generated_labels is not None:
        metrics["sample_accuracy"] = (classifier.head(fake).argmax(1) == generated_labels.to(fake.device)).float().mean().item()
    return metrics


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019): each set's manifold is the union
    of balls around its points reaching their k-th nearest neighbour in the set; precision is
    the fraction of `fake` inside the manifold of `real`, recall the fraction of `real` inside
    that of `fake`. Distances in chunks of 1024 rows."""
    real, fake = real.float(), fake.float()
    return _inside(fake, real, _kth_neighbour_radius(real, k)), _inside(real, fake, _kth_neighbour_radius(fake, k))


def _kth_neighbour_radius(points: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of every point to its k-th nearest other point (the nearest, at 0, is itself)."""
    return torch.cat([torch.cdist(chunk, points).kthvalue(k + 1, dim=1).values for chunk in points.split(1024)])


def _inside(queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor) -> float:
    """Fraction of `queries` within the radius of at least one of `points`."""
    hits = [(torch.cdist(chunk, points) <= radii).any(dim=1) for chunk in queries.split(1024)]
    return torch.cat(hits).float().mean().item()
