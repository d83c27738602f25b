"""Where attempts execute. ``ssh`` is built in; plugins register under ``fleet.backends``."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from fleet.backends.base import Backend

log = logging.getLogger(__name__)


def discover_backends() -> dict[str, type[Backend]]:
    """Backend classes by name from the ``fleet.backends`` entry points.

    A plugin that fails to import is logged and left out; the others still load.
    """
    found: dict[str, type[Backend]] = {}
    for ep in entry_points(group="fleet.backends"):
        try:
            cls = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take fleet down
            log.error("backend plugin %s (%s) failed to import: %s", ep.name, ep.value, exc)
            continue
        found[ep.name] = cls
    return found
