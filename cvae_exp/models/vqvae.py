"""VQ-VAE (van den Oord et al. 2017) on the CVAE's encoders, decoders and conditioning.

The encoder's `latent_dim` outputs are read as `latent_dim / code_dim` vectors, each replaced
by the nearest of `codebook_size` learned code vectors before the decoder sees it, with the
straight-through gradient (the decoder's gradient passes to the encoder unchanged). The
posterior is a point mass on those codes, so the KL term of the ELBO is -log p(codes | c)
under the model's prior over codes: autoregressive over the codes (a GRU) or independent
per code, and conditioned on the condition (class, attributes or image) unless told not to.
The prior is trained with the rest (its term's gradient reaches the prior alone: the codes
are indices), so one run gives a model that samples. loss=vqvae (cvae_exp/objective.py)
adds the codebook and commitment terms.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from cvae_exp.errors import ModelConfigError, require_size
from cvae_exp.models.conditioning import Conditioning
from cvae_exp.models.cvae import CVAE, CVAEOutput
from cvae_exp.models.priors import StandardPrior, prior_option

# Why a VQ-VAE has no importance-sampled -log p (cvae-train's eval.nll_samples, cvae-eval's --nll-samples)
NO_POSTERIOR_DENSITY = (
    "importance sampling needs a posterior density, and model=vqvae's is a point mass at its codes; its bound "
    "on -log p(x | c) is test/neg_elbo, logged by loss=vqvae in every run"
)


@dataclass
class Quantized:
    """The VQ-VAE's posterior: a point mass at the quantised latent (N, latent_dim), with its codes (N, M)."""

    mean: torch.Tensor
    codes: torch.Tensor

    def rsample(self, samples: int | None = None) -> torch.Tensor:
        return self.mean if samples is None else self.mean.expand(samples, *self.mean.shape)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        raise ValueError(
            "a VQ-VAE's posterior is a point mass at its codes and has no density over z: importance-sampled "
            "likelihoods and objectives that need log q(z | x, c) do not apply to model=vqvae"
        )


