"""Errors the entry points report as one paragraph and a non-zero exit, not a traceback."""

import os
import sys
import traceback
from collections.abc import Sequence


class UserInputError(Exception):
    """A value the user gave (config, path, checkpoint) cannot be used; the message says
    which value and what is allowed, in one paragraph."""


class ModelConfigError(ValueError):
    """A model's, network's or prior's own check of its arguments: the message names the key
    and what is allowed, so the config check reports it as it is, with no advice of its own."""


def require_size(key: str, value, minimum: int = 1) -> None:
    """A size (a width, a count), or each size of a list, must be a whole number >= `minimum`: a
    float such as 64. or a zero width would otherwise reach torch, whose refusal names neither
    the key nor the rule."""

    def whole(number) -> bool:
        return isinstance(number, int) and not isinstance(number, bool) and number >= minimum

    if isinstance(value, Sequence) and not isinstance(value, str):
        if not all(whole(entry) for entry in value):
            raise ModelConfigError(f"{key}={list(value)!r} must hold integers >= {minimum}, one per layer")
    elif not whole(value):
        raise ModelConfigError(f"{key}={value!r} must be an integer >= {minimum}")


class TrainingDiverged(Exception):
    """The loss became non-finite; the message names the step and the likely cause."""


class RunInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run at a safe point, after it saved a resumable last.ckpt
    (`checkpoint`, None where the run keeps no checkpoints)."""

    EXIT_STATUS = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells report it

    def __init__(self, signal: str, checkpoint: str | None, stage: str = "fit"):
        super().__init__(f"interrupted by {signal}")
        self.signal, self.checkpoint, self.stage = signal, checkpoint, stage  # stage: "fit" or "test"


def report_and_exit(error: Exception, program: str, status: int = 2) -> None:
    """One paragraph on stderr and a non-zero exit; HYDRA_FULL_ERROR=1 puts the traceback
    before it (and still exits: raising would let Hydra turn a pre-run error into a warning)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        traceback.print_exception(error, file=sys.stderr)
    print(f"{program}: error: {error}", file=sys.stderr)
    sys.exit(status)
