"""The built-in ssh backend: runs attempts on inventory hosts through the attempt wrapper.

Per host, once per runner-bundle version: the bundle is unpacked into ``<workdir>/lib/<hash>``.
Per input file, once per host: the file goes into ``<workdir>/cache/<sha256>``. Per host, one
long-lived channel runs the agent (``wrapper.py agent``); each attempt is a launch request on it,
and its log and events come back framed on the same channel (see ``fleet.backends.agent``).
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from collections.abc import AsyncIterable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet import containers
from fleet.backends import shipping
from fleet.backends.agent import AgentChannel, InputsMissing, Renewer, renew_period
from fleet.backends.base import (
    AttemptPlan,
    AttemptSink,
    Backend,
    BackendContext,
    Capability,
    HostLost,
    Outcome,
    OutputUnreadable,
    SetupFailed,
)
from fleet.backends.connection import ConnectionPool, SSHOptions, Transport
from fleet.inventory import Host
from fleet.runners import VERIFY_BUNDLE, bundle, bundle_built, manifests

if TYPE_CHECKING:
    from pydantic import BaseModel

log = logging.getLogger(__name__)

BUNDLE_CHANGED = 86  # the agent's start command exits so when the bundle fails its check


def sh_path(path: str) -> str:
    """Quote a host path for sh, keeping a leading ``~/`` expandable as ``"$HOME"/``."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


