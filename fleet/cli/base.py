"""What every ``fleet`` command shares: the root group, the context (settings, a client made
on first use) and the one-line error handling. Commands live in ``fleet.cli.main`` (server,
jobs, results, users) and ``fleet.cli.lab`` (hosts, pools, hooks, artifacts, ssh)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
import httpx

from fleet.config import Settings, load_settings
from fleet.errors import ApiError, FleetError, SpecError

if TYPE_CHECKING:
    from fleet.client.sync import Client

F = TypeVar("F", bound=Callable[..., Any])


class Ctx:
    def __init__(self, inventory: str | None) -> None:
        self.inventory = inventory
        self._settings: Settings | None = None
        self._client: Client | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    @property
    def client(self) -> Client:
        if self._client is None:
            from fleet.client import connect  # pydantic schemas: only for commands that call

            self._client = connect(self.settings, self.inventory)
        return self._client


def handle_errors(fn: F) -> F:
    """Print fleet's errors as one clear line (exit 2 for bad input, 1 otherwise)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SpecError as exc:
            click.echo(f"fleet: {exc}", err=True)
            sys.exit(2)
        except ApiError as exc:
            click.echo(f"fleet: {exc} (HTTP {exc.status})", err=True)
            sys.exit(2 if 400 <= exc.status < 500 else 1)
        except httpx.TransportError as exc:  # no traceback for a server that is not there
            try:
                where = exc.request.url
                server = f"{where.scheme}://{where.netloc.decode()}"
            except RuntimeError:  # httpx: no request attached
                server = "the server"
            reason = str(exc) or type(exc).__name__
            click.echo(f"fleet: cannot reach the fleet server at {server}: {reason} (is it running? "
                       "FLEET_SERVER and `fleet server status` say which one is used)", err=True)
            sys.exit(1)
        except FleetError as exc:
            click.echo(f"fleet: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--inventory", "-i", envvar="FLEET_INVENTORY", default=None,
              help="Ansible inventory (file, directory or plugin config). Default: the config "
                   "file in FLEET_HOME, else this machine alone.")
@click.version_option(package_name="fleet")
@click.pass_context
def cli(ctx: click.Context, inventory: str | None) -> None:
    """fleet: run compile and benchmark jobs on an edge-device lab."""
    ctx.obj = Ctx(inventory)




def short(text: str | None, width: int = 70) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[:width - 1] + "…"

