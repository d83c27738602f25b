"""The lab's device-tool stand-ins (tests/lab/tools): run directly in prepared host homes (fast,
no SSH), plus one check over SSH that lab hosts carry them where real devices do."""

from __future__ import annotations

import ast
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from fleet_runners.devtools import hailo as hailo_parser
from fleet_runners.devtools import nvidia as nvidia_parser
from fleet_runners.devtools import tegrastats as tegrastats_parser
from fleet_runners.devtools import trtexec as trtexec_parser
from tests.lab import PROFILES, Lab, LabHost, Profile
from tests.lab.fixtures import requires_sshd  # the `lab` fixture comes from conftest.py
from tests.lab.homes import host_env, prepare_home, read_state, tool_path, write_tools
from tests.lab.profiles import TOOL_SCRIPTS

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "tools"
TOOLS = REPO / "tests" / "lab" / "tools"
PYTHON = Path(os.path.realpath(sys.executable))
KINDS = ["asyncssh", pytest.param("openssh", marks=requires_sshd)]


@dataclass
class Box:
    """A prepared lab host home, its tools run as subprocesses with the host's environment."""

    home: Path
    profile: Profile
    env: dict[str, str]

    @property
    def root(self) -> Path:
        return self.home / "root"

    def tool(self, name: str) -> Path:
        return tool_path(self.home, self.profile, name)

    def run(self, *argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in argv],
            check=False,
            env=self.env,
            cwd=cwd or self.home,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def popen(self, *argv: str | Path, **kwargs: object) -> subprocess.Popen[str]:
        return subprocess.Popen(  # type: ignore[call-overload]
            [str(a) for a in argv], env=self.env, cwd=self.home, text=True, **kwargs
        )

    def set_tools(self, **changes: object) -> None:
        write_tools(self.home, changes)


@pytest.fixture
def box(tmp_path: Path) -> Callable[[str], Box]:
    """Make a prepared home of a profile (``box("rtx5060")``), no SSH server."""

    def make(profile: str) -> Box:
        spec = PROFILES[profile]
        home = tmp_path / f"{profile}-{len(list(tmp_path.iterdir()))}" / "home"
        prepare_home(home, spec, PYTHON)
        return Box(home, spec, host_env(f"{spec.host_prefix}-1", spec, home, PYTHON, "lab"))

    return make


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def write_onnx(path: Path, payload: bytes = b"\x08\x07fake onnx model") -> Path:
    path.write_bytes(payload)
    return path


