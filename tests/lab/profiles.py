"""Device profiles a lab host can simulate (DESIGN.md §6).

A profile is what a host *claims* to be: its architecture, accelerator and inventory pool, and the
device tools a real host of that kind has. The arch is simulated by a ``uname`` stand-in on the
host's PATH; the tools are listed here and get their stand-ins in a later issue.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Profile:
    """One kind of device host.

    ``accelerator`` is the inventory's ``fleet_accelerator`` value; ``pool`` is the inventory
    group the host is listed in; ``host_prefix`` names the hosts (``jetson-1``, ``jetson-2``...).
    """

    name: str
    arch: str  # "x86_64" | "aarch64"
    accelerator: str
    pool: str  # "rtx" | "jetson" | "hailo8"
    tools: list[str] = field(default_factory=list)
    host_prefix: str = ""


PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile(
            name="rtx5060",
            arch="x86_64",
            accelerator="rtx5060",
            pool="rtx",
            tools=["nvidia-smi", "trtexec"],
            host_prefix="rtx",
        ),
        Profile(
            name="jetson-orin-nano",
            arch="aarch64",
            accelerator="jetson-orin-nano",
            pool="jetson",
            tools=["trtexec", "tegrastats", "nvpmodel", "jetson_clocks"],
            host_prefix="jetson",
        ),
        Profile(
            name="hailo8",
            arch="x86_64",
            accelerator="hailo8",
            pool="hailo8",
            tools=["hailortcli", "hailo"],
            host_prefix="hailo",
        ),
    )
}
