"""Parse NVIDIA Jetson ``tegrastats`` lines (L4T R32 / JetPack 4 to JetPack 7).

One line per sample, fields in any order, e.g. (Orin Nano, JetPack 6)::

    11-30-2025 13:26:01 RAM 2461/7620MB (lfb 3x2MB) SWAP 1243/3810MB (cached 5MB)
    CPU [19%@729,14%@729,off,...] EMC_FREQ 4%@2133 GR3D_FREQ 0%@[305] NVDEC off ...
    cpu@46.531C soc2@47.312C gpu@48.218C tj@48.843C VDD_IN 5704mW/5704mW VDD_SOC 1624mW/1624mW

The fields, as the Jetson Linux developer guide documents them:

* optional leading timestamp (``tegrastats --interval N`` with timestamps on);
* ``RAM used/totalMB``; ``CPU [load%@MHz,...]`` with ``off`` for a powered-down core (older
  boards print ``CPU [2%,1%,off,off]@102``, one frequency for all cores);
* ``EMC_FREQ x%`` or ``x%@MHz``; ``GR3D_FREQ x%``, ``x%@MHz``, ``x%@[MHz,MHz]`` (per GPC) or
  ``@[MHz]``;
* temperatures ``name@42.5C``; ``-256C`` means the sensor is absent; JetPack 7 prints two
  values, ``cpu@52.968C/52.968C`` (the first is taken);
* power rails ``NAME cur/avg`` in mW, with (JetPack 5+) or without (JetPack 4) the ``mW`` unit;
  JetPack 7 adds a third value, which is not used here. Total board power is ``VDD_IN`` (Orin,
  Xavier) or ``POM_5V_IN`` (Nano, TX1); boards without either report it as the sum of rails.
"""

import re

NUM = r"-?\d+(?:\.\d+)?"

_RAM = re.compile(r"\bRAM\s+(\d+)/(\d+)([KMG]B)")
_CPU = re.compile(r"\bCPU\s+\[([^\]]*)\](?:@(\d+))?")
_SWAP = re.compile(r"\bSWAP\s+(\d+)/(\d+)([KMG]B)")
_EMC = re.compile(r"\bEMC_FREQ\s+(\d+)%(?:@(\d+))?")
_GR3D = re.compile(r"\bGR3D_FREQ\s+(?:(\d+)%)?(?:@\[?([\d,]+)\]?)?")
_TEMP = re.compile(r"(?<![\w%])([A-Za-z][\w-]*)@(" + NUM + r")C(?:/(" + NUM + r")C)?\b")
_RAIL = re.compile(
    r"(?<![\w/])([A-Z][A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?(?:/(\d+)(?:mW)?)?(?![\w/])"
)
_NOT_RAILS = ("RAM", "SWAP", "IRAM", "LFB")
_NO_SENSOR = -256.0
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")
_UNIT_MB = {"KB": 1.0 / 1024, "MB": 1.0, "GB": 1024.0}


def _cpu_cores(body, shared_freq):
    cores = []
    for item in body.split(","):
        item = item.strip()
        if not item:
            continue
        if item.lower() == "off":
            cores.append(None)
            continue
        m = re.match(r"(\d+)%(?:@(\d+))?$", item)
        if not m:
            continue
        core = {"load_pct": float(m.group(1))}
        freq = m.group(2) or shared_freq
        if freq:
            core["freq_mhz"] = float(freq)
        cores.append(core)
    return cores


def _leading_time(line):
    """The text before ``RAM`` when it looks like a timestamp (has a digit), else None."""
    m = _RAM.search(line)
    if not m:
        return None
    head = line[:m.start()].strip()
    return head if head and any(c.isdigit() for c in head) else None


def parse_line(line):
    """One tegrastats sample as a dict; {} when the line holds none of the known fields."""
    out = {}
    stamp = _leading_time(line)
    if stamp:
        out["time"] = stamp
    m = _RAM.search(line)
    if m:
        scale = _UNIT_MB[m.group(3)]
        out["ram_used_mb"] = float(m.group(1)) * scale
        out["ram_total_mb"] = float(m.group(2)) * scale
    m = _SWAP.search(line)
    if m:
        scale = _UNIT_MB[m.group(3)]
        out["swap_used_mb"] = float(m.group(1)) * scale
        out["swap_total_mb"] = float(m.group(2)) * scale
    m = _CPU.search(line)
    if m:
        out["cpu"] = _cpu_cores(m.group(1), m.group(2))
    m = _EMC.search(line)
    if m:
        out["emc_load_pct"] = float(m.group(1))
        if m.group(2):
            out["emc_freq_mhz"] = float(m.group(2))
    m = _GR3D.search(line)
    if m and (m.group(1) or m.group(2)):
        if m.group(1):
            out["gpu_load_pct"] = float(m.group(1))
        freqs = [f for f in (m.group(2) or "").split(",") if f]
        if freqs:
            out["gpu_freq_mhz"] = float(freqs[0])
    temps = {}
    for name, value, _second in _TEMP.findall(line):
        if float(value) > _NO_SENSOR:
            temps[name] = float(value)
    if temps:
        out["temps_c"] = temps
    rails = {}
    for name, cur, avg, _third in _RAIL.findall(line):
        if name not in _NOT_RAILS:
            rails[name] = {"cur_mw": float(cur), "avg_mw": float(avg)}
    if rails:
        out["rails"] = rails
    return out


