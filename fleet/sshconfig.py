"""OpenSSH client configuration for the inventory: one ``Host`` block per host, with its
address, port, user, key, jump hosts and fleet's known_hosts, so plain ``ssh HOST`` (and an
editor's remote development) reaches hosts by their inventory names. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from fleet.inventory import Host


def _value(text: str) -> str:
    """An ssh_config value: quoted when it has spaces."""
    return f'"{text}"' if any(c.isspace() for c in text) else text


def _hop(jump: object, hosts: Sequence[Host]) -> str:
    """A ProxyJump hop: an inventory host's name when the hop is one (by name, or by address
    and port), so its own Host block (key included) applies; else ``[user@]host[:port]``."""
    host, port, user = jump.host, jump.port, jump.user  # type: ignore[attr-defined]
    for h in hosts:
        if h.connection != "local" and (h.name == host or h.address == host) and port in (None, h.port) \
                and user in (None, h.user):
            return h.name
    return f"{user + '@' if user else ''}{host}{':' + str(port) if port else ''}"


def render(hosts: Iterable[Host], known_hosts: Sequence[Path], trust_on_first_use: bool = False) -> str:
    hosts = list(hosts)
    files = " ".join(_value(str(p)) for p in known_hosts)
    lines = ["# fleet ssh-config: Host blocks for the inventory (include this file from ~/.ssh/config)", ""]
    for h in hosts:
        if h.connection == "local":
            lines += [f"# {h.name}: ansible_connection=local (runs on the controller itself; no SSH)", ""]
            continue
        lines.append(f"Host {h.name}")
        lines.append(f"    HostName {h.address}")
        lines.append(f"    Port {h.port}")
        if h.user:
            lines.append(f"    User {h.user}")
        if h.key_file:
            lines.append(f"    IdentityFile {_value(str(Path(h.key_file).expanduser()))}")
            lines.append("    IdentitiesOnly yes")
        if h.jumps:
            lines.append(f"    ProxyJump {','.join(_hop(j, hosts) for j in h.jumps)}")
        lines.append(f"    UserKnownHostsFile {files}")
        lines.append(f"    StrictHostKeyChecking {'accept-new' if trust_on_first_use else 'yes'}")
        lines.append("")
    return "\n".join(lines)
