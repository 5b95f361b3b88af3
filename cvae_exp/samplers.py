"""Latent samplers: where generation draws z from (the test stage, cvae-eval, cvae-sample).

`prior` draws z ~ p(z | c), the model's own prior and the lab's protocol. The others are
fitted after training to the posterior means of the training split, one density per class,
and replace the prior at generation time: ex-post density estimation (Ghosh et al., 2020),
which fills the "prior holes" where N(0, I) feeds the decoder codes it never saw. `gmm`
is scikit-learn's GaussianMixture per class; `flow` a small conditional RealNVP (Dinh et
al., 2017), our own because no dependency of the framework has one.

A fitted sampler is saved next to its checkpoint's run (samplers/<checkpoint>-<name>.pt) and
reloaded while its settings match. A new sampler is one class here, with `fit`, `sample`
and its name and settings in cvae_exp/schema.py (SAMPLERS, EvalConfig).
"""

import logging
import time
from pathlib import Path

import torch
from torch import nn

from cvae_exp.errors import UserInputError
from cvae_exp.files import atomic_path
from cvae_exp.schema import SAMPLERS

log = logging.getLogger(__name__)  # cvae-train's console and train.log; cvae-eval's and cvae-sample's stderr


class GaussianMixtureSampler(nn.Module):
    """Per class, a mixture of `components` Gaussians (covariance `full` or `diag`) fitted by EM."""

    def __init__(self, num_classes: int, latent_dim: int, components: int, covariance: str, seed: int = 0):
        super().__init__()
        self.settings = dict(components=components, covariance=covariance, seed=seed)
        self.register_buffer("log_weights", torch.zeros(num_classes, components))
        self.register_buffer("means", torch.zeros(num_classes, components, latent_dim))
        self.register_buffer("scale_tril", torch.eye(latent_dim).repeat(num_classes, components, 1, 1))

    def fit(self, codes: torch.Tensor, labels: torch.Tensor) -> None:
        from sklearn.mixture import GaussianMixture

        for label in range(len(self.means)):
            points = codes[labels == label].double().cpu().numpy()
            if len(points) < self.settings["components"]:
                raise ValueError(
                    f"class {label} has {len(points)} training images, fewer than "
                    f"eval.gmm_components={self.settings['components']}"
                )
            mixture = GaussianMixture(
                self.settings["components"],
                covariance_type=self.settings["covariance"],
                reg_covar=1e-5,
                random_state=self.settings["seed"],
            ).fit(points)
            covariances = torch.as_tensor(mixture.covariances_)
            covariances = torch.diag_embed(covariances) if self.settings["covariance"] == "diag" else covariances
            self.log_weights[label] = torch.as_tensor(mixture.weights_).log()
            self.means[label] = torch.as_tensor(mixture.means_)
            self.scale_tril[label] = torch.linalg.cholesky(covariances)

    def sample(self, labels: torch.Tensor) -> torch.Tensor:
        component = torch.multinomial(self.log_weights[labels].exp(), 1).squeeze(1)
        noise = torch.randn(len(labels), self.means.shape[-1], 1, device=labels.device)
        return self.means[labels, component] + (self.scale_tril[labels, component] @ noise).squeeze(-1)


