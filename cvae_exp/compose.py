"""Composing the training config outside a Hydra app (the console script's pre-compose,
tests, scripts), and Hydra's composition errors as one paragraph."""

import os
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, open_dict

from cvae_exp import schema  # noqa: F401 (registers the ${cwd:} resolver the configs use)
from cvae_exp.errors import UserInputError

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "configs")


def composition_error(error: Exception, overrides: Sequence[str]) -> UserInputError:
    """Hydra's multi-line composition message (unknown group option, unknown key, bad
    override syntax) as one paragraph that names the overrides and what is allowed."""
    lines = str(error).split("Config search path:")[0].split("To append to your config")[0].splitlines()
    text = " ".join(line.strip() for line in lines if line.strip())
    if text.startswith("Could not override"):
        text = (
            f"{text.removesuffix('.')}: no such key in the config (`cvae-train --cfg job` prints them all; "
            "`+key=value` adds a key the config lacks, such as another lightning.Trainer argument: "
            "+trainer.limit_train_batches=10)"
        )
    if "Available options in" in text:
        head, options = text.split("Available options in", 1)
        group, names = options.split(":", 1)
        text = f"{head.strip()}; the options of{group}: {', '.join(names.split())}"
    return UserInputError(
        f"Cannot compose the config from {' '.join(overrides)}: {text.rstrip('.')}. `cvae-train --help` lists "
        "the config groups and keys."
    )


def compose_train(overrides: Sequence[str], output_dir: str) -> DictConfig:
    """The config `cvae-train <overrides>` runs, composed outside a Hydra app (tests,
    scripts), with ${hydra:...} values resolving as in a run whose directory is `output_dir`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        try:
            cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
        except HydraException as error:
            raise composition_error(error, overrides) from None
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = os.getcwd()
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg
