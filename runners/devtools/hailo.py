"""Parse HailoRT's command-line tool, ``hailortcli`` (HailoRT 4.x, Hailo-8 / Hailo-8L).

Formats, from github.com/hailo-ai/hailort, hailort/hailortcli/:

* ``benchmark`` (benchmark_command.cpp) prints progress lines, then::

      =======
      Summary
      =======
      FPS     (hw_only)                 = 217.973
              (streaming)               = 217.911
      Latency (hw)                      = 13.1348 ms
              (overall)                 = 14.02 ms        (only when measured)
      Device 0000:01:00.0:
        Power in streaming mode (average) = 5.22191 W     (only with a power monitor)
                                (max)     = 5.25619 W

  HailoRT 4.23 spells hw_only "HW-only". Progress lines redraw themselves with ANSI cursor
  codes (``\\x1b[2K\\r``), so stdout is cleaned before parsing.
* ``benchmark --csv FILE`` (infer_stats_printer.cpp, print_benchmark_csv) writes
  ``net_name,fps,hw_only_fps,num_of_frames,num_of_frames_hw_only,hw_latency,overall_latency,
  min_power,average_power,max_power``; fields not measured are empty.
* ``run`` (infer_stats_printer.cpp, print_stdout): ``Network group: NAME`` then indented
  ``Frames count:``, ``FPS:``, ``Send Rate: X Mbit/s``, ``Recv Rate:``, ``HW Latency: X ms``,
  ``Overall Latency: X ms``.
* ``fw-control identify`` (fw_control_command.cpp): ``Key: Value`` lines; ``<N/A>`` for an
  attribute that is not configured. ``Board Name`` reads Hailo-8 even on an 8L module: trust
  ``Device Architecture``.
* ``parse-hef FILE``: ``Architecture HEF was compiled for: HAILO8L``.
* ``--version``: ``HailoRT-CLI version 4.23.0``.
"""

import csv
import io
import re

NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_HW_ONLY = r"hw[\s_-]?only"
_PROGRESS = re.compile(r"Network\s+(\S+?):\s*(\d+)%\s*\|\s*(\d+)\s*\|")
_MODE_HEADERS = (
    (re.compile(r"Measuring FPS.*\b" + _HW_ONLY + r"\b", re.IGNORECASE), "hw_only"),
    (re.compile(r"Measuring FPS.*\bstreaming\b", re.IGNORECASE), "streaming"),
    (re.compile(r"Measuring HW Latency", re.IGNORECASE), "latency"),
)
_SUMMARY = (
    (re.compile(r"^FPS\s*\(" + _HW_ONLY + r"\)\s*=\s*(" + NUM + ")", re.IGNORECASE), "hw_only"),
    (re.compile(r"^(?:FPS\s*)?\(streaming\)\s*=\s*(" + NUM + ")", re.IGNORECASE), "streaming"),
    (re.compile(r"^Latency\s*\(hw\)\s*=\s*(" + NUM + r")\s*ms", re.IGNORECASE), "hw_latency_ms"),
    (re.compile(r"^(?:Latency\s*)?\(overall\)\s*=\s*(" + NUM + r")\s*ms", re.IGNORECASE),
     "overall_latency_ms"),
    (re.compile(r"Power in streaming mode\s*\(average\)\s*=\s*(" + NUM + r")\s*(m?W)\b"), "avg"),
    (re.compile(r"^\(max\)\s*=\s*(" + NUM + r")\s*(m?W)\b"), "max"),
)
# Which HEF architectures a device architecture runs (SOURCES.md, from Hailo's docs).
COMPATIBLE_HEFS = {
    "HAILO8": ("HAILO8", "HAILO8R", "HAILO8L"),
    "HAILO8L": ("HAILO8L",),
}


def clean(text):
    """Text without ANSI escape sequences, CR-redrawn progress split into lines."""
    text = _ANSI.sub("", text)
    return text.replace("\r\n", "\n").replace("\r", "\n")


_AUTO_GROUP = re.compile(r"^auto_group_\d+$")


def network_names(name):
    """``group/network`` (a progress line) -> (network, group). A network group that the
    compiler named itself (``auto_group_0``) is no model's name: the network's is."""
    group, _, network = name.rpartition("/")
    return network, (group or None)


