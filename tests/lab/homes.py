"""A lab host's file system view: its HOME, its ``~/bin`` and its environment.

Both kinds of host share these: the asyncssh host passes :func:`host_env` to every command it
runs; the OpenSSH host sets the same PATH and FLEET_LAB_* variables with ``SetEnv`` (sshd adds
HOME, USER, LOGNAME and SHELL itself).
"""

from __future__ import annotations

import os
from pathlib import Path

from .profiles import Profile

# Prints the profile's arch for `uname -m`; everything else is the real uname.
_UNAME_SCRIPT = """#!/bin/sh
# fleet device lab: this host simulates a {arch} machine.
if [ "$#" -eq 1 ] && [ "$1" = "-m" ]; then
    echo {arch}
    exit 0
fi
exec /bin/uname "$@"
"""


def prepare_home(home: Path, profile: Profile, python: Path) -> None:
    """Create ``home`` and ``home/bin`` with the profile's stand-ins. Idempotent.

    ``bin`` holds ``python3`` (a symlink to ``python``, so it resolves without a pyenv shim) and,
    on hosts whose arch is not the machine's, a ``uname`` that reports the simulated arch.
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


def host_path(home: Path, python: Path) -> str:
    """The PATH every command on the host sees: its own bin first, then the interpreter's dir."""
    return f"{home / 'bin'}:{python.parent}:/usr/local/bin:/usr/bin:/bin"


def lab_vars(name: str, profile: Profile, home: Path, python: Path) -> dict[str, str]:
    """Variables a lab host adds to the login environment (both kinds of host)."""
    return {
        "PATH": host_path(home, python),
        "FLEET_LAB_HOST": name,
        "FLEET_LAB_PROFILE": profile.name,
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
