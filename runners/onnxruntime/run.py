"""ONNX Runtime benchmark runner (device side; stdlib at import time, Python >= 3.8).

Usage on the host, in the attempt directory: ``python3 run.py job.json``. Reads the model from
``inputs["model"]`` and the params, generates inputs from the model's declared shapes, runs
warmup then timed iterations (or a duration), writes ``latencies.json`` and ``result.json``,
exits 0. On failure writes ``error.json`` (``setup_failed`` when onnxruntime or numpy is
missing, exit 78; ``runner_error`` otherwise, exit 1).
"""

import json
import os
import platform
import sys
import time

# fleet's shared runner code sits one level up; only for these imports: the folders there are
# named like the tools (onnxruntime/, tensorrt/) and must not shadow them.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

from runnerlib import EX_SETUP, RunnerError, log, sha256_of, write_json, write_result  # noqa: E402

sys.path.remove(_ROOT)

DEFAULTS = {
    "warmup": 10, "iterations": 100, "duration": None, "threads": 0, "inter_threads": 0,
    "batch": 1, "dims": {}, "shapes": {}, "providers": ["CPUExecutionProvider"],
    "graph_optimization": "all", "seed": 0, "require_providers": False, "precision": None,
    # validity: a run noisier than this is marked invalid (compared by nothing)
    "max_cv_pct": 50.0, "max_mean_over_median": 1.5,
}
DTYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16",
    "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool",
}
PRECISION = {"float32": "fp32", "float16": "fp16", "float64": "fp64", "int8": "int8", "uint8": "int8"}


def percentile(sorted_values, q):
    """Linear interpolation between closest ranks (numpy's default); ``q`` in [0, 100]."""
    if not sorted_values:
        raise ValueError("no values")
    k = (len(sorted_values) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def summarize(latencies_ms):
    values = sorted(latencies_ms)
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return {
        "min": values[0], "mean": mean, "median": percentile(values, 50),
        "p90": percentile(values, 90), "p95": percentile(values, 95), "p99": percentile(values, 99),
        "max": values[-1],
    }, (var ** 0.5) / mean if mean else 0.0


def robust_cv(values, median):
    """Spread of the latencies as a coefficient of variation that a few slow iterations do not
    blow up: 1.4826 x the median absolute deviation, over the median."""
    if not values or median <= 0:
        return 0.0
    deviations = sorted(abs(v - median) for v in values)
    return 1.4826 * percentile(deviations, 50) / median


def noisy(stats, latencies, params):
    """Why a run's latencies are too noisy to compare (empty: they are not): a spread (robust
    coefficient of variation) above ``max_cv_pct``, or a mean far above the median (a few very
    slow iterations: another process, a frequency drop)."""
    reasons = []
    median = stats["median"]
    spread = 100.0 * robust_cv(latencies, median)
    if spread > float(params["max_cv_pct"]):
        reasons.append("too noisy: latency spread (robust coefficient of variation) %.1f%% > %g%% "
                       "(params.max_cv_pct)" % (spread, float(params["max_cv_pct"])))
    if median > 0 and stats["mean"] / median > float(params["max_mean_over_median"]):
        reasons.append("too noisy: mean %.4g ms is %.1fx the median %.4g ms (params.max_mean_over_median %g)"
                       % (stats["mean"], stats["mean"] / median, median, float(params["max_mean_over_median"])))
    return reasons


def cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


AUTO_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def provider_entry(name, params):
    """A provider with its options: TensorRT keeps its engine cache in fleet's host cache and
    builds fp16 engines when params.precision says so."""
    if name != "TensorrtExecutionProvider":
        return name
    cache = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath("."))), "cache", "ort-trt")
    try:
        os.makedirs(cache, exist_ok=True)
    except OSError:
        return name
    options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache}
    if params.get("precision") == "fp16":
        options["trt_fp16_enable"] = True
    return (name, options)