@dataclass
class VQOutput(CVAEOutput):
    """CVAEOutput (mu: the encoder's output before quantisation, logvar: zeros, z: the
    quantised latent, kl: -log p(codes | c)) and the quantiser's terms, per image."""

    codes: torch.Tensor  # (N, M), indices into the codebook
    codebook: torch.Tensor  # (N,), ||sg[z_e] - e||^2 summed over the codes: moves the code vectors
    commitment: torch.Tensor  # (N,), ||z_e - sg[e]||^2: keeps the encoder near its codes


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantisation of (N, M, code_dim) vectors against a learned codebook.

    With `restart_unused_codes` = S > 0, a code that no vector chose in S training batches is
    moved onto an encoder output of the batch drawn at random (the codebook restarts of
    Dhariwal et al. 2020, Jukebox): a code far from every encoder output never receives the
    codebook term's gradient and stays unused for good. Under data parallelism the usage is
    summed over the processes and the new vectors come from the first, so every copy of the
    codebook stays the same. A moved code keeps Adam's moments of its old place, which decay
    within a few hundred steps. S counts training batches (under trainer.accumulate_grad_batches,
    several per optimizer step)."""

    def __init__(self, codebook_size: int, code_dim: int, restart_unused_codes: int = 0):
        super().__init__()
        self.codebook = nn.Embedding(codebook_size, code_dim)
        nn.init.uniform_(self.codebook.weight, -1 / codebook_size, 1 / codebook_size)  # as the paper's code
        self.restart_unused_codes = restart_unused_codes
        if restart_unused_codes:  # a buffer only then: checkpoints without restarts keep their keys
            self.register_buffer("steps_unused", torch.zeros(codebook_size, dtype=torch.long))

    def codes(self, z_e: torch.Tensor) -> torch.Tensor:
        """The index of each vector's nearest code vector (squared Euclidean distance, float32), (N, M)."""
        flat, codebook = z_e.detach().flatten(0, -2).float(), self.codebook.weight.detach().float()
        distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.T + codebook.pow(2).sum(1)
        return distances.argmin(1).view(z_e.shape[:-1])

    def forward(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(straight-through quantised z_e, codes, codebook term, commitment term), the terms per row."""
        codes = self.codes(z_e)
        if self.training and self.restart_unused_codes and self._restart_unused(z_e, codes):
            codes = self.codes(z_e)
        quantized = self.codebook(codes).to(z_e.dtype)
        codebook = (quantized - z_e.detach()).float().pow(2).sum((1, 2))
        commitment = (z_e - quantized.detach()).float().pow(2).sum((1, 2))
        return z_e + (quantized - z_e).detach(), codes, codebook, commitment

    @torch.no_grad()
    def _restart_unused(self, z_e: torch.Tensor, codes: torch.Tensor) -> bool:
        """Count this step's use of each code; move the codes unused for `restart_unused_codes`
        steps onto random vectors of z_e. True if any moved."""
        used = torch.bincount(codes.flatten(), minlength=len(self.steps_unused))
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            torch.distributed.all_reduce(used)
        self.steps_unused.add_(1).masked_fill_(used > 0, 0)
        unused = self.steps_unused >= self.restart_unused_codes
        if not unused.any():
            return False
        flat = z_e.detach().flatten(0, -2)
        count = int(unused.sum())  # distinct vectors where the batch has enough, so that no two codes land together
        picks = (
            torch.randperm(len(flat), device=flat.device)[:count]
            if count <= len(flat)
            else torch.randint(len(flat), (count,), device=flat.device)
        )
        vectors = flat[picks].to(self.codebook.weight)
        if distributed:
            torch.distributed.broadcast(vectors, src=0)
        self.codebook.weight[unused] = vectors
        self.steps_unused[unused] = 0
        return True


class CodePrior(nn.Module):
    """p(k_1, ..., k_M | c) over M codes of `codebook_size` values. Autoregressive: a GRU reads
    the codes before position m (each embedded, plus a learned embedding of m and one of the
    condition) and gives the distribution of code m. Otherwise each code's distribution depends
    on its position and the condition alone. `conditional=False` leaves the condition out."""

    def __init__(
        self,
        num_codes: int,
        codebook_size: int,
        conditioning: Conditioning,
        hidden: int = 256,
        autoregressive: bool = True,
        conditional: bool = True,
    ):
        super().__init__()
        require_size("model.code_prior.hidden", hidden)
        self.num_codes, self.codebook_size, self.conditioning = num_codes, codebook_size, conditioning
        self.embed = nn.Embedding(codebook_size + 1, hidden)  # the last one starts each sequence
        self.position = nn.Parameter(torch.zeros(num_codes, hidden))
        self.condition = nn.Linear(conditioning.condition_features, hidden) if conditional else None
        self.rnn = nn.GRU(hidden, hidden, batch_first=True) if autoregressive else None
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(hidden, codebook_size))

    def _context(self, condition: torch.Tensor, rows: int) -> torch.Tensor:
        """What every position's input adds: the condition's embedding (zeros without one), (N, 1, hidden)."""
        if self.condition is None:
            return self.position.new_zeros(rows, 1, self.position.shape[1])
        return self.condition(self.conditioning.as_features(condition, self.position.dtype))[:, None]

    def logits(self, codes: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """(N, M, codebook_size): the logits of each code given those before it (and the condition)."""
        inputs = self.position[None] + self._context(condition, len(codes))
        if self.rnn is not None:
            start = codes.new_full((len(codes), 1), self.codebook_size)
            inputs = inputs + self.embed(torch.cat([start, codes[:, :-1]], dim=1))
            inputs = self.rnn(inputs)[0]
        return self.head(inputs)

    def log_prob(self, codes: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """log p(codes | c) per row, (N,)."""
        logits = self.logits(codes, condition).float()
        return -F.cross_entropy(logits.transpose(1, 2), codes, reduction="none").sum(1)

    @torch.no_grad()
    def sample(self, condition: torch.Tensor) -> torch.Tensor:
        """One code sequence per condition, (N, M)."""
        rows = len(condition)
        context = self._context(condition, rows)
        if self.rnn is None:
            logits = self.head(self.position[None] + context).float()
            return torch.distributions.Categorical(logits=logits).sample()
        codes, state = [], None
        previous = torch.full((rows,), self.codebook_size, dtype=torch.long, device=self.position.device)
        for m in range(self.num_codes):
            inputs = self.embed(previous)[:, None] + self.position[m] + context
            output, state = self.rnn(inputs, state)
            previous = torch.distributions.Categorical(logits=self.head(output[:, 0]).float()).sample()
            codes.append(previous)
        return torch.stack(codes, dim=1)


class VQVAE(CVAE):
    """The CVAE with a quantised latent and a prior over its codes (`code_prior`, a CodePrior
    factory). The encoder's mean head gives z_e (its variance head goes unused: the
    architectures are the CVAE's). `prior` must stay the standard one: the prior over codes
    replaces it."""

    discrete_latent = True  # consumers that need a Gaussian latent refuse it

    def __init__(
        self,
        encoder: Callable[..., nn.Module],
        decoder: Callable[..., nn.Module],
        conditioning: Callable[..., Conditioning],
        latent_dim: int,
        image_shape: tuple[int, int, int],
        num_classes: int,
        condition_shape: tuple[int, int, int] | None = None,
        prior: Callable[..., StandardPrior] = StandardPrior,
        codebook_size: int = 64,
        code_dim: int = 4,
        code_prior: Callable[..., CodePrior] = CodePrior,
        restart_unused_codes: int = 0,
    ):
        kind = getattr(prior, "func", prior)
        if kind is not StandardPrior:
            raise ModelConfigError(
                f"model=vqvae has its own prior over its codes (model.code_prior), so it takes prior=standard, "
                f"the default, not {prior_option(kind)}"
            )
        require_size("model.codebook_size", codebook_size, minimum=2)
        require_size("model.code_dim", code_dim)
        require_size("model.restart_unused_codes", restart_unused_codes, minimum=0)
        if latent_dim % code_dim:
            raise ModelConfigError(
                f"model.latent_dim={latent_dim} must be a multiple of model.code_dim={code_dim}: model=vqvae reads "
                "its latent as latent_dim / code_dim codes"
            )
        super().__init__(encoder, decoder, conditioning, latent_dim, image_shape, num_classes, condition_shape)
        self.num_codes, self.code_dim = latent_dim // code_dim, code_dim
        self.quantizer = VectorQuantizer(codebook_size, code_dim, restart_unused_codes)
        spec = dict(num_classes=num_classes, condition_shape=self.condition_shape)
        unconditional = {} if self.is_conditional else {"conditional": False}  # conditioning=none: p(codes) alone
        self.code_prior = code_prior(self.num_codes, codebook_size, Conditioning(**spec), **unconditional)

    def _quantize(self, x: torch.Tensor, condition: torch.Tensor):
        z_e = self.encoder(x, condition)[0]
        z_q, codes, codebook, commitment = self.quantizer(z_e.view(len(x), self.num_codes, self.code_dim))
        return z_e, z_q.flatten(1), codes, codebook, commitment

    def encode(self, x: torch.Tensor, condition: torch.Tensor) -> Quantized:
        _, z_q, codes, _, _ = self._quantize(x, condition)
        return Quantized(z_q, codes)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> VQOutput:
        z_e, z_q, codes, codebook, commitment = self._quantize(x, condition)
        kl = -self.code_prior.log_prob(codes, condition)
        logits = self.decoder(z_q, condition)
        return VQOutput(logits, z_e, torch.zeros_like(z_e), z_q, kl, codes, codebook, commitment)

    def log_prior(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        raise ValueError(
            "model=vqvae has a prior over its codes (log p(codes | c): model.code_prior.log_prob), not a density over z"
        )

    def sample_latent(self, condition: torch.Tensor) -> torch.Tensor:
        """The code vectors of codes ~ p(codes | c), one row per condition."""
        return self.quantizer.codebook(self.code_prior.sample(condition)).flatten(1)

    @torch.no_grad()
    def sample(self, condition: torch.Tensor, n: int = 1, sampler: nn.Module | None = None) -> torch.Tensor:
        """`n` images per condition from codes ~ p(codes | c), condition-major."""
        if sampler is not None:
            raise ValueError("model=vqvae samples from its prior over codes; a fitted latent sampler does not apply")
        return super().sample(condition, n)
