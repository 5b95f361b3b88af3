"""Importance-sampled marginal likelihood of a trained CVAE (Burda et al., 2016):

    log p(x | c) ~= logsumexp_k [log p(x | z_k, c) + log p(z_k | c) - log q(z_k | x, c)] - log K,

with z_k ~ q(z | x, c). It is a lower bound that tightens as K grows (K = 1 is the ELBO), so
-log p(x | c) is reported beside the negative ELBO, both in nats per image over the target
pixels. A model without a latent variable gets its exact log-likelihood.
"""

import math

import torch

from cvae_exp.models import CVAE
from cvae_exp.objective import ELBO

ROWS_PER_CHUNK = 32768  # decoder rows (images x samples) per forward pass: memory, not precision


@torch.no_grad()
def log_weights(
    cvae: CVAE, objective: ELBO, x: torch.Tensor, condition: torch.Tensor, mask: torch.Tensor | None, samples: int
) -> torch.Tensor:
    """log p(x | z_k, c) + log p(z_k | c) - log q(z_k | x, c) for k = 1..samples: shape (samples, N)."""
    posterior = cvae.encode(x, condition)
    if not cvae.has_latent:  # no latent variable: one exact term
        return objective.log_likelihood(x, cvae.decode_logits(posterior.mean, condition), mask)[None]
    per_chunk = max(1, ROWS_PER_CHUNK // len(x))
    weights = []
    for start in range(0, samples, per_chunk):
        k = min(per_chunk, samples - start)
        z = posterior.rsample(k)  # (k, N, D)
        repeat = lambda tensor, k=k: None if tensor is None else tensor.repeat(k, *[1] * (tensor.dim() - 1))
        logits = cvae.decode_logits(z.flatten(0, 1), repeat(condition))
        log_likelihood = objective.log_likelihood(repeat(x), logits, repeat(mask)).view(k, len(x))
        weights.append(log_likelihood + cvae.log_prior(z, condition) - posterior.log_prob(z))
    return torch.cat(weights)


def importance_sampled_nll(
    cvae: CVAE, objective: ELBO, x, condition, mask, samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(-log p(x | c) estimated with `samples` importance samples, the negative ELBO averaged
    over the same samples), each of shape (N,), in nats."""
    log_w = log_weights(cvae, objective, x, condition, mask, samples)
    return -(torch.logsumexp(log_w, dim=0) - math.log(len(log_w))), -log_w.mean(dim=0)
