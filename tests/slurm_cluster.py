"""A real single-node SLURM cluster for the tests (the `slurm_cluster` fixture): munged,
slurmctld and slurmd of Debian's `slurm-wlm` and `munge`, started as root with a generated
slurm.conf whose one node is this machine (its CPUs and memory, as `slurmd -C` reports them)
in one default partition. Everything the daemons keep (key, socket, state, spool, logs) is in
a temporary directory; the daemons run as children of the test session and stop with it.

There is no accounting database (slurmdbd needs MariaDB), so `sacct` fails: submitit warns
about it and learns that a job is over from the result file the job writes. The session's
SLURM_CONF points the clients at this cluster: sbatch, squeue, scontrol and scancel here,
and those that submitit calls inside a job (`scontrol requeue`).
"""

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

PARTITION = "debug"
DAEMONS = ("munged", "slurmctld", "slurmd")
START_TIMEOUT_S = 60
# SLURM waits this long for the credentials of a requeued job's last start to expire before it
# starts it again (AuthInfo's cred_expire; its default, 120 s, would add two minutes to every
# preemption test)
CRED_EXPIRE_S = 5
# From SIGTERM to SIGKILL when a job is cancelled or requeued (SLURM's default is 30 s; a test
# run stops within a batch)
KILL_WAIT_S = 10


@dataclass
class SlurmCluster:
    directory: Path
    partition: str
    env: dict[str, str]  # what a client runs with: os.environ and SLURM_CONF

    def logs(self) -> str:
        """The end of each daemon's log, for a failure message."""
        return "\n".join(
            f"--- {path.name} ---\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted((self.directory / "log").glob("*.log"))
        )

    def run(self, *command: str) -> str:
        """A SLURM client command's stdout; a failure names it, with the daemons' logs."""
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr}\n{self.logs()}")
        return result.stdout

    def jobs(self) -> list[str]:
        """The ids of the jobs in the queue (pending, running or completing)."""
        return self.run("squeue", "--noheader", "--format=%i").split()


def why_not_available() -> str | None:
    missing = [name for name in (*DAEMONS, "mungekey", "sbatch", "scontrol") if shutil.which(name) is None]
    if missing:
        return f"needs slurm-wlm and munge (apt-get install -y slurm-wlm munge; .ci/run installs them): no {missing}"
    if os.geteuid() != 0:
        return "starts munged, slurmctld and slurmd, which must run as root here"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_config(directory: Path) -> Path:
    """slurm.conf for one node, this machine, as `slurmd -C` describes it (NodeName=... CPUs=...
    RealMemory=...), with the plugins a container allows (no cgroups) and no accounting."""
    (line, *_) = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()
    node = dict(field.split("=", 1) for field in line.split())
    node.pop("UpTime", None)
    for sub in ("state", "spool", "log", "munge"):
        (directory / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    config = directory / "slurm.conf"
    config.write_text(
        f"""ClusterName=cvae-tests
SlurmctldHost={node["NodeName"]}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={directory / "munge" / "munge.socket"},cred_expire={CRED_EXPIRE_S}
StateSaveLocation={directory / "state"}
SlurmdSpoolDir={directory / "spool"}
SlurmctldPidFile={directory / "slurmctld.pid"}
SlurmdPidFile={directory / "slurmd.pid"}
SlurmctldLogFile={directory / "log" / "slurmctld.log"}
SlurmdLogFile={directory / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait={KILL_WAIT_S}
{" ".join(f"{key}={value}" for key, value in node.items())} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName={PARTITION} Nodes={node["NodeName"]} Default=YES MaxTime=INFINITE State=UP
"""
    )
    return config


class _Daemons:
    """The daemon processes, started in the foreground in sessions of their own, newest last."""

    def __init__(self, directory: Path, env: dict[str, str]):
        self.directory, self.env, self.processes = directory, env, []

    def start(self, name: str, *arguments: str) -> None:
        with (self.directory / "log" / f"{name}.out.log").open("w") as sink:
            self.processes.append(
                subprocess.Popen(
                    [name, *arguments], env=self.env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
                )
            )

    def wait_for(self, condition, what: str, cluster: SlurmCluster) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not condition():
            exited = [process.args[0] for process in self.processes if process.poll() is not None]
            if exited or time.monotonic() > deadline:
                raise RuntimeError(
                    f"SLURM test cluster: waited for {what}; exited: {exited or 'none'}\n{cluster.logs()}"
                )
            time.sleep(0.5)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=30)


def _node_is_idle(cluster: SlurmCluster) -> bool:
    result = subprocess.run(
        ["sinfo", "--noheader", "--Node", "--format=%T"], env=cluster.env, capture_output=True, text=True, timeout=30
    )
    return result.stdout.strip() == "idle"


def _end_jobs(cluster: SlurmCluster) -> None:
    """Cancel what is left in the queue and wait for it to end, so that no job step outlives
    the daemons."""
    subprocess.run(["scancel", "--full", "--quiet", "--user=root"], env=cluster.env, capture_output=True, timeout=60)
    deadline = time.monotonic() + 2 * KILL_WAIT_S + 30
    while time.monotonic() < deadline:
        try:
            if not cluster.jobs():
                return
        except (AssertionError, subprocess.TimeoutExpired):  # slurmctld is not answering
            return
        time.sleep(1)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """The running cluster; skips where slurm-wlm and munge are not installed, or not as root.
    SLURM_CONF is set for the session, so that `cvae-train -m hydra/launcher=slurm` submits to it."""
    reason = why_not_available()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("slurm")
    config = write_config(directory)
    cluster = SlurmCluster(directory, PARTITION, {**os.environ, "SLURM_CONF": str(config)})
    munge, previous = directory / "munge", os.environ.get("SLURM_CONF")
    subprocess.run(["mungekey", "--create", f"--keyfile={munge / 'munge.key'}"], check=True, capture_output=True)
    daemons = _Daemons(directory, cluster.env)
    try:
        daemons.start(
            "munged",
            "--foreground",
            "--force",  # as root, and with the socket in a temporary directory
            f"--socket={munge / 'munge.socket'}",
            f"--key-file={munge / 'munge.key'}",
            f"--pid-file={munge / 'munged.pid'}",
            f"--seed-file={munge / 'munged.seed'}",
            f"--log-file={directory / 'log' / 'munged.log'}",
        )
        daemons.wait_for((munge / "munge.socket").exists, "munged's socket", cluster)
        daemons.start("slurmctld", "-D", "-i", "-f", str(config))
        daemons.start("slurmd", "-D", "-f", str(config))
        daemons.wait_for(lambda: _node_is_idle(cluster), "the node to be idle", cluster)
        os.environ["SLURM_CONF"] = str(config)
        yield cluster
    finally:
        if len(daemons.processes) == len(DAEMONS):
            _end_jobs(cluster)
        daemons.stop()
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
