"""Networks (mlp.py, conv.py, resnet.py), conditioning methods (conditioning.py), priors (priors.py),
the CVAE (cvae.py), the VQ-VAE (vqvae.py) and the two-layer hierarchical VAE (hierarchical.py)."""

from cvae_exp.models.cvae import CVAE, CVAEOutput
from cvae_exp.models.hierarchical import HierarchicalVAE
from cvae_exp.models.priors import StandardPrior
from cvae_exp.models.vqvae import VQVAE

__all__ = ["CVAE", "CVAEOutput", "HierarchicalVAE", "VQVAE", "build_cvae"]


def build_cvae(model: dict, conditioning: dict, prior: dict | None, task, data: dict) -> CVAE:
    """The CVAE a run's config describes: `model`, `conditioning` and `prior` are its
    config nodes (`_target_` factories), `task` the instantiated task (it decides the
    condition's shape), `data` the data node (image shape, classes)."""
    from hydra.utils import instantiate  # keeps the networks importable without Hydra

    return instantiate(
        model,
        conditioning=instantiate(conditioning),
        prior=instantiate(prior) if prior else StandardPrior,
        image_shape=list(data["image_shape"]),
        num_classes=data["num_classes"],
        condition_shape=task.condition_shape(tuple(data["image_shape"])),
    )
