"""``fleet serve``: the API and the scheduler in one asyncio process.

Start-up order: settings -> inventory -> database -> first admin (if none) -> scheduler
(re-queue, reattach) -> HTTP. SIGTERM/SIGINT stop placing and close connections; running
attempts stay detached on their hosts for the next controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import getpass
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from fleet.ansible import write_local_inventory
from fleet.api.middleware import Limits
from fleet.api.server import ApiContext, create_app
from fleet.backends.registry import load_backends
from fleet.blobs import BlobStore
from fleet.config import Settings
from fleet.db import Database
from fleet.disk import DiskGuard
from fleet.events import EventHub
from fleet.hooks import Catalog
from fleet.inventory import Host, embedded_inventory, load_inventory
from fleet.leader import LeaderLease, LeaseKeeper, make_holder
from fleet.logstore import LogStore
from fleet.matrix import keep as keep_matrices
from fleet.scheduler.burst import BurstPolicy
from fleet.scheduler.loop import Policy, Scheduler
from fleet.secrets import SecretBox
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


GC_THRESHOLDS = (50_000, 50, 10)  # the collector's generations (CPython's default: 700, 10, 10)


async def serve(settings: Settings, options: ServeOptions) -> None:
    """Run the controller until SIGTERM/SIGINT."""
    private_state(settings)
    hosts, source = resolve_hosts(settings, options.inventory)
    blobs = BlobStore(settings.blobs_dir)
    loaded = load_backends(settings, hosts, blobs.path)  # a bad backends: setting stops here
    offered = loaded.hosts()
    db = Database(settings.db_url)
    db.create_schema()
    store = Store(db)
    if bootstrap_admin(store, settings):
        log.info("created admin user %s; token in %s", getpass.getuser(), settings.token_file)
    policy = Policy(kill_grace=settings.kill_grace, check_timeout=settings.health_check_timeout,
                    bad_after=settings.health_bad_after,
                    recheck_interval=settings.health_recheck_interval,
                    check_concurrency=settings.health_check_concurrency,
                    attempt_lease=settings.attempt_lease,
                    burst=BurstPolicy.load(settings.burst, str(settings.config_file)))
    scheduler = Scheduler(store, offered, loaded.backends, LogStore(settings.logs_dir, settings.log_cap), policy,
                          SecretBox(settings.secret_key_file), blobs)
    scheduler.hook_catalog = Catalog(settings.hooks_dir)
    if source.startswith("<embedded"):
        scheduler.inventory_source = str(write_local_inventory(settings.home / "embedded-inventory.json",
                                                               sys.executable))
    else:
        scheduler.inventory_source = source
    disk = DiskGuard(settings.home, settings.disk_reserve_bytes)
    disk.check()  # makes the reserve when there is room
    scheduler.logs.paused = lambda: disk.full
    scheduler.logs.on_error = disk.hit
    scheduler.disk = disk
    lease = LeaderLease(db, make_holder(), None, settings.leader_lease)
    limits = Limits(max_request_bytes=settings.max_request_bytes, max_spec_bytes=settings.max_spec_bytes,
                    max_upload_bytes=settings.max_upload_bytes, upload_quota_bytes=settings.upload_quota_bytes)
    ctx = ApiContext(store, scheduler, blobs, lease, limits, disk)
    ctx.ssh_known_hosts = [Path("~/.ssh/known_hosts").expanduser(), settings.known_hosts]
    ctx.trust_on_first_use = settings.trust_on_first_use
    ctx.webhook_allow_private = settings.webhook_allow_private
    hub = EventHub(store, settings.db_url)
    await hub.start()
    ctx.events = hub
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

    lease.url = settings.advertise_url or url
    unwatch = scheduler.metrics.watch_loop()
    # The garbage collector stops everything while it runs (event loop and API threads alike).
    # What start-up made (modules, classes, the app's routes and schemas, the inventory) lives
    # as long as the process: frozen out of its reach, a full collection walks only what came
    # after (180,000 objects fewer). And a young generation of 50,000 objects instead of 700:
    # far fewer of a thousand connections' in-flight objects are caught alive and promoted,
    # so full collections (400-600 ms each with 50,000 queued jobs) become rare. bench/scale.py
    # during a 50,000-job submission: 2-10 holds over 50 ms, up to 0.5 s, before; none after.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    scheduler.fence = lambda: None if lease.held else keep_or_step_down(lease)
    scheduler.logs.fence = lambda: scheduler.fence()  # its tiny logs' flush (fleet.logstore)
    elector = asyncio.create_task(lead(lease, scheduler, disk), name="fleet-leader")
    await asyncio.sleep(0)  # lead() takes a free lease and starts the scheduler before requests come
    collector = asyncio.create_task(collect_garbage(scheduler, settings), name="fleet-gc")
    matrices = asyncio.create_task(keep_matrices(ctx, settings.matrix_interval), name="fleet-matrix")
    log.info("fleet serving %s with %d hosts from %s; backends: %s", url, len(hosts), source,
             ", ".join(f"{n} ({len(b.offers())} offered)" for n, b in loaded.backends.items()))
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
        elector.cancel()
        collector.cancel()
        matrices.cancel()
        await asyncio.gather(elector, collector, matrices, return_exceptions=True)
        await scheduler.stop()
        await hub.stop()
        unwatch()
        if scheduler.leading:
            lease.release()  # a follower takes over now instead of after the lease time
        db.dispose()


async def collect_garbage(scheduler: Scheduler, settings: Settings) -> None:
    """Retention on the leader. Logs: every ``gc_interval``, and as soon as the store has grown
    by an eighth of ``log_store_limit`` since the last pass (a flood of logs). Hosts' attempt
    directories (logs, results' raw files): every ``gc_interval``."""
    logs = scheduler.logs
    max_age = settings.log_retention_days * 86400
    last_pass, last_size = 0.0, logs.appended
    while True:
        await asyncio.sleep(1.0)
        disk = scheduler.disk
        if disk is not None:
            was_full = disk.full
            if disk.check() != was_full and not disk.full:
                scheduler.wake()  # room again: place what waited
        due = time.monotonic() - last_pass >= settings.gc_interval
        grown = logs.appended - last_size >= settings.log_store_limit / 8
        if not scheduler.leading or not (due or grown):
            continue
        last_pass, last_size = time.monotonic(), logs.appended
        try:
            removed, freed = logs.collect(max_age, settings.log_store_limit)
        except OSError as exc:
            log.warning("log retention failed: %s", exc)
            removed = freed = 0
        if removed:
            log.info("log retention removed %d ended attempts' logs (%d bytes)", removed, freed)
        if not due:
            continue
        try:
            gone = expire_artifacts(scheduler, time.time() - settings.artifact_retention_days * 86400)
        except OSError as exc:
            log.warning("artifact retention failed: %s", exc)
            gone = 0
        if gone:
            log.info("artifact retention removed %d artifacts", gone)
        try:
            dropped, freed = expire_uploads(scheduler, time.time() - settings.upload_retention_days * 86400)
        except OSError as exc:
            log.warning("upload retention failed: %s", exc)
            dropped = freed = 0
        if dropped or freed:
            log.info("upload retention dropped %d uploads and %d files no job uses", dropped, freed)
        scheduler.store.forget_submit_keys(time.time() - 86400)
        scheduler.store.expire_events(time.time() - settings.event_retention_days * 86400)
        passes = await scheduler.gc_hosts(settings.host_retention_days * 86400,
                                          settings.host_store_limit)
        for host, (count, freed, left) in sorted(passes.items()):
            if count:
                log.info("attempt gc on %s removed %d ended attempt directories (%d bytes; %d "
                         "left)", host, count, freed, left)


def expire_artifacts(scheduler: Scheduler, before: float) -> int:
    """Remove artifacts made before ``before`` (none a waiting job needs); their content goes
    from the blob store when no other artifact and no unfinished job uses it."""
    store, blobs = scheduler.store, scheduler.blobs
    ids = store.expired_artifacts(before)
    for sha in store.delete_artifacts(ids):
        if not store.blob_in_use(sha):
            blobs.path(sha).unlink(missing_ok=True)
    return len(ids)


def expire_uploads(scheduler: Scheduler, before: float, stale_temp: float = 3600.0) -> tuple[int, int]:
    """Forget uploads made before ``before`` that no unfinished job uses; remove content nothing
    needs any more (no upload, artifact or unfinished job), and temporary files of uploads and
    copies that never finished (a server killed mid-upload) older than ``stale_temp`` seconds.
    Returns (uploads forgotten, files removed)."""
    store, blobs = scheduler.store, scheduler.blobs
    dropped, removed = 0, 0
    for user, sha in store.stale_uploads(before):
        if store.blob_in_use(sha):
            continue
        store.delete_upload(user, sha)
        dropped += 1
        if not store.blob_referenced(sha):
            blobs.path(sha).unlink(missing_ok=True)
            removed += 1
    cutoff = time.time() - stale_temp
    for tmp in blobs.stale_temp_files():
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed += 1
        except OSError:
            pass
    return dropped, removed


def private_state(settings: Settings) -> None:
    """``$FLEET_HOME`` (and ``shared_dir``) 0700, and everything the server writes 0600 or
    0700, whatever the umask it was started with (DESIGN.md §7)."""
    os.umask(0o077)
    for root in {settings.home, settings.shared}:
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o700)
        for name in ("logs", "blobs"):
            if (root / name).is_dir():
                (root / name).chmod(0o700)
    for name in ("fleet.db", "fleet.db-wal", "fleet.db-shm", "token", "secret.key", "server.log"):
        for root in {settings.home, settings.shared}:
            path = root / name
            if path.is_file():
                path.chmod(0o600)


