"""TensorRT runner (device side; stdlib, Python >= 3.8): compile ONNX -> engine on the host, and
benchmark an engine, through ``trtexec``.

Engines are not portable across GPU models or TensorRT versions, so they are built on the
host that runs them and keyed by (model sha256, GPU, compute capability, TensorRT version,
precision, shapes); an engine already built for a key on this host is reused
(``<workdir>/cache/tensorrt/engines``), and the builder's timing cache is kept per GPU and
TensorRT version. TensorRT 8/10 take precision flags; TensorRT 11 removed them (a strongly
typed network carries its precision): a requested precision there is an error, not ignored.

kind compile: inputs.model (ONNX) -> model.engine (the artifact).
kind benchmark: inputs.engine, or inputs.model (built first, or reused), then
``trtexec --loadEngine`` with per-query times exported; tegrastats alongside on Jetson.
"""

import json
import os
import shutil
import sys
import time

# fleet's shared runner code sits one level up; only for these imports: the folders there are
# named like the tools (onnxruntime/, tensorrt/) and must not shadow them.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

import capture  # noqa: E402
from devtools import tegrastats as tegra_fmt  # noqa: E402
from devtools import trtexec as fmt  # noqa: E402
from runnerlib import (  # noqa: E402
    RunnerError,
    cache_dir,
    check_params,
    find_tool,
    log,
    main,
    param_number,
    quiet,
    run_tool,
    sha256_of,
    write_result,
)

sys.path.remove(_ROOT)

JETSON_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
DEFAULTS = {
    "precision": None, "shapes": {}, "workspace_mib": None, "opt_level": None,
    "timing_cache": True, "reuse": True, "warmup_ms": 200, "duration_s": 3, "iterations": None,
    "percentiles": [90, 95, 99], "cuda_graph": False, "spin_wait": False,
    "no_data_transfers": False, "telemetry_ms": 100, "require": {},
}
PRECISIONS = {"fp32": None, "fp16": "--fp16", "bf16": "--bf16", "int8": "--int8", "fp8": "--fp8",
              "best": "--best"}


def trtexec_path():
    path = find_tool("trtexec", JETSON_TRTEXEC)
    if not path:
        raise RunnerError("trtexec not found (looked on PATH and at %s); install TensorRT's "
                          "samples or JetPack's tensorrt package" % JETSON_TRTEXEC, "setup_failed")
    return path


def tensorrt_version(trtexec):
    """From the banner trtexec prints first on any run (``[TensorRT v100200]``)."""
    text = quiet([trtexec, "--help"]) or ""
    version = fmt.parse_version(text)
    if not version:
        code, text = run_tool([trtexec, "--help"], echo=False)
        version = fmt.parse_version(text)
    if not version:
        raise RunnerError("cannot tell the TensorRT version: trtexec --help printed no "
                          "'TensorRT vNNNN' banner", "setup_failed")
    return version


def shape_args(shapes):
    """``--minShapes/--optShapes/--maxShapes`` for dynamic inputs, ``--shapes`` for fixed."""
    if not isinstance(shapes, dict):
        raise RunnerError("param shapes must map input names to dims or {min, opt, max}")
    fixed, ranges = [], {"min": [], "opt": [], "max": []}
    for name, spec in sorted(shapes.items()):
        if isinstance(spec, dict):
            missing = [k for k in ("min", "opt", "max") if k not in spec]
            if missing:
                raise RunnerError("param shapes.%s needs min, opt and max (missing %s)" % (name, ", ".join(missing)))
            for k in ranges:
                ranges[k].append("%s:%s" % (name, dims(spec[k], "shapes.%s.%s" % (name, k))))
        else:
            fixed.append("%s:%s" % (name, dims(spec, "shapes." + name)))
    build, run = [], []
    if any(ranges.values()):
        for k, flag in (("min", "--minShapes="), ("opt", "--optShapes="), ("max", "--maxShapes=")):
            build.append(flag + ",".join(ranges[k]))
        run.append("--shapes=" + ",".join(ranges["opt"] + fixed))
    elif fixed:
        build.append("--shapes=" + ",".join(fixed))
        run.append("--shapes=" + ",".join(fixed))
    return build, run


def dims(value, where):
    if not isinstance(value, list) or not value or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value):
        raise RunnerError("param %s must be a list of positive integers, not %r" % (where, value))
    return "x".join(str(d) for d in value)


def device_identity(job):
    """What the engine key needs about the GPU: nvidia-smi where present, else the host's
    accelerator (a Jetson module is one GPU model)."""
    env = capture.nvidia()
    if env.get("gpu"):
        return {"gpu": env["gpu"], "compute_capability": env.get("compute_capability")}, env
    accel = (job.get("device_class") or "").split("/")[-1] or "unknown"
    return {"gpu": accel, "compute_capability": None}, env


