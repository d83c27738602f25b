"""Device profiles a lab host can simulate (DESIGN.md §6).

A profile is what a host *claims* to be: its architecture, accelerator and inventory pool, the
device tools a real host of that kind has, and the files only such a host has. The arch is
simulated by a ``uname`` stand-in on the host's PATH; each tool by a stand-in from
``tests/lab/tools`` that replays recorded real output (see ``homes.prepare_home``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .tools._labtool import TOOL_DEFAULTS

# Which stand-in script plays which tool (files in tests/lab/tools).
TOOL_SCRIPTS: dict[str, str] = {
    "trtexec": "trtexec.py",
    "nvidia-smi": "nvidia_smi.py",
    "tegrastats": "tegrastats.py",
    "nvpmodel": "nvpmodel.py",
    "jetson_clocks": "jetson_clocks.py",
    "hailortcli": "hailortcli.py",
    "hailo": "hailo.py",
}


@dataclass(frozen=True)
class Profile:
    """One kind of device host.

    ``accelerator`` is the inventory's ``fleet_accelerator`` value; ``pool`` is the inventory
    group the host is listed in; ``host_prefix`` names the hosts (``jetson-1``, ``jetson-2``...).
    ``tools`` get stand-ins in the host's ``~/bin`` (first on its PATH) unless ``tool_paths``
    puts one elsewhere on the host (an absolute path on the simulated host, created under its
    host root, ``$FLEET_HOST_ROOT``). ``host_files`` maps paths on the simulated host to the
    recorded fixture (tests/fixtures/tools) they hold. ``tool_config`` overrides
    :data:`TOOL_DEFAULTS` in the host's ``~/.lab/tools.json``.
    """

    name: str
    arch: str  # "x86_64" | "aarch64"
    accelerator: str
    pool: str  # "rtx" | "jetson" | "hailo8" | "hailo-dfc"
    tools: list[str] = field(default_factory=list)
    host_prefix: str = ""
    tool_paths: dict[str, str] = field(default_factory=dict)
    host_files: dict[str, str] = field(default_factory=dict)
    tool_config: dict[str, object] = field(default_factory=dict)

    def tool_config_defaults(self) -> dict[str, object]:
        """The host's ``tools.json`` as ``prepare_home`` first writes it."""
        return {**TOOL_DEFAULTS, **self.tool_config}


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
            # JetPack installs trtexec there and does not put it on PATH.
            tool_paths={"trtexec": "/usr/src/tensorrt/bin/trtexec"},
            host_files={"/etc/nv_tegra_release": "nv_tegra_release.txt"},
            tool_config={
                "tensorrt": "10.3.0",
                "gpu_name": "Orin (nvgpu)",
                "compute_capability": "8.7",
                "sms": 8,
                "memory_mib": 7620,
                "cuda": "12.6",
                "latency_scale": 2.4,
                "soc": "tegra234",
                "machine": "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super",
                "power_mode": "MAXN_SUPER",
                "power_mode_id": 2,
                "hailo_arch": None,
                "power_monitor": False,
            },
        ),
        Profile(
            name="hailo8",
            arch="x86_64",
            accelerator="hailo8",
            pool="hailo8",
            tools=["hailortcli"],
            host_prefix="hailo",
            tool_config={"hailo_arch": "HAILO8", "power_monitor": True},
        ),
        Profile(
            # An x86 host with the Hailo Dataflow Compiler: compiles HEFs, has no Hailo device.
            name="hailo-dfc",
            arch="x86_64",
            accelerator="cpu",
            pool="hailo-dfc",
            tools=["hailo"],
            host_prefix="dfc",
            tool_config={"hailo_arch": None, "power_monitor": False},
        ),
    )
}
