"""Optuna's sweeper with its study in a storage (cvae_exp/optuna_sweeper.py): the Hydra plugin,
which imports Optuna only once Hydra makes the sweeper, as hydra-optuna-sweeper's own does, so
that Hydra's scan of the plugins at every start stays quick."""

import logging
from typing import Any

from hydra.core.plugins import Plugins
from hydra.experimental.callback import Callback
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class ResumableOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        from cvae_exp.optuna_sweeper import ResumableOptunaSweeperImpl

        self.sweeper = ResumableOptunaSweeperImpl(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.sweeper.sweep(arguments)


class SweeperCheck(Callback):
    """Made by Hydra with its other callbacks, before Preflight makes the sweep directory and
    before Hydra makes the sweeper: registers ResumableOptunaSweeper (Plugins.register), since
    Hydra finds plugins by listing the directories of the hydra_plugins namespace, where an
    editable install has none (hydra#2359); and checks the sweeper's own settings and storage,
    so that a bad one is refused with nothing made."""

    def __init__(self, **settings: Any) -> None:
        Plugins.instance().register(ResumableOptunaSweeper)
        logging.getLogger("alembic").setLevel(logging.WARNING)  # Optuna's import of it logs its set-up at INFO
        from cvae_exp.errors import UserInputError, report_and_exit
        from cvae_exp.optuna_sweeper import check_settings

        try:
            check_settings(**settings)
        except UserInputError as error:
            report_and_exit(error, "cvae-train")