def engine_key(model_sha, device, version, precision, shapes):
    return {"model_sha256": model_sha, "gpu": device["gpu"],
            "compute_capability": device.get("compute_capability"),
            "tensorrt": version["version"], "precision": precision or "fp32", "shapes": shapes}


def key_hash(key):
    import hashlib
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def build(job, params, trtexec, version, device, model):
    """ONNX -> model.engine (or the cached engine for the same key). Returns the artifact."""
    precision = params["precision"]
    if precision is not None and precision not in PRECISIONS:
        raise RunnerError("param precision must be one of %s, not %r" % (", ".join(sorted(PRECISIONS)), precision))
    if version["major"] >= 11 and precision not in (None, "fp32"):
        raise RunnerError(
            "precision %s cannot be applied with TensorRT %s: TensorRT 11 removed the precision "
            "flags (--fp16/--int8/--best); the model carries its precision (strongly typed). "
            "Export the ONNX model in %s, or drop params.precision" % (precision, version["version"], precision))
    model_sha = sha256_of(model)
    key = engine_key(model_sha, device, version, precision, params["shapes"])
    cached = os.path.join(cache_dir("tensorrt", "engines"), key_hash(key) + ".engine")
    build_shapes, _ = shape_args(params["shapes"])
    argv = [trtexec, "--onnx=" + model, "--saveEngine=model.engine", "--skipInference"] + build_shapes
    flag = PRECISIONS.get(precision or "fp32")
    if flag:
        argv.append(flag)
    workspace = param_number(params, "workspace_mib", 1, integer=True)
    if workspace:
        argv.append("--memPoolSize=workspace:%dM" % workspace)
    level = param_number(params, "opt_level", 0, integer=True)
    if level is not None:
        argv.append("--builderOptimizationLevel=%d" % level)
    if params["timing_cache"]:
        slug = "".join(c if c.isalnum() else "-" for c in "%s-%s" % (device["gpu"], version["version"]))
        argv.append("--timingCacheFile=" + os.path.join(cache_dir("tensorrt", "timing"), slug + ".cache"))
    artifact = {"kind": "tensorrt-engine", "path": "model.engine", "compiler": "tensorrt",
                "compiler_version": version["version"], "build_args": argv[1:], "key": key}
    if params["reuse"] and os.path.isfile(cached):
        shutil.copyfile(cached, "model.engine")
        log("reusing the engine built earlier on this host for the same key (%s)" % key_hash(key))
        return dict(artifact, reused=True, build_seconds=0.0), key
    started = time.time()
    code, text = run_tool(argv, "build.log")
    bad = fmt.unknown_option(text)
    if bad:
        raise RunnerError("TensorRT %s's trtexec does not accept %s (precision %s cannot be applied "
                          "this way)" % (version["version"], bad, precision))
    if code != 0 or fmt.parse_status(text) == "failed" or not os.path.isfile("model.engine"):
        raise RunnerError("engine build failed (trtexec exited %d); see the log above" % code)
    seconds = time.time() - started
    tmp = cached + ".tmp.%d" % os.getpid()
    shutil.copyfile("model.engine", tmp)
    os.replace(tmp, cached)
    return dict(artifact, reused=False, build_seconds=seconds), key


def benchmark(params, trtexec, engine):
    _, run_shapes = shape_args(params["shapes"])
    warmup = param_number(params, "warmup_ms", 0, integer=True)
    duration = param_number(params, "duration_s", 0)
    iterations = param_number(params, "iterations", 1, integer=True)
    pcts = params["percentiles"]
    if not isinstance(pcts, list) or not all(isinstance(p, (int, float)) and 0 < p < 100 for p in pcts):
        raise RunnerError("param percentiles must be a list of numbers between 0 and 100")
    argv = [trtexec, "--loadEngine=" + engine, "--warmUp=%d" % warmup, "--duration=%g" % duration,
            "--percentile=" + ",".join("%g" % p for p in pcts), "--exportTimes=times.json"] + run_shapes
    if iterations:
        argv.append("--iterations=%d" % iterations)
    for key, flag in (("cuda_graph", "--useCudaGraph"), ("spin_wait", "--useSpinWait"),
                      ("no_data_transfers", "--noDataTransfers")):
        if params[key]:
            argv.append(flag)
    telemetry = capture.Telemetry("tegrastats.log", param_number(params, "telemetry_ms", 10, integer=True))
    with telemetry:
        code, text = run_tool(argv, "trtexec.log")
    parsed = fmt.parse(text)
    if code != 0 or parsed.get("status") == "failed":
        raise RunnerError("trtexec benchmark failed (exit %d); see the log above" % code)
    metrics = parsed.get("metrics") or {}
    if not metrics.get("throughput_per_s") and not metrics.get("latency_ms"):
        raise RunnerError("trtexec printed no performance summary; see the log above")
    return argv, parsed, telemetry.summary()


