"""Optuna's Hydra sweeper with its study in a storage, so that a search goes on where it was
when it runs again (after a kill, a preemption, a lost machine) and several sweeper processes,
on one machine or many, share one study.

hydra-optuna-sweeper (its OptunaSweeperImpl, subclassed here) asks for `n_trials` more trials
at every start, numbers its job directories from 0 each time, and leaves the trials of a killed
process RUNNING for ever. Here:
- the storage is Optuna's RDBStorage with a heartbeat: a trial whose sweeper stopped beating
  for `grace_period` seconds is failed (optuna.storages.fail_stale_trials) and queued again with
  its parameters (RetryFailedTrialCallback) for whichever process asks next;
- `n_trials` counts the whole study: every start's and every process's trials, a trial and its
  retries once; a process asks while the study has fewer, then waits for the others' running
  trials (retrying those whose process died) and ends when every trial has finished;
- each job's directory is its trial number, so that starts and processes that share a sweep
  directory never write into one job's directory twice;
- the sampler's state is kept in the study (Optuna's advice for resuming: pickle the sampler),
  so that a resumed search draws what an uninterrupted one would, and processes sharing a study
  draw from one stream, not one each from the same seed.

The plugin's sweep() loop is one function with no seam for a budget, a lock or a heartbeat, so
sweep() is written anew here from the plugin's parts (its search-space parsing,
_configure_trials, the way it tells results and honours max_failure_rate).
"""

import base64
import functools
import logging
import math
import pickle
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from filelock import FileLock
from hydra.core.utils import JobReturn
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import OmegaConf
from optuna.exceptions import ExperimentalWarning
from optuna.storages import BaseStorage, InMemoryStorage, RDBStorage, RetryFailedTrialCallback
from optuna.trial import Trial, TrialState

from cvae_exp.errors import UserInputError, report_and_exit

log = logging.getLogger(__name__)

SEARCH_ATTR = "cvae_exp:search"  # the overrides and search space a study was started with
SAMPLER_ATTR = "cvae_exp:sampler"  # the study's system attribute that holds the pickled sampler
WAIT_POLL_S = 2  # how often a process that waits for the others' trials looks at the study


