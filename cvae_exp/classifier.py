"""Metrics beyond the lab's grader, in the feature space of a classifier of the dataset.

`sample_accuracy`: the classifier's accuracy on class-conditional samples against the class
they were drawn for (does the condition control the output?); for multi-hot attribute
vectors, a multi-label classifier's `sample_attribute_accuracy` (per attribute, then
averaged), `sample_attribute_balanced_accuracy` (the same, blind to how rare each attribute
is) and, for one-hot groups of attributes, `sample_accuracy_<group>`. `classifier_fid`: the
Frechet distance between test images and all samples in the classifier's penultimate features
(torchmetrics' FrechetInceptionDistance over this network's features: Inception features of
upscaled 28x28 digits measure little). `sample_precision` and `sample_recall`: the k-NN
precision and recall of Kynkaanniemi et al. (2019) in the same features (our own: torchmetrics
has none), which split the FID into fidelity (samples inside the test images' manifold) and
coverage (test images inside the samples'). The classifier is a small CNN trained by
the framework on the dataset's official training set on first use (1500 minibatches, at
most 30 epochs) and cached, with its official test accuracy, a digest of the test split it
serves and that split's features and k-NN radii (the same every run), in
eval.classifier_dir (~/.cache/cvae_exp/classifiers/<dataset>-<digest>.pt, or
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

from cvae_exp.files import atomic_path

log = logging.getLogger(__name__)
CLASSIFIER_STEPS = 1500  # minibatches of 128: 4 epochs of MNIST
CLASSIFIER_EPOCHS_AT_MOST = 30  # a small dataset (digits) stops earlier
FEATURES = 128
PEAK_LR = 3e-3  # of the one-cycle schedule over the training steps
ARCHITECTURE = 2  # saved with the weights: a cache of another architecture is retrained, not loaded
NEIGHBOURS = 3  # k of the k-NN precision and recall, as Kynkaanniemi et al. recommend


class Classifier(nn.Module):
    """Two blocks of two batch-normalised convolutions and a 128-unit feature layer; takes
    images in [0, 1]. Deep enough to be as accurate as a small CNN should be on Fashion-MNIST
    (docs/concepts.md): a weak judge blurs every metric it serves."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.image_shape, self.num_classes = tuple(image_shape), num_classes
        self.test_reference: dict | None = None  # the test split's features and k-NN radii, cached with the weights
        self.features = nn.Sequential(
            *_conv(image_shape[0], 16), *_conv(16, 16), nn.MaxPool2d(2),
            *_conv(16, 32), *_conv(32, 32), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * 16, FEATURES), nn.ReLU(), nn.Dropout(0.2),
        )  # fmt: skip
        self.head = nn.Linear(FEATURES, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def _conv(channels_in: int, channels_out: int) -> list[nn.Module]:
    return [nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False), nn.BatchNorm2d(channels_out), nn.ReLU()]


