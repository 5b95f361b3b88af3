"""Helpers shared by the tests."""

import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, cwd: Path, tool: str = "train", env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `cvae-<tool>` (as `python -m cvae_exp.<tool>`) the way a user does."""
    return subprocess.run(
        [sys.executable, "-m", f"cvae_exp.{tool}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
