"""Helpers shared by the tests."""

import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `cvae-train` (as `python -m cvae_exp.train`) the way a user does."""
    return subprocess.run(
        [sys.executable, "-m", "cvae_exp.train", *args],
        cwd=cwd, capture_output=True, text=True, timeout=600,
    )
