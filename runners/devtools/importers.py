"""Turn a device tool's saved output into a partial result record (DESIGN.md §5.7).

``parse_file(fmt, text)`` returns::

    {"tool": {"name", "version"?, ...}, "metrics": {...}, "environment": {...},
     "target": {...}?, "model": {"name"}?, "raw_format": fmt}

with metrics named as in the result record: ``throughput_per_s``, ``latency_ms`` (min, mean,
median, p90, p95, p99, max, ...), ``gpu_compute_ms``, ``enqueue_ms``, ``h2d_ms``, ``d2h_ms``,
``power_w`` (avg, max), ``gpu_load_pct`` (avg, max), ``fps`` (hw_only, streaming),
``hw_latency_ms``; every metric is a number or a flat {name: number} dict, as the
controller's result schema (fleet/schemas/result.schema.json) requires. Text that holds nothing of the format raises
``ValueError("<fmt>: <what was not found>")``.
"""

from . import hailo, ortperf, tegrastats, trtexec

FORMATS = ("trtexec", "hailortcli", "tegrastats", "ort-perf")

_TRT_STATS = ("latency_ms", "end_to_end_ms", "enqueue_ms", "h2d_ms", "gpu_compute_ms", "d2h_ms")
_TRT_SCALARS = ("throughput_per_s", "host_walltime_s", "total_gpu_compute_s",
                "gpu_compute_cv_pct")


def _record(fmt, tool, metrics, environment=None, target=None, model=None):
    record = {"tool": tool, "metrics": metrics, "environment": environment or {},
              "raw_format": fmt}
    if target:
        record["target"] = target
    if model:
        record["model"] = model
    return record


def _from_trtexec(text):
    parsed = trtexec.parse(text)
    summary = parsed["metrics"]
    if "throughput_per_s" not in summary and "latency_ms" not in summary:
        what = "no Performance summary or Throughput line found"
        if parsed.get("unknown_option"):
            what += f" (trtexec rejected option {parsed['unknown_option']})"
        elif parsed.get("status") == "failed":
            what += " (the run FAILED)"
        raise ValueError("trtexec: " + what)
    metrics = {k: summary[k] for k in _TRT_STATS + _TRT_SCALARS if k in summary}
    tool = {"name": "trtexec"}
    environment = {}
    version = parsed.get("version")
    if version:
        tool["version"] = version["version"]
        environment["tensorrt"] = version["version"]
    if parsed.get("argv"):
        tool["argv"] = parsed["argv"]
    if parsed.get("status"):
        tool["status"] = parsed["status"]
    if parsed["warnings"]:
        tool["warnings"] = parsed["warnings"]
    device = parsed.get("device") or {}
    target = {}
    if "name" in device:
        environment["gpu"] = device["name"]
        target["device_name"] = device["name"]
    if "compute_capability" in device:
        environment["compute_capability"] = device["compute_capability"]
        target["compute_capability"] = device["compute_capability"]
    return _record("trtexec", tool, metrics, environment, target)


def _from_hailortcli(text):
    scenario = "benchmark"
    if hailo.is_benchmark_csv(text):
        parsed, source = hailo.parse_benchmark_csv(text), "csv"
    else:
        parsed, source = hailo.parse_benchmark_stdout(text), "stdout"
    if "fps" not in parsed:
        run = hailo.parse_run(text)  # hailortcli run: one streaming FPS, frames, rates
        if "fps" in run:
            parsed = dict(run, fps={"streaming": run["fps"]})
            scenario = "run"
    if "fps" not in parsed:
        raise ValueError("hailortcli: no FPS found (neither a benchmark --csv file with a "
                         "net_name,fps,... header, a benchmark Summary with FPS lines, nor a "
                         "run's Inference result)")
    keys = ("fps", "throughput_per_s", "hw_latency_ms", "overall_latency_ms", "frames",
            "frames_hw_only", "power_w", "send_rate_mbit_s", "recv_rate_mbit_s")
    metrics = {k: parsed[k] for k in keys if k in parsed}
    if "frames" in metrics:
        metrics["samples"] = metrics["frames"]
    tool = {"name": "hailortcli", "scenario": scenario, "output": source}
    version = hailo.parse_hailortcli_version(text)
    environment = {}
    if version:
        tool["version"] = version
        environment["hailort"] = version
    model = {"name": parsed["net_name"]} if parsed.get("net_name") else None
    if parsed.get("network_group"):
        environment["network_group"] = parsed["network_group"]
    return _record("hailortcli", tool, metrics, environment, model=model)


def _from_tegrastats(text):
    summary = tegrastats.summarize(text)
    if not summary["samples"]:
        raise ValueError("tegrastats: no tegrastats sample lines found (RAM/CPU/rails)")
    metrics = {"samples": summary["samples"]}
    for key in ("power_w", "gpu_load_pct", "ram_used_mb", "swap_used_mb", "emc_load_pct"):
        if key in summary:
            metrics[key] = summary[key]
    # Per-rail power is nested one level deeper than a metric may be: it goes with the
    # board's facts, like the temperatures.
    environment = {k: summary[k] for k in ("temps_c", "power_source", "rails_w", "ram_total_mb",
                                           "swap_total_mb", "gpu_freq_mhz") if k in summary}
    return _record("tegrastats", {"name": "tegrastats"}, metrics, environment)


def _from_ort_perf(text):
    parsed = ortperf.parse(text)
    latency = dict(parsed.get("latency_ms") or {})
    if not latency and "throughput_per_s" not in parsed:
        raise ValueError("ort-perf: no 'Average inference time cost' or latency lines found")
    if "p50" in latency:
        latency.setdefault("median", latency["p50"])
    metrics = {}
    if latency:
        metrics["latency_ms"] = latency
    for key in ("throughput_per_s", "session_creation_s", "first_inference_ms",
                "total_inference_s", "cpu_usage_pct", "peak_working_set_bytes"):
        if key in parsed:
            metrics[key] = parsed[key]
    if "requests" in parsed:
        metrics["samples"] = parsed["requests"]
    return _record("ort-perf", {"name": "onnxruntime_perf_test"}, metrics)


_PARSERS = {
    "trtexec": _from_trtexec,
    "hailortcli": _from_hailortcli,
    "tegrastats": _from_tegrastats,
    "ort-perf": _from_ort_perf,
}


def parse_file(fmt, text):
    """A partial result record from ``text`` in format ``fmt`` (one of FORMATS)."""
    if fmt not in _PARSERS:
        raise ValueError(f"{fmt}: unknown format (known: {', '.join(FORMATS)})")
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return _PARSERS[fmt](text)
