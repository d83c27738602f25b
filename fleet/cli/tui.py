"""``fleet tui``: the terminal UI (the ``fleet_tui`` package, installed with the ``tui`` extra)."""

from __future__ import annotations

import click

from fleet.cli.base import Ctx, cli, handle_errors, pass_ctx
from fleet.errors import FleetError


@cli.command()
@click.option("--readonly", is_flag=True, help="look only: cancel, submit and host actions are refused")
@pass_ctx
@handle_errors
def tui(obj: Ctx, readonly: bool) -> None:
    """The lab live in the terminal: hosts, queues, jobs, logs, results, matrices.

    Talks to the same server as every other command (FLEET_SERVER and FLEET_TOKEN, or the local
    one, started if need be). Press ? in it for its keys."""
    try:
        import fleet_tui
    except ImportError:
        raise FleetError("the terminal UI is not installed: pip install 'fleet[tui]'") from None
    from fleet.client import _server, discovery

    settings = obj.settings
    url, token = _server(settings, obj.inventory, autostart=True)

    def local() -> str | None:  # a local server started again listens on a new port
        info = discovery.local_server(settings)
        return info.url if info is not None else None

    fleet_tui.run(url, token, readonly=readonly, rediscover=None if settings.server else local)
