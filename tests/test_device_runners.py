"""The tensorrt and hailo runners end to end on the device lab: real fleet serve, real SSH,
the lab's stand-in device tools replaying recorded real output (tests/lab/tools). What is
checked is fleet's side: flags passed, engines keyed and reused, environment captured,
validity, compatibility, pipelines across device classes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab import Lab

MODEL = Path(__file__).resolve().parent.parent / "examples" / "models" / "tinycnn.onnx"


def start(fleet, lab: Lab, tmp_path):
    (fleet.home / "known_hosts").write_text(lab.known_hosts_text())
    return fleet.start(lab.write_inventory(tmp_path / "inventory.ini"))


def log_of(client, job_id: str) -> str:
    return b"".join(client.logs(job_id)).decode()


def submit_file(fleet, tmp_path, spec: dict) -> list[dict]:
    import json

    import yaml
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = fleet.cli("submit", str(path), "--wait", "--json", check=False, timeout=300)
    data = json.loads(out.stdout)
    return data if isinstance(data, list) else [data]


def test_tensorrt_compile_then_benchmark_reuses_the_engine(fleet, lab, tmp_path):
    lab.add_hosts("rtx5060", 1)
    client = start(fleet, lab, tmp_path)
    (compiled,) = submit_file(fleet, tmp_path, {
        "name": "trt-compile", "kind": "compile", "runner": "tensorrt", "resources": {"pool": "rtx"},
        "inputs": {"model": str(MODEL)}, "params": {"precision": "fp16", "workspace_mib": 1024, "opt_level": 3}})
    assert compiled["state"] == "SUCCEEDED", compiled
    (engine,) = [a for a in compiled["artifacts"] if a["kind"] == "tensorrt-engine"]
    key = engine["key_basis"]
    assert key["precision"] == "fp16" and key["tensorrt"] == "10.2.0"
    assert key["gpu"] == lab.tools(lab.hosts[0].name)["gpu_name"]
    build_log = log_of(client, compiled["id"])
    assert "--fp16" in build_log and "--memPoolSize=workspace:1024M" in build_log
    assert "--builderOptimizationLevel=3" in build_log and "--timingCacheFile=" in build_log

    (bench,) = submit_file(fleet, tmp_path, {
        "name": "trt-bench", "kind": "benchmark", "runner": "tensorrt", "resources": {"pool": "rtx"},
        "inputs": {"engine": {"job": compiled["id"]}}, "params": {"duration_s": 1, "percentiles": [50, 99]}})
    assert bench["state"] == "SUCCEEDED", bench
    rec = bench["result"]
    m = rec["metrics"]
    assert m["throughput_per_s"] > 0 and set(m["latency_ms"]) >= {"min", "mean", "median", "p50", "p99", "max"}
    assert "p90" not in m["latency_ms"]  # exactly the percentiles asked for
    assert m["gpu_compute_ms"]["mean"] > 0 and m["samples"] > 0
    assert rec["tool"]["name"] == "trtexec" and rec["tool"]["version"] == "10.2.0"
    assert rec["target"]["device_name"] == key["gpu"]
    env = rec["environment"]
    assert env["driver"] and env["gpu"] == key["gpu"] and env["tensorrt"] == "10.2.0"
    assert rec["status"] == "ok"

    # A benchmark straight from the ONNX model with the same key reuses the engine built above.
    (again,) = submit_file(fleet, tmp_path, {
        "name": "trt-again", "kind": "benchmark", "runner": "tensorrt", "resources": {"pool": "rtx"},
        "inputs": {"model": str(MODEL)}, "params": {"precision": "fp16", "duration_s": 1}})
    assert again["state"] == "SUCCEEDED", again
    assert again["result"]["artifact"]["reused"] is True
    assert "reusing the engine" in log_of(client, again["id"])
    assert again["result"]["artifact"]["key"] == key


def test_tensorrt_11_refuses_a_precision_flag_clearly(fleet, lab, tmp_path):
    (host,) = lab.add_hosts("rtx5060", 1)
    lab.set_tools(host.name, tensorrt="11.0.0")
    start(fleet, lab, tmp_path)
    spec = {"name": "trt11", "kind": "compile", "runner": "tensorrt", "resources": {"pool": "rtx"},
            "inputs": {"model": str(MODEL)}, "params": {"precision": "fp16"}}
    (job,) = submit_file(fleet, tmp_path, spec)
    assert (job["state"], job["reason"]) == ("FAILED", "runner_error")
    assert "TensorRT 11" in job["message"] and "fp16" in job["message"]
    spec["params"] = {}
    spec["name"] = "trt11-model-precision"
    (job,) = submit_file(fleet, tmp_path, spec)
    assert job["state"] == "SUCCEEDED", job
    assert "--fp16" not in job["result"]["tool"]["argv"]


def test_jetson_chain_records_power_environment_and_validity(fleet, lab, tmp_path):
    (host,) = lab.add_hosts("jetson-orin-nano", 1)
    client = start(fleet, lab, tmp_path)
    mode = lab.tool_state(host.name)["power_mode"]
    chain = {"name": "orin", "resources": {"pool": "jetson"}, "inputs": {"model": str(MODEL)},
             "steps": [
                 {"name": "compile", "kind": "compile", "runner": "tensorrt"},
                 {"name": "bench", "kind": "benchmark", "runner": "tensorrt",
                  "inputs": {"engine": {"step": "compile"}},
                  "params": {"duration_s": 1, "telemetry_ms": 20,
                             "require": {"power_mode": "15W", "clocks_locked": True}}}]}
    compiled, bench = submit_file(fleet, tmp_path, chain)
    assert compiled["state"] == bench["state"] == "SUCCEEDED", (compiled, bench)
    assert "/usr/src/tensorrt/bin/trtexec" in log_of(client, compiled["id"])  # not on PATH there
    rec = bench["result"]
    env = rec["environment"]
    assert env["l4t"] == "36.3.0" and env["jetpack"].startswith("6")
    assert env["power_mode"] == mode and env["power_source"] == "VDD_IN"
    assert rec["metrics"]["power_w"]["avg"] > 0 and rec["metrics"]["power_w"]["max"] >= rec["metrics"]["power_w"]["avg"]
    assert rec["raw"]["telemetry"] == "tegrastats.log"
    # The host runs MAXN_SUPER with unlocked clocks: the spec asked for 15W and locked clocks.
    assert rec["status"] == "invalid"
    assert any("15W" in r for r in rec["invalid_reasons"])
    assert any("not locked" in r for r in rec["invalid_reasons"])
    status = fleet.cli("status", bench["id"]).stdout
    assert "INVALID" in status and "chain:" in status

    lab.set_tools(host.name, power_mode="15W", power_mode_id=0, clocks_locked=True)
    chain["name"] = "orin-ok"
    _, ok = submit_file(fleet, tmp_path, chain)
    assert ok["result"]["status"] == "ok", ok["result"]["invalid_reasons"]


def test_hailo_compile_on_x86_then_benchmark_on_the_hailo_host(fleet, lab, tmp_path):
    lab.add_hosts("hailo-dfc", 1)
    (h8,) = lab.add_hosts("hailo8", 1)
    client = start(fleet, lab, tmp_path)
    chain = {"name": "yolo-h8", "inputs": {"model": str(MODEL)}, "steps": [
        {"name": "compile", "kind": "compile", "runner": "hailo", "resources": {"pool": "hailo-dfc"},
         "params": {"hw_arch": "hailo8", "random_calib": True}},
        {"name": "bench", "kind": "benchmark", "runner": "hailo", "resources": {"pool": "hailo8"},
         "inputs": {"hef": {"step": "compile"}}, "params": {"duration_s": 1}}]}
    compiled, bench = submit_file(fleet, tmp_path, chain)
    assert compiled["state"] == "SUCCEEDED", compiled
    assert compiled["host"].startswith("dfc") and bench["host"] == h8.name
    (hef,) = [a for a in compiled["artifacts"] if a["kind"] == "hef"]
    assert hef["key_basis"]["hw_arch"] == "hailo8" and hef["key_basis"]["calib"] == "random"
    assert compiled["result"]["status"] == "invalid"
    assert "random calibration" in compiled["result"]["invalid_reasons"][0]
    assert "--use-random-calib-set" in log_of(client, compiled["id"])
    assert bench["state"] == "SUCCEEDED", bench
    m = bench["result"]["metrics"]
    assert m["fps"]["hw_only"] > 0 and m["fps"]["streaming"] > 0 and m["hw_latency_ms"] > 0
    assert m["power_w"]["avg"] > 0
    env = bench["result"]["environment"]
    assert env["device_architecture"] == "HAILO8" and env["firmware"] and env["hailort"]

    # Without a calibration set or random_calib the compile step refuses, and the chain stops.
    del chain["steps"][0]["params"]["random_calib"]
    chain["name"] = "yolo-nocalib"
    compiled, bench = submit_file(fleet, tmp_path, chain)
    assert compiled["reason"] == "runner_error" and "calibration set" in compiled["message"]
    assert bench["reason"] == "dependency_failed"


def test_a_hailo8l_device_refuses_a_hailo8_hef(fleet, lab, tmp_path):
    lab.add_hosts("hailo-dfc", 1)
    (h8l,) = lab.add_hosts("hailo8", 1)
    lab.set_tools(h8l.name, hailo_arch="HAILO8L")
    start(fleet, lab, tmp_path)
    chain = {"name": "wrong-arch", "inputs": {"model": str(MODEL)}, "steps": [
        {"name": "compile", "kind": "compile", "runner": "hailo", "resources": {"pool": "hailo-dfc"},
         "params": {"hw_arch": "hailo8", "random_calib": True}},
        {"name": "bench", "kind": "benchmark", "runner": "hailo", "resources": {"pool": "hailo8"},
         "inputs": {"hef": {"step": "compile"}}, "params": {"duration_s": 1}}]}
    compiled, bench = submit_file(fleet, tmp_path, chain)
    assert compiled["state"] == "SUCCEEDED"
    assert (bench["state"], bench["reason"]) == ("FAILED", "runner_error")
    assert "HAILO8L" in bench["message"] and "HAILO8" in bench["message"]


@pytest.mark.parametrize("missing", ["trtexec"])
def test_a_host_without_the_tool_fails_setup_naming_it(fleet, lab, tmp_path, missing):
    (host,) = lab.add_hosts("rtx5060", 1)
    (Path(host.home) / "bin" / missing).unlink()
    start(fleet, lab, tmp_path)
    (job,) = submit_file(fleet, tmp_path, {
        "name": "no-trt", "kind": "compile", "runner": "tensorrt", "resources": {"pool": "rtx"},
        "inputs": {"model": str(MODEL)}})
    assert (job["state"], job["reason"]) == ("FAILED", "setup_failed")
    assert "trtexec not found" in job["message"]


def test_a_runner_that_cannot_run_on_a_class_is_refused_at_submit(fleet, lab, tmp_path):
    lab.add_hosts("hailo8", 1)
    start(fleet, lab, tmp_path)
    path = tmp_path / "x.yaml"
    path.write_text(f"name: x\nkind: compile\nrunner: tensorrt\nresources: {{pool: hailo8}}\n"
                    f"inputs: {{model: {MODEL}}}\n")
    out = fleet.cli("submit", str(path), check=False)
    assert out.returncode != 0 and "tensorrt" in out.stderr and "hailo8" in out.stderr
