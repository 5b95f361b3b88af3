"""Errors the entry points report as one paragraph and a non-zero exit, not a traceback."""

import os
import sys
import traceback
from collections.abc import Sequence
from numbers import Integral


class UserInputError(Exception):
    """A value the user gave (config, path, checkpoint) cannot be used; the message says
    which value and what is allowed, in one paragraph."""


class ModelConfigError(ValueError):
    """A model's, network's or prior's own check of its arguments: the message names the key
    and what is allowed, so the config check reports it as it is, with no advice of its own."""


def _whole(number, minimum: int) -> bool:
    return isinstance(number, Integral) and not isinstance(number, bool) and number >= minimum


def require_size(key: str, value, minimum: int = 1) -> None:
    """A size (a width, a count) must be a whole number >= `minimum`: a float such as 64. or a
    zero width would otherwise reach torch, whose refusal names neither the key nor the rule."""
    if not _whole(value, minimum):
        raise ModelConfigError(f"{key}={value!r} must be an integer >= {minimum}")


def require_sizes(key: str, values, minimum: int = 1) -> None:
    """`require_size` for a list of sizes, one per layer."""
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise ModelConfigError(f"{key}={values!r} must be a list of integers >= {minimum}, one per layer")
    bad = [value for value in values if not _whole(value, minimum)]
    if bad:
        raise ModelConfigError(
            f"{key}={list(values)!r} must hold integers >= {minimum}, one per layer; {bad[0]!r} is not one"
        )


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
