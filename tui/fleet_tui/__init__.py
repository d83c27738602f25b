"""fleet's terminal UI (``fleet tui``): a Textual app over fleet's client library."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleet_tui.app import FleetApp

__all__ = ["FleetApp", "run"]


def run(url: str, token: str, *, readonly: bool = False, rediscover: Callable[[], str | None] | None = None) -> None:
    """Open the UI on the server at ``url`` until the user quits (``rediscover``: see FleetApp)."""
    from fleet.client.aio import AsyncClient
    from fleet_tui.app import FleetApp

    client = AsyncClient(url, token, timeout=30.0)
    FleetApp(client, readonly=readonly, label=url, rediscover=rediscover).run()


def __getattr__(name: str) -> object:
    if name == "FleetApp":
        from fleet_tui.app import FleetApp

        return FleetApp
    raise AttributeError(name)