def model_name(network, group=None):
    """The name a result should carry: the network's; the group's only if it was named."""
    for name in (network, group):
        if name and not _AUTO_GROUP.match(name):
            return name
    return None


def _lines(text):
    return [line.strip() for line in clean(text).split("\n")]


def _watts(value, unit):
    return float(value) / 1000.0 if unit == "mW" else float(value)


def parse_benchmark_stdout(text):
    """``hailortcli benchmark`` console output (first network group when there are several)."""
    out = {}
    fps, power, frames = {}, {}, {}
    mode = None
    for line in _lines(text):
        for regex, name in _MODE_HEADERS:
            if regex.search(line):
                mode = name
        progress = _PROGRESS.search(line)
        if progress:
            network, group = network_names(progress.group(1))
            if model_name(network, group):
                out.setdefault("net_name", model_name(network, group))
            if group:
                out.setdefault("network_group", group)
            if mode:
                frames[mode] = int(progress.group(3))
            continue
        for regex, key in _SUMMARY:
            m = regex.search(line)
            if not m:
                continue
            if key in ("hw_only", "streaming"):
                fps.setdefault(key, float(m.group(1)))
            elif key in ("avg", "max"):
                power.setdefault(key, _watts(m.group(1), m.group(2)))
            else:
                out.setdefault(key, float(m.group(1)))
            break
    if fps:
        out["fps"] = fps
        if "streaming" in fps:
            out["throughput_per_s"] = fps["streaming"]
    if "streaming" in frames:
        out["frames"] = frames["streaming"]
    if "hw_only" in frames:
        out["frames_hw_only"] = frames["hw_only"]
    if power:
        out["power_w"] = power
    return out


def is_benchmark_csv(text):
    """True when the text starts with a hailortcli CSV header (``net_name,...``)."""
    first = next((line for line in clean(text).split("\n") if line.strip()), "")
    return first.strip().lower().startswith("net_name,")


def _csv_number(row, key, conv=float):
    value = (row.get(key) or "").strip()
    if not value:
        return None
    try:
        return conv(float(value)) if conv is int else conv(value)
    except ValueError:
        return None


def parse_benchmark_csv(text):
    """``hailortcli benchmark --csv`` output: the first data row (first network group)."""
    rows = list(csv.DictReader(io.StringIO(clean(text).strip())))
    if not rows:
        return {}
    row = {(k or "").strip(): v for k, v in rows[0].items()}
    out = {}
    if row.get("net_name"):
        network, group = network_names(row["net_name"].strip())
        if model_name(network, group):
            out["net_name"] = model_name(network, group)
        else:
            out["network_group"] = row["net_name"].strip()
    fps = {}
    for key, column in (("streaming", "fps"), ("hw_only", "hw_only_fps")):
        value = _csv_number(row, column)
        if value is not None:
            fps[key] = value
    if fps:
        out["fps"] = fps
        if "streaming" in fps:
            out["throughput_per_s"] = fps["streaming"]
    for key, column, conv in (
        ("frames", "num_of_frames", int), ("frames_hw_only", "num_of_frames_hw_only", int),
        ("hw_latency_ms", "hw_latency", float), ("overall_latency_ms", "overall_latency", float),
    ):
        value = _csv_number(row, column, conv)
        if value is not None:
            out[key] = value
    power = {}
    for key, column in (("avg", "average_power"), ("max", "max_power"), ("min", "min_power")):
        value = _csv_number(row, column)
        if value is not None:
            power[key] = value
    if power:
        out["power_w"] = power
    return out