class ResumableOptunaSweeperImpl(OptunaSweeperImpl):
    def __init__(
        self,
        *,
        heartbeat_interval: int,
        grace_period: int,
        max_retry: int | None,
        **plugin_settings: Any,
    ) -> None:
        super().__init__(**plugin_settings)
        self.heartbeat_interval, self.grace_period, self.max_retry = heartbeat_interval, grace_period, max_retry

    def sweep(self, arguments: list[str]) -> None:
        with _reported(self.config):
            search_space, fixed_params = self._search_space(arguments)
            directions = self._get_directions()
            storage, lock = self._open_storage()
            with lock():  # creating the tables and the study races another process doing the same
                study = self._open_study(storage, directions)
        study_id = storage.get_study_id_from_name(study.study_name)
        self._log_start(storage, study_id)
        waited_for: set[int] = set()
        while True:
            with lock():  # counting the budget and asking must be one step among all processes
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
                trials = storage.get_all_trials(study_id, deepcopy=False)
                waiting = sum(trial.state == TrialState.WAITING for trial in trials)
                batch_size = min(self.n_jobs, waiting + max(0, self.n_trials - len(_logical_trials(trials))))
                if batch_size:
                    self._restore_sampler(study)
                    asked = [study.ask() for _ in range(batch_size)]
                    trial_ids = [storage.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in asked]
                    if storage.is_heartbeat_enabled():
                        for trial_id in trial_ids:  # at once: a trial without a heartbeat never becomes stale
                            storage.record_heartbeat(trial_id)
                    overrides = self._configure_trials(asked, search_space, fixed_params)
                    self._save_sampler(study)
            if not batch_size:
                running = {trial.number for trial in trials if trial.state == TrialState.RUNNING}
                if not running:
                    break
                if running != waited_for:
                    log.info(
                        f"Waiting for trials {' '.join(map(str, sorted(running)))}, running in other processes; a "
                        f"trial whose process died is failed after hydra.sweeper.grace_period={self.grace_period} s "
                        "and run again."
                    )
                    waited_for = running
                time.sleep(WAIT_POLL_S)
                continue
            jobs = [(*job, f"hydra.sweep.subdir={trial.number}") for job, trial in zip(overrides, asked)]
            try:
                with _heartbeat(storage, trial_ids, self.heartbeat_interval):
                    returns = self.launcher.launch(jobs, initial_job_idx=asked[0].number)
            except BaseException:  # Ctrl-C, SIGTERM: the trials are retried at the next start, not after grace_period
                _fail_and_retry(study, storage, trial_ids)
                raise
            self._tell(study, asked, returns, directions)
        self._save_results(study, directions)

    def _search_space(self, arguments: list[str]) -> tuple[dict, dict]:
        """The plugin's: hydra.sweeper.params and the sweep's arguments as Optuna distributions
        and fixed values (a grid sampler is made from the distributions and bounds n_trials)."""
        self._process_searchspace_config()
        distributions, fixed_params = create_params_from_overrides(self._parse_sweeper_params_config() + arguments)
        search_space = {**(self.search_space_distributions or {}), **distributions}
        if isinstance(self.sampler, functools.partial) and self.sampler.func == optuna.samplers.GridSampler:
            grid = {name: self._to_grid_sampler_choices(d) for name, d in search_space.items()}
            self.sampler = self.sampler(grid)
            self.n_trials = min(self.n_trials, math.prod(len(values) for values in grid.values()))
        return {name: d for name, d in search_space.items() if name not in fixed_params}, fixed_params

    def _open_storage(self) -> tuple[BaseStorage, Any]:
        """The storage, and a lock that serialises the processes sharing it: a file lock beside an
        SQLite file, PostgreSQL's advisory lock (released by the server when a process dies)."""
        if self.storage is None:
            return InMemoryStorage(), nullcontext
        url = str(self.storage)
        try:
            parsed = sqlalchemy.engine.make_url(url)
            if parsed.get_backend_name() == "sqlite" and parsed.database:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            lock = _storage_lock(parsed, str(self.study_name))
            with lock():
                storage = RDBStorage(
                    url,
                    heartbeat_interval=self.heartbeat_interval,
                    grace_period=self.grace_period,
                    failed_trial_callback=_retry(self.max_retry),
                )
        except (ImportError, sqlalchemy.exc.SQLAlchemyError, OSError, ValueError) as error:
            raise storage_error(url, error) from None
        return storage, lock

    def _open_study(self, storage: BaseStorage, directions: list[str]) -> optuna.Study:
        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            sampler=self.sampler,
            directions=directions,
            load_if_exists=True,
        )
        found = [direction.name.lower() for direction in study.directions]
        if found != [direction.lower() for direction in directions]:
            raise UserInputError(
                f"The study {study.study_name!r} in hydra.sweeper.storage={_shown(self.storage)} is to "
                f"{' and '.join(found)}, not to {' and '.join(directions)} as hydra.sweeper.direction says: "
                "a study keeps its direction. Name a new study (hydra.sweeper.study_name) or storage."
            )
        self._check_same_search(study)
        return study

    def _check_same_search(self, study: optuna.Study) -> None:
        """A study's trials compare only under one config: every start (and every process that
        shares the study) must give the overrides and search space of the first."""
        search = {
            "overrides": sorted(  # where the data lies may differ between machines
                str(override) for override in self.config.hydra.overrides.task if not override.startswith("data.root=")
            ),
            "params": OmegaConf.to_container(self.config.hydra.sweeper.params or {}, resolve=False),
            "config_name": str(self.config.hydra.job.config_name),
        }
        recorded = study.user_attrs.get(SEARCH_ATTR)
        if recorded is None:
            study.set_user_attr(SEARCH_ATTR, search)
            return
        if recorded != search:
            changes = [
                f"{key}: {recorded.get(key)!r} then, {value!r} now" for key, value in search.items()
                if recorded.get(key) != value
            ]  # fmt: skip
            raise UserInputError(
                f"The study {study.study_name!r} in hydra.sweeper.storage={_shown(self.storage)} was started with "
                f"another search ({'; '.join(changes)}): its trials would not compare. Run the search's own command "
                "again (only hydra.* settings such as hydra.sweeper.n_trials may differ), or start a new study "
                "(a new hydra.sweep.dir, or hydra.sweeper.study_name)."
            )

    def _log_start(self, storage: BaseStorage, study_id: int) -> None:
        trials = storage.get_all_trials(study_id, deepcopy=False)
        finished = sum(trial.state.is_finished() for trial in trials)
        running = sum(trial.state == TrialState.RUNNING for trial in trials)
        log.info(f"Study name: {self.study_name}")
        log.info(f"Storage: {_shown(self.storage) if self.storage else 'in memory'}")
        log.info(f"Sampler: {type(self.sampler).__name__}")
        log.info(
            f"Trials: {len(_logical_trials(trials))} of {self.n_trials} asked"
            + (f" ({finished} finished, {running} running, numbers 0-{len(trials) - 1})" if trials else "")
        )

    def _restore_sampler(self, study: optuna.Study) -> None:
        """Continue the study's stream of draws where the last trial's sampling left it, if it
        was drawn with these sampler settings. The pickle comes from the study's own storage,
        trusted as the code is."""
        saved = study.system_attrs.get(SAMPLER_ATTR)
        if saved and saved["settings"] == self._sampler_settings():
            study.sampler = pickle.loads(base64.b64decode(saved["state"]))

    def _save_sampler(self, study: optuna.Study) -> None:
        state = base64.b64encode(pickle.dumps(study.sampler)).decode()
        study.set_system_attr(SAMPLER_ATTR, {"settings": self._sampler_settings(), "state": state})

    def _sampler_settings(self) -> str:
        return OmegaConf.to_yaml(self.config.hydra.sweeper.sampler, resolve=True)

    def _tell(self, study: optuna.Study, trials: list[Trial], returns: Sequence[JobReturn], directions: list[str]):
        """Each job's result as the plugin tells it: a job that raised or returned no finite
        float (a failed cvae-train job returns NaN) fails its trial; more failures than
        max_failure_rate stop the sweep with the job's own error."""
        failures = []
        for trial, result in zip(trials, returns):
            try:
                values = [result.return_value] if len(directions) == 1 else list(result.return_value)
                values = [float(value) for value in values]
                if len(values) != len(directions):
                    raise ValueError(f"{len(values)} values returned for {len(directions)} objectives")
                study.tell(trial, values)  # a ValueError for NaN
            except RuntimeError as error:
                if "already finished" in str(error):  # its heartbeat stalled: another process failed it, retries it
                    log.warning(f"Trial {trial.number} was failed meanwhile as stale; its retry's result counts.")
                elif "Study.stop" not in str(error):  # a grid sampler stops the study once its grid is done
                    raise
            except Exception as error:
                study.tell(trial, state=TrialState.FAIL)
                log.warning(f"Failed experiment: {error}")
                failures.append(error)
        if len(failures) / len(returns) > self.max_failure_rate:
            log.error(f"Failed {failures} times out of {len(returns)} with max_failure_rate={self.max_failure_rate}.")
            for result in returns:
                _ = result.return_value  # raises the job's own error, with its traceback

    def _save_results(self, study: optuna.Study, directions: list[str]) -> None:
        """The plugin's optimization_results.yaml, over the whole study."""
        if len(directions) < 2:
            best = study.best_trial
            results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
            log.info(f"Best parameters: {best.params}")
            log.info(f"Best value: {best.value}")
        else:
            results = {
                "name": "optuna",
                "solutions": [{"params": t.params, "values": t.values} for t in study.best_trials],
            }
            log.info(f"Number of Pareto solutions: {len(study.best_trials)}")
        OmegaConf.save(OmegaConf.create(results), f"{self.config.hydra.sweep.dir}/optimization_results.yaml")