class SSHBackend(Backend):
    """The built-in backend: the inventory's hosts, over one pooled asyncssh connection each."""

    name = "ssh"
    capabilities = frozenset(Capability)

    def __init__(
        self,
        options: SSHOptions,
        lookup_host: Callable[[str], Host | None],
        blob_path: Callable[[str], Path],
        hosts: list[Host] | None = None,
    ) -> None:
        self.pool = ConnectionPool(options, lookup_host)
        self.blob_path = blob_path
        self.hosts = list(hosts or ())
        self._lib_ready: dict[str, asyncio.Future[None]] = {}
        self._cached: dict[str, set[str]] = {}
        self._cache_locks: dict[str, asyncio.Lock] = {}
        self._image_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.ship_images: list[str] = []  # what the controller may ship besides runner images
        self._agents: dict[str, AgentChannel] = {}
        self._agent_locks: dict[str, asyncio.Lock] = {}
        self._renewer = Renewer(renew_period(options.attempt_lease, options.keepalive_interval))

    @classmethod
    def create(cls, settings: BaseModel | None, ctx: BackendContext) -> SSHBackend:
        """The inventory's hosts; its settings are fleet's own (``connect_timeout``, ...)."""
        s = ctx.settings
        options = SSHOptions(
            known_hosts_files=(Path("~/.ssh/known_hosts").expanduser(),),
            fleet_known_hosts=s.known_hosts,
            trust_on_first_use=s.trust_on_first_use,
            keepalive_interval=s.keepalive_interval,
            keepalive_count_max=s.keepalive_count_max,
            connect_timeout=s.connect_timeout,
            command_timeout=s.command_timeout,
            attempt_lease=s.attempt_lease,
        )
        by_name = {h.name: h for h in ctx.inventory}
        backend = cls(options, by_name.get, ctx.blob_path, ctx.inventory)
        backend.ship_images = list(s.ship_images)
        return backend

    def offers(self) -> list[Host]:
        return self.hosts

    # ------------------------------------------------------------------ paths on the host

    @staticmethod
    def lib_dir(host: Host) -> str:
        return join(host.workdir, "lib", bundle().digest)

    @staticmethod
    def cache_dir(host: Host) -> str:
        return join(host.workdir, "cache")

    @staticmethod
    def attempt_dir(host: Host, attempt_id: str) -> str:
        return join(host.workdir, "attempts", attempt_id)

    # ------------------------------------------------------------------ contract

    async def launch(self, plan: AttemptPlan, sink: AttemptSink, log_offset: int = 0) -> Outcome:
        host = plan.host
        try:
            try:
                transport = await self._transport(host)
                await self._ensure_lib(transport, host)
                if plan.inputs:
                    await self._ensure_inputs(transport, host, plan)
                shipped = b""
                if plan.image is not None and plan.pull != "always" and not plan.follow_only:
                    shipped = await self._ensure_image(transport, host, containers.resolve(plan.image, host), sink)
                agent = await self._agent(transport, host)
            except HostLost as exc:
                exc.sent = False
                raise
            request = self._payload(plan, log_offset + len(shipped), shipped)
            request["op"] = "launch"
            for _ in range(3):
                try:
                    return await agent.run(plan.attempt_id, request, sink)
                except InputsMissing as exc:
                    # The host's cache lost an input or had one altered (the agent removed
                    # it): upload it again; the attempt has not started.
                    self._cached.get(host.name, set()).difference_update(exc.shas)
                    try:
                        await self._ensure_inputs(transport, host, plan)
                    except HostLost as lost:
                        lost.sent = False
                        raise
            raise SetupFailed(f"host {host.name}: its input cache keeps losing this job's inputs")
        except HostLost:
            self._forget(host.name)
            raise

    async def cancel(self, plan: AttemptPlan, grace: float) -> None:
        host = plan.host
        agent = self._agents.get(host.name)
        if agent is None or not agent.alive:
            transport = await self._transport(host)
            await self._ensure_lib(transport, host)
            agent = await self._agent(transport, host)
        agent.send({"op": "cancel", "id": plan.attempt_id,
                    "attempt_dir": self.attempt_dir(host, plan.attempt_id), "grace": float(grace)})

    async def check(self, host: Host, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                transport = await self._transport(host)
                await self._ensure_lib(transport, host)
                agent = await self._agent(transport, host)
            await agent.ping(timeout)
        except TimeoutError:
            self._forget(host.name)
            raise HostLost(f"host {host.name}: no answer within {timeout:g} s") from None
        except HostLost:
            self._forget(host.name)
            raise

    async def kill_stale(self, host: Host, attempt_ids: list[str], grace: float) -> None:
        transport = await self._transport(host)
        await self._ensure_lib(transport, host)
        agent = await self._agent(transport, host)
        for attempt_id in attempt_ids:
            agent.send({"op": "fence", "id": attempt_id,
                        "attempt_dir": self.attempt_dir(host, attempt_id), "grace": float(grace)})

    async def fetch(self, plan: AttemptPlan, rel_path: str, dest: Path, size: int = 0) -> None:
        """Copy a file of the attempt into ``dest`` (a file the caller owns and removes on
        failure). The host's wrapper opens it without following links, as a regular file
        inside the attempt directory, so a job cannot hand over a file outside it."""
        host = plan.host
        transport = await self._transport(host)
        await self._ensure_lib(transport, host)
        command = (f"exec {shlex.quote(host.python)} -S -B {sh_path(join(self.lib_dir(host), 'wrapper.py'))} "
                   f"cat {sh_path(self.attempt_dir(host, plan.attempt_id))} {shlex.quote(rel_path)}")
        err = bytearray()
        written = 0

        def write(data: bytes) -> None:
            nonlocal written
            written += len(data)
            if written <= size:  # the host said how big; more is not taken
                fh.write(data)

        with dest.open("wb") as fh:
            code = await self._exec(host, transport, command, on_stdout=write, on_stderr=err.extend,
                                    transfer=size)
        if code != 0:
            raise OutputUnreadable(f"host {host.name}: cannot read {rel_path} of attempt "
                               f"{plan.attempt_id}: {err.decode(errors='replace').strip()[:500] or code}",
                                   host=host.name, command=command, exit_status=code,
                                   output=err.decode(errors="replace"))
        if written != size:
            raise OutputUnreadable(f"host {host.name}: output {rel_path} of attempt {plan.attempt_id} has "
                               f"{written} bytes, not the {size} its agent reported")

    async def gc_attempts(self, host: Host, max_age: float, max_bytes: int, keep: list[str],
                          timeout: float) -> tuple[int, int, int] | None:
        try:
            async with asyncio.timeout(timeout):
                transport = await self._transport(host)
                await self._ensure_lib(transport, host)
                agent = await self._agent(transport, host)
            done = await agent.gc(join(host.workdir, "attempts"), max_age, max_bytes, keep, timeout)
            if host.container_engine is not None:  # containers a crash left behind
                out = bytearray()
                await self._exec(host, transport, containers.sweep(host, keep), on_stdout=out.extend)
                if out.strip():
                    log.info("host %s: removed leftover containers %s", host.name, out.decode().split())
        except TimeoutError:
            raise HostLost(f"host {host.name}: no answer within {timeout:g} s") from None
        return len(done.get("removed") or ()), int(done.get("freed") or 0), int(done.get("left") or 0)

    async def close(self) -> None:
        self._renewer.close()
        for agent in self._agents.values():
            agent.close()
        self._agents.clear()
        await self.pool.close()

    # ------------------------------------------------------------------ steps

    async def _transport(self, host: Host) -> Transport:
        return await self.pool.get(host)

    def _forget(self, host_name: str) -> None:
        """After a failure: drop the connection and what we believed about the host."""
        self.pool.drop(host_name)
        self._lib_ready.pop(host_name, None)
        self._cached.pop(host_name, None)
        agent = self._agents.pop(host_name, None)
        if agent is not None:
            agent.close()

    async def _agent(self, transport: Transport, host: Host) -> AgentChannel:
        """The host's agent channel, started on first use and restarted when it died."""
        agent = self._agents.get(host.name)
        if agent is not None and agent.alive:
            return agent
        lock = self._agent_locks.setdefault(host.name, asyncio.Lock())
        async with lock:
            agent = self._agents.get(host.name)
            if agent is None or not agent.alive:
                # The bundle is checked by content before every agent start (and installed
                # again if anything differs): a job that rewrote the agent (isolation none)
                # and killed it does not get its version run. The start command checks once
                # more, closing the window between the two.
                if agent is not None:
                    await self._install_lib(transport, host)
                lib = sh_path(self.lib_dir(host))
                python = shlex.quote(host.python)
                start = f"exec {python} -S -B {lib}/wrapper.py agent"
                if host.needs_root:
                    # Jobs run as other accounts here: the agent runs as root (sudo -n when
                    # the login is not root; it keeps the login's PATH for the jobs).
                    start = (f'if [ "$(id -u)" = 0 ]; then {start}; else exec sudo -n -- {python} '
                             f'-S -B {lib}/wrapper.py agent --path "$PATH"; fi')
                channel = await transport.open_channel(
                    f"{python} -S -B -c {shlex.quote(VERIFY_BUNDLE)} {lib} {bundle().digest} "
                    f"|| exit {BUNDLE_CHANGED}; {start}"
                )
                agent = AgentChannel(host.name, channel)
                self._agents[host.name] = agent
                self._renewer.add(agent)
            return agent

    async def _ensure_lib(self, transport: Transport, host: Host) -> None:
        """Unpack the runner bundle into the host's lib dir unless it is there. Idempotent."""
        await bundle_built()  # every use of the bundle on a host comes here first
        fut = self._lib_ready.get(host.name)
        if fut is None:
            fut = asyncio.ensure_future(self._install_lib(transport, host))
            self._lib_ready[host.name] = fut
        try:
            await asyncio.shield(fut)
        except BaseException:
            if self._lib_ready.get(host.name) is fut:
                del self._lib_ready[host.name]
            raise

    async def _install_lib(self, transport: Transport, host: Host) -> None:
        """Make ``<workdir>/lib/<digest>`` hold exactly the bundle: checked by content hash
        (not by a marker file a job could leave), replaced when anything in it differs."""
        lib = sh_path(self.lib_dir(host))
        libs = sh_path(join(host.workdir, "lib"))
        verify = f"{shlex.quote(host.python)} -S -B -c {shlex.quote(VERIFY_BUNDLE)} {lib} {bundle().digest}"
        script = (
            f"{verify} && {{ cat >/dev/null; exit 0; }}; [ $? = 127 ] && exit 127; set -e; "
            f"mkdir -p {libs}; chmod 755 {libs}; {self._open_workdir(host)}"
            f"t=$(mktemp -d {libs}/.tmp.XXXXXX); tar -xzf - -C \"$t\"; "
            f"chmod 755 \"$t\"; "
            f"if [ -e {lib} ]; then o={libs}/.old.$$; mv -T {lib} \"$o\"; chmod -R u+w \"$o\"; rm -rf \"$o\"; fi; "
            f'mv -T "$t" {lib} 2>/dev/null || rm -rf "$t"; {verify}'
        )
        err = bytearray()
        code = await self._exec(host, transport, script, stdin=bundle().tarball, on_stderr=err.extend)
        if code == 127:
            raise SetupFailed(f"host {host.name}: python not found ({host.python}); install Python "
                              ">= 3.8 or set ansible_python_interpreter")
        if code != 0:
            raise SetupFailed(
                f"host {host.name}: cannot install fleet's runners into {self.lib_dir(host)}: "
                f"{err.decode(errors='replace').strip() or f'exit {code}'}"
            )

    @staticmethod
    def _open_workdir(host: Host) -> str:
        """Where jobs run as other accounts, they must pass through the work directory (to
        their attempt, the runners, the cache): 0711, listable by nobody."""
        return f"chmod 711 {sh_path(host.workdir)}; " if host.needs_root else ""

    async def _ensure_inputs(self, transport: Transport, host: Host, plan: AttemptPlan) -> None:
        """Upload the plan's input files the host's cache lacks (each sha256 once per host)."""
        lock = self._cache_locks.setdefault(host.name, asyncio.Lock())
        known = self._cached.setdefault(host.name, set())
        wanted = sorted({f.sha256 for f in plan.inputs} - known)
        if not wanted:
            return
        async with lock:
            wanted = sorted(set(wanted) - known)
            if not wanted:
                return
            cache = sh_path(self.cache_dir(host))
            out = bytearray()
            check = (
                f"mkdir -p {cache} && chmod 711 {cache} && cd {cache} && for s in {' '.join(wanted)}; "
                f'do [ -f "$s" ] || echo "$s"; done'
            )
            code = await self._exec(host, transport, check, on_stdout=out.extend)
            if code != 0:
                raise SetupFailed(f"host {host.name}: cannot create the input cache {self.cache_dir(host)}")
            missing = out.decode().split()
            for sha in missing:
                data = await asyncio.to_thread(self.blob_path(sha).read_bytes)
                upload = (
                    f"cd {cache} && cat > .up.$$ && chmod 644 .up.$$ && mv -f .up.$$ {shlex.quote(sha)}"
                )
                if await self._exec(host, transport, upload, stdin=data) != 0:
                    raise SetupFailed(f"host {host.name}: upload of input {sha[:12]} failed")
            known.update(wanted)

    async def _ensure_image(self, transport: Transport, host: Host, image: str, sink: AttemptSink) -> bytes:
        """A container job's image, when the host lacks it and the controller has it: shipped
        from the controller (fleet.backends.shipping), its progress in the job's log. Returns
        the lines written there (the host's log starts with them too). An image the controller
        lacks is left to the host's pull policy."""
        async with self._image_locks.setdefault((host.name, image), asyncio.Lock()):
            engine = " ".join(shlex.quote(w) for w in containers.engine_words(host))
            if await self._exec(host, transport, f"{engine} image inspect {shlex.quote(image)} >/dev/null 2>&1") == 0:
                return b""
            local = await shipping.on_controller(image)
            if local is None:
                return b""
            if not local.may_ship(self.ship_images):
                line = (f"fleet: image {image} is not on host {host.name}; the controller has it but ships only "
                        f"fleet's runner images and what ship_images names\n").encode()
                sink.log(line)
                return line
            progress = shipping.Progress(local, host.name, sink.log)
            out = bytearray()
            try:
                code = await self._exec(host, transport, f"{engine} load", stdin=shipping.save_stream(local, progress),
                                        transfer=local.size, on_stdout=out.extend, on_stderr=out.extend)
            except shipping.ShipError as exc:
                raise SetupFailed(f"host {host.name}: cannot ship image {image}: {exc}") from None
            if code != 0:
                raise SetupFailed(f"host {host.name}: loading image {image} shipped from the controller failed "
                                  f"(exit {code}): {out.decode(errors='replace').strip()[-300:]}")
            return progress.done()

    async def _exec(self, host: Host, transport: Transport, command: str, *,
                    stdin: bytes | AsyncIterable[bytes] | None = None, transfer: int = 0,
                    **callbacks: Any) -> int:
        """One of fleet's own commands, bounded by ``command_timeout`` (plus 1 s per MiB sent or
        expected back): a host that stops answering mid-command is lost, not waited on forever.
        On a host whose jobs run as other accounts, as root (``sudo -n`` unless the login is)."""
        if host.needs_root:
            quoted = shlex.quote(command)
            command = f'if [ "$(id -u)" = 0 ]; then exec /bin/sh -c {quoted}; else exec sudo -n -- /bin/sh -c {quoted}; fi'
        moved = (len(stdin) if isinstance(stdin, bytes) else 0) + transfer
        limit = self.pool.options.command_timeout + moved / (1 << 20)
        try:
            async with asyncio.timeout(limit):
                return await transport.exec(command, stdin=stdin, **callbacks)
        except TimeoutError:
            self._forget(host.name)
            raise HostLost(f"host {host.name}: a fleet command took longer than {limit:.0f} s") from None

    def _payload(self, plan: AttemptPlan, log_offset: int, shipped: bytes = b"") -> dict[str, object]:
        host = plan.host
        payload: dict[str, object] = {
            "attempt_dir": self.attempt_dir(host, plan.attempt_id),
            "cache_dir": self.cache_dir(host),
            "job": plan.job,
            "env": plan.env,
            "setup": plan.setup,
            "timeout": plan.timeout,
            "grace": plan.grace,
            "inputs": [[f.rel_path, f.sha256] for f in plan.inputs],
            "offset": log_offset,
            "lease": self.pool.options.attempt_lease,
            "follow_only": plan.follow_only,
            # a fresh attempt's log starts with what the controller's copy already holds
            "preamble": (plan.preamble + shipped).decode(errors="replace"),
            "run_as": plan.run_as,
            "isolation": host.isolation,
            "env_keep": list(host.env_keep),
        }
        if plan.image is not None:  # in a container: the runner comes from the image (fleet.containers)
            entry = (manifests()[plan.runner].entry or "run.py") if plan.argv is None else ""
            inner = containers.with_setup(plan.setup, containers.inner_argv(plan.argv, plan.runner, entry))
            image = containers.resolve(plan.image, host)
            payload["setup"] = containers.prepare(host, image, plan.pull)
            payload["argv"] = containers.wrap(host, image, plan.attempt_id, inner,
                                              network=plan.network, grace=plan.grace,
                                              inputs=[f.sha256 for f in plan.inputs], limits=plan.limits)
            payload["container"] = True
        elif plan.argv is not None:
            payload["argv"] = plan.argv
        else:
            manifest = manifests()[plan.runner]
            entry = join(self.lib_dir(host), plan.runner, manifest.entry or "run.py")
            # The wrapper expands ``~`` in the entry path (no shell is involved there). -B:
            # no bytecode next to the bundle (its check would find the extra files).
            payload["entry"] = [host.python, "-B", entry, "job.json"]
        return payload

