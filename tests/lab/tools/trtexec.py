#!/usr/bin/env python3
# fleet device lab STAND-IN for TensorRT's `trtexec`: it builds nothing and runs nothing. It
# replays recorded real output (tests/fixtures/tools/trtexec-header-device.txt,
# trtexec-10.x-summary.txt, trtexec-10.x-warnings.txt, trtexec-passed-footer.txt; sources in
# SOURCES.md there) with this lab host's configuration (~/.lab/tools.json).
"""trtexec stand-in.

Build:      --onnx=M [--saveEngine=E] [--fp16 --int8 --bf16 --fp8 --best --stronglyTyped]
            [--minShapes= --optShapes= --maxShapes=] [--memPoolSize=workspace:N[K|M|G]]
            [--builderOptimizationLevel=N] [--timingCacheFile=F] [--skipInference]
Benchmark:  --loadEngine=E (or right after a build, like the real trtexec) [--warmUp=ms]
            [--duration=s] [--iterations=N] [--percentile=90,95,99] [--avgRuns=N]
            [--exportTimes=F] [--useSpinWait] [--useCudaGraph] [--noDataTransfers] [--shapes=]

The engine E is a fake plan: a JSON header line (``fleet_lab_engine``, TensorRT version, GPU,
compute capability, precision flags, ONNX sha256, shapes) and some bytes. Loading it checks the
TensorRT version and compute capability like the real deserializer does. Latencies are the
recorded summary's distribution, scaled by precision (fp16/bf16 0.6x, int8/best 0.4x, fp8
0.35x), the host's ``latency_scale`` and (Jetson) power mode; every printed statistic is
computed, with trtexec's own formulas, from the per-query trace that --exportTimes writes.
TensorRT >= 11 rejects --fp16/--int8/--bf16/--fp8/--best as unknown options. Logs go where the
real sample logger sends them: [I] to stdout, [W]/[E] to stderr.

Assumed, not verified against a real run: the abbreviated option/help dump, the build log
lines other than "Engine built in", "Created engine with size", the timing-cache lines and
the "[E] ..." deserialization errors (taken from public logs), the serialization version
numbers in "Version tag does not match" (invented), --workspace being accepted by 8.x only.
"""

import math
import os
import random
import re
import sys
import time

LAB_HOME = None  # the lab host's HOME: written in when tests/lab/homes.py installs this script
LAB_LIB = None  # the directory of _labtool.py: written in on install
sys.path.insert(0, LAB_LIB or os.path.dirname(os.path.realpath(__file__)))

import _labtool as lab

# Options a real trtexec accepts; those not simulated are accepted and ignored.
VALUE_OPTIONS = {
    "onnx", "saveEngine", "loadEngine", "minShapes", "optShapes", "maxShapes", "shapes",
    "memPoolSize", "builderOptimizationLevel", "timingCacheFile", "warmUp", "duration",
    "iterations", "percentile", "avgRuns", "exportTimes", "exportOutput", "exportProfile",
    "exportLayerInfo", "device", "streams", "infStreams", "threads", "sleepTime", "idleTime",
    "inputIOFormats", "outputIOFormats", "layerPrecisions", "layerOutputTypes",
    "precisionConstraints", "tacticSources", "profilingVerbosity", "useDLACore", "plugins",
    "staticPlugins", "dynamicPlugins", "setPluginsToSerialize", "loadInputs", "calib",
    "sparsity", "maxAuxStreams", "hardwareCompatibilityLevel", "runtimePlatform",
    "tempdir", "tempfileControls", "useRuntime", "leanDLLPath", "minShapesCalib",
    "optShapesCalib", "maxShapesCalib", "optProfileIndex", "persistentCacheRatio",
    "weightStreamingBudget", "getPlanVersionOnly", "markDebug", "allocationStrategy",
    "avgTiming", "refit", "cpuOnly", "workspace",
}
FLAG_OPTIONS = {
    "fp16", "int8", "bf16", "fp8", "int4", "best", "noTF32", "stronglyTyped", "skipInference",
    "useSpinWait", "useCudaGraph", "noDataTransfers", "verbose", "separateProfileRun",
    "dumpProfile", "dumpLayerInfo", "dumpOutput", "dumpRefit", "useManagedMemory",
    "allowGPUFallback", "versionCompatible", "vc", "excludeLeanRuntime", "timeDeserialize",
    "timeRefit", "exposeDMA", "noBuilderCache", "noCompilationCache", "directIO",
    "restricted", "safe", "consistency", "buildDLAStandalone", "stripWeights", "stripAllWeights",
    "h", "help",
}
MEM_POOLS = ("workspace", "dlaSRAM", "dlaLocalDRAM", "dlaGlobalDRAM", "tacticSharedMem")
PRECISION_FLAGS = ("fp16", "int8", "bf16", "fp8", "best")
PRECISION_FACTOR = {"fp16": 0.6, "bf16": 0.6, "int8": 0.4, "best": 0.4, "fp8": 0.35}
JETSON_MODE_FACTOR = {0: 1.6, 1: 1.2, 2: 1.0}
MAX_QUERIES = 2000
STAT_LABELS = ("Latency", "Enqueue Time", "H2D Latency", "GPU Compute Time", "D2H Latency")

