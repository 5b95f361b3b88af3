"""Shared fixtures: compose the real configs with Hydra's compose API, run the real CLI."""

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from cvae_exp.train import CONFIG_DIR

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "MNIST" / "raw"


@pytest.fixture
def compose_train(tmp_path):
    """compose_train(overrides) -> the composed train config, as inside `cvae-train`,
    with its run dir in tmp_path."""

    def _compose(overrides: list[str] = ()) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", overrides=[*overrides, f"hydra.run.dir={tmp_path}"], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path)
            cfg.hydra.runtime.cwd = os.getcwd()
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg.hydra
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture
def mnist_root(tmp_path_factory) -> Path:
    """A writable data root holding the original MNIST files, or a skip where they are absent."""
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"real MNIST files not found at {SHARED_MNIST}")
    root = tmp_path_factory.mktemp("data")
    (root / "MNIST" / "raw").mkdir(parents=True)
    for file in SHARED_MNIST.glob("*.gz"):
        os.symlink(file, root / "MNIST" / "raw" / file.name)
    return root
