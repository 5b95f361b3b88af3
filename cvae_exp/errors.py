"""The one error type for bad user input: the entry points print its message and exit non-zero."""


class UserInputError(Exception):
    """A value the user gave (config, path, checkpoint) cannot be used; the message says
    which value and what is allowed, in one paragraph."""
