"""Hailo runner (device side; stdlib, Python >= 3.8).

kind compile (an x86_64 host with the Hailo Dataflow Compiler's ``hailo`` CLI): ONNX ->
``hailo parser onnx`` -> ``hailo optimize`` (with the calibration set given as inputs.calib, or
a random one only when params.random_calib is set, and then the result is marked not fit for
accuracy) -> ``hailo compiler`` -> a HEF for hw_arch (hailo8, hailo8l): the artifact.

kind benchmark (the Hailo host): ``hailortcli fw-control identify`` (device architecture,
firmware), ``hailortcli parse-hef`` and a compatibility check before running (a HAILO8L device
runs only HAILO8L HEFs), then ``hailortcli benchmark --csv`` (its stdout as a fallback): FPS
hw-only and streaming, hardware latency, power where the board reports it.
"""

import os
import sys
import time

# fleet's shared runner code sits one level up; only for these imports: the folders there are
# named like the tools (onnxruntime/, tensorrt/) and must not shadow them.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

import capture  # noqa: E402
from devtools import hailo as fmt  # noqa: E402
from runnerlib import (  # noqa: E402
    RunnerError,
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

DEFAULTS = {"hw_arch": "hailo8", "random_calib": False, "duration_s": 10, "require": {}}
HW_ARCHS = ("hailo8", "hailo8l", "hailo8r")


def compile_hef(job, params):
    hailo = find_tool("hailo")
    if not hailo:
        raise RunnerError("the Hailo Dataflow Compiler's `hailo` command is not on this host "
                          "(it runs on x86_64 Linux; install the DFC wheel in the host's Python)",
                          "setup_failed")
    inputs = job.get("inputs") or {}
    model = inputs.get("model")
    if not model:
        raise RunnerError("inputs.model (an ONNX file) is required to compile")
    arch = params["hw_arch"]
    if arch not in HW_ARCHS:
        raise RunnerError("param hw_arch must be one of %s, not %r" % (", ".join(HW_ARCHS), arch))
    calib = inputs.get("calib")
    invalid = []
    if calib:
        calib_args, calib_key = ["--calib-set-path", calib], sha256_of(calib) if os.path.isfile(calib) else calib
    elif params["random_calib"]:
        calib_args, calib_key = ["--use-random-calib-set"], "random"
        invalid.append("optimized with a random calibration set: not fit for accuracy measurements")
    else:
        raise RunnerError("optimize needs a calibration set: give inputs.calib (a .npy of "
                          "representative inputs), or params.random_calib: true for a quick "
                          "build that is marked not fit for accuracy")
    version_text = quiet([hailo, "--version"]) or ""
    dfc = version_text.strip().split()[-1] if version_text.strip() else None
    stem = os.path.splitext(os.path.basename(model))[0]
    started = time.time()
    steps = [
        [hailo, "parser", "onnx", model, "--hw-arch", arch],
        [hailo, "optimize", stem + ".har", "--hw-arch", arch] + calib_args,
        [hailo, "compiler", stem + "_optimized.har", "--hw-arch", arch],
    ]
    for argv in steps:
        code, _ = run_tool(argv, "compile.log")
        if code != 0:
            raise RunnerError("hailo %s failed (exit %d); see the log above" % (argv[1], code))
    hef = stem + ".hef"
    if not os.path.isfile(hef):
        raise RunnerError("hailo compiler made no %s" % hef)
    seconds = time.time() - started
    model_sha = sha256_of(model)
    result = {
        "model": {"name": os.path.basename(model), "sha256": model_sha},
        "tool": {"name": "hailo", "version": dfc, "argv": [" ".join(s[1:]) for s in steps], "scenario": "build"},
        "metrics": {"build_seconds": seconds},
        "environment": {"dataflow_compiler": dfc, "hw_arch": arch},
        "artifact": {"kind": "hef", "path": hef, "compiler": "hailo-dfc", "compiler_version": dfc,
                     "build_args": [" ".join(s[1:]) for s in steps], "build_seconds": seconds,
                     "key": {"model_sha256": model_sha, "hw_arch": arch, "dfc": dfc, "calib": calib_key}},
        "raw": {"log": "compile.log"},
    }
    if invalid:
        result["invalid_reasons"] = invalid
    write_result(result)
    log("%s built for %s in %.1f s" % (hef, arch, seconds))


def benchmark(job, params):
    cli = find_tool("hailortcli")
    if not cli:
        raise RunnerError("hailortcli is not on this host (install HailoRT)", "setup_failed")
    hef = (job.get("inputs") or {}).get("hef")
    if not hef:
        raise RunnerError("inputs.hef (a compiled HEF, e.g. {step: compile}) is required to benchmark")
    env = capture.hailo()
    device_arch = env.get("device_architecture")
    if not device_arch:
        raise RunnerError("hailortcli fw-control identify named no device architecture: is the "
                          "Hailo device present and its driver loaded?", "setup_failed")
    hef_text = quiet([cli, "parse-hef", hef]) or ""
    hef_arch = fmt.parse_hef_arch(hef_text)
    ok, why = fmt.hef_compatible(hef_arch, device_arch)
    if not ok:
        raise RunnerError("%s cannot run on this device: %s" % (os.path.basename(hef), why))
    duration = param_number(params, "duration_s", 1, integer=True)
    argv = [cli, "benchmark", hef, "--csv", "benchmark.csv", "-t", str(duration)]
    code, text = run_tool(argv, "benchmark.log")
    if code != 0:
        raise RunnerError("hailortcli benchmark failed (exit %d); see the log above" % code)
    parsed = {}
    try:
        with open("benchmark.csv") as fh:
            parsed = fmt.parse_benchmark_csv(fh.read())
        source = "csv"
    except (OSError, ValueError):
        source = "stdout"
    if not parsed.get("fps"):
        parsed, source = fmt.parse_benchmark_stdout(text), "stdout"
    if not parsed.get("fps"):
        raise RunnerError("hailortcli benchmark printed no FPS; see the log above")
    metrics = {"fps": parsed["fps"]}
    for key in ("throughput_per_s", "hw_latency_ms", "overall_latency_ms", "power_w"):
        if parsed.get(key) is not None:
            metrics[key] = parsed[key]
    env["hef_architecture"] = hef_arch
    result = {
        "model": {"name": parsed.get("net_name") or os.path.basename(hef), "sha256": sha256_of(hef)},
        "target": {"device_name": env.get("product_name") or device_arch},
        "tool": {"name": "hailortcli", "version": env.get("hailort"), "argv": argv[1:],
                 "scenario": "benchmark", "duration": duration},
        "metrics": metrics,
        "environment": env,
        "raw": {"log": "benchmark.log", "csv": "benchmark.csv" if source == "csv" else None},
    }
    reasons = capture.unmet(params["require"], env)
    if reasons:
        result["invalid_reasons"] = reasons
    write_result(result)
    log("hailortcli %s on %s: %.1f fps streaming, %.1f fps hw-only" % (
        env.get("hailort") or "?", device_arch, parsed["fps"].get("streaming", 0), parsed["fps"].get("hw_only", 0)))


def run(job):
    params = check_params(job.get("params") or {}, DEFAULTS, "hailo")
    if (job.get("kind") or "benchmark") == "compile":
        compile_hef(job, params)
    else:
        benchmark(job, params)


if __name__ == "__main__":
    sys.exit(main(run, sys.argv[1:]))