def _step_down() -> None:
    """The lease is gone: leave at once, without another write (attempts stay detached)."""
    log.critical("lost the leader lease; exiting so the next leader takes over")
    logging.shutdown()
    os._exit(75)


async def lead(lease: LeaderLease, scheduler: Scheduler, disk: DiskGuard | None = None) -> None:
    """Lead while this replica holds the leader lease (renewed by a thread of its own,
    ``LeaseKeeper``, so a busy event loop does not let it lapse); start the scheduler when it
    is taken. A leader whose lease lapsed anyway takes it back when no rival holds it, and
    leaves (exits) only when a rival does: its running attempts stay detached on their hosts
    for the next leader to reattach."""
    keeper = LeaseKeeper(lease, lease.ttl / 3, disk.hit if disk is not None else lambda exc: None)
    try:
        lease.try_acquire()  # at once: a lone replica leads before its API takes requests
    except Exception as exc:  # noqa: BLE001 - the keeper tries again
        log.warning("leader lease: %s", exc)
    keeper.start()
    try:
        while True:
            if lease.held and not scheduler.leading:
                log.info("this replica is the leader now (lease %g s)", lease.ttl)
                try:
                    with no_collection_then_freeze():
                        await scheduler.start()
                except Exception:  # a leader that cannot load what the last one left must not
                    # answer for it (its API would take cancels it cannot carry out): it leaves
                    log.critical("could not take the lead; exiting so the next start or replica takes over",
                                 exc_info=True)
                    logging.shutdown()
                    os._exit(70)
            elif scheduler.leading and not lease.held:
                keep_or_step_down(lease)
            await asyncio.sleep(0.2)
    finally:
        keeper.stop()


