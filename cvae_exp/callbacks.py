"""Lightning callbacks the libraries do not provide."""

import random

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback


class RandomStateCheckpoint(Callback):
    """Saves the random generators in every checkpoint and restores them when training
    resumes, so that a resumed run draws the same z samples (and binarisations) as an
    uninterrupted one. Lightning checkpoints do not hold them. They are restored at the
    start of the first training epoch, after the sanity check that would consume them."""

    def __init__(self):
        self.pending: dict | None = None

    def state_dict(self) -> dict:
        name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
        numpy_state = (name, torch.from_numpy(keys.copy()), position, has_gauss, cached_gaussian)  # loads with weights_only
        state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.pending = state_dict

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.pending is None:
            return
        torch.set_rng_state(self.pending["torch"])
        name, keys, position, has_gauss, cached_gaussian = self.pending["numpy"]
        np.random.set_state((name, keys.numpy(), position, has_gauss, cached_gaussian))
        random.setstate(self.pending["python"])
        if "cuda" in self.pending and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.pending["cuda"])
        self.pending = None