class _Coupling(nn.Module):
    """z[~mask] <- z[~mask] * exp(s) + t, with (s, t) from z[mask] and the class embedding."""

    def __init__(self, mask: torch.Tensor, width: int, embedding_dim: int):
        super().__init__()
        self.register_buffer("mask", mask)
        dim = len(mask)
        self.net = nn.Sequential(
            nn.Linear(dim + embedding_dim, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, 2 * dim),
        )
        nn.init.zeros_(self.net[-1].weight)  # starts as the identity
        nn.init.zeros_(self.net[-1].bias)

    def _scale_shift(self, kept: torch.Tensor, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_scale, shift = self.net(torch.cat([kept, embedding], dim=1)).chunk(2, dim=1)
        return torch.tanh(log_scale) * (1 - self.mask), shift * (1 - self.mask)

    def forward(self, z, embedding):
        """data -> noise direction: (transformed z, log |det|)."""
        log_scale, shift = self._scale_shift(z * self.mask, embedding)
        return z * torch.exp(log_scale) + shift, log_scale.sum(1)

    def inverse(self, u, embedding):
        log_scale, shift = self._scale_shift(u * self.mask, embedding)
        return (u - shift) * torch.exp(-log_scale)


class FlowSampler(nn.Module):
    """A class-conditional RealNVP on standardised codes: alternating half masks, maximum
    likelihood with Adam for `steps` minibatches of 512."""

    def __init__(self, num_classes: int, latent_dim: int, layers: int, steps: int, width: int = 128, seed: int = 0):
        super().__init__()
        self.settings = dict(layers=layers, steps=steps, width=width, seed=seed)
        self.embedding = nn.Embedding(num_classes, 16)
        half = torch.arange(latent_dim) % 2
        self.couplings = nn.ModuleList(
            _Coupling((half if i % 2 else 1 - half).float(), width, 16) for i in range(layers)
        )
        self.register_buffer("center", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def log_prob(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log density of z given the class (change of variables to N(0, I))."""
        u = (z - self.center) / self.scale
        log_det = -self.scale.log().sum().expand(len(z))
        embedding = self.embedding(labels)
        for coupling in self.couplings:
            u, layer_log_det = coupling(u, embedding)
            log_det = log_det + layer_log_det
        return torch.distributions.Normal(0.0, 1.0).log_prob(u).sum(1) + log_det

    def fit(self, codes: torch.Tensor, labels: torch.Tensor) -> None:
        codes, labels = codes.float(), labels.long()
        self.center.copy_(codes.mean(0))
        self.scale.copy_(codes.std(0).clamp_min(1e-4))
        generator = torch.Generator().manual_seed(self.settings["seed"])
        optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.settings["steps"])
        steps = self.settings["steps"]
        with torch.enable_grad():
            for step in range(1, steps + 1):
                batch = torch.randint(len(codes), (512,), generator=generator)
                loss = -self.log_prob(codes[batch], labels[batch]).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                if step % max(1, steps // 10) == 0 or step == steps:
                    log.info(f"sampler flow: step {step}/{steps}, -log p(z | c) {loss.item():.3f}")

    def sample(self, labels: torch.Tensor) -> torch.Tensor:
        u = torch.randn(len(labels), len(self.center), device=labels.device)
        embedding = self.embedding(labels)
        for coupling in reversed(self.couplings):
            u = coupling.inverse(u, embedding)
        return u * self.scale + self.center


def build(name: str, eval_config: dict, num_classes: int, latent_dim: int) -> nn.Module:
    """An unfitted sampler of `name` with the settings of `eval_config` (EvalConfig's keys)."""
    if name == "gmm":
        return GaussianMixtureSampler(
            num_classes, latent_dim, eval_config["gmm_components"], eval_config["gmm_covariance"]
        )
    if name == "flow":
        return FlowSampler(num_classes, latent_dim, eval_config["flow_layers"], eval_config["flow_steps"])
    raise ValueError(f"eval.sampler={name!r} is not one of {SAMPLERS}")


def require_applicable(cvae, name: str) -> None:
    """A fitted sampler needs class labels as the condition and a Gaussian latent variable."""
    continuous = cvae.has_latent and not getattr(cvae, "discrete_latent", False)
    if name != "prior" and (not cvae.labels_condition or not continuous):
        raise UserInputError(
            f"Invalid sampler {name!r} for this run: it fits a density per class to the posterior codes, so it "
            "needs labels "
            f"as the condition (task=label) and a continuous latent variable (not prior=none, not model=vqvae, "
            "which samples from its prior over codes); use sampler prior here."
        )


@torch.no_grad()
def posterior_means(cvae, batches, task=None) -> torch.Tensor:
    """mu of q(z | x, c) for batches of (uint8 images, labels); the condition c is the labels, or
    what `task` makes of the batch (task=attributes: the label vectors)."""
    parameter = next(cvae.encoder.parameters())
    means = []
    for x, y in batches:
        x, y = x.to(parameter.device, parameter.dtype) / 255, y.to(parameter.device)
        means.append(cvae.encode(x, y if task is None else task(x, y)[0]).mean.float())
    return torch.cat(means)


@torch.inference_mode(False)  # Lightning's test stage runs in inference mode, where nothing trains
def fitted_sampler(module, name: str, checkpoint: Path | None, datamodule) -> nn.Module | None:
    """The sampler `name`, with the settings of `module.hparams.eval`, fitted to the training
    split's posterior means of this checkpoint; None for `prior`. Saved as
    <run dir>/samplers/<checkpoint stem>-<name>.pt and reloaded while its settings match."""
    if name == "prior":
        return None
    cvae = module.cvae
    require_applicable(cvae, name)
    sampler = build(name, module.hparams.eval, cvae.num_classes, cvae.latent_dim)
    path = None
    if checkpoint is not None:
        checkpoints = next((folder for folder in checkpoint.parents if folder.name == "checkpoints"), checkpoint)
        path = checkpoints.parent / "samplers" / f"{checkpoint.stem}-{name}.pt"
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=False)
            if saved["settings"] == sampler.settings:
                sampler.load_state_dict(saved["state_dict"])
                return sampler.to(module.device)
    labels = datamodule.labels("train")
    start = time.perf_counter()
    log.info(f"sampler {name}: fitting it to the posterior means of {len(labels)} training images")
    codes = posterior_means(cvae, datamodule.batches("train", 1024))
    sampler.fit(codes.cpu().clone(), labels.clone())  # clones: not inference tensors
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary:
            torch.save({"settings": sampler.settings, "state_dict": sampler.state_dict()}, temporary)
    log.info(f"sampler {name}: fitted in {time.perf_counter() - start:.0f} s" + (f", saved as {path}" if path else ""))
    return sampler.to(module.device)
