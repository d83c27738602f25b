"""What a probe learned about a host (``playbooks/facts.yml``), parsed on the controller with
the runners' own parsers, and where the inventory and the host disagree."""

from __future__ import annotations

import re
from typing import Any

from fleet.inventory import ARCH_ALIASES, Host

_SECTION = re.compile(r"^@@@(\w+)$", re.MULTILINE)
_VERSION = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(>=|<=|==|!=|>|<|=)\s*([\w.]+)\s*$")


def _sections(text: str) -> dict[str, str]:
    """The plain-commands fallback prints ``@@@name`` then that tool's output."""
    out: dict[str, str] = {}
    marks = list(_SECTION.finditer(text or ""))
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        out[m.group(1)] = text[m.end():end].strip("\n")
    return out


def parse(raw: dict[str, Any]) -> dict[str, Any]:
    """The facts fleet keeps from a probe's ``fleet_probe`` (absent: not found on the host)."""
    from fleet_runners.devtools import hailo, nvidia, trtexec

    facts: dict[str, Any] = {}
    arch = raw.get("arch")
    if arch:
        facts["arch"] = ARCH_ALIASES.get(str(arch).lower(), str(arch).lower())
    for key in ("os", "kernel", "cpu"):
        if raw.get(key) and str(raw[key]).strip() not in ("", "None"):
            facts[key] = str(raw[key]).strip()
    for key in ("cores", "memory_mb", "disk"):
        try:
            if raw.get(key) not in (None, "", "None"):
                facts["disk_free_gb" if key == "disk" else key] = (
                    round(int(raw[key]) / 1e9, 1) if key == "disk" else int(raw[key]))
        except (TypeError, ValueError):
            pass
    tools = raw.get("tools") or {}
    if not isinstance(tools, dict):
        tools = {}
    facts["facts_source"] = tools.get("source", "commands")
    text = tools if tools.get("source") == "facts.d" else _sections(str(tools.get("text") or ""))
    if text.get("nvidia_smi"):
        fields = ["name", "driver_version", "compute_cap", "memory.total"]
        gpus = nvidia.parse_smi_query(text["nvidia_smi"], fields)
        if gpus:
            facts.update(gpu=gpus[0].get("name"), driver=gpus[0].get("driver_version"),
                         compute_capability=gpus[0].get("compute_cap"), gpu_count=len(gpus))
    if text.get("nvidia_smi_header"):
        v = nvidia.parse_smi_version(text["nvidia_smi_header"])
        if isinstance(v, dict) and v.get("cuda"):
            facts["cuda"] = v["cuda"]
    if text.get("nv_tegra_release"):
        rel = nvidia.parse_tegra_release(text["nv_tegra_release"])
        for key in ("l4t", "jetpack"):
            if rel.get(key):
                facts[key] = rel[key]
    if text.get("nvpmodel"):
        mode = nvidia.parse_nvpmodel(text["nvpmodel"])
        if mode.get("mode_name"):
            facts["power_mode"] = mode["mode_name"]
    if text.get("jetson_clocks"):
        clocks = nvidia.parse_jetson_clocks(text["jetson_clocks"])
        if "locked" in clocks:
            facts["clocks_locked"] = clocks["locked"]
    if text.get("trtexec_banner"):
        v = trtexec.parse_version(text["trtexec_banner"])
        if v:
            facts["tensorrt"] = v["version"]
    if text.get("hailortcli_version"):
        v = hailo.parse_hailortcli_version(text["hailortcli_version"])
        if v:
            facts["hailort"] = v
    if text.get("hailo_identify"):
        ident = hailo.parse_identify(text["hailo_identify"])
        if ident.get("architecture"):
            facts["hailo_arch"] = ident["architecture"]
        if ident.get("firmware_version"):
            facts["hailo_firmware"] = ident["firmware_version"]
    engine = str(text.get("container_engine") or "").strip().split()
    if engine and engine[0] in ("podman", "docker"):
        facts["container_engine"] = engine[0]  # one this login can use: `info` answered
    return {k: v for k, v in facts.items() if v is not None}


def mismatches(host: Host, facts: dict[str, Any]) -> list[str]:
    """Where the inventory says one thing and the host another."""
    out = []
    if facts.get("arch") and host.arch != "unknown" and facts["arch"] != host.arch:
        out.append(f"arch: the inventory says {host.arch}, the kernel says {facts['arch']}")
    accel = host.accelerator.lower()
    if accel.startswith("hailo"):
        have = str(facts.get("hailo_arch") or "").lower()
        if not have:
            out.append(f"accelerator: the inventory says {host.accelerator}, hailortcli found no Hailo device")
        elif have != accel:
            out.append(f"accelerator: the inventory says {host.accelerator}, the device is {facts['hailo_arch']}")
    elif accel.startswith(("jetson", "orin", "xavier")):
        if not facts.get("l4t"):
            out.append(f"accelerator: the inventory says {host.accelerator}, but there is no "
                       "/etc/nv_tegra_release (not a Jetson)")
    elif accel != "cpu" and not facts.get("gpu"):
        out.append(f"accelerator: the inventory says {host.accelerator}, nvidia-smi found no GPU")
    return out


def _version_tuple(value: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", str(value))[:4])


def parse_requirement(text: str) -> tuple[str, str, str]:
    """``tensorrt>=10`` -> (name, op, version). Raises ValueError."""
    m = _VERSION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not NAME OP VERSION (e.g. tensorrt>=10, jetpack>=6)")
    return m.group(1).lower(), m.group(2), m.group(3)


def unmet(requirements: tuple[str, ...], facts: dict[str, Any] | None) -> str | None:
    """Why a host's probed facts do not meet ``requirements`` (None: they do)."""
    for req in requirements:
        name, op, want = parse_requirement(req)
        have = (facts or {}).get(name)
        if have is None:
            return f"{name} unknown (fleet hosts probe)" if facts is None else f"no {name}"
        a, b = _version_tuple(str(have)), _version_tuple(want)
        if not a:
            ok = {"=": str(have) == want, "==": str(have) == want, "!=": str(have) != want}.get(op, False)
        else:
            ok = {">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b, "=": a[:len(b)] == b,
                  "==": a[:len(b)] == b, "!=": a[:len(b)] != b}[op]
        if not ok:
            return f"{name} {have} (needs {op}{want})"
    return None
