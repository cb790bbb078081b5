"""Errors shared by every layer (torch-free: env worker processes import it)."""


class ConfigError(ValueError):
    """A user-facing configuration mistake. The message says how to fix it."""


class EnvFault(RuntimeError):
    """An env raised, or a stepper worker died or hung. The message names the task(s)."""