@contextlib.contextmanager
def no_collection_then_freeze() -> Iterator[None]:
    """Around a new leader's load (every running attempt and queued job the last one left:
    with 50,000 queued, a million objects that live as long as their jobs). While the heap
    grows that fast, each quarter it grows by sets off a full collection that walks all of it
    with the loop held (up to 100 ms: bench/scale.py "takeover"): none runs meanwhile. Once
    loaded, what was made is frozen out of the collector's reach, as start-up's objects are
    (``serve``): later full collections walk only what came after. Frozen objects are still
    freed when their last reference goes, but a reference cycle among them stays. The rows,
    specs and queue entries a load makes form none; what else lives at that moment is frozen
    too, such as the SSH connections and agent channels the reattached attempts opened
    meanwhile, whose teardown leaves cycles (cancelled tasks' tracebacks): about 120 objects,
    ~20 KB, per connection made during the load and dropped later (a lost host), once per
    process, as it leads once. Bounded, and cheaper than a full collection of a million
    objects with the loop held."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
        gc.freeze()
    finally:
        if enabled:
            gc.enable()


def keep_or_step_down(lease: LeaderLease) -> None:
    """Our lease lapsed (this process was busy, stopped or cut off from the database): take it
    back if nobody else holds it, else leave at once, before any other write. Called by the
    fence before every scheduler write and by ``lead``."""
    try:
        if lease.try_acquire():
            return
    except Exception as exc:  # noqa: BLE001 - cannot tell: leave, the safe side
        log.warning("leader lease: %s", exc)
    _step_down()


def run_serve(settings: Settings, options: ServeOptions) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(settings, options))