class _Features(nn.Module):
    """torchmetrics' FID feature extractor for features the classifier computed beforehand,
    so that one pass over the generated images serves both the FID and the accuracy."""

    num_features = FEATURES

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@torch.no_grad()
def features(classifier: Classifier, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The penultimate features of uint8 `images` (batches of 256: the fastest on a CPU). In
    channels_last, where a CPU's convolutions and pooling take half the time."""
    device = next(classifier.parameters()).device
    classifier = classifier.to(memory_format=torch.channels_last)
    batches = (
        x.to(device).float().div(255).contiguous(memory_format=torch.channels_last) for x in images.split(batch_size)
    )
    return torch.cat([classifier.features(x) for x in batches])


def fingerprint(*tensors: torch.Tensor) -> str:
    """A digest of a split (or of its images), so that a cached classifier, and the test
    split's cached features, are only reused for the data they were computed on."""
    digest = hashlib.sha1()
    for tensor in tensors:
        digest.update(tensor.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def test_reference(classifier: Classifier, test_images: torch.Tensor) -> dict:
    """What the metrics need of the test images, which are the same every run: their features
    and k-NN radii (about 1.5 s on a CPU for MNIST's 10k images), kept in the classifier's cache."""
    reference_features = features(classifier, test_images).cpu()
    return {
        "images": fingerprint(test_images),
        "features": reference_features,
        "radii": _kth_neighbour_radius(reference_features, NEIGHBOURS) if len(test_images) > NEIGHBOURS else None,
    }


def train_classifier(
    splits, image_shape, num_classes: int, seed: int = 0, multi_label: bool = False
) -> tuple[Classifier, float]:
    """A classifier trained on `splits.train_*` (uint8 images) and its accuracy on `splits.test_*`:
    of `num_classes` classes, or with `multi_label` of that many binary attributes (one logit
    each). The global random state is left as it was: the test stage's draws do not depend on it."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        classifier = Classifier(image_shape, num_classes)
        images, labels = splits.train_images, splits.train_labels.clone()  # not inference tensors
        if isinstance(images, torch.Tensor):  # (a memory map is read a batch at a time)
            images = images.clone()
        steps = min(CLASSIFIER_STEPS, CLASSIFIER_EPOCHS_AT_MOST * len(labels) // 128)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=PEAK_LR)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, PEAK_LR, total_steps=steps)
        with torch.enable_grad():
            for _ in range(steps):
                batch = torch.randint(len(labels), (128,))
                logits = classifier(images[batch].float() / 255)
                if multi_label:
                    loss = F.binary_cross_entropy_with_logits(logits, labels[batch].float())
                else:
                    loss = F.cross_entropy(logits, labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
    classifier.eval()
    test_images = splits.test_images[:]
    if multi_label:
        return classifier, attribute_accuracies(classifier, test_images, splits.test_labels).mean().item()
    return classifier, accuracy(classifier, test_images, splits.test_labels)


def accuracy(classifier: Classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of uint8 `images` classified as `labels`."""
    with torch.no_grad():
        predicted = classifier.head(features(classifier, images)).argmax(1)
    return (predicted == labels.to(predicted.device)).float().mean().item()


def attribute_accuracies(
    classifier: Classifier, images: torch.Tensor, vectors: torch.Tensor, image_features: torch.Tensor | None = None
) -> torch.Tensor:
    """Per attribute, the fraction of uint8 `images` whose predicted attribute (logit > 0) is the
    one of `vectors` (multi-hot)."""
    with torch.no_grad():
        image_features = features(classifier, images) if image_features is None else image_features
        predicted = classifier.head(image_features) > 0
    return (predicted == (vectors.to(predicted.device) > 0.5)).float().mean(0)


def attribute_balanced_accuracy(classifier: Classifier, image_features: torch.Tensor, vectors: torch.Tensor) -> float:
    """The mean over attributes of (true-positive rate + true-negative rate) / 2 of the predicted
    attributes against `vectors` (multi-hot): unlike the plain accuracy, a classifier that
    predicts every rare attribute absent scores 0.5 on it, not the attribute's rarity.
    Attributes that are all present or all absent in `vectors` have one rate only and are left out."""
    with torch.no_grad():
        predicted = classifier.head(image_features) > 0
    wanted = vectors.to(predicted.device) > 0.5
    positives, negatives = wanted.sum(0), (~wanted).sum(0)
    both = (positives > 0) & (negatives > 0)
    true_positive_rate = (predicted & wanted).sum(0)[both] / positives[both]
    true_negative_rate = (~predicted & ~wanted).sum(0)[both] / negatives[both]
    return ((true_positive_rate + true_negative_rate) / 2).mean().item()


def group_accuracies(
    classifier: Classifier, image_features: torch.Tensor, vectors: torch.Tensor, groups: dict[str, int]
) -> dict[str, float]:
    """For attributes that come in consecutive one-hot groups (data.attribute_groups, such as
    coloured MNIST's digit then colour), per group the fraction whose most likely attribute of
    the group is the one set in `vectors`."""
    with torch.no_grad():
        logits = classifier.head(image_features)
    vectors, found, start = vectors.to(logits.device), {}, 0
    for name, size in groups.items():
        block = slice(start, start + size)
        found[name] = (logits[:, block].argmax(1) == vectors[:, block].argmax(1)).float().mean().item()
        start += size
    return found


@torch.inference_mode(False)  # Lightning's test stage runs in inference mode, where nothing trains
def load_or_train(datamodule, directory: str) -> tuple[Classifier, dict]:
    """The dataset's classifier cached in `directory` (eval.classifier_dir), trained and cached
    first if missing; with a record of where it is and its test accuracy. A directory that
    cannot be written keeps it in memory for this run."""
    test_images, test_labels = datamodule.images("test")
    data = fingerprint(test_images, test_labels)  # not the name alone: binarised MNIST, another source may share it
    path = (
        Path(directory).expanduser() / f"{datamodule.name}-{data[:12]}.pt"
    )  # one file per test split: none overwrites another
    attributes = getattr(datamodule, "attributes", 0)  # > 0: a multi-label classifier of multi-hot attribute vectors
    outputs = attributes or datamodule.num_classes
    saved = torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else {}
    if saved.get("data") == data and saved["num_classes"] == outputs and saved.get("architecture") == ARCHITECTURE:
        classifier = Classifier(datamodule.image_shape, outputs)
        classifier.load_state_dict(saved["state_dict"])
        classifier.eval()
    else:
        log.info(
            f"Training a classifier of {datamodule.name} for the classifier metrics (once: it is cached as {path}) ..."
        )
        classifier, test_accuracy = train_classifier(
            datamodule.source_splits(), datamodule.image_shape, outputs, multi_label=attributes > 0
        )
        kind = "mean accuracy over its attributes" if attributes else "accuracy"
        log.info(f"... its {kind} on the test set: {test_accuracy:.1%}")
        saved = {"state_dict": classifier.state_dict(), "test_accuracy": test_accuracy, "data": data,
                 "num_classes": outputs, "architecture": ARCHITECTURE}  # fmt: skip
    record = {"path": str(path), "test_accuracy": saved["test_accuracy"]}
    if "test_reference" not in saved:  # a new classifier, or one cached before the reference was
        saved["test_reference"] = test_reference(classifier, test_images)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as temporary:
                torch.save(saved, temporary)
        except OSError:
            record["path"] = None  # trained for this run only
    classifier.test_reference = saved["test_reference"]
    return classifier, record


@torch.no_grad()
def classifier_metrics(
    classifier: Classifier,
    real: torch.Tensor,
    generated: torch.Tensor,
    generated_labels: torch.Tensor | None,
    generated_features: torch.Tensor | None = None,
) -> dict[str, float]:
    """sample_accuracy of `generated` (uint8) against `generated_labels` (None: samples of an
    unconditional model, which have no class to hit); classifier_fid, sample_precision and
    sample_recall between `real` and `generated` (uint8) in the classifier's features. Where
    `real` is the test split the classifier cached its reference of, that is reused."""
    classifier = classifier.to(generated.device)
    reference = classifier.test_reference
    if reference is not None and reference["images"] == fingerprint(real):
        real_features, real_radii = reference["features"].to(generated.device), reference["radii"]
        real_radii = None if real_radii is None else real_radii.to(generated.device)
    else:
        real_features, real_radii = features(classifier, real), None
    fake = features(classifier, generated) if generated_features is None else generated_features
    fid = FrechetInceptionDistance(feature=_Features()).to(generated.device)
    fid.update(real_features, real=True)
    fid.update(fake, real=False)
    metrics = {"classifier_fid": float(fid.compute())}
    if min(len(real_features), len(fake)) > NEIGHBOURS:  # the k-NN radii need k other points
        metrics["sample_precision"], metrics["sample_recall"] = precision_recall(
            real_features, fake, real_radii=real_radii
        )
    if generated_labels is not None:
        metrics["sample_accuracy"] = (
            (classifier.head(fake).argmax(1) == generated_labels.to(fake.device)).float().mean().item()
        )
    return metrics


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, k: int = NEIGHBOURS, real_radii: torch.Tensor | None = None
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al., 2019): each set's manifold is the union
    of balls around its points reaching their k-th nearest neighbour in the set; precision is
    the fraction of `fake` inside the manifold of `real`, recall the fraction of `real` inside
    that of `fake`. `real_radii`: those of `real`, if known. Distances in chunks of 1024 rows;
    one pass over the real-to-fake distances serves both."""
    real, fake = real.float(), fake.float()
    real_radii = _kth_neighbour_radius(real, k) if real_radii is None else real_radii
    fake_radii = _kth_neighbour_radius(fake, k)
    fake_inside = torch.zeros(len(fake), dtype=torch.bool, device=fake.device)
    real_inside = 0
    for chunk, radii in zip(real.split(1024), real_radii.split(1024)):
        distances = torch.cdist(chunk, fake)
        fake_inside |= (distances <= radii[:, None]).any(dim=0)
        real_inside += (distances <= fake_radii).any(dim=1).sum().item()
    return fake_inside.float().mean().item(), real_inside / len(real)


def _kth_neighbour_radius(points: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of every point to its k-th nearest other point (the nearest, at 0, is itself);
    topk, as kthvalue takes three times as long on a CPU."""
    return torch.cat(
        [torch.cdist(chunk, points).topk(k + 1, dim=1, largest=False).values[:, k] for chunk in points.split(1024)]
    )
