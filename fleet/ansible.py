"""Ansible, run once through here: ``run_playbook`` is the typed wrapper over ansible-runner
that probe, provision and job hooks use (STYLE.md: one narrow seam around a big dependency).

It runs ``ansible-playbook`` as a subprocess (ansible-runner's default), against the same
inventory fleet schedules on, and returns per-host stats plus what the playbook chose to
report (``set_fact`` of a ``fleet_*`` variable). Each event can be handed to a callback as
a line of text (hooks put them in the job's log). Blocking: call it in a thread.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fleet.errors import FleetError


def playbook_path(name: str) -> Path:
    """A playbook shipped with fleet (``facts.yml``, ``provision.yml``): the ``playbooks/``
    folder, installed as the ``fleet_playbooks`` package."""
    import importlib.util

    spec = importlib.util.find_spec("fleet_playbooks")
    bases = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    bases.append(Path(__file__).resolve().parent.parent / "playbooks")
    for base in bases:
        if (base / name).is_file():
            return base / name
    raise FleetError(f"fleet's playbook {name} is missing from this installation")


@dataclass
class HostStats:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    message: str | None = None  # the first failure or unreachable message

    @property
    def status(self) -> str:
        if self.unreachable:
            return "unreachable"
        if self.failed:
            return "failed"
        return "changed" if self.changed else "ok"


@dataclass
class PlaybookRun:
    rc: int
    status: str  # ansible-runner's: successful, failed, timeout, canceled
    hosts: dict[str, HostStats] = field(default_factory=dict)
    reported: dict[str, dict[str, Any]] = field(default_factory=dict)  # host -> fleet_* facts
    stdout: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0 and all(h.status in ("ok", "changed") for h in self.hosts.values())


def _event_line(event: dict[str, Any]) -> str | None:
    """One readable line for a job log, or None for events not worth a line."""
    kind = event.get("event", "")
    data = event.get("event_data") or {}
    host = data.get("host") or ""
    task = data.get("task") or ""
    res = data.get("res") or {}
    if kind == "playbook_on_play_start":
        return f"PLAY [{data.get('play', '')}]"
    if kind == "runner_on_ok":
        return f"ok: [{host}] {task}" + (" (changed)" if res.get("changed") else "")
    if kind == "runner_on_failed":
        if data.get("ignore_errors"):
            return f"failed (ignored): [{host}] {task}"
        return f"FAILED: [{host}] {task}: {_message(res)}"
    if kind == "runner_on_unreachable":
        return f"UNREACHABLE: [{host}] {task}: {_message(res)}"
    if kind == "runner_on_skipped":
        return f"skipped: [{host}] {task}"
    if kind == "playbook_on_stats":
        return "PLAY RECAP"
    return None


def _message(res: dict[str, Any]) -> str:
    msg = res.get("msg") or res.get("stderr") or res.get("module_stderr") or ""
    return " ".join(str(msg).split())[:300] or "no message"


class _Unsafe(str):
    """A string Ansible must never template (YAML ``!unsafe``)."""


def _unsafe_representer(dumper: yaml.SafeDumper, value: _Unsafe) -> yaml.Node:
    return dumper.represent_scalar("!unsafe", str(value))


class _VarsDumper(yaml.SafeDumper):  # type: ignore[misc]
    pass


_VarsDumper.add_representer(_Unsafe, _unsafe_representer)


def _untrusted(value: Any) -> Any:
    """``value`` with every string in it (keys too) marked ``!unsafe``: what a user sent is
    data, never a template (``{{ lookup('pipe', ...) }}`` in a variable would run on the
    controller)."""
    if isinstance(value, str):
        return _Unsafe(value)
    if isinstance(value, dict):
        return {_untrusted(k) if isinstance(k, str) else k: _untrusted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_untrusted(v) for v in value]
    return value


def write_extravars(path: Path, trusted: dict[str, Any], untrusted: dict[str, Any]) -> None:
    """Ansible's extra variables file: fleet's own values as they are, users' values marked
    ``!unsafe``. A user's value never overrides one of fleet's."""
    merged = {k: _untrusted(v) for k, v in untrusted.items()}
    merged.update(trusted)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.dump(merged, Dumper=_VarsDumper, sort_keys=True))


def run_playbook(
    playbook: Path,
    inventory: str,
    *,
    limit: str | None = None,
    extravars: dict[str, Any] | None = None,
    untrusted_vars: dict[str, Any] | None = None,
    check: bool = False,
    on_line: Callable[[str], None] | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> PlaybookRun:
    """Run ``playbook`` against ``inventory`` (a path Ansible reads) limited to ``limit``.

    ``extravars`` are fleet's own values; ``untrusted_vars`` come from users and reach the
    playbook as data that is never templated. Never raises for what happens on hosts (that is in the stats); raises FleetError if
    ansible-playbook cannot run at all."""
    import ansible_runner  # heavy: only when a playbook runs

    private = Path(tempfile.mkdtemp(prefix="fleet-ansible-"))
    run = PlaybookRun(rc=-1, status="failed")
    if extravars or untrusted_vars:  # ansible-runner passes env/extravars as -e @file
        write_extravars(private / "env" / "extravars", extravars or {}, untrusted_vars or {})

    def handler(event: dict[str, Any]) -> bool:
        data = event.get("event_data") or {}
        host = data.get("host")
        res = data.get("res") or {}
        kind = event.get("event", "")
        if host and kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            stats = run.hosts.setdefault(host, HostStats())
            stats.message = stats.message or f"{data.get('task')}: {_message(res)}"
        if host and kind == "runner_on_ok":
            for key, value in (res.get("ansible_facts") or {}).items():
                if key.startswith("fleet_"):
                    run.reported.setdefault(host, {})[key] = value
        if on_line is not None:
            line = _event_line(event)
            if line:
                on_line(line)
        return bool(kind != "verbose")  # keep the rest for ansible-runner's own bookkeeping

    # ansible-playbook from fleet's own environment (a venv need not be on PATH): ansible-runner
    # looks the command up on this process's PATH.
    bindir = str(Path(sys.executable).parent)
    if shutil.which("ansible-playbook") is None:
        os.environ["PATH"] = f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    envvars = {k: v for k, v in os.environ.items() if k.startswith("ANSIBLE_")}
    envvars["PATH"] = f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    envvars.update(env or {})
    envvars.setdefault("ANSIBLE_NOCOLOR", "1")
    envvars.setdefault("ANSIBLE_RETRY_FILES_ENABLED", "0")
    # One SSH round trip per task instead of three (no module file copied to the host first):
    # halves a provision run. Needs sudoers without requiretty for become (the default on every
    # current distribution); ANSIBLE_PIPELINING=False in fleet's environment turns it off.
    envvars.setdefault("ANSIBLE_PIPELINING", "True")
    envvars.setdefault("ANSIBLE_LOCAL_TEMP", str(private / "tmp"))
    try:
        result = ansible_runner.run(
            private_data_dir=str(private), playbook=str(Path(playbook).resolve()),
            inventory=inventory, limit=limit,
            cmdline="--check --diff" if check else None, quiet=True, event_handler=handler,
            envvars=envvars, timeout=int(timeout) if timeout else None,
            settings={"suppress_ansible_output": True},
        )
        run.rc = result.rc if result.rc is not None else -1
        run.status = result.status
        for kind, per_host in (result.stats or {}).items():
            for host, count in per_host.items():
                stats = run.hosts.setdefault(host, HostStats())
                if kind == "ok":
                    stats.ok = count
                elif kind == "changed":
                    stats.changed = count
                elif kind in ("failures", "failed"):
                    stats.failed = count
                elif kind in ("dark", "unreachable"):
                    stats.unreachable = count
                elif kind == "skipped":
                    stats.skipped = count
        try:
            run.stdout = result.stdout.read()[-20000:]
        except (OSError, AttributeError, ValueError):
            pass
    except Exception as exc:  # noqa: BLE001 - ansible-runner raises plain exceptions
        raise FleetError(f"cannot run ansible-playbook {playbook}: {exc}") from None
    finally:
        shutil.rmtree(private, ignore_errors=True)
    if not run.hosts and run.rc != 0:
        raise FleetError(f"ansible-playbook {Path(playbook).name} ended {run.status} (rc {run.rc}): "
                         f"{run.stdout[-500:].strip()}")
    return run


def write_local_inventory(path: Path, python: str) -> Path:
    """An inventory for the embedded default (this machine as ``localhost``)."""
    path.write_text(json.dumps({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": python}}}}))
    return path
