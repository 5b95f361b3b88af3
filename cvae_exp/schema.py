"""The typed schema of the training config and the values it allows.

These dataclasses are the contract that OmegaConf checks types against (cvae_exp/checks.py
checks ranges and choices). The YAML files in configs/ hold the defaults, except those of
EvalConfig and DataConfig, which Hydra's ConfigStore holds as the base of the `eval` and `data`
nodes, so that each default is written once. It imports only OmegaConf and Hydra's ConfigStore
(and registers the `${cwd:}` resolver the configs use): every layer may import it.
"""

import os
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, ListConfig, OmegaConf

LIKELIHOODS = ("gaussian", "bernoulli", "logistic")
DISCRETE_LIKELIHOODS = ("bernoulli", "logistic")  # probabilities of the pixel values: bits per dimension apply
LOSS_TERMS = ("loss", "recon", "kl")  # the objective's terms, logged under train/, val/, test/
BINARIZE_CHOICES = ("none", "dynamic", "static")
IN_MEMORY_CHOICES = ("auto", True, False)
RECON_Z_CHOICES = ("sample", "mean")
SAMPLERS = ("prior", "gmm", "flow")  # cvae_exp/samplers.py
GMM_COVARIANCES = ("full", "diag")
VAL_METRICS = ("val/loss", "val/recon", "val/kl", "val/mse", "val/ssim")
MONITORABLE = VAL_METRICS + tuple(f"train/{term}" for term in LOSS_TERMS)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "64-true", "bf16-true", "16-true")

# The directory cvae-train runs from; unlike ${hydra:runtime.cwd} it resolves before a
# multirun's first job (configs/paths/default.yaml).
OmegaConf.register_new_resolver("cwd", os.getcwd, replace=True)


def _image_shape(channels: int, size: Any) -> list[int]:
    """[channels, height, width] from an image size that is one number (square) or [height, width]."""
    return [channels, *(list(size) if isinstance(size, (list, tuple, ListConfig)) else [size, size])]


# The shape of a folder's images, from data.source's channels and image_size (configs/data/image_folder.yaml)
OmegaConf.register_new_resolver("image_shape", _image_shape, replace=True)


@dataclass
class DataConfig:
    _target_: str
    name: str
    root: str
    source: dict[str, Any]
    image_shape: list[int]
    num_classes: int
    batch_size: int
    val_size: int
    split_seed: int = 0
    binarize: str = "none"
    attributes: int = 0  # 0: the labels are class numbers; D > 0: each image has D attribute values (task=attributes)
    # attributes that come in consecutive one-hot groups, by name and size (coloured MNIST: digit 10, colour 3):
    # the classifier metrics report each group's accuracy
    attribute_groups: dict[str, int] | None = None
    # the names of the label vector's columns where they are ground-truth factors of variation (dSprites:
    # shape, scale, ...): eval.disentanglement_metrics scores the latent against them
    factor_names: list[str] | None = None
    in_memory: Any = "auto"  # auto | true | false: batches from tensors on the device, or from a DataLoader
    # The DataLoader's worker processes (in_memory false). 0: the training process copies each batch's rows
    # from the memory map itself, cheaper on a CPU than workers that take cores from the training
    # (docs/performance.md); workers pay off where reads wait on a disk or a GPU trains meanwhile.
    num_workers: int = 0


# The data configs of configs/data/ start from it (`defaults: [/schema/data@_here_]`), so that its
# defaults are written once; a user's own DataModule config need not (checks.py types it either way).
ConfigStore.instance().store(group="schema", name="data", node=DataConfig)


@dataclass
class ModelConfig:
    _target_: str
    latent_dim: int
    encoder: dict[str, Any]
    decoder: dict[str, Any]


ELBO_TARGET = "cvae_exp.objective.ELBO"


@dataclass
class ELBOConfig:
    """loss=elbo (configs/loss/elbo.yaml). Another objective's keys are its own."""

    _target_: str = ELBO_TARGET
    likelihood: str = "gaussian"
    var: float = 0.5
    scale: float = 0.05  # likelihood=logistic: the discretised logistic's scale, in pixel values of [0, 1]
    beta: float = 1.0
    warmup_steps: int = 0


