"""Errors shared by every layer (torch-free: env worker processes import it)."""


class ConfigError(ValueError):
    """A user-facing configuration mistake. The message says how to fix it."""