def median_latency(stdout: str) -> float:
    return trtexec_parser.parse(stdout)["metrics"]["latency_ms"]["median"]


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll ``predicate`` (a file growing, a process ending) until true; fail after timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def lines_of(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


# -- installation ------------------------------------------------------------------------------


def test_profiles_install_their_tools_and_host_files(box: Callable[[str], Box]) -> None:
    rtx, jetson, hailo, dfc = (box(p) for p in ("rtx5060", "jetson-orin-nano", "hailo8",
                                                "hailo-dfc"))
    for b in (rtx, jetson, hailo, dfc):
        assert b.env["FLEET_HOST_ROOT"] == str(b.home / "root")
        assert (b.home / "root").is_dir()
        for tool in b.profile.tools:
            path = b.tool(tool)
            assert os.access(path, os.X_OK), path
            head = path.read_text().splitlines()[:5]
            assert head[0] == "#!/usr/bin/env python3"
            assert "STAND-IN" in head[1] and "tests/fixtures/tools" in " ".join(head)
    assert sorted(p.name for p in (rtx.home / "bin").iterdir()) == [
        "nvidia-smi", "python3", "trtexec"]
    # A Jetson's trtexec is where JetPack puts it, not on PATH.
    assert not (jetson.home / "bin" / "trtexec").exists()
    assert jetson.tool("trtexec") == jetson.root / "usr/src/tensorrt/bin/trtexec"
    assert shutil.which("trtexec", path=jetson.env["PATH"]) is None
    assert (jetson.root / "etc/nv_tegra_release").read_text() == (
        FIXTURES / "nv_tegra_release.txt").read_text()
    assert not (rtx.root / "etc").exists()
    assert shutil.which("hailortcli", path=hailo.env["PATH"]) == str(hailo.home / "bin/hailortcli")
    assert shutil.which("hailo", path=hailo.env["PATH"]) is None
    assert shutil.which("hailo", path=dfc.env["PATH"]) == str(dfc.home / "bin/hailo")
    assert shutil.which("hailortcli", path=dfc.env["PATH"]) is None
    assert PROFILES["hailo-dfc"].accelerator == "cpu" and PROFILES["hailo-dfc"].arch == "x86_64"
    config = json.loads((jetson.home / ".lab/tools.json").read_text())
    assert (config["gpu_name"], config["compute_capability"], config["tensorrt"]) == (
        "Orin (nvgpu)", "8.7", "10.3.0")
    assert json.loads((rtx.home / ".lab/tools.json").read_text())["gpu_name"] == (
        "NVIDIA GeForce RTX 5060")
    # Idempotent, and a configuration a test changed survives re-preparing the home.
    rtx.set_tools(gpu_name="Changed")
    prepare_home(rtx.home, rtx.profile, PYTHON)
    assert json.loads((rtx.home / ".lab/tools.json").read_text())["gpu_name"] == "Changed"


def test_stand_ins_are_python_3_8_scripts(box: Callable[[str], Box], tmp_path: Path) -> None:
    for script in set(TOOL_SCRIPTS.values()) | {"_labtool.py"}:
        ast.parse((TOOLS / script).read_text(), filename=script, feature_version=(3, 8))
    candidates = [shutil.which("python3.8"),
                  *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8")))]
    python38 = next((c for c in candidates if c and subprocess.run(
        [c, "-c", "import sys; assert sys.version_info[:2] == (3, 8)"],
        check=False, capture_output=True).returncode == 0), None)
    if python38 is None:
        pytest.skip("no Python 3.8 interpreter here to run the stand-ins with")
    jetson = box("jetson-orin-nano")
    assert ok(jetson.run(python38, jetson.tool("nvpmodel"), "-q")).stdout == "NV Power Mode: MAXN_SUPER\n2\n"
    onnx = write_onnx(tmp_path / "m.onnx")
    result = ok(jetson.run(python38, jetson.tool("trtexec"), f"--onnx={onnx}", "--fp16",
                           f"--saveEngine={tmp_path / 'm.plan'}", "--duration=1"))
    assert "&&&& PASSED" in result.stdout


# -- trtexec -----------------------------------------------------------------------------------


def test_trtexec_builds_an_engine_and_keeps_a_timing_cache(box: Callable[[str], Box],
                                                           tmp_path: Path) -> None:
    rtx = box("rtx5060")
    onnx = write_onnx(tmp_path / "model.onnx")
    engine, cache = tmp_path / "model.plan", tmp_path / "timing.cache"
    args = [f"--onnx={onnx}", f"--saveEngine={engine}", "--fp16", "--skipInference",
            "--minShapes=input:1x3x224x224", "--optShapes=input:4x3x224x224",
            "--maxShapes=input:8x3x224x224", "--memPoolSize=workspace:2048",
            "--builderOptimizationLevel=5", f"--timingCacheFile={cache}"]
    first = ok(rtx.run("trtexec", *args))
    out = first.stdout
    assert out.startswith("&&&& RUNNING TensorRT.trtexec [TensorRT v100200] # trtexec --onnx=")
    assert out.rstrip().splitlines()[-1].startswith("&&&& PASSED TensorRT.trtexec [TensorRT v100200]")
    assert "=== Device Information ===" in out and "Selected Device: NVIDIA GeForce RTX 5060" in out
    device = trtexec_parser.parse_device(out)
    assert (device["name"], device["compute_capability"], device["sms"], device["memory_mib"]) == (
        "NVIDIA GeForce RTX 5060", "12.0", 30, 7968)
    assert "TensorRT version: 10.2.0" in out and "Engine built in" in out
    assert f"Could not read timing cache from: {cache}" in first.stderr
    assert f"bytes of timing cache to {cache}" in out
    header = json.loads(engine.read_bytes().split(b"\n", 1)[0])
    assert header["fleet_lab_engine"] == 1
    assert (header["tensorrt"], header["gpu"], header["compute_capability"]) == (
        "10.2.0", "NVIDIA GeForce RTX 5060", "12.0")
    assert header["precision"] == ["fp16"] and header["builder_optimization_level"] == 5
    assert header["shapes"] == {"min": "input:1x3x224x224", "opt": "input:4x3x224x224",
                                "max": "input:8x3x224x224"}
    assert header["mem_pools_mib"] == {"workspace": 2048.0}
    assert len(engine.read_bytes()) > 1024
    second = ok(rtx.run("trtexec", *args))
    size = re.search(r"Loaded (\d+) bytes of timing cache from " + re.escape(str(cache)),
                     second.stdout)
    assert size and int(size.group(1)) > 0
    built = [float(re.search(r"Engine built in ([0-9.]+) sec", r.stdout).group(1))
             for r in (first, second)]
    assert built[1] < built[0]  # the simulated build is faster with a warm cache


def test_trtexec_without_a_readable_model_fails(box: Callable[[str], Box], tmp_path: Path) -> None:
    rtx = box("rtx5060")
    result = rtx.run("trtexec", f"--onnx={tmp_path / 'missing.onnx'}",
                     f"--saveEngine={tmp_path / 'e.plan'}")
    assert result.returncode == 1
    assert "Input file cannot be found" in result.stderr and "[E] Failed to parse onnx file" in \
        result.stderr
    assert result.stdout.rstrip().splitlines()[-1].startswith("&&&& FAILED TensorRT.trtexec")
    assert not (tmp_path / "e.plan").exists()


def test_tensorrt_11_refuses_precision_flags(box: Callable[[str], Box], tmp_path: Path) -> None:
    rtx = box("rtx5060")
    rtx.set_tools(tensorrt="11.0.0")
    onnx = write_onnx(tmp_path / "m.onnx")
    for flag in ("--fp16", "--int8", "--best", "--bf16", "--fp8"):
        result = rtx.run("trtexec", f"--onnx={onnx}", flag, f"--saveEngine={tmp_path / 'e.plan'}")
        assert result.returncode != 0
        assert f"[E] Unknown option: {flag} " in result.stderr
        assert "&&&& FAILED TensorRT.trtexec [TensorRT v110000]" in result.stdout
        assert trtexec_parser.unknown_option(result.stdout + result.stderr) == flag
    assert not (tmp_path / "e.plan").exists()
    result = ok(rtx.run("trtexec", f"--onnx={onnx}", f"--saveEngine={tmp_path / 'e.plan'}",
                        "--skipInference"))
    assert "Precision: Strongly Typed" in result.stdout
    assert json.loads((tmp_path / "e.plan").read_bytes().split(b"\n")[0])["precision"] == []


def test_trtexec_refuses_an_engine_from_another_version_or_device(
    box: Callable[[str], Box], tmp_path: Path
) -> None:
    rtx = box("rtx5060")
    engine = tmp_path / "m.plan"
    ok(rtx.run("trtexec", f"--onnx={write_onnx(tmp_path / 'm.onnx')}", f"--saveEngine={engine}",
               "--skipInference"))
    rtx.set_tools(tensorrt="10.3.0")
    result = rtx.run("trtexec", f"--loadEngine={engine}")
    assert result.returncode == 1 and "Version tag does not match" in result.stderr
    assert "Engine deserialization failed" in result.stderr
    assert trtexec_parser.parse_status(result.stdout) == "failed"
    rtx.set_tools(tensorrt="10.2.0", compute_capability="8.9")
    result = rtx.run("trtexec", f"--loadEngine={engine}")
    assert result.returncode == 1
    assert ("The engine plan file is generated on an incompatible device, expecting compute 8.9 "
            "got compute 12.0") in result.stderr
    # Same compute capability, another GPU model: TensorRT only warns.
    rtx.set_tools(compute_capability="12.0", gpu_name="NVIDIA GeForce RTX 5060 Ti")
    result = ok(rtx.run("trtexec", f"--loadEngine={engine}", "--duration=0"))
    assert "across different models of devices is not recommended" in result.stderr
    not_an_engine = write_onnx(tmp_path / "junk.plan", b"\x00\x01junk")
    result = rtx.run("trtexec", f"--loadEngine={not_an_engine}")
    assert result.returncode == 1 and "Magic Tag does not match" in result.stderr
    result = rtx.run("trtexec", f"--loadEngine={tmp_path / 'none.plan'}")
    assert result.returncode == 1 and "Error opening engine file" in result.stderr


def test_trtexec_benchmark_honours_percentiles_and_export_times(
    box: Callable[[str], Box], tmp_path: Path
) -> None:
    rtx = box("rtx5060")
    engine, times = tmp_path / "m.plan", tmp_path / "times.json"
    ok(rtx.run("trtexec", f"--onnx={write_onnx(tmp_path / 'm.onnx')}", f"--saveEngine={engine}",
               "--skipInference"))
    result = ok(rtx.run("trtexec", f"--loadEngine={engine}", "--warmUp=100", "--duration=2",
                        "--iterations=50", "--percentile=50,99.9", f"--exportTimes={times}",
                        "--avgRuns=20", "--useSpinWait", "--shapes=input:1x3x224x224"))
    parsed = trtexec_parser.parse(result.stdout + result.stderr)
    assert parsed["status"] == "passed" and parsed["version"]["version"] == "10.2.0"
    latency = parsed["metrics"]["latency_ms"]
    assert set(latency) == {"min", "max", "mean", "median", "p50", "p99.9"}
    assert re.search(r"Latency: min = .*, percentile\(50%\) = .*, percentile\(99\.9%\) = [0-9.]+ ms$",
                     result.stdout, re.MULTILINE)
    assert "End-to-End Host Latency" not in result.stdout
    assert "Trace averages of 20 runs:" in result.stdout
    queries = int(re.search(r"Timing trace has (\d+) queries", result.stdout).group(1))
    trace = json.loads(times.read_text())
    assert len(trace) == queries >= 50
    assert set(trace[0]) == {"startEnqMs", "endEnqMs", "startH2dMs", "endH2dMs", "startComputeMs",
                             "endComputeMs", "startD2hMs", "endD2hMs", "h2dMs", "computeMs",
                             "d2hMs", "latencyMs"}
    stats = trtexec_parser.summarize_times(trace)
    assert stats["samples"] == queries
    assert stats["latency_ms"]["min"] == pytest.approx(latency["min"], rel=1e-4)
    assert stats["latency_ms"]["max"] == pytest.approx(latency["max"], rel=1e-4)
    assert stats["latency_ms"]["mean"] == pytest.approx(latency["mean"], rel=1e-3)
    assert stats["latency_ms"]["median"] == pytest.approx(latency["median"], rel=0.05)
    throughput = parsed["metrics"]["throughput_per_s"]
    walltime = parsed["metrics"]["host_walltime_s"]
    assert throughput == pytest.approx(queries / walltime, rel=1e-3)
    assert 1000 / throughput == pytest.approx(latency["mean"], rel=0.3)
    # The warnings are trtexec's own, decided by its own rules (enqueue-bound by default).
    assert any("bound by Enqueue Time" in w for w in parsed["warnings"])
    graph = ok(rtx.run("trtexec", f"--loadEngine={engine}", "--useCudaGraph", "--duration=1"))
    assert not any("Enqueue" in w for w in trtexec_parser.parse_warnings(graph.stderr))


def test_trtexec_latency_follows_precision_device_and_power_mode(
    box: Callable[[str], Box], tmp_path: Path
) -> None:
    rtx = box("rtx5060")
    onnx = write_onnx(tmp_path / "m.onnx")
    medians = {}
    for flag in ("", "--fp16", "--int8"):
        result = ok(rtx.run("trtexec", f"--onnx={onnx}", *([flag] if flag else []),
                            "--duration=1"))
        medians[flag or "fp32"] = median_latency(result.stdout)
    assert medians["--fp16"] / medians["fp32"] == pytest.approx(0.6, rel=0.15)
    assert medians["--int8"] / medians["fp32"] == pytest.approx(0.4, rel=0.15)
    jetson = box("jetson-orin-nano")
    trtexec = jetson.tool("trtexec")
    fast = median_latency(ok(jetson.run(trtexec, f"--onnx={onnx}", "--duration=1")).stdout)
    assert fast > medians["fp32"] * 1.5  # an Orin Nano is slower than an RTX 5060
    ok(jetson.run("nvpmodel", "-m", "0"))
    slow = median_latency(ok(jetson.run(trtexec, f"--onnx={onnx}", "--duration=1")).stdout)
    assert slow > fast * 1.3
    # Deterministic: the same engine and host state give the same figures.
    again = median_latency(ok(jetson.run(trtexec, f"--onnx={onnx}", "--duration=1")).stdout)
    assert again == slow


def test_trtexec_8x_prints_one_percentile_and_end_to_end(box: Callable[[str], Box],
                                                          tmp_path: Path) -> None:
    jetson = box("jetson-orin-nano")
    jetson.set_tools(tensorrt="8.5.2")
    times = tmp_path / "t.json"
    result = ok(jetson.run(jetson.tool("trtexec"), f"--onnx={write_onnx(tmp_path / 'm.onnx')}",
                           "--int8", f"--exportTimes={times}", "--duration=1"))
    assert "[TensorRT v8502] # /usr/src/tensorrt/bin/trtexec --onnx=" in result.stdout
    metrics = trtexec_parser.parse(result.stdout)["metrics"]
    assert set(metrics["latency_ms"]) == {"min", "max", "mean", "median", "p99"}
    assert "end_to_end_ms" in metrics
    assert "endToEndMs" in json.loads(times.read_text())[0]


# -- nvidia-smi --------------------------------------------------------------------------------


def test_nvidia_smi_queries_lists_and_locks_clocks(box: Callable[[str], Box]) -> None:
    rtx = box("rtx5060")
    fields = nvidia_parser.SMI_FIELDS
    query = [f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]
    (gpu,) = nvidia_parser.parse_smi_query(ok(rtx.run("nvidia-smi", *query)).stdout, fields)
    assert gpu["name"] == "NVIDIA GeForce RTX 5060" and gpu["driver_version"] == "575.51.03"
    assert gpu["compute_cap"] == "12.0" and gpu["memory.total"] == 7968
    assert gpu["clocks.max.sm"] == 3090 and gpu["power.limit"] == 145.0
    assert gpu["uuid"].startswith("GPU-") and gpu["pstate"] == "P8"
    reordered = ok(rtx.run("nvidia-smi", "--query-gpu=memory.total,name",
                           "--format=csv,noheader,nounits")).stdout
    assert reordered == "7968, NVIDIA GeForce RTX 5060\n"
    with_units = ok(rtx.run("nvidia-smi", "--query-gpu=name,memory.total", "--format=csv")).stdout
    assert with_units.splitlines() == ["name, memory.total [MiB]",
                                       "NVIDIA GeForce RTX 5060, 7968 MiB"]
    bad = rtx.run("nvidia-smi", "--query-gpu=name,bogus.field", "--format=csv")
    assert bad.returncode == 2
    assert bad.stdout.startswith('Field "bogus.field" is not a valid field to query.')
    listing = ok(rtx.run("nvidia-smi", "-L")).stdout
    assert listing == f"GPU 0: NVIDIA GeForce RTX 5060 (UUID: {gpu['uuid']})\n"
    table = ok(rtx.run("nvidia-smi")).stdout
    assert re.search(r"Driver Version: 575\.51\.03\s+CUDA Version: 12\.9", table)
    assert nvidia_parser.parse_smi_version(table) == {
        "smi_version": "575.51.03", "driver_version": "575.51.03", "cuda": "12.9"}
    ok(rtx.run("nvidia-smi", "-lgc", "2505,2505"))
    locked = ok(rtx.run("nvidia-smi", "--query-gpu=clocks.sm", "--format=csv,noheader,nounits"))
    assert locked.stdout == "2505\n" and read_state(rtx.home)["clocks_locked"] is True
    ok(rtx.run("nvidia-smi", "--reset-gpu-clocks"))
    assert read_state(rtx.home)["clocks_locked"] is False
    rtx.set_tools(gpu_name="NVIDIA RTX PRO 6000", driver="580.65.06", cuda="13.0")
    assert ok(rtx.run("nvidia-smi", "--query-gpu=name,driver_version",
                      "--format=csv,noheader")).stdout == "NVIDIA RTX PRO 6000, 580.65.06\n"


# -- Jetson tools --------------------------------------------------------------------------------


def _structure(line: str) -> str:
    """A tegrastats line with its numbers and timestamp blanked: its layout."""
    return re.sub(r"\d+(\.\d+)?", "N", line)


def test_tegrastats_prints_the_recorded_layout_every_interval_until_sigterm(
    box: Callable[[str], Box],
) -> None:
    jetson = box("jetson-orin-nano")
    recorded = (FIXTURES / "tegrastats-orin-nano-jp6.txt").read_text().strip()
    proc = jetson.popen("tegrastats", "--interval", "30", stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().rstrip("\n") for _ in range(4)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        proc.wait()
    assert all(_structure(line) == _structure(recorded) for line in lines), lines
    assert len(set(lines)) == len(lines)  # values move a little from sample to sample
    samples = [tegrastats_parser.parse_line(line) for line in lines]
    assert all(s["gpu_load_pct"] == 0 for s in samples)
    assert all(abs(s["rails"]["VDD_IN"]["cur_mw"] - 5704) < 400 for s in samples)
    assert tegrastats_parser.summarize(lines)["power_source"] == "VDD_IN"


def test_tegrastats_shows_a_benchmark_and_runs_as_a_daemon(box: Callable[[str], Box],
                                                            tmp_path: Path) -> None:
    jetson = box("jetson-orin-nano")
    log = tmp_path / "tegrastats.log"
    proc = jetson.popen("tegrastats", "--interval=20", f"--logfile={log}")
    try:
        wait_for(lambda: len(lines_of(log)) >= 2, "idle samples")
        ok(jetson.run(jetson.tool("trtexec"), f"--onnx={write_onnx(tmp_path / 'm.onnx')}",
                      "--duration=1"))
        seen = len(lines_of(log))
        wait_for(lambda: len(lines_of(log)) > seen + 1, "two samples after the benchmark")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    samples = [tegrastats_parser.parse_line(line) for line in lines_of(log)]
    idle = [s for s in samples if s["gpu_load_pct"] == 0]
    busy = [s for s in samples if s["gpu_load_pct"] > 90]
    # Idle before the run, busy while it ran, idle again once a sample is wholly after it.
    assert samples[0] in idle and samples[seen + 1] in idle and busy
    assert min(s["rails"]["VDD_IN"]["cur_mw"] for s in busy) > \
        max(s["rails"]["VDD_IN"]["cur_mw"] for s in idle) + 5000
    assert all(s["gpu_freq_mhz"] == 1020 for s in busy)  # MAXN_SUPER's GPU maximum
    during = tegrastats_parser.summarize(lines_of(log))
    at_rest = tegrastats_parser.summarize([line for line in lines_of(log)
                                           if " GR3D_FREQ 0%" in line])
    assert during["power_w"]["max"] > at_rest["power_w"]["max"]
    assert during["gpu_load_pct"]["max"] > 90 and at_rest["gpu_load_pct"]["max"] == 0

    daemon_log = tmp_path / "daemon.log"
    ok(jetson.run("tegrastats", "--start", "--interval", "20", "--logfile", daemon_log))
    pid_dir = jetson.home / ".lab" / "tegrastats"
    try:
        wait_for(lambda: len(lines_of(daemon_log)) >= 2, "the daemon's samples")
        (pid_file,) = pid_dir.iterdir()
        pid = int(pid_file.read_text())
        ok(jetson.run("tegrastats", "--stop"))
        wait_for(lambda: not alive(pid), "the daemon to exit")
        assert list(pid_dir.iterdir()) == []
    finally:
        jetson.run("tegrastats", "--stop")


def test_nvpmodel_sets_and_queries_the_power_mode(box: Callable[[str], Box]) -> None:
    jetson = box("jetson-orin-nano")
    recorded = (FIXTURES / "nvpmodel-q.txt").read_text()
    assert ok(jetson.run("nvpmodel", "-q")).stdout == recorded
    assert ok(jetson.run("nvpmodel", "-m", "0")).stdout == ""
    query = ok(jetson.run("nvpmodel", "-q")).stdout
    assert query == "NV Power Mode: 15W\n0\n"
    assert nvidia_parser.parse_nvpmodel(query) == {"mode_name": "15W", "mode_id": 0}
    ok(jetson.run("nvpmodel", "-m", "1"))
    assert ok(jetson.run("nvpmodel", "-q")).stdout == "NV Power Mode: 25W\n1\n"
    bad = jetson.run("nvpmodel", "-m", "9")
    assert bad.returncode == 1 and "Invalid mode" in bad.stderr
    assert read_state(jetson.home)["power_mode_id"] == 1
    # A test can set the mode through the config too; that overrides what nvpmodel set.
    jetson.set_tools(power_mode_id=2, power_mode="MAXN_SUPER")
    assert ok(jetson.run("nvpmodel", "-q")).stdout == recorded


def test_jetson_clocks_locks_shows_and_restores(box: Callable[[str], Box]) -> None:
    jetson = box("jetson-orin-nano")
    missing = jetson.run("jetson_clocks", "--restore")
    assert missing.returncode == 1 and "l4t_dfs.conf file not found" in missing.stdout

    def show() -> dict[str, object]:
        text = ok(jetson.run("jetson_clocks", "--show")).stdout
        recorded = (FIXTURES / "jetson_clocks-show.txt").read_text().splitlines()
        assert text.splitlines()[1] == recorded[1]  # Online CPUs: 0-5
        return nvidia_parser.parse_jetson_clocks(text)

    before = show()
    assert before["soc"] == "tegra234" and "Orin Nano" in str(before["machine"])
    assert before["locked"] is False and before["power_mode"] == "MAXN_SUPER"
    cpus = before["cpus"]
    assert isinstance(cpus, list) and len(cpus) == 6
    assert all(c["cur_khz"] < c["max_khz"] for c in cpus)
    ok(jetson.run("jetson_clocks"))
    assert read_state(jetson.home)["clocks_locked"] is True
    locked = show()
    assert locked["locked"] is True
    locked_cpus = locked["cpus"]
    assert isinstance(locked_cpus, list)
    assert all(c["cur_khz"] == c["max_khz"] == c["min_khz"] for c in locked_cpus)
    gpu = locked["gpu"]
    assert isinstance(gpu, dict) and gpu["cur_hz"] == gpu["max_hz"] == 1020000000
    ok(jetson.run("jetson_clocks", "--restore"))
    assert show()["locked"] is False and read_state(jetson.home)["clocks_locked"] is False


# -- Hailo -----------------------------------------------------------------------------------------


def compile_hef(dfc: Box, workdir: Path, arch: str, name: str = "yolov8n") -> Path:
    """Run the DFC stand-in's chain (parser -> optimize -> compiler) for ``arch``."""
    workdir.mkdir(parents=True, exist_ok=True)
    onnx = write_onnx(workdir / f"{name}.onnx", name.encode())
    ok(dfc.run("hailo", "parser", "onnx", onnx, "--hw-arch", arch, cwd=workdir))
    ok(dfc.run("hailo", "optimize", f"{name}.har", "--hw-arch", arch, "--use-random-calib-set",
               cwd=workdir))
    ok(dfc.run("hailo", "compiler", f"{name}_optimized.har", "--hw-arch", arch, cwd=workdir))
    return workdir / f"{name}.hef"


def test_hailo_dfc_parses_optimizes_and_compiles(box: Callable[[str], Box], tmp_path: Path) -> None:
    dfc = box("hailo-dfc")
    version = ok(dfc.run("hailo", "--version")).stdout
    assert "Hailo Dataflow Compiler v3.31.0" in version
    work = tmp_path / "work"
    work.mkdir()
    onnx = write_onnx(work / "resnet.onnx")
    parsed = ok(dfc.run("hailo", "parser", "onnx", onnx, "--hw-arch", "hailo8l", cwd=work))
    assert "[info] Translation completed on ONNX model resnet" in parsed.stdout
    assert f"[info] Saved HAR to: {work / 'resnet.har'}" in parsed.stdout
    refused = dfc.run("hailo", "optimize", "resnet.har", "--hw-arch", "hailo8l", cwd=work)
    assert refused.returncode == 2
    assert "one of the arguments --calib-set-path --use-random-calib-set is required" in \
        refused.stderr
    assert not (work / "resnet_optimized.har").exists()
    unoptimized = dfc.run("hailo", "compiler", "resnet.har", cwd=work)
    assert unoptimized.returncode == 1 and "not optimized" in unoptimized.stdout
    calib = work / "calib.npy"
    calib.write_bytes(b"\x93NUMPY fake calibration set")
    ok(dfc.run("hailo", "optimize", "resnet.har", "--hw-arch", "hailo8l", "--calib-set-path",
               calib, cwd=work))
    compiled = ok(dfc.run("hailo", "compiler", "resnet_optimized.har", "--output-dir", "out",
                          cwd=work))
    assert "[info]" in compiled.stdout
    header = json.loads((work / "out" / "resnet.hef").read_bytes().split(b"\n")[0])
    assert header["fleet_lab_hef"] == 1 and header["arch"] == "HAILO8L"
    assert header["net_name"] == "resnet" and header["dfc"] == "3.31.0"
    random_calib = compile_hef(dfc, tmp_path / "other", "hailo8")
    assert json.loads(random_calib.read_bytes().split(b"\n")[0])["arch"] == "HAILO8"


def test_hailortcli_identifies_the_device_and_parses_hefs(box: Callable[[str], Box],
                                                          tmp_path: Path) -> None:
    hailo = box("hailo8")
    assert ok(hailo.run("hailortcli", "--version")).stdout == "HailoRT-CLI version 4.23.0\n"
    identify = ok(hailo.run("hailortcli", "fw-control", "identify")).stdout
    recorded = (FIXTURES / "hailortcli-fw-control-identify.txt").read_text()
    assert [line.split(":")[0] for line in identify.splitlines()] == [
        line.split(":")[0] for line in recorded.splitlines()]
    facts = hailo_parser.parse_identify(identify)
    assert facts["architecture"] == "HAILO8" and facts["board_name"] == "Hailo-8"
    assert facts["firmware_version"] == "4.23.0"
    hailo.set_tools(hailo_arch="HAILO8L")
    facts = hailo_parser.parse_identify(ok(hailo.run("hailortcli", "fw-control", "identify")).stdout)
    assert facts["architecture"] == "HAILO8L" and facts["board_name"] == "Hailo-8"
    hef = compile_hef(box("hailo-dfc"), tmp_path / "dfc", "hailo8l")
    parsed = ok(hailo.run("hailortcli", "parse-hef", hef)).stdout
    assert parsed.splitlines()[0] == "Architecture HEF was compiled for: HAILO8L"
    assert "Network group name: yolov8n" in parsed
    assert hailo_parser.parse_hef_arch(parsed) == "HAILO8L"
    missing = hailo.run("hailortcli", "parse-hef", tmp_path / "none.hef")
    assert missing.returncode != 0 and "File does not exist" in missing.stderr
    junk = hailo.run("hailortcli", "parse-hef", write_onnx(tmp_path / "junk.hef"))
    assert junk.returncode != 0 and "HEF magic does not match" in junk.stderr


def test_hailortcli_benchmark_csv_matches_its_summary(box: Callable[[str], Box],
                                                      tmp_path: Path) -> None:
    hailo = box("hailo8")
    hef = compile_hef(box("hailo-dfc"), tmp_path / "dfc", "hailo8")
    csv = tmp_path / "bench.csv"
    result = ok(hailo.run("hailortcli", "benchmark", hef, "--csv", csv, "-t", "5"))
    assert "\x1b[F\x1b[2K" in result.stdout  # progress lines redraw like the real tool's
    assert "overcurrent protection" in result.stderr  # HailoRT's warning when measuring power
    stdout = hailo_parser.parse_benchmark_stdout(result.stdout)
    text = csv.read_text()
    assert text.splitlines()[0] == ("net_name,fps,hw_only_fps,num_of_frames,num_of_frames_hw_only,"
                                    "hw_latency,overall_latency,min_power,average_power,max_power")
    table = hailo_parser.parse_benchmark_csv(text)
    assert table["net_name"] == stdout["net_name"] == "yolov8n"
    assert table["fps"] == pytest.approx(stdout["fps"])
    assert table["hw_latency_ms"] == pytest.approx(stdout["hw_latency_ms"])
    assert table["frames"] == stdout["frames"] and table["frames_hw_only"] == stdout["frames_hw_only"]
    assert table["power_w"]["avg"] == pytest.approx(stdout["power_w"]["avg"])
    assert table["power_w"]["max"] == pytest.approx(stdout["power_w"]["max"])
    # Without a power monitor (or with --no-power) there are no power figures anywhere.
    hailo.set_tools(power_monitor=False)
    result = ok(hailo.run("hailortcli", "benchmark", hef, "--csv", csv, "-t", "2"))
    assert "Power in streaming mode" not in result.stdout and "power_w" not in \
        hailo_parser.parse_benchmark_csv(csv.read_text())
    run = ok(hailo.run("hailortcli", "run", hef)).stdout
    facts = hailo_parser.parse_run(run)
    assert facts["net_name"] == "yolov8n" and facts["frames"] > 0 and facts["fps"] > 0


@pytest.mark.parametrize(
    ("device", "hef_arch", "runs"),
    [
        ("HAILO8", "hailo8", True),
        ("HAILO8", "hailo8r", True),
        ("HAILO8", "hailo8l", True),
        ("HAILO8L", "hailo8l", True),
        ("HAILO8L", "hailo8", False),
        ("HAILO8L", "hailo8r", False),
    ],
)
def test_hailortcli_checks_hef_compatibility(box: Callable[[str], Box], tmp_path: Path,
                                             device: str, hef_arch: str, runs: bool) -> None:
    hailo = box("hailo8")
    hailo.set_tools(hailo_arch=device)
    hef = compile_hef(box("hailo-dfc"), tmp_path / "dfc", hef_arch)
    csv = tmp_path / "b.csv"
    result = hailo.run("hailortcli", "benchmark", hef, "--csv", csv, "-t", "1")
    assert (result.returncode == 0) is runs
    assert hailo_parser.hef_compatible(hef_arch, device)[0] is runs
    if runs:
        assert csv.exists()
    else:
        assert result.returncode == 93 and not csv.exists()
        assert (f"HEF format is not compatible with device. Device arch: {device}"
                in result.stderr)
        assert "HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE(93)" in result.stderr
        assert hailo.run("hailortcli", "run", hef).returncode == 93


# -- configured failures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "tool", "argv"),
    [
        ("rtx5060", "trtexec", ["--onnx=m.onnx"]),
        ("rtx5060", "nvidia-smi", ["--query-gpu=name", "--format=csv"]),
        ("jetson-orin-nano", "tegrastats", ["--interval", "10"]),
        ("jetson-orin-nano", "nvpmodel", ["-q"]),
        ("jetson-orin-nano", "jetson_clocks", ["--show"]),
        ("hailo8", "hailortcli", ["scan"]),
        ("hailo-dfc", "hailo", ["parser", "onnx", "m.onnx"]),
    ],
)
def test_a_tool_can_be_configured_to_fail(box: Callable[[str], Box], profile: str, tool: str,
                                          argv: list[str]) -> None:
    host = box(profile)
    write_onnx(host.home / "m.onnx")
    host.set_tools(fail=tool)
    result = host.run(host.tool(tool), *argv)
    assert result.returncode == 1
    assert "configured to fail" in result.stdout + result.stderr
    host.set_tools(fail=None)
    if tool != "tegrastats":  # it would run until stopped
        assert host.run(host.tool(tool), *argv).returncode == 0


# -- over SSH ---------------------------------------------------------------------------------------


@asynccontextmanager
async def connect(lab: Lab, host: LabHost) -> AsyncIterator[asyncssh.SSHClientConnection]:
    async with asyncssh.connect(
        host.address,
        host.port,
        username=lab.user,
        client_keys=[str(lab.client_key_path)],
        known_hosts=str(lab.known_hosts_path),
    ) as conn:
        yield conn


@pytest.mark.parametrize("kind", KINDS)
async def test_lab_hosts_carry_device_tools_over_ssh(lab: Lab, kind: str) -> None:
    (jetson,) = lab.add_hosts("jetson-orin-nano", 1, kind)
    (rtx,) = lab.add_hosts("rtx5060", 1, kind)
    async with connect(lab, jetson) as conn:
        result = await conn.run(
            'echo "$FLEET_HOST_ROOT"; cat "$FLEET_HOST_ROOT/etc/nv_tegra_release";'
            ' test -x "$FLEET_HOST_ROOT/usr/src/tensorrt/bin/trtexec" && echo trtexec-there;'
            ' command -v trtexec || echo no-trtexec-on-path; nvpmodel -q;'
            ' "$FLEET_HOST_ROOT/usr/src/tensorrt/bin/trtexec" --help | head -1',
            check=True,
        )
    root, *rest = str(result.stdout).splitlines()
    assert root == str(lab.host_root(jetson.name)) == str(jetson.home / "root")
    release = (FIXTURES / "nv_tegra_release.txt").read_text().splitlines()
    assert rest[: len(release)] == release
    assert rest[len(release):][:4] == ["trtexec-there", "no-trtexec-on-path",
                                       "NV Power Mode: MAXN_SUPER", "2"]
    assert rest[len(release) + 4].startswith(
        "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # /usr/src/tensorrt/bin/trtexec --help")
    async with connect(lab, rtx) as conn:
        result = await conn.run(
            "command -v nvidia-smi; nvidia-smi --query-gpu=name,compute_cap"
            " --format=csv,noheader", check=True)
        assert str(result.stdout).splitlines() == [
            str(rtx.home / "bin" / "nvidia-smi"), "NVIDIA GeForce RTX 5060, 12.0"]
        # A test changes a host's tools through the lab; the next run sees it.
        config = lab.set_tools(rtx.name, gpu_name="NVIDIA GeForce RTX 5070", fail=None)
        assert config["gpu_name"] == lab.tools(rtx.name)["gpu_name"] == "NVIDIA GeForce RTX 5070"
        result = await conn.run("nvidia-smi --query-gpu=name --format=csv,noheader", check=True)
        assert result.stdout == "NVIDIA GeForce RTX 5070\n"
        await conn.run("nvidia-smi -lgc 2000,2000", check=True)
    assert lab.tool_state(rtx.name)["clocks_locked"] is True


def test_lab_set_tools_resets_what_the_tools_changed(lab: Lab) -> None:
    (jetson,) = lab.add_hosts("jetson-orin-nano", 1)
    env = host_env(jetson.name, jetson.profile, jetson.home, lab.python, lab.user)

    def run(*argv: str) -> str:
        return subprocess.run(argv, env=env, cwd=jetson.home, capture_output=True, text=True,
                              check=True).stdout

    run("nvpmodel", "-m", "0")
    run("jetson_clocks")
    state = lab.tool_state(jetson.name)
    assert (state["power_mode_id"], state["clocks_locked"]) == (0, True)
    lab.set_tools(jetson.name, power_mode_id=1, power_mode="25W", clocks_locked=False)
    assert run("nvpmodel", "-q") == "NV Power Mode: 25W\n1\n"
    assert nvidia_parser.parse_jetson_clocks(run("jetson_clocks", "--show"))["locked"] is False


def test_importing_the_lab_leaves_the_test_process_sigpipe_alone():
    """The stand-ins die quietly on a closed pipe; the pytest process importing the lab must
    not (it would die of SIGPIPE on the first write to a closed socket)."""
    import signal
    import subprocess
    import sys

    code = "import signal, tests.lab, tests.lab.profiles; print(int(signal.getsignal(signal.SIGPIPE)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=str(Path(__file__).resolve().parent.parent))
    assert out.stdout.strip() == str(int(signal.SIG_IGN)), out.stderr