HOST = lab.host(LAB_HOME)


class Failed(Exception):
    """trtexec failed: the lines are already logged; the caller prints &&&& FAILED."""


# -- logging like samples/common/logging.h ------------------------------------------------------


def _stamp():
    return time.strftime("[%m/%d/%Y-%H:%M:%S]")


def info(message=""):
    lab.out(f"{_stamp()} [I] {message}")


def warn(message):
    lab.err(f"{_stamp()} [W] {message}")


def error(message):
    lab.err(f"{_stamp()} [E] {message}")


def version_tag(version):
    major, minor, patch = lab.parse_version(version)
    if major >= 10:
        return f"v{major * 10000 + minor * 100 + patch}"
    return f"v{major * 1000 + minor * 100 + patch}"


def serialization_version(version):
    """A made-up kSERIALIZATION_VERSION per TensorRT release (the real numbers are internal)."""
    major, minor, patch = lab.parse_version(version)
    return 200 + major * 3 + minor * 2 + patch


def command_line():
    """argv as the banner shows it: the name the tool was called by (the host's path for a
    stand-in installed under the host root), then the arguments."""
    argv0 = sys.argv[0]
    real_root = HOST.root + os.sep
    if os.path.abspath(argv0).startswith(real_root):
        argv0 = "/" + os.path.abspath(argv0)[len(real_root):]
    elif os.path.dirname(os.path.abspath(argv0)) == os.path.join(HOST.home, "bin"):
        argv0 = os.path.basename(argv0)
    return " ".join([argv0] + sys.argv[1:])


# -- options --------------------------------------------------------------------------------------


def parse_args(argv):
    """trtexec's ``--key=value`` / ``--flag`` arguments -> (options, unknown)."""
    options, unknown = {}, []
    for arg in argv:
        if not arg.startswith("-"):
            unknown.append((arg, ""))
            continue
        key, has_value, value = arg.lstrip("-").partition("=")
        dashes = arg[: len(arg) - len(arg.lstrip("-"))]
        if key in VALUE_OPTIONS and (has_value or key not in FLAG_OPTIONS):
            options[key] = value
        elif key in FLAG_OPTIONS and not has_value:
            options[key] = True
        else:
            unknown.append((dashes + key, value))
    return options, unknown


def mib(spec):
    """``1024`` / ``1024M`` / ``1G`` / ``512K`` / ``1024MiB`` -> MiB (a bare number is MiB)."""
    m = re.match(r"^\s*([0-9]*\.?[0-9]+)\s*([KMG]?)(?:i?B)?\s*$", spec, re.IGNORECASE)
    if not m:
        raise ValueError(spec)
    scale = {"": 1.0, "K": 1.0 / 1024, "M": 1.0, "G": 1024.0}[m.group(2).upper()]
    return float(m.group(1)) * scale


