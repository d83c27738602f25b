"""The device lab: simulated SSH hosts on 127.0.0.x for fleet's end-to-end tests.

``Lab`` starts asyncssh hosts (pure Python, thousands per process) and real OpenSSH hosts (one
sshd each, where /usr/sbin/sshd exists and we are root), each with a device profile. See
``lab.py`` for the contract and ``fixtures.py`` for the pytest fixtures.
"""

from .lab import Lab, LabError, LabHost, have_sshd
from .profiles import PROFILES, Profile

__all__ = ["PROFILES", "Lab", "LabError", "LabHost", "Profile", "have_sshd"]
