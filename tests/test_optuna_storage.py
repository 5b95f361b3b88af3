"""hparams_search=optuna with its study in a storage (cvae_exp/optuna_sweeper.py): bad settings
refused with nothing made, n_trials as the study's total, a search killed with SIGKILL resumed
with its killed trial failed and retried, and two sweeper processes sharing one study (SQLite
on one machine, a PostgreSQL server this module starts and stops)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from tests.helpers import run_cli

SEARCH = [
    "hparams_search=optuna",
    "data=digits",
    "model.encoder.hidden_dims=[32]",
    "model.decoder.hidden_dims=[32]",
    "callbacks.progress_bar.refresh_rate=0",
    "eval.samples_per_class=20",
]
# What the search drew at its seed before its study had a storage (hydra-optuna-sweeper, in
# memory): its five random start-up trials, which do not depend on the trials' results.
FIRST_TRIALS = [
    {"model.latent_dim": 16, "loss.beta": 1.2722222698099062, "optim.lr": 0.0003572140318996377},
    {"model.latent_dim": 4, "loss.beta": 2.8129860068955113, "optim.lr": 0.0026632016668500205},
    {"model.latent_dim": 32, "loss.beta": 3.559904464885437, "optim.lr": 0.000536749894569821},
    {"model.latent_dim": 16, "loss.beta": 1.7395096664730783, "optim.lr": 0.0037797257196769533},
    {"model.latent_dim": 8, "loss.beta": 0.7891255919296172, "optim.lr": 0.002561662685923485},
]
QUICK_HEARTBEAT = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2"]
# initdb and pg_ctl of the newest PostgreSQL that Debian's packages installed (15 on the reference machine)
POSTGRES_BINS = sorted(
    (path for path in Path("/usr/lib/postgresql").glob("*/bin") if path.parent.name.isdigit()),
    key=lambda path: int(path.parent.name),
    reverse=True,
)
WAIT_S = 300


def trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name="cvae", storage=storage).trials


def sqlite(sweep: Path) -> str:
    return f"sqlite:///{sweep}/optuna.db"


def start(*args: str, cwd: Path) -> subprocess.Popen:
    """`cvae-train` in a process group of its own (a SIGKILL to it stops everything it runs)."""
    return subprocess.Popen(
        [sys.executable, "-m", "cvae_exp.train", *args],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def launched(output: str) -> list[int]:
    """The trial numbers a sweeper process launched (Hydra's `#<job number> : ...` lines; the
    job number is the trial's)."""
    return [int(line.split("#")[1].split()[0]) for line in output.splitlines() if "] \t#" in line]


@pytest.mark.parametrize(
    "setting,message",
    [
        ("hydra.sweeper.storage=postgresql://cvae:secret@127.0.0.1:1/optuna", "postgresql://cvae:***@127.0.0.1:1"),
        ("hydra.sweeper.grace_period=10", "hydra.sweeper.grace_period=10 must be an integer larger than"),
    ],
)
def test_bad_sweeper_settings_are_refused_with_nothing_made(tmp_path, setting, message):
    result = run_cli(*SEARCH, setting, cwd=tmp_path)  # heartbeat_interval is 20 s
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("cvae-train: error: ") and message in result.stderr
    assert "secret" not in result.stdout + result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow  # three searches, three trials in all: about 35 s
def test_n_trials_is_the_total_of_the_study(tmp_path):
    sweep = tmp_path / "sweep"
    search = [*SEARCH, "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}"]
    first = run_cli(*search, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert [trial.params for trial in trials(sqlite(sweep))] == FIRST_TRIALS[:2]  # as before the storage
    kept = {job: (sweep / job / "metrics.json").stat().st_mtime_ns for job in ("0", "1")}

    more = run_cli(*search, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    assert launched(more.stdout) == [2]
    study = trials(sqlite(sweep))
    assert [(trial.number, trial.state.name) for trial in study] == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]
    assert study[2].params == FIRST_TRIALS[2]  # what an uninterrupted search of 3 draws
    assert {job: (sweep / job / "metrics.json").stat().st_mtime_ns for job in ("0", "1")} == kept
    assert (sweep / "2" / "metrics.json").is_file()

    again = run_cli(*search, "hydra.sweeper.n_trials=3", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert launched(again.stdout) == [] and len(trials(sqlite(sweep))) == 3


@pytest.mark.slow  # a search killed in its second trial, then resumed: about 40 s
def test_a_killed_search_resumes_and_retries_the_killed_trial(tmp_path):
    sweep = tmp_path / "sweep"
    search = [*SEARCH, "trainer.max_epochs=10", "hydra.sweeper.n_trials=3", *QUICK_HEARTBEAT]
    search.append(f"hydra.sweep.dir={sweep}")
    process = start(*search, cwd=tmp_path)
    deadline = time.monotonic() + WAIT_S
    while not ((sweep / "1").is_dir() and (sweep / "0" / "metrics.json").is_file()):
        assert process.poll() is None and time.monotonic() < deadline, "the search ended before its second trial"
        time.sleep(0.05)
    time.sleep(0.5)  # trial 1 trains 10 epochs: seconds
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
    assert [trial.state.name for trial in trials(sqlite(sweep))] == ["COMPLETE", "RUNNING"], "killed too late"

    resumed = run_cli(*search, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    study = trials(sqlite(sweep))
    assert [(trial.number, trial.state.name) for trial in study] == [
        (0, "COMPLETE"),
        (1, "FAIL"),  # failed once its heartbeat was older than grace_period
        (2, "COMPLETE"),  # its retry, with its parameters
        (3, "COMPLETE"),
    ]
    assert study[2].system_attrs["failed_trial"] == 1 and study[2].params == study[1].params == FIRST_TRIALS[1]
    assert study[3].params == FIRST_TRIALS[2]  # the draws go on where the killed search left them
    assert launched(resumed.stdout) == [2, 3]
    assert [(sweep / job / "metrics.json").is_file() for job in "0123"] == [True, False, True, True]
    table = run_cli(str(sweep), cwd=tmp_path, tool="table")
    assert table.returncode == 0, table.stderr[-2000:]
    rows = (sweep / "table.md").read_text().splitlines()[2:]
    assert [row.split("|")[1].strip() for row in rows] == ["0", "1", "2", "3"] and "missing" in rows[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server of its own, on a free port of 127.0.0.1, stopped and deleted after the
    module; run as the `postgres` user where the tests run as root, which initdb refuses."""
    bins = [path for path in POSTGRES_BINS if (path / "initdb").is_file() and (path / "pg_ctl").is_file()]
    if not bins:
        pytest.skip(
            "PostgreSQL is not installed: no /usr/lib/postgresql/<version>/bin/initdb (apt-get install postgresql)"
        )
    postgres_bin = bins[0]
    pytest.importorskip("psycopg2", reason="psycopg2 (the dev extra's psycopg2-binary) is not installed")
    as_user = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None or subprocess.run(["id", "postgres"], capture_output=True).returncode:
            pytest.skip("running as root, and no `postgres` user (or no runuser) to run initdb as")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="cvae-postgres-"))  # not under pytest's tmp dirs, which only root may enter
    if as_user:
        shutil.chown(root, "postgres")
    data, port = root / "data", free_port()
    ctl = [*as_user, str(postgres_bin / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run(
            [*as_user, str(postgres_bin / "initdb"), "-D", str(data), "-U", "cvae", "--auth=trust"],
            check=True,
            capture_output=True,
        )
        options = f"-h 127.0.0.1 -p {port} -k {root}"
        server = [*ctl, "-l", str(root / "server.log"), "-o", options, "-w", "start"]
        subprocess.run(server, check=True, capture_output=True)
        yield f"postgresql://cvae@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow  # two sweeper processes at once, six trials: about 40 s
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_sweeper_processes_share_one_study(tmp_path, request, backend):
    sweep = tmp_path / "sweep"
    storage = sqlite(sweep) if backend == "sqlite" else request.getfixturevalue("postgres_url")
    search = [
        *SEARCH,
        "trainer.max_epochs=5",
        "hydra.sweeper.n_trials=6",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweep.dir={sweep}",  # one sweep dir: the job dirs are trial numbers, one table covers both
    ]
    processes = [start(*search, cwd=tmp_path) for _ in range(2)]
    outputs = [process.communicate(timeout=WAIT_S)[0] for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    study = trials(storage)
    assert [trial.number for trial in study] == list(range(6))
    assert {trial.state.name for trial in study} == {"COMPLETE"}
    first, second = (launched(output) for output in outputs)
    assert first and second, f"one process ran every trial: {first} {second}"
    assert not set(first) & set(second) and sorted(first + second) == list(range(6))
    assert [trial.params for trial in study[:5]] == FIRST_TRIALS  # one stream of draws, not one per process
    table = run_cli(str(sweep), cwd=tmp_path, tool="table")
    assert table.returncode == 0, table.stderr[-2000:]
    assert (sweep / "table.md").read_text().count("| completed |") == 6


@pytest.mark.slow  # one trial, then a refused start: about 20 s
def test_a_study_refuses_a_start_with_another_search(tmp_path):
    sweep = tmp_path / "sweep"
    search = [*SEARCH, "trainer.max_epochs=1", f"hydra.sweep.dir={sweep}"]
    first = run_cli(*search, "hydra.sweeper.n_trials=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = sorted(path.relative_to(sweep) for path in sweep.rglob("*"))
    other = [*SEARCH, "trainer.max_epochs=2", f"hydra.sweep.dir={sweep}"]
    refused = run_cli(*other, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "was started with another search" in refused.stderr and "trainer.max_epochs=2" in refused.stderr
    assert len(trials(sqlite(sweep))) == 1
    assert sorted(path.relative_to(sweep) for path in sweep.rglob("*") if ".lock" not in path.name) == [
        path for path in before if ".lock" not in path.name
    ]