def mem_pools(spec):
    pools = {}
    for item in spec.split(","):
        name, sep, size = item.partition(":")
        if not sep or not name.strip():
            raise ValueError(item)
        pools[name.strip()] = mib(size)
    return pools


def percentiles(options, major):
    raw = options.get("percentile")
    if raw is None or raw is True:
        return [99.0] if major < 10 else [90.0, 95.0, 99.0]
    values = [float(piece) for piece in str(raw).split(",") if piece.strip()]
    if not values or any(v < 0 or v > 100 for v in values):
        raise ValueError(raw)
    return values[:1] if major < 10 else values


def print_help():
    for line in (
        "=== Model Options ===",
        "  --onnx=<file>               ONNX model",
        "=== Build Options ===",
        "  --minShapes=spec --optShapes=spec --maxShapes=spec   Build with dynamic shapes",
        "  --memPoolSize=poolspec      Specify the size constraints of the designated memory pool",
        "  --fp16 --bf16 --int8 --fp8 --best                    Precisions (TensorRT < 11)",
        "  --builderOptimizationLevel  Builder optimization level (default = 3)",
        "  --timingCacheFile=<file>    Save/load the serialized global timing cache",
        "  --saveEngine=<file>         Save the serialized engine",
        "  --loadEngine=<file>         Load a serialized engine",
        "=== Inference Options ===",
        "  --shapes=spec  --iterations=N  --warmUp=N  --duration=N  --useSpinWait",
        "  --useCudaGraph  --noDataTransfers",
        "=== Reporting Options ===",
        "  --avgRuns=N  --percentile=P1,P2,...  --exportTimes=<file>",
        "(fleet lab stand-in: abbreviated help)",
    ):
        lab.out(line)


# -- device and engine ------------------------------------------------------------------------------


def print_device(cfg):
    info("=== Device Information ===")
    info("Available Devices: ")
    info('  Device 0: "{}" UUID: {}'.format(cfg["gpu_name"], HOST.uuid()))
    info("Selected Device: {}".format(cfg["gpu_name"]))
    info("Selected Device ID: 0")
    info(f"Selected Device UUID: {HOST.uuid()}")
    info("Compute Capability: {}".format(cfg["compute_capability"]))
    info("SMs: {}".format(cfg["sms"]))
    info("Device Global Memory: {} MiB".format(cfg["memory_mib"]))
    info("")
    info("TensorRT version: {}.{}.{}".format(*lab.parse_version(cfg["tensorrt"])))
    info("Loading standard plugins")


def precision_of(options, major):
    flags = [flag for flag in PRECISION_FLAGS if options.get(flag)]
    typed = bool(options.get("stronglyTyped")) or major >= 11
    return flags, typed


def precision_text(flags, typed):
    if typed:
        return "Strongly Typed"
    names = ["FP32"] + [flag.upper() for flag in flags if flag != "best"]
    if "best" in flags:
        names += [name for name in ("FP16", "INT8") if name not in names]
    return "+".join(names)


def engine_mib(onnx_size, flags):
    factor = min([1.0] + [{"fp16": 0.5, "bf16": 0.5, "int8": 0.27, "best": 0.27,
                           "fp8": 0.27}[f] for f in flags])
    return round(0.4 + onnx_size / (1024.0 * 1024.0) * factor, 4)


