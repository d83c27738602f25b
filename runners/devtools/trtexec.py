"""Parse the console output of TensorRT's ``trtexec``.

The formats come from TensorRT's open-source samples (github.com/NVIDIA/TensorRT):

* banner and footer, written by the sample logger::

      &&&& RUNNING TensorRT.trtexec [TensorRT v100200] # trtexec --onnx=model.onnx ...
      &&&& PASSED TensorRT.trtexec [TensorRT v100200] # trtexec --onnx=model.onnx ...

  The tag encodes the version: ``major*10000 + minor*100 + patch`` since TensorRT 10
  (v100200 = 10.2.0), ``major*1000 + minor*100 + patch`` before (v8502 = 8.5.2).
* ``TensorRT version: 8.6.3`` (trtexec.cpp) and the device block (sampleDevice.cpp)::

      === Device Information ===
      Selected Device: NVIDIA GeForce RTX 2080
      Compute Capability: 7.5
      SMs: 46
      Device Global Memory: 7974 MiB

* the performance summary (printEpilog in samples/common/sampleReporting.cpp)::

      === Performance summary ===
      Throughput: 130.298 qps
      Latency: min = 5.38 ms, max = 13.3 ms, mean = 7.6 ms, median = 7.1 ms, percentile(90%) = ...
      End-to-End Host Latency: ...       (8.x and older only)
      Enqueue Time: / H2D Latency: / GPU Compute Time: / D2H Latency: ...
      Total Host Walltime: 3.00082 s
      Total GPU Compute Time: 2.96536 s

  One ``percentile(P%)`` per requested percentile (10.x default 90,95,99; 8.x prints one).
* warnings after the summary: ``* <sentence>`` lines, each followed by indented continuation
  lines, e.g. ``* GPU compute time is unstable, with coefficient of variance = 1.22015%.``
* an unsupported flag: trtexec.cpp logs ``Unknown option: --fp16 `` (the option, a space and
  its value, if any) at error severity, then FAILED.

* TensorRT 7.x prints each statistic on a line of its own under a block title (NVIDIA/TensorRT
  issues 2054, 1221)::

      Host Latency
      min: 1.64058 ms (end to end 1.66368 ms)
      mean: ... / median: ... / max: ...
      percentile: 1.67065 ms at 99% (end to end 3.03931 ms at 99%)
      throughput: 0 qps
      walltime: 3.00461 s
      Enqueue Time            (min, max, median)
      GPU Compute             (min, max, mean, median, percentile, total compute time: X s)

  ``throughput: 0 qps`` is what 7.x prints when its trace counted no queries: no value, not 0.

Lines may carry ``[10/03/2024-10:47:59] [I] `` prefixes (timestamp, severity) or not, and may
end in CRLF.
"""

import re

NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"

_PREFIX = re.compile(r"^((?:\[[^\]]*\] ?)+)")
_SEVERITY = re.compile(r"\[(I|W|E|V|F|INFO|WARNING|ERROR|VERBOSE)\]")
_TAG = re.compile(r"\[TensorRT v(\d+)\]")
_VERSION_LINE = re.compile(r"TensorRT version:\s*(\d+)\.(\d+)\.(\d+)")
_BANNER = re.compile(r"&&&&\s+(RUNNING|PASSED|FAILED|WAIVED)\s+TensorRT\.trtexec\b[^#\n]*(?:#\s*(.*))?")
_STAT_ITEM = re.compile(r"(min|max|mean|median)\s*=\s*(" + NUM + r")\s*ms")
_PERCENTILE = re.compile(r"percentile\(\s*(" + NUM + r")\s*%\)\s*=\s*(" + NUM + r")\s*ms")
_CV = re.compile(r"coefficient of variance\s*=\s*(" + NUM + r")\s*%")
_UNKNOWN = (
    re.compile(r"Unknown option:\s*(\S+)", re.IGNORECASE),
    re.compile(r"Invalid option:?\s*['\"]?(-[^\s'\"]+)", re.IGNORECASE),
    re.compile(r"unrecognized option\s*['\"]?(-[^\s'\"]+)", re.IGNORECASE),
)

# Summary line label -> metric name.
STAT_LINES = (
    ("Latency", "latency_ms"),
    ("End-to-End Host Latency", "end_to_end_ms"),
    ("Enqueue Time", "enqueue_ms"),
    ("H2D Latency", "h2d_ms"),
    ("GPU Compute Time", "gpu_compute_ms"),
    ("D2H Latency", "d2h_ms"),
)
_STAT_LINE = re.compile(r"^(" + "|".join(re.escape(label) for label, _ in STAT_LINES) + r"):\s*(.*)$")
_STAT_NAMES = dict(STAT_LINES)
_SCALARS = (
    (re.compile(r"^Throughput:\s*(" + NUM + r")\s*qps"), "throughput_per_s"),
    (re.compile(r"^Total Host Walltime:\s*(" + NUM + r")\s*s\b"), "host_walltime_s"),
    (re.compile(r"^Total GPU Compute Time:\s*(" + NUM + r")\s*s\b"), "total_gpu_compute_s"),
)


