"""The onnxruntime runner, run as the host runs it: a subprocess in an attempt directory, with
real ONNX Runtime and the example models."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUNNER = REPO / "runners" / "onnxruntime" / "run.py"
MODELS = REPO / "examples" / "models"
sys.path.insert(0, str(RUNNER.parent))
import run as ort_runner


def run_job(tmp_path: Path, params: dict, model: str | None = "tinycnn.onnx", python: str = sys.executable):
    adir = tmp_path / "attempt"
    adir.mkdir(parents=True)
    inputs = {}
    if model:
        (adir / "inputs" / "model").mkdir(parents=True)
        shutil.copy(MODELS / model, adir / "inputs" / "model" / model)
        inputs["model"] = f"inputs/model/{model}"
    (adir / "job.json").write_text(json.dumps({"job_id": "j1", "attempt_id": "a1", "inputs": inputs, "params": params}))
    proc = subprocess.run([python, str(RUNNER), "job.json"], cwd=adir, capture_output=True, text=True, timeout=120)
    result = json.loads((adir / "result.json").read_text()) if (adir / "result.json").exists() else None
    error = json.loads((adir / "error.json").read_text()) if (adir / "error.json").exists() else None
    return proc, result, error, adir


def test_benchmark_record(tmp_path):
    proc, result, error, adir = run_job(tmp_path, {"warmup": 3, "iterations": 40, "threads": 1})
    assert proc.returncode == 0 and error is None, proc.stdout + proc.stderr
    lat = result["metrics"]["latency_ms"]
    assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]
    per_query = json.loads((adir / "latencies.json").read_text())
    assert len(per_query) == 40 == result["metrics"]["iterations"]
    assert result["metrics"]["throughput_per_s"] == pytest.approx(40 / result["tool"]["duration_s"])
    assert result["model"]["inputs"]["input"] == {"shape": [1, 3, 64, 64], "dtype": "float32"}
    assert result["model"]["opset"] == 17 and len(result["model"]["sha256"]) == 64
    assert "CPUExecutionProvider" in result["environment"]["providers_applied"]
    assert result["precision"]["applied"] == "fp32"
    assert "mean" in proc.stdout and "throughput" in proc.stdout


def test_duration_mode_and_missing_provider(tmp_path):
    proc, result, _, _ = run_job(tmp_path, {"duration": 0.2, "warmup": 1,
                                            "providers": ["TensorrtExecutionProvider", "CPUExecutionProvider"]})
    assert proc.returncode == 0, proc.stdout
    assert result["tool"]["duration_s"] >= 0.2 and result["metrics"]["iterations"] >= 1
    assert result["environment"]["providers_missing"] == ["TensorrtExecutionProvider"]
    assert result["environment"]["providers_applied"] == ["CPUExecutionProvider"]


def test_auto_providers_take_what_the_host_has_and_strict_mode_refuses(tmp_path):
    """This machine's ONNX Runtime is the CPU build: auto resolves to what it has (on a CUDA
    or TensorRT build the same code puts those first; not run here)."""
    import onnxruntime

    have = onnxruntime.get_available_providers()
    proc, result, _, _ = run_job(tmp_path / "a", {"iterations": 3, "providers": ["auto"]})
    assert proc.returncode == 0, proc.stdout
    expected = [p for p in ort_runner.AUTO_PROVIDERS if p in have]
    assert result["environment"]["providers_requested"] == expected
    assert result["environment"]["providers_applied"][0] == expected[0]
    if "CUDAExecutionProvider" in have:
        pytest.skip("this host has CUDA: the strict-mode refusal needs a provider it lacks")
    proc, result, error, _ = run_job(tmp_path / "b", {"iterations": 3, "require_providers": True,
                                                     "providers": ["CUDAExecutionProvider"]})
    assert proc.returncode == 78 and result is None
    assert error["class"] == "setup_failed" and "CUDAExecutionProvider" in error["message"]


def test_dynamic_model_batch_and_dims(tmp_path):
    proc, result, _, _ = run_job(tmp_path, {"batch": 4, "dims": {"height": 32, "width": 48}, "iterations": 5},
                                 model="tinycnn_dynamic.onnx")
    assert proc.returncode == 0, proc.stdout
    assert result["model"]["inputs"]["input"]["shape"] == [4, 3, 32, 48]
    assert result["batch"] == 4 and result["metrics"]["samples"] == 20


@pytest.mark.parametrize(
    ("params", "model", "needle"),
    [
        ({"batch": 2}, "tinycnn_dynamic.onnx", "height"),
        ({"iterations": 5, "warmpu": 1}, "tinycnn.onnx", "warmpu"),
        ({"iterations": -1}, "tinycnn.onnx", "iterations"),
        ({}, None, "inputs.model"),
    ],
)
def test_errors_are_records_naming_the_problem(tmp_path, params, model, needle):
    proc, result, error, _ = run_job(tmp_path, params, model=model)
    assert proc.returncode == 1 and result is None
    assert error["class"] == "runner_error" and needle in error["message"]


def test_missing_onnxruntime_is_setup_failed(tmp_path):
    # The base interpreter, isolated from any virtualenv, has no onnxruntime.
    base = Path(sys.base_prefix) / "bin" / "python3"
    probe = subprocess.run([str(base), "-I", "-c", "import onnxruntime"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip(f"{base} has onnxruntime installed; no interpreter without it to test with")
    proc, _, error, _ = run_job(tmp_path, {}, python=str(base))
    assert proc.returncode == 78
    assert error["class"] == "setup_failed"
    assert "onnxruntime" in error["message"] or "numpy" in error["message"]
    assert "is not installed for" in error["message"] and "install it" in error["message"]


def test_percentile_matches_linear_interpolation():
    values = [1.0, 2.0, 3.0, 4.0]
    assert ort_runner.percentile(values, 50) == 2.5
    assert ort_runner.percentile(values, 0) == 1.0 and ort_runner.percentile(values, 100) == 4.0
    assert ort_runner.percentile([5.0], 99) == 5.0
    import numpy as np
    data = sorted(np.random.default_rng(1).random(101).tolist())
    for q in (50, 90, 95, 99):
        assert ort_runner.percentile(data, q) == pytest.approx(float(np.percentile(data, q)))


def test_device_code_parses_as_python_38():
    for path in (REPO / "runners").rglob("*.py"):
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 8))


def test_a_noisy_run_is_marked_invalid_saying_why(tmp_path):
    # the record of a real run whose limits no run can meet: invalid, with the reason, and the
    # threads and graph optimisation level it ran with
    proc, result, error, _ = run_job(tmp_path, {"warmup": 1, "iterations": 20, "max_cv_pct": 1e-9,
                                                "inter_threads": 1, "graph_optimization": "basic"})
    assert proc.returncode == 0 and error is None, proc.stdout + proc.stderr
    assert any("spread (robust coefficient of variation)" in r for r in result["invalid_reasons"])
    assert "INVALID" in proc.stdout
    assert result["tool"]["inter_threads"] == 1 and result["tool"]["graph_optimization"] == "basic"
    assert result["metrics"]["cv_pct"] == pytest.approx(100 * result["metrics"]["cv"])
    # the case the issue names: a mean 5x the median (a few very slow iterations) was "ok"
    slow_few = [1.0] * 95 + [81.0] * 5  # mean 5 ms, median 1 ms
    stats = ort_runner.summarize(slow_few)[0]
    reasons = ort_runner.noisy(stats, slow_few, dict(ort_runner.DEFAULTS))
    assert reasons == ["too noisy: mean 5 ms is 5.0x the median 1 ms (params.max_mean_over_median 1.5)"]
    # one spike in a thousand iterations makes the plain CV huge, not the spread: still valid
    spiky = [0.1 + 0.001 * (i % 7) for i in range(999)] + [20.0]
    stats, cv = ort_runner.summarize(spiky)
    assert cv > 2 and ort_runner.noisy(stats, spiky, dict(ort_runner.DEFAULTS)) == []
    wide = [0.05, 0.1, 0.3, 0.5, 0.2] * 20  # spread all over (robust CV 74%): invalid
    assert "spread" in ort_runner.noisy(ort_runner.summarize(wide)[0], wide, dict(ort_runner.DEFAULTS))[0]