def build(options, cfg, major):
    """Parse the ONNX model, "build", save the engine and the timing cache; the engine header."""
    onnx = options["onnx"]
    flags, typed = precision_of(options, major)
    info("Start parsing network model.")
    try:
        size = os.path.getsize(onnx)
        if not os.path.isfile(onnx):
            raise OSError(onnx)
        onnx_sha = lab.sha256_file(onnx)
    except OSError:
        error(
            "Error[3]: In node -1 with name:  and operator:  (parseFromFile): INVALID_VALUE: "
            "Assertion failed: stat(onnxModelFile, &sb) == 0 && S_ISREG(sb.st_mode): Input file "
            f"cannot be found, or is not a regular file: {onnx}"
        )
        error("Failed to parse onnx file")
        info("Finished parsing network model. Parse time: 0.000861")
        error("Parsing model failed")
        error("Failed to create engine from model or file.")
        error("Engine set up failed")
        raise Failed()
    if size == 0:
        error(f"[TRT] ModelImporter.cpp:916: Failed to parse ONNX model from file: {onnx}")
        error("Failed to parse onnx file")
        error("Parsing model failed")
        error("Failed to create engine from model or file.")
        error("Engine set up failed")
        raise Failed()
    info("[TRT] ----------------------------------------------------------------")
    info(f"[TRT] Input filename:   {onnx}")
    info("[TRT] ----------------------------------------------------------------")
    info(f"Finished parsing network model. Parse time: {lab.g(0.02 + size / 5e8)}")
    shapes = {}
    for key, name in (("minShapes", "min"), ("optShapes", "opt"), ("maxShapes", "max")):
        if options.get(key):
            shapes[name] = options[key]
    key = "{}|{}|{}".format(onnx_sha, ",".join(flags) or "fp32", cfg["compute_capability"])
    cache_path = options.get("timingCacheFile")
    cache = {"entries": {}}
    if cache_path:
        if os.path.isfile(cache_path):
            info(f"Loaded {os.path.getsize(cache_path)} bytes of timing cache from {cache_path}")
            header = lab.read_header(cache_path, "fleet_lab_timing_cache")
            if header:
                cache = header
        else:
            warn(f"Could not read timing cache from: {cache_path}. A new timing cache will be generated "
                 "and written.")
    else:
        info("[TRT] Local timing cache in use. Profiling results in this builder pass will not "
             "be stored.")
    cached = key in cache.get("entries", {})
    seconds = (6.0 if cached else 42.0) * float(cfg.get("latency_scale", 1.0))
    seconds *= 0.6 + 0.1 * int(options.get("builderOptimizationLevel") or 3)
    time.sleep(HOST.run_seconds() / 2)
    info("[TRT] Detected 1 inputs and 1 output network tensors.")
    info(f"[TRT] Engine generation completed in {lab.g(seconds)} seconds.")
    info("[TRT] [MemUsageStats] Peak memory usage of TRT CPU/GPU memory allocators: CPU 0 MiB, "
         f"GPU {64 + size // (1 << 20)} MiB")
    if cache_path:
        cache.setdefault("fleet_lab_timing_cache", 1)
        cache.setdefault("entries", {})[key] = round(seconds, 3)
        lab.write_with_header(cache_path, cache, size=256 * len(cache["entries"]))
        info(f"Saved {os.path.getsize(cache_path)} bytes of timing cache to {cache_path}")
    info(f"Engine built in {lab.g(seconds + 0.17)} sec.")
    info(f"Created engine with size: {lab.g(engine_mib(size, flags))} MiB")
    header = {
        "fleet_lab_engine": 1,
        "tensorrt": "{}.{}.{}".format(*lab.parse_version(cfg["tensorrt"])),
        "gpu": cfg["gpu_name"],
        "compute_capability": str(cfg["compute_capability"]),
        "precision": flags,
        "strongly_typed": typed,
        "onnx_sha256": onnx_sha,
        "shapes": shapes,
        "builder_optimization_level": int(options.get("builderOptimizationLevel") or 3),
    }
    pools = options.get("memPoolSize")
    if pools:
        header["mem_pools_mib"] = mem_pools(pools)
    engine = options.get("saveEngine")
    if engine:
        try:
            lab.write_with_header(engine, header)
        except OSError:
            error(f"Cannot open engine file: {engine}")
            error("Saving engine to file failed")
            error("Engine set up failed")
            raise Failed()
    return header


