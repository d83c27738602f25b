"""Environment capture on the host, per device family (stdlib only, Python >= 3.8).

What a benchmark ran on decides whether two results may be compared: driver, GPU and clocks
(``nvidia-smi``), L4T/JetPack (``/etc/nv_tegra_release``), power mode (``nvpmodel -q``), clocks
(``jetson_clocks --show``), HailoRT and firmware (``hailortcli``). Missing tools are skipped:
each function returns what it could read. ``Telemetry`` runs ``tegrastats`` alongside a
benchmark. ``unmet`` checks a spec's ``require`` against the captured environment.
"""

import os
import signal
import subprocess

from devtools import hailo as hailo_fmt
from devtools import nvidia as nvidia_fmt
from devtools import tegrastats as tegra_fmt
from runnerlib import find_tool, quiet, read_host_file

NVPMODEL = ("/usr/sbin/nvpmodel", "/usr/bin/nvpmodel")
JETSON_CLOCKS = ("/usr/bin/jetson_clocks", "/usr/sbin/jetson_clocks")
TEGRASTATS = ("/usr/bin/tegrastats",)


def nvidia():
    """GPU, driver, CUDA, clocks, power limit, temperature from nvidia-smi (RTX/T4 hosts)."""
    smi = find_tool("nvidia-smi")
    if not smi:
        return {}
    fields = list(nvidia_fmt.SMI_FIELDS)
    text = quiet([smi, "--query-gpu=" + ",".join(fields), "--format=csv,noheader,nounits"])
    gpus = nvidia_fmt.parse_smi_query(text, fields) if text else []
    env = {}
    if gpus:
        g = gpus[0]
        env["gpu"] = g.get("name")
        env["driver"] = g.get("driver_version")
        env["compute_capability"] = g.get("compute_cap")
        for src, dst in (("clocks.sm", "sm_clock_mhz"), ("clocks.mem", "mem_clock_mhz"),
                         ("clocks.max.sm", "sm_clock_max_mhz"), ("clocks.max.mem", "mem_clock_max_mhz"),
                         ("power.limit", "power_limit_w"), ("temperature.gpu", "temperature_c"),
                         ("pstate", "pstate"), ("memory.total", "memory_total_mib")):
            if g.get(src) is not None:
                env[dst] = g[src]
        if g.get("clocks.sm") is not None and g.get("clocks.max.sm"):
            # At its maximum right now: a GPU boosts for a while after any work, so this is no
            # sign of locked clocks (it made the repeats of one benchmark differ in their
            # comparison key, and split a series at random). Kept as a fact of the moment.
            env["sm_clock_at_max"] = g["clocks.sm"] >= g["clocks.max.sm"]
        env["gpu_count"] = len(gpus)
    header = quiet([smi])
    if header:
        cuda = nvidia_fmt.parse_smi_version(header)
        if cuda:
            env["cuda"] = cuda if isinstance(cuda, str) else cuda.get("cuda")
    return {k: v for k, v in env.items() if v is not None}


def jetson():
    """L4T/JetPack, power mode and clocks on a Jetson (empty elsewhere)."""
    env = {}
    release = read_host_file("/etc/nv_tegra_release")
    if release:
        info = nvidia_fmt.parse_tegra_release(release)
        for key in ("l4t", "jetpack", "board"):
            if info.get(key):
                env[key] = info[key]
    nvpmodel = find_tool("nvpmodel", *NVPMODEL)
    if nvpmodel:
        text = quiet([nvpmodel, "-q"])
        if text:
            mode = nvidia_fmt.parse_nvpmodel(text)
            if mode.get("mode_name") is not None:
                env["power_mode"] = mode["mode_name"]
            if mode.get("mode_id") is not None:
                env["power_mode_id"] = mode["mode_id"]
    clocks = find_tool("jetson_clocks", *JETSON_CLOCKS)
    if clocks:
        text = quiet([clocks, "--show"])
        if text:
            info = nvidia_fmt.parse_jetson_clocks(text)
            if "locked" in info:
                env["clocks_locked"] = bool(info["locked"])
            gpu = info.get("gpu") or {}
            if gpu.get("cur_hz"):
                env["gpu_clock_mhz"] = gpu["cur_hz"] / 1e6
            if info.get("machine"):
                env["machine"] = info["machine"]
    return env


def hailo():
    """HailoRT version and the device (architecture, firmware) from hailortcli."""
    cli = find_tool("hailortcli")
    if not cli:
        return {}
    env = {}
    version = quiet([cli, "--version"])
    if version:
        v = hailo_fmt.parse_hailortcli_version(version)
        if v:
            env["hailort"] = v
    ident = quiet([cli, "fw-control", "identify"])
    if ident:
        info = hailo_fmt.parse_identify(ident)
        for src, dst in (("architecture", "device_architecture"), ("firmware_version", "firmware"),
                         ("board_name", "board_name"), ("product_name", "product_name"),
                         ("serial", "serial")):
            if info.get(src):
                env[dst] = info[src]
    return env


def unmet(require, env):
    """Why a run does not meet the spec's ``require`` (power_mode, clocks_locked), as
    reasons; the result is then marked invalid instead of silently accepted."""
    reasons = []
    require = require or {}
    want_mode = require.get("power_mode")
    if want_mode is not None:
        have = env.get("power_mode")
        have_id = env.get("power_mode_id")
        if have is None and have_id is None:
            reasons.append("power mode required (%s) but unknown: nvpmodel not found" % want_mode)
        elif str(want_mode) not in (str(have), str(have_id)):
            reasons.append("power mode is %s (nvpmodel -q), the spec requires %s" % (have, want_mode))
    if require.get("clocks_locked"):
        if env.get("clocks_locked") is None:
            reasons.append("locked clocks required but their state is unknown (jetson_clocks "
                           "--show tells it on a Jetson; nvidia-smi cannot tell locked clocks "
                           "from a GPU still boosting)")
        elif not env["clocks_locked"]:
            reasons.append("clocks are not locked (jetson_clocks --show), the spec requires "
                           "locked clocks")
    return reasons


class Telemetry:
    """``tegrastats`` at ``interval_ms`` into ``path`` while a benchmark runs (Jetson only)."""

    def __init__(self, path, interval_ms=100):
        self.path, self.interval_ms = path, interval_ms
        self.proc = None
        self.tool = find_tool("tegrastats", *TEGRASTATS)

    def __enter__(self):
        if self.tool:
            out = open(self.path, "w")
            try:
                self.proc = subprocess.Popen([self.tool, "--interval", str(self.interval_ms)],
                                             stdout=out, stderr=subprocess.DEVNULL,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
            finally:
                out.close()
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except OSError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return False

    def summary(self):
        """Power (W, avg/max, total board power), GPU load and temperatures, or {}."""
        if self.proc is None:
            return {}
        try:
            with open(self.path) as fh:
                return tegra_fmt.summarize(fh.read().splitlines())
        except OSError:
            return {}