def check_settings(
    storage: str | None, study_name: str | None, heartbeat_interval: Any, grace_period: Any, max_retry: Any
) -> None:
    """The settings this sweeper adds to the plugin's, and that its storage opens (a server is
    connected to, an SQLite file only named: it may be made in a sweep directory to come)."""
    problems = []
    if not isinstance(heartbeat_interval, int) or heartbeat_interval < 1:
        problems.append(f"hydra.sweeper.heartbeat_interval={heartbeat_interval!r} must be an integer >= 1")
    elif not isinstance(grace_period, int) or grace_period <= heartbeat_interval:
        problems.append(
            f"hydra.sweeper.grace_period={grace_period!r} must be an integer larger than "
            f"hydra.sweeper.heartbeat_interval={heartbeat_interval} (a live trial beats once per interval)"
        )
    if max_retry is not None and (not isinstance(max_retry, int) or max_retry < 0):
        problems.append(f"hydra.sweeper.max_retry={max_retry!r} must be an integer >= 0, or null for no limit")
    if storage is not None and not study_name:
        problems.append(
            "hydra.sweeper.study_name must name the study when hydra.sweeper.storage is set: a later start "
            "finds the study by its name"
        )
    if problems:
        raise UserInputError("; ".join(problems) + ".")
    if storage is None:
        return
    try:
        url = sqlalchemy.engine.make_url(str(storage))
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)  # imports the driver
        if url.get_backend_name() != "sqlite":
            engine.connect().close()
    except (ImportError, sqlalchemy.exc.SQLAlchemyError, ValueError) as error:
        raise storage_error(str(storage), error) from None