def load(options, cfg):
    """Deserialize a lab engine; fails like TensorRT's deserializer on a foreign plan."""
    path = options["loadEngine"]
    if not os.path.isfile(path):
        error(f"Error opening engine file: {path}")
        error("Failed to create engine from model or file.")
        error("Engine set up failed")
        raise Failed()
    header = lab.read_header(path, "fleet_lab_engine")
    ours = "{}.{}.{}".format(*lab.parse_version(cfg["tensorrt"]))
    if header is None:
        error("Error[1]: [stdArchiveReader.cpp::StdArchiveReaderInitCommon::47] Error Code 1: "
              "Serialization (Serialization assertion magicTagRead == kMAGIC_TAG failed.Magic "
              "Tag does not match)")
        _deserialize_failed()
    if header.get("tensorrt") != ours:
        error("Error[1]: [stdArchiveReader.cpp::StdArchiveReaderInitCommon::47] Error Code 1: "
              "Serialization (Serialization assertion stdVersionRead == kSERIALIZATION_VERSION "
              "failed.Version tag does not match. Note: Current Version: {}, Serialized Engine "
              "Version: {})".format(serialization_version(ours),
                                    serialization_version(header.get("tensorrt", "0"))))
        _deserialize_failed()
    if str(header.get("compute_capability")) != str(cfg["compute_capability"]):
        error("Error[6]: The engine plan file is generated on an incompatible device, expecting "
              "compute {} got compute {}, please rebuild.".format(
                  cfg["compute_capability"], header.get("compute_capability")))
        error("Error[2]: [engine.cpp::deserializeEngine::1217] Error Code 2: Internal Error "
              "(Assertion engine->deserialize(start, size, allocator, runtime) failed. )")
        _deserialize_failed()
    if header.get("gpu") != cfg["gpu_name"]:
        warn("[TRT] Using an engine plan file across different models of devices is not "
             "recommended and is likely to affect performance or even cause errors.")
    info(f"[TRT] Loaded engine size: {max(1, os.path.getsize(path) // (1 << 20))} MiB")
    info(f"Engine deserialized in {lab.g(0.0209)} sec.")
    return header


def _deserialize_failed():
    error("Engine deserialization failed")
    error("Got invalid engine!")
    error("Inference set up failed")
    raise Failed()


# -- the benchmark ---------------------------------------------------------------------------------


def recorded_stats():
    """The recorded 10.x summary: {label: {min, max, mean, median, p90, ...}}."""
    stats = {}
    number = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
    for line in lab.fixture("trtexec-10.x-summary.txt").splitlines():
        message = re.sub(r"^(\[[^\]]*\]\s*)+", "", line).strip()
        label, sep, rest = message.partition(": ")
        if label not in STAT_LABELS or not sep:
            continue
        values = {}
        for name, value in re.findall(r"(min|max|mean|median) = " + number + " ms", rest):
            values[name] = float(value)
        for pct, value in re.findall(r"percentile\(" + number + r"%\) = " + number + " ms", rest):
            values["p" + lab.g(pct)] = float(value)
        stats[label] = values
    return stats


def quantile_function(values):
    points = [(0.0, values["min"]), (0.5, values["median"]), (0.9, values["p90"]),
              (0.95, values["p95"]), (0.99, values["p99"]), (1.0, values["max"])]

    def q(u):
        for i in range(len(points) - 1):
            (u0, v0), (u1, v1) = points[i], points[i + 1]
            if u <= u1:
                return v0 + (v1 - v0) * (u - u0) / (u1 - u0)
        return points[-1][1]

    return q


class Trace:
    """One query: the timestamps trtexec records (ms since the run started)."""

    __slots__ = (
        "compute_end",
        "compute_start",
        "d2h_end",
        "d2h_start",
        "e2e",
        "enq_end",
        "enq_start",
        "h2d_end",
        "h2d_start",
    )