def line_power_mw(sample, source):
    """A sample's total power (mW) by ``source`` ('VDD_IN', 'POM_5V_IN' or 'sum of rails')."""
    rails = sample.get("rails") or {}
    if source in rails:
        return rails[source]["cur_mw"]
    if source == "sum of rails" and rails:
        return sum(r["cur_mw"] for r in rails.values())
    return None


def power_source(sample):
    """Which rail gives total power for this board: VDD_IN, POM_5V_IN, else the sum of rails."""
    rails = sample.get("rails") or {}
    for name in TOTAL_RAILS:
        if name in rails:
            return name
    return "sum of rails" if rails else None


def _avg_max(values):
    return {"avg": sum(values) / len(values), "max": max(values)}


def summarize(lines):
    """Aggregate samples: power (W, from each line's current value), rails, GPU load, temps.

    ``lines`` is a string or an iterable of lines; blank and unparsable lines are skipped.
    The power source is chosen from the first sample with rails and kept for all samples.
    """
    if isinstance(lines, str):
        lines = lines.splitlines()
    samples = [s for s in (parse_line(x) for x in lines if x.strip()) if s]
    out = {"samples": len(samples)}
    source = next((power_source(s) for s in samples if s.get("rails")), None)
    if source:
        watts = [p / 1000.0 for p in (line_power_mw(s, source) for s in samples) if p is not None]
        if watts:
            out["power_w"] = _avg_max(watts)
            out["power_source"] = source
    rails = {}
    for s in samples:
        for name, rail in (s.get("rails") or {}).items():
            rails.setdefault(name, []).append(rail["cur_mw"] / 1000.0)
    if rails:
        out["rails_w"] = {name: _avg_max(values) for name, values in rails.items()}
    loads = [s["gpu_load_pct"] for s in samples if "gpu_load_pct" in s]
    if loads:
        out["gpu_load_pct"] = _avg_max(loads)
    for key in ("ram_used_mb", "swap_used_mb", "emc_load_pct"):
        values = [s[key] for s in samples if key in s]
        if values:
            out[key] = _avg_max(values)
    for key in ("ram_total_mb", "swap_total_mb"):
        values = [s[key] for s in samples if key in s]
        if values:
            out[key] = values[-1]
    freqs = [s["gpu_freq_mhz"] for s in samples if "gpu_freq_mhz" in s]
    if freqs:
        out["gpu_freq_mhz"] = dict(_avg_max(freqs), min=min(freqs))
    temps = {}
    for s in samples:
        for name, value in (s.get("temps_c") or {}).items():
            temps[name] = max(value, temps.get(name, value))
    if temps:
        out["temps_c"] = temps
    return out


HOT_C = 95.0  # Orin and Xavier start software throttling near 96-99 C (tj)
# Sensors that read a fixed value, not a temperature: Jetson Nano/TX2 print PMIC@100C always
# (tests/fixtures/tools/tegrastats-jp4.txt).
_FAKE_SENSORS = ("pmic",)


def throttling(summary, hot_c=HOT_C, clocks_locked=None):
    """Why a run's numbers are not the device's own (empty: nothing seen): a GPU clock that
    fell while clocks were locked, or a sensor at or above ``hot_c``."""
    reasons = []
    freq = summary.get("gpu_freq_mhz") or {}
    if clocks_locked and freq.get("max") and freq.get("min") is not None and freq["min"] < 0.95 * freq["max"]:
        reasons.append("thermal or power throttling: the GPU clock fell from %g to %g MHz during the "
                       "run with clocks locked (tegrastats)" % (freq["max"], freq["min"]))
    hot = sorted((name, c) for name, c in (summary.get("temps_c") or {}).items()
                 if c >= hot_c and name.lower() not in _FAKE_SENSORS)
    if hot:
        reasons.append("thermal throttling likely: %s reached %g C (tegrastats; limit %g C)" % (
            hot[0][0], hot[0][1], hot_c))
    return reasons
