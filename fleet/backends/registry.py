"""Backends are plugins: found through the ``fleet.backends`` entry-point group (DESIGN.md §5.8).

The ssh backend registers itself there too (fleet's own ``pyproject.toml``), so the controller
names no backend: it loads ``ssh`` plus every backend configured under ``backends:`` in
``config.yaml``, validates each one's settings with the model the plugin brings, and asks each
what it offers. A plugin that fails to import is logged and left out; the others run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from fleet.backends.base import Backend, BackendContext
from fleet.config import Settings
from fleet.errors import ConfigError
from fleet.inventory import Host

log = logging.getLogger(__name__)

GROUP = "fleet.backends"
BUILT_IN = "ssh"  # always loaded, whether configured or not


def discover() -> dict[str, EntryPoint]:
    """Installed backend plugins by name (the entry point's name)."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


@dataclass
class Loaded:
    """The backends a controller runs, and the plugins left out (name -> why)."""

    backends: dict[str, Backend] = field(default_factory=dict)
    disabled: dict[str, str] = field(default_factory=dict)

    def hosts(self) -> list[Host]:
        """What all backends offer placement, each host stamped with its backend's name.
        Two backends offering the same host name is a configuration error."""
        out: dict[str, Host] = {}
        for name, backend in self.backends.items():
            for host in backend.offers():
                if host.backend != name:
                    raise ConfigError(f"backends.{name}: offers host {host.name!r} marked as "
                                      f"backend {host.backend!r}")
                if host.name in out:
                    raise ConfigError(f"backends.{name}: host name {host.name!r} is also a host "
                                      f"of backend {out[host.name].backend!r}")
                out[host.name] = host
        return list(out.values())


def _validate(name: str, cls: type[Backend], raw: Any, source: str) -> Any:
    model = cls.settings_model
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: backends.{name}: expected a mapping of settings, "
                          f"got {type(raw).__name__}")
    if model is None:
        if raw:
            raise ConfigError(f"{source}: backends.{name}: this backend takes no settings "
                              f"(got {', '.join(sorted(map(str, raw)))})")
        return None
    from pydantic import ValidationError

    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            problems.append(f"backends.{name}.{where}: {err['msg']}" if where
                            else f"backends.{name}: {err['msg']}")
        raise ConfigError(f"{source}: " + "; ".join(problems)) from None


def load_backends(settings: Settings, inventory: list[Host], blob_path: Callable[[str], Path],
                  available: Mapping[str, EntryPoint] | None = None) -> Loaded:
    """Make the configured backends.

    Raises:
        ConfigError: a configured backend is not installed, or its settings are invalid
            (the message names ``backends.NAME.key``).
    """
    source = str(settings.config_file)
    eps = dict(discover() if available is None else available)
    configured: dict[str, Any] = {BUILT_IN: None, **settings.backends}
    loaded = Loaded()
    for name, raw in configured.items():
        ep = eps.get(name)
        if ep is None:
            installed = ", ".join(sorted(eps)) or "none"
            raise ConfigError(f"{source}: backends.{name}: no backend plugin named {name!r} is "
                              f"installed (entry-point group {GROUP}; installed: {installed})")
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Backend)):
                raise TypeError(f"{ep.value} is not a fleet.backends.base.Backend subclass")
        except Exception as exc:  # noqa: BLE001 - one broken plugin disables only itself
            log.error("backend plugin %s (%s) cannot be loaded, so it is left out: %s: %s",
                      name, ep.value, type(exc).__name__, exc)
            loaded.disabled[name] = f"{type(exc).__name__}: {exc}"
            continue
        config = _validate(name, cls, raw, source)
        state_dir = settings.home / "backends" / name
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ctx = BackendContext(name=name, settings=settings, inventory=inventory, blob_path=blob_path,
                             state_dir=state_dir)
        backend = cls.create(config, ctx)
        backend.name = name
        loaded.backends[name] = backend
    return loaded
