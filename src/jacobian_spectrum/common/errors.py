"""The config's error, below every module that raises it: the config checks
(:mod:`jacobian_spectrum.config`) and an architecture table's networks
(:mod:`jacobian_spectrum.architectures.configs`), which the config loader expands in turn."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value is not allowed; the message names the key and what is allowed."""
