"""Where the training config comes from, and composing it outside a Hydra app (the console
script's pre-compose, the Python API, tests, scripts), with Hydra's composition errors as
one paragraph.

The configs ship inside the package as `cvae_exp.configs` (configs/ at the top of a
checkout), so that an installed wheel finds them in any directory. A user adds configs of
their own as Hydra does: `--config-dir DIR` (`-cd`) puts DIR before the package's configs
on the search path, `--config-path`/`-cp` replaces the primary config directory,
`--config-name`/`-cn` picks the primary config, and `hydra.searchpath=[...]` adds more.
"""

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from hydra import compose
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_automatic_config_search_path
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, open_dict

from cvae_exp import schema  # noqa: F401 (registers the ${cwd:} resolver the configs use)
from cvae_exp.errors import UserInputError

CONFIG_MODULE = "cvae_exp.configs"
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"  # the primary config directory, as Hydra names it
CONFIG_NAME = "train"
JOB_NAME = "train"  # Hydra's job name, as `cvae-train` has it: the log file is <run dir>/train.log


@dataclass
class ConfigSource:
    """Where Hydra reads the configs from: the primary config directory and name, and a
    user's directory searched before the package's configs (`-cd`)."""

    config_path: str = CONFIG_PATH
    config_name: str = CONFIG_NAME
    config_dir: str | None = None

    def search_path(self):
        """The search path Hydra's own command line builds from these (hydra._internal.utils._run_hydra)."""
        search_path = create_automatic_config_search_path(None, None, self.config_path)
        if self.config_dir is not None:
            search_path.prepend(
                provider="command-line", path=f"file://{self.config_dir}", anchor=SearchPathQuery(provider="schema")
            )
        return search_path


def import_from_working_directory() -> None:
    """Make modules in the working directory importable, as `python -m` does, so that a
    user's `_target_`s there (a dataset loader, a model) need no install. The console
    scripts call it first."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def config_source(config_path: str | None = None, config_name: str | None = None, config_dir: str | None = None):
    """A ConfigSource from Hydra's flags, with directories made absolute (relative to the
    working directory) and checked, so that the pre-compose and Hydra read the same files."""
    for flag, directory in (("--config-path", config_path), ("--config-dir", config_dir)):
        if directory is not None and not directory.startswith("pkg://") and not os.path.isdir(directory):
            raise UserInputError(
                f"{flag} {directory!r}: no such directory (from {os.getcwd()}); pass a directory of YAML "
                "configs (docs/extending.md shows one)."
            )
    absolute = lambda path: path if path is None or path.startswith("pkg://") else os.path.abspath(path)
    return ConfigSource(absolute(config_path) or CONFIG_PATH, config_name or CONFIG_NAME, absolute(config_dir))


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
        f"Cannot compose the config from {' '.join(overrides) or 'no overrides'}: {text.rstrip('.')}. "
        "`cvae-train --help` lists "
        "the config groups and keys."
    )


def compose_train(overrides: Sequence[str], output_dir: str | None, source: ConfigSource | None = None) -> DictConfig:
    """The config `cvae-train <overrides>` runs, composed outside a Hydra app, with
    ${hydra:...} values resolving as in a run whose directory is `output_dir` (None: the
    config's own hydra.run.dir, as a single run of cvae-train has it)."""
    source = source or ConfigSource()
    GlobalHydra.instance().clear()
    try:
        Hydra.create_main_hydra2(task_name=JOB_NAME, config_search_path=source.search_path())
        cfg = compose(source.config_name, overrides=list(overrides), return_hydra_config=True)
    except HydraException as error:
        raise composition_error(error, overrides) from None
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        run_dir = os.path.abspath(str(cfg.hydra.run.dir)) if output_dir is None else str(output_dir)
        cfg.hydra.runtime.output_dir = run_dir
        cfg.hydra.runtime.cwd = os.getcwd()
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


HYDRA_FLAGS_WITH_VALUES = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--experimental-rerun",
    "--info",
    "-i",
}


def override_arguments(arguments: list[str]) -> list[str]:
    """The key=value arguments, without Hydra's flags and the values those flags take."""
    overrides, skip = [], False
    for argument in arguments:
        if skip or argument.startswith("-"):
            skip = argument in HYDRA_FLAGS_WITH_VALUES
            continue
        overrides.append(argument)
    return overrides