def run(job):
    params = check_params(job.get("params") or {}, DEFAULTS, "tensorrt")
    kind = job.get("kind") or "benchmark"
    inputs = job.get("inputs") or {}
    trtexec = trtexec_path()
    version = tensorrt_version(trtexec)
    device, nv_env = device_identity(job)
    env = {"tensorrt": version["version"]}
    env.update(nv_env)
    env.update(capture.jetson())
    log("TensorRT %s on %s" % (version["version"], device["gpu"]))

    artifact, key, model = None, None, inputs.get("model")
    if kind == "compile" or (kind == "benchmark" and not inputs.get("engine")):
        if not model:
            raise RunnerError("inputs.model (an ONNX file) is required to %s" % (
                "compile" if kind == "compile" else "benchmark without inputs.engine"))
        artifact, key = build(job, params, trtexec, version, device, model)
    precision = {"requested": params["precision"],
                 "applied": (key or {}).get("precision") if key else None,
                 "how": ("model (TensorRT %s is strongly typed)" % version["version"]
                         if version["major"] >= 11 else "trtexec flag")}
    result = {"precision": precision, "environment": env,
              "target": {"device_name": device["gpu"], "compute_capability": device.get("compute_capability")}}
    if model:
        result["model"] = {"name": os.path.basename(model), "sha256": sha256_of(model)}
    if kind == "compile":
        result.update(tool={"name": "trtexec", "version": version["version"], "argv": artifact["build_args"],
                            "scenario": "build"},
                      metrics={"build_seconds": artifact["build_seconds"]},
                      artifact=artifact, raw={"log": "build.log" if not artifact.get("reused") else None})
        write_result(result)
        log("engine %s (%s, %.1f s)" % ("reused" if artifact.get("reused") else "built", artifact["path"],
                                        artifact["build_seconds"]))
        return
    engine = inputs.get("engine") or "model.engine"
    argv, parsed, telemetry = benchmark(params, trtexec, engine)
    metrics = dict(parsed["metrics"])
    cv = metrics.pop("gpu_compute_cv_pct", None)
    if cv is not None:
        metrics["cv_pct"] = cv
    for k in ("host_walltime_s", "total_gpu_compute_s"):
        if k in metrics and not isinstance(metrics[k], (int, float)):
            metrics.pop(k)
    try:
        with open("times.json") as fh:
            per_query = fmt.summarize_times(json.load(fh))
        metrics["samples"] = per_query.get("samples")
    except (OSError, ValueError):
        per_query = None
    if telemetry.get("power_w"):
        metrics["power_w"] = telemetry["power_w"]
        env["power_source"] = telemetry.get("power_source")
    if telemetry.get("gpu_load_pct"):
        metrics["gpu_load_pct"] = telemetry["gpu_load_pct"]
    if telemetry.get("temps_c"):
        env["temperatures_c"] = telemetry["temps_c"]
    for key in ("ram_used_mb", "swap_used_mb", "emc_load_pct"):  # how hungry the run was
        if telemetry.get(key):
            metrics[key] = telemetry[key]
    for key in ("ram_total_mb", "gpu_freq_mhz"):
        if telemetry.get(key):
            env[key] = telemetry[key]
    dev = parsed.get("device") or {}
    if dev.get("name"):
        result["target"]["device_name"] = dev["name"]
    if dev.get("compute_capability"):
        result["target"]["compute_capability"] = dev["compute_capability"]
    result.update(
        tool={"name": "trtexec", "version": (parsed.get("version") or version)["version"], "argv": argv[1:],
              "scenario": "throughput", "warmup": params["warmup_ms"] / 1000.0,
              "duration": params["duration_s"], "iterations": params["iterations"]},
        metrics={k: v for k, v in metrics.items() if v is not None},
        raw={"log": "trtexec.log", "per_query": "times.json" if per_query else None,
             "telemetry": "tegrastats.log" if telemetry else None},
        warnings=parsed.get("warnings") or [],
    )
    if artifact:
        result["artifact"] = artifact
    reasons = capture.unmet(params["require"], env)
    reasons += tegra_fmt.throttling(telemetry, clocks_locked=env.get("clocks_locked"))
    if reasons:
        result["invalid_reasons"] = reasons
        for r in reasons:
            log("INVALID: " + r)
    write_result(result)
    lat = metrics.get("latency_ms") or {}
    log("trtexec %s: %.1f qps, latency mean %s ms" % (version["version"], metrics["throughput_per_s"],
                                                      lat.get("mean", "?")))


if __name__ == "__main__":
    sys.exit(main(run, sys.argv[1:]))
