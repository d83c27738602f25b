"""Parse NVIDIA host facts: nvidia-smi, /etc/nv_tegra_release, nvpmodel, jetson_clocks.

* ``nvidia-smi --query-gpu=<SMI_FIELDS> --format=csv,noheader,nounits``: one line per GPU,
  values separated by ``", "``; ``[N/A]``, ``N/A`` and ``[Not Supported]`` for values the GPU
  does not report.
* plain ``nvidia-smi``: the header box reads
  ``NVIDIA-SMI 550.54.14   Driver Version: 550.54.14   CUDA Version: 12.4``.
* ``/etc/nv_tegra_release`` (Jetson Linux):
  ``# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, DATE: ...``
* ``nvpmodel -q``: ``NV Power Mode: MAXN_SUPER`` followed by the mode id on its own line
  (some releases print ``NV Fan Mode`` or warnings around it).
* ``jetson_clocks --show``::

      SOC family:tegra234  Machine:NVIDIA Jetson Orin NX Engineering Reference Developer Kit
      Online CPUs: 0-5
      cpu0:  Online=1 Governor=schedutil MinFreq=729600 MaxFreq=1510400 CurrentFreq=1510400 ...
      GPU MinFreq=306000000 MaxFreq=624750000 CurrentFreq=306000000
      EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000 FreqOverride=1

  CPU frequencies are in kHz, GPU and EMC in Hz. ``jetson_clocks`` raises each minimum to the
  maximum, which is how a locked board shows.
"""

import re

# What fleet asks nvidia-smi for (``--query-gpu=`` + ",".join(SMI_FIELDS)).
SMI_FIELDS = [
    "name", "driver_version", "compute_cap", "clocks.sm", "clocks.mem", "clocks.max.sm",
    "clocks.max.mem", "power.limit", "power.draw", "temperature.gpu", "pstate", "memory.total",
    "uuid",
]
# Fields kept as text; every other field is a number (MHz, W, C, MiB).
_TEXT_FIELDS = ("name", "driver_version", "compute_cap", "pstate", "uuid", "gpu_name",
                "gpu_uuid", "serial", "vbios_version", "pci.bus_id")
_NOT_AVAILABLE = ("[n/a]", "n/a", "[not supported]", "not supported", "[unknown error]", "")

# L4T (Jetson Linux) release -> JetPack, from NVIDIA's JetPack archive and release notes.
# Exact releases first; a release.minor entry covers patch releases not listed here and may
# name a range when one L4T line shipped in several JetPacks. Unknown releases give no value.
JETPACK_BY_L4T = {
    "32.6.1": "4.6",
    "32.7.1": "4.6.1", "32.7.2": "4.6.2", "32.7.3": "4.6.3", "32.7.4": "4.6.4",
    "32.7.5": "4.6.5", "32.7.6": "4.6.6",
    "35.1.0": "5.0.2", "35.2.1": "5.1", "35.3.1": "5.1.1", "35.4.1": "5.1.2", "35.5.0": "5.1.3",
    "35.6.0": "5.1.4", "35.6.1": "5.1.5",
    "36.2.0": "6.0 DP", "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2", "36.4.4": "6.2.1",
    "38.2.0": "7.0",
}
JETPACK_BY_L4T_MINOR = {
    "32.7": "4.6.x",
    "35.1": "5.0.2", "35.2": "5.1", "35.3": "5.1.1", "35.4": "5.1.2", "35.5": "5.1.3",
    "35.6": "5.1.4/5.1.5",
    "36.2": "6.0 DP", "36.3": "6.0", "36.4": "6.1/6.2",
    "38.2": "7.0",
}


def _number(text):
    try:
        return float(text)
    except ValueError:
        return None


def _split_smi_line(line, fields):
    parts = [p.strip() for p in line.split(",")]
    extra = len(parts) - len(fields)
    if extra > 0 and "name" in fields:
        # A GPU name with a comma in it: give the surplus back to the name.
        i = fields.index("name")
        parts[i:i + extra + 1] = [", ".join(parts[i:i + extra + 1])]
    return parts


def parse_smi_query(text, fields=None):
    """``--format=csv,noheader,nounits`` output -> one dict per GPU, keyed by field name."""
    fields = list(fields or SMI_FIELDS)
    gpus = []
    for line in text.replace("\r", "").split("\n"):
        if not line.strip():
            continue
        parts = _split_smi_line(line, fields)
        if len(parts) != len(fields):
            continue
        gpu = {}
        for field, raw in zip(fields, parts):
            if raw.lower() in _NOT_AVAILABLE:
                continue
            if field in _TEXT_FIELDS:
                gpu[field] = raw
            else:
                value = _number(raw)
                if value is not None:
                    gpu[field] = value
        gpus.append(gpu)
    return gpus


