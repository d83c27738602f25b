"""Parse ``onnxruntime_perf_test`` output (onnxruntime/test/perftest/performance_runner.cc).

PerformanceRunner::Run prints (older builds lack some lines)::

    Session creation time cost: 0.127918 s
    First inference time cost: 12 ms
    Total inference time cost: 1.44871 s
    Total inference requests: 10
    Average inference time cost: 144.871 ms
    Total inference run time: 1.44916 s
    Number of inferences per second: 6.9
    Avg CPU usage: 68 %
    Peak working set size: 158171136 bytes

and PerformanceResult::DumpToFile adds, in newer builds, statistics in seconds::

    Min Latency: 0.00123 s
    Max Latency: ... s
    P50 Latency: ... s      (also P90, P95, P99, P999)

Without a result file DumpToFile also prints ``Avg CPU usage:68`` (no space) and ``Runs:10``.

Other builds, as printed (tests/fixtures/tools): before 2020 ``Total time cost: 58.8`` /
``Total iterations: 1000`` / ``Average time cost: 58.8 ms`` / ``Total run time: 58.8 s`` and
``P50 Latency is 0.0587 sec``; since 2025 ``Average inference time cost total: 98.96 ms``.
"""

import re

NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"

_FIELDS = (
    (r"Session creation time cost:\s*(" + NUM + r")\s*s", "session_creation_s", float),
    (r"First inference time cost:\s*(" + NUM + r")\s*ms", "first_inference_ms", float),
    (r"Total (?:inference )?time cost:\s*(" + NUM + r")", "total_inference_s", float),
    (r"Total (?:inference requests|iterations):\s*(\d+)", "requests", int),
    (r"Total (?:inference )?run time:\s*(" + NUM + r")\s*s", "run_time_s", float),
    (r"Number of inferences per second:\s*(" + NUM + ")", "inferences_per_s", float),
    (r"Avg CPU usage:\s*(" + NUM + ")", "cpu_usage_pct", float),
    (r"Peak working set size:\s*(\d+)", "peak_working_set_bytes", int),
)
_AVERAGE = re.compile(r"Average (?:inference )?time cost(?: total)?:\s*(" + NUM + r")\s*ms")
_LATENCY = re.compile(r"^\s*(Min|Max|P50|P90|P95|P99|P999) Latency(?::| is)\s*(" + NUM + r")\s*s(?:ec)?\b",
                      re.MULTILINE)


def parse(text):
    """onnxruntime_perf_test output -> dict; latency_ms from the average and the percentiles."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    out = {}
    for pattern, key, conv in _FIELDS:
        m = re.search(pattern, text)
        if m:
            out[key] = conv(m.group(1))
    latency = {}
    m = _AVERAGE.search(text)
    if m:
        latency["mean"] = float(m.group(1))
    for name, seconds in _LATENCY.findall(text):
        latency[name.lower()] = float(seconds) * 1000.0
    if latency:
        out["latency_ms"] = latency
    if out.get("requests") and out.get("run_time_s"):
        out["throughput_per_s"] = out["requests"] / out["run_time_s"]
    elif "inferences_per_s" in out:
        out["throughput_per_s"] = out["inferences_per_s"]
    return out
