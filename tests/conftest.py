"""Shared fixtures: compose the real configs with Hydra's compose API, run the real CLI."""

import os
from pathlib import Path

import pytest

from cvae_exp import compose
from tests.slurm_cluster import slurm_cluster  # noqa: F401  (a session fixture: tests/test_slurm.py, test_readme.py)

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "MNIST" / "raw"


@pytest.fixture(scope="session", autouse=True)
def classifier_cache(tmp_path_factory):
    """One cache of dataset classifiers (eval.classifier_dir) per test session, shared by
    every CLI run, so the suite trains each once and leaves the user's cache alone."""
    os.environ["CVAE_EXP_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def compose_train(tmp_path):
    """compose_train(overrides) -> the composed train config, as inside `cvae-train`,
    with its run dir in tmp_path."""
    return lambda overrides=(): compose.compose_train(overrides, tmp_path)


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