# TensorRT 7.x: block title -> metric; then "name: X ms (end to end Y ms)" lines.
_BLOCKS_7 = {"Host Latency": "latency_ms", "Enqueue Time": "enqueue_ms", "GPU Compute": "gpu_compute_ms",
             "GPU Compute Time": "gpu_compute_ms", "H2D Latency": "h2d_ms", "D2H Latency": "d2h_ms"}
_ITEM_7 = re.compile(r"^(min|max|mean|median):\s*(" + NUM + r")\s*ms(?:\s*\(end to end\s*(" + NUM + r")\s*ms\))?")
_PCT_7 = re.compile(r"^percentile:\s*(" + NUM + r")\s*ms at\s*(" + NUM + r")\s*%"
                    r"(?:\s*\(end to end\s*(" + NUM + r")\s*ms)?")
_SCALARS_7 = (
    (re.compile(r"^throughput:\s*(" + NUM + r")\s*qps"), "throughput_per_s"),
    (re.compile(r"^walltime:\s*(" + NUM + r")\s*s\b"), "host_walltime_s"),
    (re.compile(r"^total compute time:\s*(" + NUM + r")\s*s\b"), "total_gpu_compute_s"),
)


def _parse_blocks_7(records, summary):
    """The TensorRT 7.x summary (see the module docstring) into ``summary``."""
    block = None
    for _, message in records:
        message = message.strip()
        if message in _BLOCKS_7:
            block = _BLOCKS_7[message]
            continue
        m = _ITEM_7.match(message)
        if m and block:
            summary.setdefault(block, {})[m.group(1)] = float(m.group(2))
            if m.group(3) is not None and block == "latency_ms":
                summary.setdefault("end_to_end_ms", {})[m.group(1)] = float(m.group(3))
            continue
        m = _PCT_7.match(message)
        if m and block:
            key = _percentile_key(m.group(2))
            summary.setdefault(block, {})[key] = float(m.group(1))
            if m.group(3) is not None and block == "latency_ms":
                summary.setdefault("end_to_end_ms", {})[key] = float(m.group(3))
            continue
        scalar = next(((key, m) for key, m in ((k, r.match(message)) for r, k in _SCALARS_7) if m), None)
        if scalar is not None:
            summary[scalar[0]] = float(scalar[1].group(1))
        elif message:
            block = None  # any other line ends a block


def _records(text):
    """Each line as ``(severity or None, message)``, with the ``[...] [I] `` prefix removed."""
    out = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        prefix = _PREFIX.match(line)
        severity = None
        if prefix:
            found = _SEVERITY.findall(prefix.group(1))
            severity = found[-1][0] if found else None
            line = line[prefix.end():]
        out.append((severity, line.rstrip()))
    return out


def _version_dict(major, minor, patch):
    return {"version": f"{major}.{minor}.{patch}", "major": major, "minor": minor,
            "patch": patch}


def decode_tag(tag):
    """``100200`` -> (10, 2, 0); ``8502`` -> (8, 5, 2). See the module docstring."""
    n = int(tag)
    if n >= 100000:
        return n // 10000, (n // 100) % 100, n % 100
    return n // 1000, (n // 100) % 10, n % 100


def parse_version(text):
    """The TensorRT version from the banner tag, else from ``TensorRT version: X.Y.Z``; or None."""
    tag = _TAG.search(text)
    if tag:
        return _version_dict(*decode_tag(tag.group(1)))
    line = _VERSION_LINE.search(text)
    if line:
        return _version_dict(int(line.group(1)), int(line.group(2)), int(line.group(3)))
    return None


def parse_device(text):
    """The ``=== Device Information ===`` block: name, compute capability, SMs, memory."""
    device = {}
    patterns = (
        (r"^Selected Device:\s*(.+?)\s*$", "name", str),
        (r"^Selected Device UUID:\s*(\S+)", "uuid", str),
        (r"^Compute Capability:\s*(\d+\.\d+)", "compute_capability", str),
        (r"^SMs:\s*(\d+)", "sms", int),
        (r"^Device Global Memory:\s*(\d+)\s*MiB", "memory_mib", int),
        (r"^Shared Memory per SM:\s*(\d+)\s*KiB", "shared_memory_per_sm_kib", int),
        (r"^Memory Bus Width:\s*(\d+)\s*bits", "memory_bus_width_bits", int),
        (r"^(?:Application )?Compute Clock Rate:\s*(" + NUM + r")\s*GHz", "compute_clock_ghz", float),
        (r"^(?:Application )?Memory Clock Rate:\s*(" + NUM + r")\s*GHz", "memory_clock_ghz", float),
    )
    compiled = [(re.compile(p), key, conv) for p, key, conv in patterns]
    for _, message in _records(text):
        message = message.strip()
        for regex, key, conv in compiled:
            m = regex.match(message)
            if m and key not in device:
                device[key] = conv(m.group(1))
    return device


def _percentile_key(value):
    """``90`` -> ``p90``, ``99.9`` -> ``p99.9`` (as trtexec prints the percentile)."""
    number = float(value)
    if number == int(number):
        return f"p{int(number)}"
    return f"p{number:g}"


