"""Checks that run before Hydra creates a run directory, and `resume=<run dir>`.

Hydra makes the run directory and writes .hydra/ before it calls the task function,
so a bad value caught there would leave a half-made run behind. This Hydra callback
validates the config and loads the data in `on_run_start`, before any of that; on
bad input it prints one paragraph and exits with status 2, having written nothing.
Jobs of a multirun are checked by the task function instead (each in its own dir).
"""

import copy
import os
import sys
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from cvae_exp.config import validate
from cvae_exp.errors import UserInputError, report_and_exit


class Preflight(Callback):
    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            with read_write(config), open_dict(config):
                if config.get("resume"):
                    continue_run(config)
            HydraConfig.instance().set_config(config)  # resolves ${hydra:...} in the run dir
            with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
                config.hydra.runtime.output_dir = os.path.abspath(str(config.hydra.run.dir))
            HydraConfig.instance().set_config(config)
            task = copy.deepcopy(config)
            with read_write(task), open_dict(task):
                del task["hydra"]
            validate(task)
            instantiate(task.data).setup()
        except UserInputError as error:
            report_and_exit(error, "cvae-train")
        except Exception:  # Hydra would only warn and run unchecked (or, resuming, afresh)
            traceback.print_exc()
            sys.exit(1)


def continue_run(config: DictConfig) -> None:
    """Replace the composed config by the saved one of the run being resumed (plus value
    overrides such as trainer.max_epochs=N) and train on in that run's directory."""
    run_dir = Path(config.resume).resolve()
    saved_config, last = run_dir / ".hydra" / "config.yaml", run_dir / "checkpoints" / "last.ckpt"
    if not saved_config.is_file() or not last.is_file():
        raise UserInputError(
            f"Cannot resume resume={config.resume!r}: a run directory with .hydra/config.yaml and "
            f"checkpoints/last.ckpt is expected (e.g. outputs/runs/<date_time>); "
            f"{'the checkpoint' if saved_config.is_file() else 'the saved config'} is missing."
        )
    saved = OmegaConf.load(saved_config)
    for override in OverridesParser.create().parse_overrides(list(config.hydra.overrides.task)):
        key = override.key_or_group
        if key == "resume":
            continue
        if key in saved and isinstance(saved[key], DictConfig):
            raise UserInputError(
                f"Cannot change the config group {key}={override.value()} of a resumed run: "
                f"resume={config.resume!r} continues that run with its own config; only values "
                f"such as trainer.max_epochs=N may be overridden."
            )
        OmegaConf.update(saved, key, override.value(), force_add=True)
    saved.resume, saved.ckpt_path = str(run_dir), str(last)
    for key in [key for key in config if key != "hydra"]:
        del config[key]
    config.merge_with(saved)
    config.hydra.run.dir = str(run_dir)
    config.hydra.runtime.choices = OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.runtime.choices

