"""Each network's config of an architecture-table config: the shared sections with the
network's own ones merged in, its artifacts under ``{results}/{name}``.

Light imports only: the workflow calls this while parsing.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping

from ..common.errors import ConfigError

ARCHITECTURE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # its rules are named after it
# the sections a network may set for itself; data, corruption levels and figures stay shared so
# that the rows of the table compare networks on the same images and labels
OWN_SECTIONS = ("model", "training", "runs", "jacobian", "spectrum")


def merged(base: Mapping, own: Mapping) -> dict:
    """``base`` with ``own`` merged in: mappings key by key (recursively), other values replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in own.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def architecture_configs(config: Mapping) -> dict[str, dict]:
    """name -> the full config of that network's workflow (before the schema fills defaults).

    ConfigError naming ``architectures.<name>`` for a bad name or a section a network cannot
    set for itself."""
    networks = config.get("architectures") or {}
    if not isinstance(networks, Mapping) or not networks:
        raise ConfigError("config key 'architectures': expected a mapping of network name -> its own sections")
    shared = {key: value for key, value in config.items() if key != "architectures"}
    out = {}
    for name, own in networks.items():
        if not ARCHITECTURE_NAME.match(str(name)):
            raise ConfigError(
                f"config key 'architectures.{name}': a name starts with a letter or _ and holds letters, "
                "digits and _ only (its rules are named after it)"
            )
        own = own or {}
        if not isinstance(own, Mapping):
            raise ConfigError(f"config key 'architectures.{name}': expected a mapping of sections, got {own!r}")
        bad = sorted(set(own) - set(OWN_SECTIONS))
        if bad:
            raise ConfigError(
                f"config key 'architectures.{name}.{bad[0]}': a network may set only {', '.join(OWN_SECTIONS)} "
                "for itself; data, corruption and figures are shared so that the table compares like with like"
            )
        net = merged(shared, own)
        net["results"] = f"{config.get('results', 'results')}/{name}"
        out[str(name)] = net
    return out


def table_jacobians(net: Mapping, roles: Mapping[str, str]) -> dict[tuple[str, str, int], list[str]]:
    """The Jacobians the architecture table reads of one network, (owner, split, epoch) -> the
    roles (clean, corrupted) whose J_final it is: J_init, and the J_final of each role's run
    (``roles``: the config's ``architecture_table``), all on the training split."""
    out: dict[tuple[str, str, int], list[str]] = {("init", "train", 0): []}
    for role in ("clean", "corrupted"):
        run = roles[role]
        if run not in net["runs"]:
            raise ConfigError(
                f"config key 'architecture_table.{role}': run {run!r} is not one of the runs ({', '.join(net['runs'])})"
            )
        out.setdefault((f"runs/{run}", "train", int(net["runs"][run]["epochs"])), []).append(role)
    return out