def storage_error(url: str, error: Exception) -> UserInputError:
    if isinstance(error, ImportError):
        driver = getattr(error.__cause__, "name", None) or error.name or "its driver"
        return UserInputError(
            f"Cannot open the Optuna storage hydra.sweeper.storage={_shown(url)}: its database driver {driver} is "
            "not installed; for PostgreSQL, pip install 'cvae-exp[postgres]' (psycopg2)."
        )
    reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0].rstrip(".")
    return UserInputError(
        f"Cannot open the Optuna storage hydra.sweeper.storage={_shown(url)}: {reason}. Pass a database URL that "
        "Optuna's RDBStorage opens (sqlite:///<file>, postgresql://<user>:<password>@<host>:<port>/<database>), "
        "or null to keep the study in memory."
    )


def _logical_trials(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    """A trial and its retries count once: by the number of the trial first failed."""
    return {trial.system_attrs.get("failed_trial", trial.number) for trial in trials}


def _retry(max_retry: int | None) -> RetryFailedTrialCallback:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return RetryFailedTrialCallback(max_retry=max_retry)


def _storage_lock(url: sqlalchemy.engine.URL, study_name: str):
    """A context manager factory: Optuna numbers the trials of a study atomically but has no
    budget (its MaxTrialsCallback may overshoot with several processes), so asking for a trial
    within the budget is made one step here."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        return lambda: FileLock(f"{url.database}.lock")
    if backend == "postgresql":
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)

        @contextmanager
        def advisory_lock() -> Iterator[None]:
            with engine.connect() as connection:
                key = {"name": f"cvae_exp:{study_name}"}
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(hashtext(:name))"), key)
                try:
                    yield
                finally:
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(hashtext(:name))"), key)

        return advisory_lock
    log.warning(
        f"hydra.sweeper.storage is a {backend} database: sweeper processes that share it may ask a few trials "
        "beyond n_trials (the budget is exact with SQLite and PostgreSQL)."
    )
    return nullcontext


@contextmanager
def _heartbeat(storage: BaseStorage, trial_ids: list[int], interval: int) -> Iterator[None]:
    """Beat for the trials while their jobs run, as Optuna's optimize() does for its own trial
    (ask-and-tell gets no heartbeat from Optuna)."""
    if not storage.is_heartbeat_enabled():
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            for trial_id in trial_ids:
                storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, name="optuna-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _fail_and_retry(study: optuna.Study, storage: BaseStorage, trial_ids: list[int]) -> None:
    """Fail the trials still running and queue their retries, as fail_stale_trials would later."""
    retry = storage.get_failed_trial_callback() if storage.is_heartbeat_enabled() else None
    for trial_id in trial_ids:
        if storage.get_trial(trial_id).state == TrialState.RUNNING and storage.set_trial_state(
            trial_id, TrialState.FAIL
        ):
            if retry is not None:
                retry(study, storage.get_trial(trial_id))


def _shown(url: Any) -> str:
    """A storage URL as the logs and messages show it: without its password."""
    try:
        return sqlalchemy.engine.make_url(str(url)).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return repr(str(url))


@contextmanager
def _reported(config: Any) -> Iterator[None]:
    """Bad settings end as one paragraph and exit 2, leaving no empty sweep directory that
    Preflight made for a name of its own (${now:...})."""
    try:
        yield
    except UserInputError as error:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        generated = "${now:" in str(OmegaConf.to_container(config.hydra.sweep, resolve=False)["dir"])
        if generated and sweep_dir.is_dir() and not any(sweep_dir.iterdir()):
            sweep_dir.rmdir()
        sys.stdout.flush()
        report_and_exit(error, "cvae-train")
