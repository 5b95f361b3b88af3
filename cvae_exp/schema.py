"""The typed schema of the training config and the values it allows.

The YAML files in configs/ are the defaults; these dataclasses are the contract that
OmegaConf checks types against (cvae_exp/checks.py checks ranges and choices). It imports
only OmegaConf (to register the `${cwd:}` resolver the configs use): every layer may import it.
"""

import os
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

LIKELIHOODS = ("gaussian", "bernoulli")
LOSS_TERMS = ("loss", "recon", "kl")  # the objective's terms, logged under train/, val/, test/
BINARIZE_CHOICES = ("none", "dynamic", "static")
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
    beta: float = 1.0
    warmup_steps: int = 0


@dataclass
class OptimConfig:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.0


@dataclass
class EvalConfig:
    val_ssim_images: int = 1000
    recon_z: str = "sample"
    samples_per_class: int = 1000
    save_images: bool = False
    nll_samples: int = 0
    sampler: str = "prior"  # where generated images draw z from (cvae_exp/samplers.py)
    classifier_metrics: bool = (
        True  # test/sample_accuracy, classifier_fid, sample_precision and sample_recall (cvae_exp/classifier.py)
    )
    classifier_dir: str = (
        "${oc.env:CVAE_EXP_CACHE,'~/.cache/cvae_exp'}/classifiers"  # where the dataset classifiers are cached
    )
    gmm_components: int = 10  # eval.sampler=gmm: Gaussians per class
    gmm_covariance: str = "full"
    flow_layers: int = 6  # eval.sampler=flow: coupling layers
    flow_steps: int = 3000  # and its training minibatches


@dataclass
class PathsConfig:
    root_dir: str
    data_dir: str
    log_dir: str
    output_dir: str


@dataclass
class TrainConfig:
    data: DataConfig
    model: ModelConfig
    conditioning: dict[str, Any]
    trainer: dict[str, Any]
    paths: PathsConfig
    task: dict[str, Any] | None = None  # None: the label task (configs/task/label.yaml)
    prior: dict[str, Any] | None = None  # None: N(0, I) (configs/prior/standard.yaml)
    scheduler: dict[str, Any] | None = None  # None: a constant learning rate (configs/scheduler/)
    loss: Any = None  # ELBOConfig for loss=elbo (checks.py types it); another objective's node is its own
    module: Any = None  # configs/module/: the LightningModule's _target_ and its own keys
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    callbacks: dict[str, Any] | None = None
    logger: dict[str, Any] | None = None
    task_name: str = "train"
    seed: int = 42
    ckpt_path: str | None = None
    resume: str | None = None
    optimized_metric: str = "val/loss"
    reference: dict[str, Any] | None = None  # published numbers this run reproduces