def check_params(params):
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise RunnerError("unknown param(s) %s (known: %s)" % (", ".join(unknown), ", ".join(sorted(DEFAULTS))))
    merged = dict(DEFAULTS)
    merged.update(params)
    for name in ("warmup", "iterations", "threads", "inter_threads", "batch", "seed"):
        value = merged[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RunnerError("param %s must be an integer >= 0, not %r" % (name, value))
    if merged["batch"] < 1 or merged["iterations"] < 1:
        raise RunnerError("params batch and iterations must be at least 1")
    for name in ("max_cv_pct", "max_mean_over_median"):
        value = merged[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise RunnerError("param %s must be a number > 0, not %r" % (name, value))
    if merged["duration"] is not None:
        try:
            merged["duration"] = float(merged["duration"])
        except (TypeError, ValueError):
            raise RunnerError("param duration must be a number of seconds, not %r" % (merged["duration"],)) from None
        if merged["duration"] <= 0:
            raise RunnerError("param duration must be > 0")
    if not isinstance(merged["dims"], dict) or not isinstance(merged["shapes"], dict):
        raise RunnerError("params dims and shapes must be mappings")
    if isinstance(merged["providers"], str):
        merged["providers"] = [merged["providers"]]
    if merged["graph_optimization"] not in ("disable", "basic", "extended", "all"):
        raise RunnerError("param graph_optimization must be disable, basic, extended or all")
    return merged


def import_tools():
    try:
        import numpy
    except ImportError as exc:
        raise RunnerError("numpy is not installed for %s (Python %s): %s; install it (pip install numpy)"
                          % (sys.executable, platform.python_version(), exc), "setup_failed") from None
    try:
        import onnxruntime
    except ImportError as exc:
        raise RunnerError(
            "onnxruntime is not installed for %s (Python %s): %s; install it (pip install "
            "onnxruntime, or onnxruntime-gpu / the Jetson wheel)"
            % (sys.executable, platform.python_version(), exc), "setup_failed") from None
    return numpy, onnxruntime


def resolve_shape(inp, params):
    if inp.name in params["shapes"]:
        shape = params["shapes"][inp.name]
        if not isinstance(shape, list) or not all(isinstance(d, int) and d > 0 for d in shape):
            raise RunnerError("params.shapes.%s must be a list of positive integers" % inp.name)
        return shape
    shape = []
    for i, dim in enumerate(inp.shape):
        if isinstance(dim, int) and dim > 0:
            shape.append(dim)
        elif isinstance(dim, str) and dim in params["dims"]:
            shape.append(int(params["dims"][dim]))
        elif i == 0:
            shape.append(params["batch"])
        else:
            raise RunnerError("input %s: dynamic dimension %s (axis %d) has no size; give it in "
                              "params.dims or params.shapes" % (inp.name, dim if dim else "?", i))
    return shape


def benchmark(job, params, np, ort):
    model_rel = (job.get("inputs") or {}).get("model")
    if not model_rel:
        raise RunnerError("no model: the job needs inputs.model (an .onnx file)")
    if not os.path.isfile(model_rel):
        raise RunnerError("model file %s does not exist" % model_rel)
    options = ort.SessionOptions()
    options.intra_op_num_threads = params["threads"]
    options.inter_op_num_threads = params["inter_threads"]
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[params["graph_optimization"]]
    available = list(ort.get_available_providers())
    requested = list(params["providers"])
    if requested == ["auto"]:  # the fastest this host has: TensorRT, then CUDA, then CPU
        requested = [p for p in AUTO_PROVIDERS if p in available] or ["CPUExecutionProvider"]
    missing = [p for p in requested if p not in available]
    if missing and params["require_providers"]:
        raise RunnerError("execution provider(s) %s not available on this host (it has %s)" % (
            ", ".join(missing), ", ".join(available)), "setup_failed")
    usable = [p for p in requested if p in available] or ["CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(model_rel, sess_options=options,
                                       providers=[provider_entry(p, params) for p in usable])
    except Exception as exc:
        raise RunnerError("ONNX Runtime cannot load %s: %s" % (model_rel, str(exc).strip()[:500])) from None
    applied = session.get_providers()
    log("model %s loaded; providers requested %s, applied %s%s" % (
        os.path.basename(model_rel), requested, applied,
        " (not available here: %s)" % missing if missing else ""))

    rng = np.random.default_rng(params["seed"])
    feeds, shapes = {}, {}
    batch = None
    for inp in session.get_inputs():
        dtype = DTYPES.get(inp.type)
        if dtype is None:
            raise RunnerError("input %s has type %s, which the runner cannot generate" % (inp.name, inp.type))
        shape = resolve_shape(inp, params)
        if batch is None and shape:
            batch = shape[0]
        shapes[inp.name] = {"shape": shape, "dtype": dtype}
        if dtype.startswith("float"):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == "bool":
            feeds[inp.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            feeds[inp.name] = rng.integers(0, 100, size=shape).astype(dtype)
    outputs = {o.name: {"shape": [d if isinstance(d, int) else str(d) for d in o.shape],
                        "dtype": DTYPES.get(o.type, o.type)} for o in session.get_outputs()}

    for _ in range(params["warmup"]):
        session.run(None, feeds)
    log("warmup done (%d runs)" % params["warmup"])

    latencies = []
    clock = time.perf_counter_ns
    loop_start = clock()
    if params["duration"] is not None:
        end = loop_start + int(params["duration"] * 1e9)
        while True:
            t0 = clock()
            session.run(None, feeds)
            t1 = clock()
            latencies.append((t1 - t0) / 1e6)
            if t1 >= end:
                break
    else:
        for _ in range(params["iterations"]):
            t0 = clock()
            session.run(None, feeds)
            latencies.append((clock() - t0) / 1e6)
    elapsed = (clock() - loop_start) / 1e9
    log("timed loop done: %d runs in %.3f s" % (len(latencies), elapsed))
    return session, shapes, outputs, latencies, elapsed, batch or 1, requested, available, applied, missing


def main(argv):
    job_path = argv[0] if argv else "job.json"
    try:
        with open(job_path) as fh:
            job = json.load(fh)
        params = check_params(job.get("params") or {})
        np, ort = import_tools()
        (_session, shapes, outputs, latencies, elapsed, batch, requested, available, applied,
         missing) = benchmark(job, params, np, ort)
    except RunnerError as exc:
        write_json("error.json", {"class": exc.cls, "message": str(exc)})
        log("error (%s): %s" % (exc.cls, exc))
        return EX_SETUP if exc.cls == "setup_failed" else 1
    except Exception as exc:  # anything unexpected is still a clear record, not a bare traceback
        write_json("error.json", {"class": "runner_error", "message": "%s: %s" % (type(exc).__name__, exc)})
        log("error: %s: %s" % (type(exc).__name__, exc))
        return 1

    model_path = job["inputs"]["model"]
    stats, cv = summarize(latencies)
    write_json("latencies.json", latencies)
    first_dtype = next(iter(shapes.values()))["dtype"] if shapes else "float32"
    samples = len(latencies) * batch
    try:
        import onnx  # optional: only for the opset
        opset = max(o.version for o in onnx.load(model_path, load_external_data=False).opset_import if o.domain in ("", "ai.onnx"))
    except Exception:
        opset = None
    reasons = noisy(stats, latencies, params)
    result = {
        "model": {"name": os.path.basename(model_path), "sha256": sha256_of(model_path),
                  "inputs": shapes, "outputs": outputs, "opset": opset},
        "precision": {"requested": None, "applied": PRECISION.get(first_dtype, first_dtype), "how": "model dtype"},
        "batch": batch,
        "target": {"device_name": cpu_model(), "arch": platform.machine()},
        "tool": {"name": "onnxruntime", "version": ort_version(), "argv": [sys.executable] + list(sys.argv),
                 "scenario": "latency", "warmup": params["warmup"],
                 "iterations": len(latencies), "duration_s": elapsed, "threads": params["threads"],
                 "inter_threads": params["inter_threads"], "graph_optimization": params["graph_optimization"]},
        "metrics": {"throughput_per_s": samples / elapsed if elapsed else 0.0, "samples": samples,
                    "iterations": len(latencies), "latency_ms": stats, "cv": cv, "cv_pct": 100.0 * cv,
                    "spread_pct": 100.0 * robust_cv(latencies, stats["median"])},
        "environment": {
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": ort_version(), "numpy": numpy_version(), "os": platform.platform(),
            "providers_requested": requested, "providers_available": available,
            "providers_applied": applied, "providers_missing": missing,
        },
        "raw": {"per_query": "latencies.json"},
    }
    if reasons:
        result["invalid_reasons"] = reasons
        for r in reasons:
            log("INVALID: " + r)
    write_result(result)
    log("onnxruntime %s %s: mean %.3f ms, median %.3f ms, p99 %.3f ms, throughput %.1f/s over %d runs" % (
        ort_version(), applied[0] if applied else "?", stats["mean"], stats["median"], stats["p99"],
        result["metrics"]["throughput_per_s"], len(latencies)))
    return 0


def ort_version():
    import onnxruntime
    return onnxruntime.__version__


def numpy_version():
    import numpy
    return numpy.__version__


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