def simulate(header, options, cfg, state, major):
    """Per-query traces (warmups first) for this engine on this host, deterministic."""
    stats = recorded_stats()
    flags = header.get("precision") or []
    factor = min([1.0] + [PRECISION_FACTOR[f] for f in flags if f in PRECISION_FACTOR])
    factor *= float(cfg.get("latency_scale", 1.0))
    if cfg.get("soc"):
        factor *= JETSON_MODE_FACTOR.get(int(state.get("power_mode_id", 2)), 1.0)
    spread = 0.3 if state.get("clocks_locked") else 1.0
    spin = bool(options.get("useSpinWait")) or major >= 11
    graph = bool(options.get("useCudaGraph")) or major >= 11
    transfers = not options.get("noDataTransfers") and major < 11
    if spin:
        spread *= 0.6
    q = {label: quantile_function(stats[label]) for label in STAT_LABELS}
    med = {label: stats[label]["median"] for label in STAT_LABELS}

    def compute(u):
        return max(0.001, (med["GPU Compute Time"] + (q["GPU Compute Time"](u)
                                                       - med["GPU Compute Time"]) * spread) * factor)

    def enqueue(u):
        value = (med["Enqueue Time"] + (q["Enqueue Time"](u) - med["Enqueue Time"]) * spread)
        return max(0.001, value * factor * (0.08 if graph else 1.0))

    grid = [(k + 0.5) / 200 for k in range(200)]
    mean_period = sum(
        max(compute(u) + (q["H2D Latency"](u) + q["D2H Latency"](u) if transfers else 0.0),
            enqueue(u)) for u in grid) / len(grid) + 0.003
    warmup_ms = float(options.get("warmUp", 200))
    duration_s = float(options.get("duration", 3))
    iterations = int(options.get("iterations", 10))
    n = max(iterations, math.ceil(duration_s * 1000.0 / mean_period), 1)
    n = min(n, MAX_QUERIES)
    warmups = math.ceil(warmup_ms / mean_period) if warmup_ms > 0 else 0
    rng = random.Random(lab.stable_int(header.get("onnx_sha256"), flags, cfg["gpu_name"],
                                       state.get("power_mode_id"), state.get("clocks_locked"),
                                       spin, graph, transfers, n))
    total = warmups + n

    def ranks():
        order = list(range(total))
        rng.shuffle(order)
        return [(r + 0.5) / total for r in order]

    u_compute, u_h2d, u_d2h, u_enq = ranks(), ranks(), ranks(), ranks()
    traces, t, previous = [], 0.0, 0.0
    for i in range(total):
        if i == warmups and t < warmup_ms:
            t = warmup_ms  # the first timed query starts after the warm-up time
        tr = Trace()
        h2d = q["H2D Latency"](u_h2d[i]) if transfers else 0.0
        d2h = q["D2H Latency"](u_d2h[i]) if transfers else 0.0
        tr.enq_start, tr.enq_end = t, t + enqueue(u_enq[i])
        tr.h2d_start = t + 0.005
        tr.h2d_end = tr.h2d_start + h2d
        tr.compute_start = tr.h2d_end
        tr.compute_end = tr.compute_start + compute(u_compute[i])
        tr.d2h_start = tr.compute_end
        tr.d2h_end = tr.d2h_start + d2h
        latency = tr.d2h_end - tr.h2d_start
        tr.e2e = latency + 0.9 * previous
        previous = latency
        traces.append(tr)
        t = max(tr.d2h_end, tr.enq_end) + 0.003
    return traces[:warmups], traces[warmups:], warmup_ms


def summarize(values, pcts):
    """min/max/mean/median/percentiles/CV exactly as sampleReporting.cpp computes them."""
    ordered = sorted(values)
    n = len(ordered)
    mean = sum(ordered) / n
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    found = []
    for p in pcts:
        exclude = int((1 - p / 100.0) * n)
        found.append(ordered[max(n - 1 - exclude, 0)])
    variance = sum((v - mean) ** 2 for v in ordered) / n
    cv = math.sqrt(variance) / mean * 100 if mean else float("inf")
    return {"min": ordered[0], "max": ordered[-1], "mean": mean, "median": median,
            "percentiles": found, "cv": cv}


def perf_string(result, pcts):
    text = "min = {} ms, max = {} ms, mean = {} ms, median = {} ms".format(
        lab.g(result["min"]), lab.g(result["max"]), lab.g(result["mean"]),
        lab.g(result["median"]))
    for p, value in zip(pcts, result["percentiles"]):
        text += f", percentile({lab.g(p)}%) = {lab.g(value)} ms"
    return text