def parse_stats(rest):
    """``min = 1 ms, max = 2 ms, ..., percentile(99%) = 1.9 ms`` -> {min, max, ..., p99}."""
    stats = {}
    for name, value in _STAT_ITEM.findall(rest):
        stats[name] = float(value)
    for pct, value in _PERCENTILE.findall(rest):
        stats[_percentile_key(pct)] = float(value)
    return stats


def coefficient_of_variation_pct(text):
    """The GPU compute time's coefficient of variance (%) from trtexec's warning, or None."""
    found = _CV.findall(text)
    return float(found[-1]) if found else None


def parse_summary(text):
    """The performance summary: throughput, per-metric statistics, walltime, CV.

    If the text holds several summaries (several runs in one log) the last one wins.
    """
    summary = {}
    records = _records(text)
    _parse_blocks_7(records, summary)
    for _, message in records:
        message = message.strip()
        m = _STAT_LINE.match(message)
        if m:
            stats = parse_stats(m.group(2))
            if stats:
                summary[_STAT_NAMES[m.group(1)]] = stats
            continue
        for regex, key in _SCALARS:
            m = regex.match(message)
            if m:
                summary[key] = float(m.group(1))
    cv = coefficient_of_variation_pct(text)
    if cv is not None:
        summary["gpu_compute_cv_pct"] = cv
    if summary.get("throughput_per_s") == 0:
        del summary["throughput_per_s"]  # 0 queries counted: no value (7.x), never a real 0
    return summary


def parse_warnings(text):
    """The ``[W] * ...`` sentences of the summary, with their indented continuation lines."""
    warnings = []
    current = None
    for severity, message in _records(text):
        if severity not in ("W", None):
            current = None
            continue
        stripped = message.strip()
        if stripped.startswith("* "):
            current = [stripped[2:].strip()]
            warnings.append(current)
        elif current is not None and stripped and message[:1].isspace():
            current.append(stripped)
        else:
            current = None
    return [" ".join(parts) for parts in warnings]


def _banners(text):
    return [m for m in (_BANNER.search(msg) for _, msg in _records(text)) if m]


def parse_status(text):
    """``"passed"`` / ``"failed"`` from the last ``&&&& PASSED/FAILED`` footer; None without one."""
    status = None
    for m in _banners(text):
        if m.group(1) in ("PASSED", "FAILED"):
            status = m.group(1).lower()
    return status


def parse_argv(text):
    """The command line after ``#`` in the RUNNING banner (else in the footer), or None."""
    fallback = None
    for m in _banners(text):
        command = (m.group(2) or "").strip()
        if not command:
            continue
        if m.group(1) == "RUNNING":
            return command
        fallback = fallback or command
    return fallback


def unknown_option(text):
    """The flag trtexec rejected (``Unknown option: --fp16``), or None."""
    for regex in _UNKNOWN:
        m = regex.search(text)
        if m:
            return m.group(1).strip("'\".,;")
    return None


def percentile(sorted_values, q):
    """Linear interpolation between closest ranks (numpy's default); ``q`` in [0, 100]."""
    k = (len(sorted_values) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def describe(values):
    """{min, mean, median, p90, p95, p99, max} of a non-empty list of numbers."""
    ordered = sorted(float(v) for v in values)
    return {
        "min": ordered[0], "mean": sum(ordered) / len(ordered), "median": percentile(ordered, 50),
        "p90": percentile(ordered, 90), "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99), "max": ordered[-1],
    }


def summarize_times(times):
    """Statistics of a ``--exportTimes`` JSON list (one object per query).

    Uses ``latencyMs`` and ``computeMs`` (present in every TensorRT version), plus the copy
    times when present (``h2dMs``/``d2hMs`` in older exports, ``inMs``/``outMs`` in newer).
    """
    columns = (
        ("latency_ms", ("latencyMs",)),
        ("gpu_compute_ms", ("computeMs",)),
        ("h2d_ms", ("h2dMs", "inMs")),
        ("d2h_ms", ("d2hMs", "outMs")),
    )
    entries = [t for t in (times or []) if isinstance(t, dict) and "latencyMs" in t]
    out = {"samples": len(entries)}
    for name, keys in columns:
        values = []
        for entry in entries:
            for key in keys:
                if isinstance(entry.get(key), (int, float)):
                    values.append(entry[key])
                    break
        if values and len(values) == len(entries):
            out[name] = describe(values)
    return out


def parse(text):
    """Everything above: {version?, device?, metrics, warnings, status?, argv?}."""
    out = {}
    version = parse_version(text)
    if version:
        out["version"] = version
    device = parse_device(text)
    if device:
        out["device"] = device
    out["metrics"] = parse_summary(text)
    out["warnings"] = parse_warnings(text)
    status = parse_status(text)
    if status:
        out["status"] = status
    argv = parse_argv(text)
    if argv:
        out["argv"] = argv
    bad = unknown_option(text)
    if bad:
        out["unknown_option"] = bad
    return out
