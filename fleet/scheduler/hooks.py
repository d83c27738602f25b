"""Job hooks: the spec's ``hooks.before``/``hooks.after`` Ansible playbooks (a hook of the
admins' catalog, ``fleet.hooks``, or a playbook an admin uploaded), run through fleet.ansible
limited to the leased host, with the job's variables (``fleet_job_id``, ``fleet_attempt_id``,
``fleet_job_name``, ``fleet_host``, ``fleet_params``; after the job also ``fleet_job_state``,
``fleet_job_reason``, ``fleet_exit_code``) and the catalog hook's own. What came from the user
(params, the job's name, hook variables) reaches Ansible as data it never templates. Their
events go to the attempt's hook log (``fleet logs`` shows it with the job's own)."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from fleet.ansible import run_playbook
from fleet.blobs import BlobStore
from fleet.hooks import Catalog
from fleet.logstore import LogStore
from fleet.models.spec import HookCall, InputRef


def hook_log_id(attempt_id: str, which: str) -> str:
    """The log of an attempt's ``before`` or ``after`` hook (beside the attempt's own)."""
    return f"{attempt_id}.{which}"


def hook_name(ref: HookCall | InputRef) -> str:
    return ref.hook if isinstance(ref, HookCall) else ref.filename


async def run_hook(which: str, ref: HookCall | InputRef, *, catalog: Catalog, blobs: BlobStore,
                   logs: LogStore, inventory: str | None, job_id: str, attempt_id: str, host: str,
                   extravars: dict[str, Any], untrusted: dict[str, Any]) -> str | None:
    """Run one hook; returns None when it succeeded, else what failed (for the job's record).
    ``extravars`` are fleet's values, ``untrusted`` the user's (never templated)."""
    loop = asyncio.get_running_loop()
    name = hook_name(ref)

    def line(text: str) -> None:  # from ansible-runner's thread
        loop.call_soon_threadsafe(direct, text)

    def direct(text: str) -> None:  # on the event loop
        # own: no host keeps this log, so it is on disk from its first line (fleet.logstore)
        logs.append(job_id, hook_log_id(attempt_id, which), f"[hook {which} {name}] {text}\n".encode(), own=True)

    if inventory is None:
        return f"{which} hook {name}: this server has no inventory file for Ansible"
    with tempfile.TemporaryDirectory(prefix="fleet-hook-") as tmp:
        if isinstance(ref, HookCall):
            hook = catalog.get(ref.hook)
            if hook is None or hook.error:
                direct(f"not in the catalog {catalog.root} any more")
                return f"{which} hook {name}: no such hook in the catalog any more"
            playbook = hook.playbook
            untrusted = {**catalog.variables(hook, ref), **untrusted}
        else:  # a playbook an admin uploaded with the job
            playbook = Path(tmp) / name
            try:
                playbook.write_bytes(blobs.path(next(iter(ref.files.values())).sha256).read_bytes())
            except (OSError, ValueError) as exc:
                return f"{which} hook {name}: its playbook is gone from the blob store ({exc})"
        try:
            run = await asyncio.to_thread(run_playbook, playbook, inventory, limit=host,
                                          extravars=extravars, untrusted_vars=untrusted,
                                          on_line=line, timeout=3600)
        except Exception as exc:  # noqa: BLE001 - FleetError and whatever ansible-runner raised
            direct(f"could not run: {exc}")
            return f"{which} hook {name}: {exc}"
    stats = run.hosts.get(host)
    if stats is None:
        direct(f"the playbook did not run on {host} (its hosts: pattern does not match it?)")
        return f"{which} hook {name} did not run on {host}"
    if stats.status in ("failed", "unreachable"):
        return f"{which} hook {name} {stats.status} on {host}: {stats.message}"
    direct(f"{stats.status} (ok={stats.ok} changed={stats.changed})")
    return None