def report(warm, timed, warmup_ms, options, major):
    pcts = percentiles(options, major)
    avg_runs = max(1, int(options.get("avgRuns", 10)))
    bench_ms = timed[-1].d2h_end - timed[0].h2d_start
    info("Starting inference")
    info(f"Warmup completed {len(warm)} queries over {lab.g(warmup_ms)} ms")
    info(f"Timing trace has {len(timed)} queries over {lab.g(bench_ms / 1000)} s")
    info("")
    info("=== Trace details ===")
    info(f"Trace averages of {avg_runs} runs:")
    for start in range(0, len(timed) - avg_runs + 1, avg_runs):
        chunk = timed[start:start + avg_runs]
        gpu = sum(t.compute_end - t.compute_start for t in chunk) / avg_runs
        host = sum(t.d2h_end - t.h2d_start for t in chunk) / avg_runs
        enq = sum(t.enq_end - t.enq_start for t in chunk) / avg_runs
        if major >= 10:
            info(f"Average on {avg_runs} runs - GPU latency: {lab.g(gpu)} ms - Host latency: "
                 f"{lab.g(host)} ms (enqueue {lab.g(enq)} ms)")
        else:
            e2e = sum(t.e2e for t in chunk) / avg_runs
            info(f"Average on {avg_runs} runs - GPU latency: {lab.g(gpu)} ms - Host latency: "
                 f"{lab.g(host)} ms (end to end {lab.g(e2e)} ms, enqueue {lab.g(enq)} ms)")
    metrics = {
        "Latency": [t.d2h_end - t.h2d_start for t in timed],
        "End-to-End Host Latency": [t.e2e for t in timed],
        "Enqueue Time": [t.enq_end - t.enq_start for t in timed],
        "H2D Latency": [t.h2d_end - t.h2d_start for t in timed],
        "GPU Compute Time": [t.compute_end - t.compute_start for t in timed],
        "D2H Latency": [t.d2h_end - t.d2h_start for t in timed],
    }
    results = {label: summarize(values, pcts) for label, values in metrics.items()}
    info("")
    info("=== Performance summary ===")
    info(f"Throughput: {lab.g(len(timed) / bench_ms * 1000)} qps")
    for label in ("Latency", "End-to-End Host Latency", "Enqueue Time", "H2D Latency",
                  "GPU Compute Time", "D2H Latency"):
        if label == "End-to-End Host Latency" and major >= 10:
            continue  # TensorRT 10 dropped it from the summary
        info(f"{label}: {perf_string(results[label], pcts)}")
    info(f"Total Host Walltime: {lab.g(bench_ms / 1000)} s")
    gpu = results["GPU Compute Time"]
    info("Total GPU Compute Time: {} s".format(lab.g(gpu["mean"] * len(timed) / 1000)))
    recorded = [re.sub(r"^(\[[^\]]*\] )+", "", line)
                for line in lab.fixture("trtexec-10.x-warnings.txt").splitlines()]
    if results["Enqueue Time"]["median"] > 0.8 * gpu["median"]:
        warn(recorded[0])
        warn(recorded[1])
    if results["H2D Latency"]["median"] >= gpu["median"]:
        warn("* Throughput may be bound by host-to-device transfers for the inputs rather than "
             "GPU Compute and the GPU may be under-utilized.")
        warn("  Add --noDataTransfers flag to disable data transfers.")
    if results["D2H Latency"]["median"] >= gpu["median"]:
        warn("* Throughput may be bound by device-to-host transfers for the outputs rather than "
             "GPU Compute and the GPU may be under-utilized.")
        warn("  Add --noDataTransfers flag to disable data transfers.")
    if major >= 10 and gpu["cv"] > 1.0:
        warn(re.sub(r"= [0-9.eE+-]+%", "= {}%".format(lab.g(gpu["cv"])), recorded[2]))
        warn(recorded[3])
    info(recorded[4])
    info("")
    if options.get("exportTimes"):
        export_times(options["exportTimes"], (warm + timed) if major < 10 else timed, major)