def parse_run(text):
    """``hailortcli run`` results: net_name, frames, fps, send/recv rates, latencies."""
    patterns = (
        (r"^Network group:\s*(\S+)", "network_group", str),
        (r"^Frames count:\s*(\d+)", "frames", int),
        (r"^FPS:\s*(" + NUM + ")", "fps", float),
        (r"^Send Rate:\s*(" + NUM + r")\s*Mbit/s", "send_rate_mbit_s", float),
        (r"^Recv Rate:\s*(" + NUM + r")\s*Mbit/s", "recv_rate_mbit_s", float),
        (r"^HW Latency:\s*(" + NUM + r")\s*ms", "hw_latency_ms", float),
        (r"^Overall Latency:\s*(" + NUM + r")\s*ms", "overall_latency_ms", float),
    )
    compiled = [(re.compile(p, re.IGNORECASE), key, conv) for p, key, conv in patterns]
    out = {}
    for line in _lines(text):
        for regex, key, conv in compiled:
            m = regex.match(line)
            if m and key not in out:
                out[key] = conv(m.group(1))
    for line in _lines(text):
        progress = _PROGRESS.search(line)
        if progress:
            network, group = network_names(progress.group(1))
            out.setdefault("network_group", group)
            if model_name(network, group):
                out["net_name"] = model_name(network, group)
            break
    if "net_name" not in out and model_name(None, out.get("network_group")):
        out["net_name"] = out["network_group"]
    if "fps" in out:
        out["throughput_per_s"] = out["fps"]
    return out


def _value(raw):
    raw = raw.strip()
    return None if not raw or raw in ("<N/A>", "N/A") else raw


def parse_identify(text):
    """``hailortcli fw-control identify``: firmware, architecture, board, serial, part, product."""
    keys = {
        "executing on device": "device_id",
        "control protocol version": "control_protocol_version",
        "logger version": "logger_version",
        "board name": "board_name",
        "device architecture": "architecture",
        "serial number": "serial",
        "part number": "part_number",
        "product name": "product_name",
    }
    out = {}
    for line in _lines(text):
        key, sep, raw = line.partition(":")
        if not sep:
            continue
        name = key.strip().lower()
        value = _value(raw)
        if value is None:
            continue
        if name == "firmware version":
            m = re.match(r"(\d+\.\d+\.\d+)\s*(?:\(([^)]*)\))?", value)
            if m:
                out["firmware_version"] = m.group(1)
                if m.group(2):
                    out["firmware_build"] = m.group(2)
        elif name in keys and keys[name] not in out:
            field = keys[name]
            if field in ("control_protocol_version", "logger_version") and value.isdigit():
                out[field] = int(value)
            else:
                out[field] = value
    return out


def normalize_arch(arch):
    """``Hailo-8L`` / ``hailo8l`` / ``HAILO8L`` -> ``HAILO8L``; None for empty."""
    if not arch:
        return None
    return re.sub(r"[\s_-]", "", str(arch)).upper() or None


def parse_hef_arch(text):
    """The architecture a HEF was compiled for, from ``hailortcli parse-hef``; or None.

    Reads ``Architecture HEF was compiled for: HAILO8L``; also accepts a line naming
    architecture(s) and HEF in other words, taking the first ``HAILO...`` name after the colon.
    """
    for line in _lines(text):
        if "architecture" not in line.lower() or "hef" not in line.lower():
            continue
        _, sep, rest = line.partition(":")
        m = re.search(r"\bHAILO[-_ ]?\w+", rest, re.IGNORECASE) if sep else None
        if m:
            return normalize_arch(m.group(0))
    return None


def hef_compatible(hef_arch, device_arch):
    """Whether a device runs a HEF: ``(ok, reason)``.

    A HAILO8 device runs HEFs compiled for HAILO8, HAILO8R or HAILO8L; a HAILO8L device runs
    only HAILO8L HEFs. Any other or unknown architecture gives False with a reason.
    """
    hef, device = normalize_arch(hef_arch), normalize_arch(device_arch)
    if not hef:
        return False, "unknown HEF architecture"
    if not device:
        return False, "unknown device architecture"
    if device not in COMPATIBLE_HEFS:
        return False, f"no compatibility rule for device architecture {device}"
    if hef in COMPATIBLE_HEFS[device]:
        return True, f"a {device} device runs {hef} HEFs"
    allowed = ", ".join(COMPATIBLE_HEFS[device])
    return False, f"a {device} device runs only {allowed} HEFs, not {hef}"


def parse_hailortcli_version(text):
    """``HailoRT-CLI version 4.23.0`` -> ``"4.23.0"``; None if absent."""
    m = re.search(r"HailoRT-CLI version\s+(\d+(?:\.\d+)+)", clean(text), re.IGNORECASE)
    return m.group(1) if m else None
