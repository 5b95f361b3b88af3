"""Files written whole or not at all: a reader never sees half a file, and a failed write
leaves nothing behind; the lock that tells a live run's directory from a dead one's; and
which of a run's processes writes its records."""

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cvae_exp.errors import UserInputError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` to write to; it replaces `path` when the block ends
    without an error and is removed otherwise. It keeps `path`'s suffix, for writers that
    pick a format by it (torchvision's save_image), and the process id, for parallel jobs."""
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def undone_on_failure(path: Path) -> Iterator[None]:
    """Run the block that makes `path` (a file, or a folder it writes in); if the block fails,
    remove the topmost of `path` and its parents that did not exist before, with all the block
    wrote there (a failed download's partial files too), so that nothing is left above what was
    there before. No library offers this; `tempfile` would put the work outside `path`."""
    path = Path(path).absolute()
    missing = [place for place in (path, *path.parents) if not place.exists()]
    try:
        yield
    except BaseException:
        if missing and missing[-1].is_dir():  # everything in the topmost new folder is the block's
            shutil.rmtree(missing[-1], ignore_errors=True)
        elif missing:
            missing[-1].unlink(missing_ok=True)
        raise


def check_output_path(path: Path, name: str) -> None:
    """The folder `path` goes in exists or can be made: the nearest existing one above it is a
    folder, not a file. Checked before the work whose result goes there."""
    existing = next(folder for folder in Path(path).absolute().parents if folder.exists())
    if not existing.is_dir():
        raise UserInputError(f"{name} cannot be written: {existing} is a file, not a folder; choose another path.")


def write_json(path: Path, content: dict[str, Any]) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(content, indent=2) + "\n")


_HELD: dict[Path, int] = {}  # the locks this process holds, by path: held until it exits


def _open(path: Path, create: bool) -> int:
    if path.is_dir():
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    return os.open(path, os.O_WRONLY | os.O_APPEND | (os.O_CREAT if create else 0), 0o644)


def hold(path: Path) -> bool:
    """Lock `path` (a run's train.log, made if absent and never truncated; a sweep's directory)
    for as long as this process lives; False where another process holds it. The kernel drops
    the lock when the process ends, however it ends (kill -9, a lost node), so a dead run never
    blocks its resume, and a live one always does. An advisory flock: across machines it needs
    a shared file system with locking (NFS with lockd, Lustre with flock)."""
    path = Path(path).resolve()
    if path in _HELD:
        return True
    descriptor = _open(path, create=True)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return False
    _HELD[path] = descriptor
    return True


def held_elsewhere(path: Path) -> bool:
    """Whether another process holds `path`'s lock now (a missing file: no)."""
    path = Path(path).resolve()
    if path in _HELD or not path.exists():
        return False
    descriptor = _open(path, create=False)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)


def first_process() -> bool:
    """Whether this is the run's first process (rank 0 of a data-parallel run, which Lightning
    starts once per device, or srun once per task; a run of one process is its own first)."""
    return all(int(os.environ.get(name, 0)) == 0 for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))
