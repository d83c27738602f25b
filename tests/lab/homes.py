"""A lab host's file system view: its HOME, its ``~/bin``, its host root and its environment.

Both kinds of host share these: the asyncssh host passes :func:`host_env` to every command it
runs; the OpenSSH host sets the same PATH and FLEET_LAB_* variables with ``SetEnv`` (sshd adds
HOME, USER, LOGNAME and SHELL itself).

Lab hosts share this machine's file system, so files only a real device has (a Jetson's
``/etc/nv_tegra_release``, ``/usr/src/tensorrt/bin/trtexec``) live under the host's *root*,
``<home>/root``, which the host exports as ``FLEET_HOST_ROOT`` (fleet's runners read host files
under it; production hosts never set it). Stand-in tools keep their configuration and state in
``<home>/.lab`` (see ``tests/lab/tools/_labtool.py``).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from .profiles import TOOL_SCRIPTS, Profile

TOOLS_DIR = Path(__file__).resolve().parent / "tools"
FIXTURES_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "tools"
# State keys that tools.json seeds and tools change; setting one in tools.json resets it.
STATE_KEYS = ("power_mode", "power_mode_id", "clocks_locked")

# Prints the profile's arch for `uname -m`; everything else is the real uname.
_UNAME_SCRIPT = """#!/bin/sh
# fleet device lab: this host simulates a {arch} machine.
if [ "$#" -eq 1 ] && [ "$1" = "-m" ]; then
    echo {arch}
    exit 0
fi
exec /bin/uname "$@"
"""


def host_root(home: Path) -> Path:
    """Where the host's own files are (its ``FLEET_HOST_ROOT``)."""
    return home / "root"


def tool_path(home: Path, profile: Profile, tool: str) -> Path:
    """Where ``tool``'s stand-in is installed on a host of ``profile``."""
    if tool in profile.tool_paths:
        return host_root(home) / profile.tool_paths[tool].lstrip("/")
    return home / "bin" / tool


def prepare_home(home: Path, profile: Profile, python: Path) -> None:
    """Create ``home`` with the profile's stand-ins, host files and tool config. Idempotent.

    ``bin`` holds ``python3`` (a symlink to ``python``, so it resolves without a pyenv shim),
    on hosts whose arch is not the machine's a ``uname`` that reports the simulated arch, and
    the stand-ins of the profile's tools (those with a ``tool_paths`` entry go under the host
    root instead). ``.lab/tools.json`` is written from the profile's defaults only when absent,
    so a configuration a test set survives a new Lab on the same root.
    """
    bin_dir = home / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    link = bin_dir / "python3"
    if not (link.is_symlink() and Path(os.readlink(link)) == python):
        link.unlink(missing_ok=True)
        link.symlink_to(python)
    if profile.arch != os.uname().machine:
        uname = bin_dir / "uname"
        uname.write_text(_UNAME_SCRIPT.format(arch=profile.arch))
        uname.chmod(0o755)
    host_root(home).mkdir(exist_ok=True)
    lab_dir = home / ".lab"
    lab_dir.mkdir(exist_ok=True)
    tools_json = lab_dir / "tools.json"
    if not tools_json.exists():
        _write_json(tools_json, profile.tool_config_defaults())
    for tool in profile.tools:
        _install(tool_path(home, profile, tool), _installed_text(TOOL_SCRIPTS[tool], str(home)))
    for path, fixture in profile.host_files.items():
        target = host_root(home) / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text((FIXTURES_DIR / fixture).read_text())


@functools.cache
def _script_source(script: str) -> str:
    return (TOOLS_DIR / script).read_text()


def _installed_text(script: str, home: str) -> str:
    """A stand-in's source with the host's HOME and the helper's directory written in."""
    text = _script_source(script)
    for name, value in (("LAB_HOME", home), ("LAB_LIB", str(TOOLS_DIR))):
        marker = f"{name} = None"
        if marker not in text:
            raise RuntimeError(f"{script}: no '{marker}' line to fill in")
        text = text.replace(marker, f"{name} = {value!r}", 1)
    return text


def _install(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if path.read_text() == text and os.access(path, os.X_OK):
            return
    except OSError:
        pass
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(text)
    tmp.chmod(0o755)
    os.replace(tmp, path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_tools(home: Path) -> dict[str, Any]:
    """The host's stand-in configuration (``~/.lab/tools.json``)."""
    return _read_json(home / ".lab" / "tools.json")


def write_tools(home: Path, changes: dict[str, Any]) -> dict[str, Any]:
    """Merge ``changes`` into the host's ``tools.json`` and return the result. Changing a
    seeded state key (power mode, clocks) also drops it from ``state.json``, so the new value
    is what the tools report."""
    config = {**read_tools(home), **changes}
    _write_json(home / ".lab" / "tools.json", config)
    dropped = [key for key in STATE_KEYS if key in changes]
    if dropped:
        state_path = home / ".lab" / "state.json"
        state = _read_json(state_path)
        if any(key in state for key in dropped):
            _write_json(state_path, {k: v for k, v in state.items() if k not in dropped})
    return config


def read_state(home: Path) -> dict[str, Any]:
    """What the stand-ins changed on the host (``~/.lab/state.json``), over its config."""
    return {**read_tools(home), **_read_json(home / ".lab" / "state.json")}


def host_path(home: Path, python: Path) -> str:
    """The PATH every command on the host sees: its own bin first, then the interpreter's dir."""
    return f"{home / 'bin'}:{python.parent}:/usr/local/bin:/usr/bin:/bin"


def lab_vars(name: str, profile: Profile, home: Path, python: Path) -> dict[str, str]:
    """Variables a lab host adds to the login environment (both kinds of host)."""
    return {
        "PATH": host_path(home, python),
        "FLEET_LAB_HOST": name,
        "FLEET_LAB_PROFILE": profile.name,
        "FLEET_HOST_ROOT": str(host_root(home)),
        "LANG": "C.UTF-8",
    }


def host_env(name: str, profile: Profile, home: Path, python: Path, user: str) -> dict[str, str]:
    """The whole environment of a command on an asyncssh host: nothing leaks from the test
    process (no VIRTUAL_ENV, no PYENV_*)."""
    return {
        "HOME": str(home),
        "USER": user,
        "LOGNAME": user,
        "SHELL": "/bin/sh",
        **lab_vars(name, profile, home, python),
    }
