"""``fleet serve``: the API and the scheduler in one asyncio process.

Start-up order: settings -> inventory -> database -> first admin (if none) -> scheduler
(re-queue, reattach) -> HTTP. SIGTERM/SIGINT stop placing and close connections; running
attempts stay detached on their hosts for the next controller.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from fleet.api.server import ApiContext, create_app
from fleet.backends.connection import SSHOptions
from fleet.backends.ssh import SSHBackend
from fleet.blobs import BlobStore
from fleet.config import Settings
from fleet.db import Database
from fleet.inventory import Host, embedded_inventory, load_inventory
from fleet.logstore import LogStore
from fleet.scheduler.loop import Policy, Scheduler
from fleet.store import Store

log = logging.getLogger(__name__)


def resolve_hosts(settings: Settings, inventory: str | None) -> tuple[list[Host], str]:
    """Hosts from ``--inventory``, else ``FLEET_INVENTORY``/config, else the embedded default."""
    source = inventory or settings.inventory
    if source:
        return load_inventory(source, settings.local_workdir), str(Path(source).expanduser())
    return embedded_inventory(settings.local_workdir), "<embedded default: this machine>"


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8470
    inventory: str | None = None
    local: bool = False  # started by the CLI: write server.json for it to find


def bootstrap_admin(store: Store, settings: Settings) -> str | None:
    """On an empty database, create an admin for the current OS user and write its token to
    ``$FLEET_HOME/token`` (0600). Returns the token, or None if users exist."""
    if store.count_users():
        return None
    user = store.create_user(getpass.getuser(), is_admin=True)
    token = store.create_token(user, "bootstrap")
    write_private(settings.token_file, token + "\n")
    return token


async def serve(settings: Settings, options: ServeOptions) -> None:
    """Run the controller until SIGTERM/SIGINT."""
    settings.home.mkdir(parents=True, exist_ok=True)
    hosts, source = resolve_hosts(settings, options.inventory)
    db = Database(settings.db_url)
    db.create_schema()
    store = Store(db)
    if bootstrap_admin(store, settings):
        log.info("created admin user %s; token in %s", getpass.getuser(), settings.token_file)
    ssh_options = SSHOptions(
        known_hosts_files=(Path("~/.ssh/known_hosts").expanduser(),),
        fleet_known_hosts=settings.known_hosts,
        trust_on_first_use=settings.trust_on_first_use,
        keepalive_interval=settings.keepalive_interval,
        keepalive_count_max=settings.keepalive_count_max,
        connect_timeout=settings.connect_timeout,
    )
    by_name = {h.name: h for h in hosts}
    blobs = BlobStore(settings.blobs_dir)
    backend = SSHBackend(ssh_options, by_name.get, blobs.path)
    policy = Policy(kill_grace=settings.kill_grace, check_timeout=settings.health_check_timeout,
                    bad_after=settings.health_bad_after,
                    recheck_interval=settings.health_recheck_interval)
    scheduler = Scheduler(store, hosts, backend, LogStore(settings.logs_dir), policy)
    ctx = ApiContext(store, scheduler, blobs)
    app = create_app(ctx)

    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on sockets that say they are TCP,
    # and without it every small response waits ~40 ms for a delayed ACK.
    family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((options.host, options.port))
    sock.listen(512)
    port = sock.getsockname()[1]
    url = f"http://{options.host if ':' not in options.host else '[' + options.host + ']'}:{port}"
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)

    await scheduler.start()
    log.info("fleet serving %s with %d hosts from %s", url, len(hosts), source)
    if options.local:
        write_private(settings.server_file, json.dumps({"url": url, "pid": os.getpid(),
                                                        "inventory": source}))
    # uvicorn captures SIGTERM/SIGINT while serving and re-raises them afterwards; with these
    # handlers in place the re-raise is harmless and the shutdown below always runs.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _sig, _frame: None)
    try:
        await server.serve(sockets=[sock])
    finally:
        if options.local:
            try:
                current = json.loads(settings.server_file.read_text())
                if current.get("pid") == os.getpid():
                    settings.server_file.unlink()
            except (OSError, ValueError):
                pass
        await scheduler.stop()
        db.dispose()


def run_serve(settings: Settings, options: ServeOptions) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(settings, options))
