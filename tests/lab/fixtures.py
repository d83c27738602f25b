"""pytest fixtures for the device lab; tests/conftest.py imports them.

``lab`` is a running Lab with no hosts under the test's tmp_path; a test adds what it needs
(``lab.add_hosts("jetson-orin-nano", 2)`` returns started hosts) and the fixture stops
everything at teardown. One running lab per test is cheap: starting the lab is a thread, and
asyncssh hosts start in well under a millisecond each.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .lab import Lab, have_sshd

requires_sshd = pytest.mark.skipif(
    not have_sshd(), reason="OpenSSH hosts need /usr/sbin/sshd (openssh-server) and root"
)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """A started Lab with no hosts under ``tmp_path/lab``; stopped (nothing left) at teardown."""
    with Lab(tmp_path / "lab") as running:
        yield running


__all__ = ["have_sshd", "lab", "requires_sshd"]