# The base of configs/loss/elbo.yaml, open to new keys: a user's objective that extends `elbo` adds its
# own arguments (docs/extending.md); the ELBO's own config is still checked against the closed schema
_elbo_base = OmegaConf.structured(ELBOConfig)
OmegaConf.set_struct(_elbo_base, False)
ConfigStore.instance().store(group="schema", name="elbo", node=_elbo_base)


@dataclass
class OptimConfig:
    """The types of `optim` (its values: configs/train.yaml); other torch.optim arguments are added with +optim.KEY."""

    _target_: str = MISSING
    _partial_: bool = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING


@dataclass
class EvalConfig:
    """The test stage (the report's grader on the test split) and the validation SSIM: the
    `eval` node of every config (configs/train.yaml takes it from here)."""

    val_ssim_images: int = 1000  # val/ssim (every epoch) is over the first N validation images (0: none)
    recon_z: str = "sample"  # sample (the lab's forward pass) | mean (decode the posterior mean)
    samples_per_class: int = 1000
    save_images: bool = False  # also write recon/recon_{i}.png and gen/<label>/<i>.png for external graders
    nll_samples: int = 0  # K > 0: test/nll, -log p(x|c) from K importance samples, beside test/neg_elbo
    # where generated images draw z from: prior (p(z|c), the lab's protocol) | gmm | flow (fitted per
    # class to the training split's posterior means after training, saved in samplers/); cvae_exp/samplers.py
    sampler: str = "prior"
    # test/sample_accuracy (of class-conditional samples), classifier_fid, sample_precision and
    # sample_recall, by a CNN trained on the dataset once and cached in classifier_dir (cvae_exp/classifier.py)
    classifier_metrics: bool = True
    classifier_dir: str = "${paths.cache_dir}/classifiers"
    # a file: test/inception_fid, the FID of the literature in Inception-v3's features, from these weights
    # (torch-fidelity's weights-inception-2015-12-05-6726825d.pth) or a torch.save'd feature network of
    # your own; null: none (cvae_exp/metrics/inception.py)
    inception_weights: str | None = None
    # test/mig, test/factorvae_score, test/dci_*, test/sap of the test images' posterior means against their
    # factors (data with data.factor_names, such as dsprites; cvae_exp/metrics/disentanglement.py). DCI's
    # boosted trees take minutes on a CPU at dSprites' 10,000 test images
    disentanglement_metrics: bool = False
    gmm_components: int = 10  # sampler=gmm: Gaussians per class
    gmm_covariance: str = "full"  # full | diag
    flow_layers: int = 6  # sampler=flow: coupling layers of the class-conditional RealNVP
    flow_steps: int = 3000  # and its training minibatches (512 codes each)


ConfigStore.instance().store(group="eval", name="default", node=EvalConfig)


@dataclass
class PathsConfig:
    root_dir: str
    data_dir: str
    log_dir: str
    output_dir: str
    cache_dir: str


@dataclass
class TrainConfig:
    data: DataConfig
    model: ModelConfig
    conditioning: dict[str, Any]
    trainer: dict[str, Any]
    paths: PathsConfig
    optim: OptimConfig
    task: dict[str, Any] | None = None  # None: the label task (configs/task/label.yaml)
    prior: dict[str, Any] | None = None  # None: N(0, I) (configs/prior/standard.yaml)
    scheduler: dict[str, Any] | None = None  # None: a constant learning rate (configs/scheduler/)
    loss: Any = None  # ELBOConfig for loss=elbo (checks.py types it); another objective's node is its own
    module: Any = None  # configs/module/: the LightningModule's _target_ and its own keys
    eval: EvalConfig = field(default_factory=EvalConfig)
    callbacks: dict[str, Any] | None = None
    logger: dict[str, Any] | None = None
    task_name: str = "train"
    seed: int = 42
    ckpt_path: str | None = None
    resume: str | None = None
    optimized_metric: str = "val/loss"
    reference: dict[str, Any] | None = None  # published numbers this run reproduces
