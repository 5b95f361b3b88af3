"""Datasets: sources (sources.py), the DataModule (datamodule.py), device batches (batches.py)."""

from cvae_exp.data.datamodule import TensorDataModule
from cvae_exp.data.sources import ImageSplits

__all__ = ["ImageSplits", "TensorDataModule"]