def export_times(path, traces, major):
    """The --exportTimes JSON list, in sampleReporting.cpp's layout and key names."""
    lines = ["["]
    sep = "  "
    for t in traces:
        fields = [
            ("startEnqMs", t.enq_start), ("endEnqMs", t.enq_end),
            ("startH2dMs", t.h2d_start), ("endH2dMs", t.h2d_end),
            ("startComputeMs", t.compute_start), ("endComputeMs", t.compute_end),
            ("startD2hMs", t.d2h_start), ("endD2hMs", t.d2h_end),
            ("h2dMs", t.h2d_end - t.h2d_start), ("computeMs", t.compute_end - t.compute_start),
            ("d2hMs", t.d2h_end - t.d2h_start), ("latencyMs", t.d2h_end - t.h2d_start),
        ]
        if major < 10:
            fields.append(("endToEndMs", t.e2e))
        body = ", ".join(f'"{name}" : {lab.g(value)}' for name, value in fields)
        lines.append(f"{sep}{{ {body} }}")
        sep = ", "
    lines.append("]")
    try:
        lab.write_atomic(path, "\n".join(lines) + "\n")
    except OSError:
        warn(f"Cannot open {path} for writing the timing trace")


# -- main ----------------------------------------------------------------------------------------


def main():
    cfg = HOST.config
    state = HOST.state()
    major = lab.parse_version(cfg["tensorrt"])[0]
    tag = "[TensorRT {}]".format(version_tag(cfg["tensorrt"]))
    argv = command_line()
    lab.out(f"&&&& RUNNING TensorRT.trtexec {tag} # {argv}")

    def finish(passed):
        lab.out("&&&& {} TensorRT.trtexec {} # {}".format("PASSED" if passed else "FAILED", tag,
                                                          argv))
        return 0 if passed else 1

    options, unknown = parse_args(sys.argv[1:])
    if major >= 11:
        for flag in PRECISION_FLAGS:
            if options.pop(flag, None):
                unknown.append(("--" + flag, ""))
    if major >= 10 and "workspace" in options:
        unknown.append(("--workspace", options.pop("workspace")))
    if options.get("h") or options.get("help"):
        print_help()
        return 0
    if unknown:
        print_help()
        for key, value in unknown:
            error(f"Unknown option: {key} {value}")
        return finish(False)
    try:
        if options.get("memPoolSize"):
            mem_pools(options["memPoolSize"])
        percentiles(options, major)
        for key, conv in (("warmUp", float), ("duration", float), ("iterations", int),
                          ("avgRuns", int), ("builderOptimizationLevel", int)):
            if key in options:
                conv(options[key])
    except ValueError as exc:
        print_help()
        error(f"Invalid value: {exc}")
        return finish(False)
    if HOST.fails("trtexec"):
        error("Cuda failure: unspecified launch failure (fleet lab: trtexec configured to fail)")
        return finish(False)
    info("=== Model Options ===")
    info("Format: {}".format("ONNX" if options.get("onnx") else "*"))
    info("Model: {}".format(options.get("onnx", "")))
    info("=== Build Options ===")
    flags, typed = precision_of(options, major)
    info(f"Precision: {precision_text(flags, typed)}")
    pools = mem_pools(options["memPoolSize"]) if options.get("memPoolSize") else {}
    names = list(MEM_POOLS) + [name for name in pools if name not in MEM_POOLS]
    info("Memory Pools: " + ", ".join(
        "{}: {}".format(name, f"{lab.g(pools[name])} MiB" if name in pools else "default")
        for name in names))
    info("")
    print_device(cfg)
    try:
        with HOST.busy():
            if options.get("loadEngine"):
                header = load(options, cfg)
            elif options.get("onnx"):
                header = build(options, cfg, major)
                if options.get("skipInference"):
                    info("Skipped inference phase since --skipInference is added.")
                    return finish(True)
                info("[TRT] Loaded engine size: 1 MiB")
                info(f"Engine deserialized in {lab.g(0.0209)} sec.")
            else:
                error("Model missing or format not recognized")
                error("Engine set up failed")
                raise Failed()
            time.sleep(HOST.run_seconds())
            warm, timed, warmup_ms = simulate(header, options, cfg, state, major)
            report(warm, timed, warmup_ms, options, major)
    except Failed:
        return finish(False)
    return finish(True)


if __name__ == "__main__":
    sys.exit(main())