def parse_smi_version(text):
    """From plain ``nvidia-smi``: {cuda, driver_version, smi_version} as far as printed."""
    out = {}
    for key, pattern in (
        ("smi_version", r"NVIDIA-SMI\s+(\d+(?:\.\d+)+)"),
        ("driver_version", r"Driver Version:\s*(\d+(?:\.\d+)+)"),
        ("cuda", r"CUDA Version:\s*(\d+(?:\.\d+)+)"),
    ):
        m = re.search(pattern, text)
        if m:
            out[key] = m.group(1)
    return out


def jetpack_for(l4t):
    """The JetPack release for an L4T version like ``36.3.0``; None when unknown."""
    if l4t in JETPACK_BY_L4T:
        return JETPACK_BY_L4T[l4t]
    return JETPACK_BY_L4T_MINOR.get(".".join(l4t.split(".")[:2]))


def parse_tegra_release(text):
    """``/etc/nv_tegra_release`` -> {l4t, release, revision, gcid?, board?, date?, jetpack?}."""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+(?:\.\d+)*)", text)
    if not m:
        return {}
    release, revision = m.group(1), m.group(2)
    parts = revision.split(".") + ["0"]
    l4t = f"{release}.{parts[0]}.{parts[1]}"
    out = {"l4t": l4t, "release": "R" + release, "revision": revision}
    line = text[m.start():].split("\n", 1)[0]
    for key, name in (("GCID", "gcid"), ("BOARD", "board"), ("EABI", "eabi"), ("DATE", "date")):
        field = re.search(r"\b" + key + r":\s*([^,\n]+)", line)
        if field:
            out[name] = field.group(1).strip()
    jetpack = jetpack_for(l4t)
    if jetpack:
        out["jetpack"] = jetpack
    return out


def parse_nvpmodel(text):
    """``nvpmodel -q`` -> {mode_name, mode_id}: the name line and the number after it."""
    out = {}
    lines = [line.strip() for line in text.replace("\r", "").split("\n")]
    for i, line in enumerate(lines):
        m = re.match(r"NV Power Mode:\s*(\S+)", line)
        if not m:
            continue
        out["mode_name"] = m.group(1)
        for following in lines[i + 1:]:
            if following.isdigit():
                out["mode_id"] = int(following)
                break
            if following.startswith("NV "):
                break
        break
    return out


def _freqs(text, unit):
    out = {}
    for key, name in (("MinFreq", "min"), ("MaxFreq", "max"), ("CurrentFreq", "cur")):
        m = re.search(r"\b" + key + r"=(\d+)", text)
        if m:
            out[name + "_" + unit] = int(m.group(1))
    return out


def _at_max(clock, unit):
    cur, top, low = (clock.get(k + "_" + unit) for k in ("cur", "max", "min"))
    if cur is None or top is None or cur != top:
        return False
    return low is None or low == top


def parse_jetson_clocks(text):
    """``jetson_clocks --show`` -> {soc, machine, cpus, gpu, emc?, power_mode?, locked?}.

    ``locked`` is True only when every online CPU and the GPU run at their maximum with the
    minimum raised to it; it is absent when the text shows no CPUs or no GPU.
    """
    out = {}
    cpus = []
    for raw in text.replace("\r", "").split("\n"):
        line = raw.strip()
        m = re.match(r"SOC family:\s*(\S+)(?:\s+Machine:\s*(.+))?", line)
        if m:
            out["soc"] = m.group(1)
            if m.group(2):
                out["machine"] = m.group(2).strip()
            continue
        m = re.match(r"(cpu\d+):\s*(.*)", line)
        if m:
            cpu = {"name": m.group(1)}
            online = re.search(r"\bOnline=(\d)", m.group(2))
            if online:
                cpu["online"] = online.group(1) == "1"
            governor = re.search(r"\bGovernor=(\S+)", m.group(2))
            if governor:
                cpu["governor"] = governor.group(1)
            cpu.update(_freqs(m.group(2), "khz"))
            cpus.append(cpu)
            continue
        for prefix, key in (("GPU ", "gpu"), ("EMC ", "emc")):
            if line.startswith(prefix) and "Freq=" in line:
                out[key] = _freqs(line, "hz")
        m = re.match(r"NV Power Mode:\s*(\S+)", line)
        if m:
            out["power_mode"] = m.group(1)
    if cpus:
        out["cpus"] = cpus
    if cpus and out.get("gpu"):
        online = [c for c in cpus if c.get("online", True)]
        out["locked"] = bool(online) and all(_at_max(c, "khz") for c in online) and _at_max(
            out["gpu"], "hz")
    return out
