"""fleet's client library: every program that talks to a fleet server goes through it (the
CLI, the Ansible module, the TUI, scripts).

* ``calls``: the API's routes, once (how to ask, how to read the answer);
* ``Client`` (sync, ``fleet.client.sync``) and ``AsyncClient`` (``fleet.client.aio``): send them;
* ``specs``: spec files read and checked locally, their inputs uploaded, then submitted;
* ``discovery``: which server (``FLEET_SERVER``, config, the running local one) and the local
  server started on first use; ``connect()`` puts it together.

Import the face you need (``from fleet.client.sync import Client``): this package's
``__init__`` imports nothing heavy, so the CLI starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleet.client.aio import AsyncClient
    from fleet.client.sync import Client
    from fleet.config import Settings


def _server(settings: Settings | None, inventory: str | None, autostart: bool) -> tuple[str, str]:
    from fleet.client import discovery
    from fleet.config import load_settings
    from fleet.errors import FleetError

    settings = settings or load_settings()
    info = discovery.resolve(settings, inventory, autostart=autostart)
    if not info.token:
        raise FleetError(f"no API token: set FLEET_TOKEN or put one in {settings.token_file} "
                         f"(an admin creates it with: fleet token create --user NAME)")
    return info.url, info.token


def connect(settings: Settings | None = None, inventory: str | None = None,
            autostart: bool = True, timeout: float = 60.0) -> Client:
    """A sync client of the configured server (``FLEET_SERVER``/config ``server`` with
    ``FLEET_TOKEN`` or ``$FLEET_HOME/token``), else of the local one, started if need be."""
    from fleet.client.sync import Client

    url, token = _server(settings, inventory, autostart)
    return Client(url, token, timeout=timeout)


def connect_async(settings: Settings | None = None, inventory: str | None = None,
                  autostart: bool = True, timeout: float = 60.0) -> AsyncClient:
    """As ``connect``, the async face (finding and starting the server is quick and done
    before it returns)."""
    from fleet.client.aio import AsyncClient

    url, token = _server(settings, inventory, autostart)
    return AsyncClient(url, token, timeout=timeout)
