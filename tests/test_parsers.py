"""Device-tool parsers (runners/devtools) against recorded real output and its documented variants.

Fixtures: tests/fixtures/tools/*.txt (see SOURCES.md there). Variants are built here from the
fixtures: other TensorRT versions, no timestamps, CRLF, other Jetson boards, ANSI codes, ...
"""

import ast
import re
from pathlib import Path

import pytest

from fleet_runners.devtools import hailo, importers, nvidia, ortperf, tegrastats, trtexec

TOOLS = Path(__file__).parent / "fixtures" / "tools"
DEVTOOLS = Path(__file__).parent.parent / "runners" / "devtools"


def fixture(name):
    return (TOOLS / name).read_text()


SUMMARY = fixture("trtexec-10.x-summary.txt")
WARNINGS = fixture("trtexec-10.x-warnings.txt")
HEADER = fixture("trtexec-header-device.txt")
FOOTER = fixture("trtexec-passed-footer.txt")
BENCH = fixture("hailortcli-4.x-benchmark.txt")
IDENTIFY = fixture("hailortcli-fw-control-identify.txt")
JP6 = fixture("tegrastats-orin-nano-jp6.txt")
JP4 = fixture("tegrastats-jp4.txt")

LATENCY_10X = {"min": 5.38672, "max": 13.3664, "mean": 7.60628, "median": 7.16092,
               "p90": 10.2996, "p95": 10.8698, "p99": 12.9675}


# ---------------------------------------------------------------- trtexec


def test_trtexec_summary_fixture():
    s = trtexec.parse_summary(SUMMARY)
    assert s["throughput_per_s"] == 130.298
    assert s["latency_ms"] == LATENCY_10X
    assert s["enqueue_ms"] == {"min": 2.72876, "max": 15.0201, "mean": 7.63062,
                               "median": 7.86694, "p90": 10.1792, "p95": 11.7217, "p99": 14.1848}
    assert s["h2d_ms"]["min"] == 0.0065918 and s["h2d_ms"]["p99"] == 0.0515137
    assert s["gpu_compute_ms"] == {"min": 5.34595, "max": 13.3388, "mean": 7.58404,
                                   "median": 7.14139, "p90": 10.2881, "p95": 10.8175,
                                   "p99": 12.9485}
    assert s["d2h_ms"]["max"] == 0.110596 and s["d2h_ms"]["median"] == 0.00439453
    assert s["host_walltime_s"] == 3.00082
    assert s["total_gpu_compute_s"] == 2.96536
    assert "end_to_end_ms" not in s and "gpu_compute_cv_pct" not in s


def test_trtexec_warnings_fixture():
    assert trtexec.parse_warnings(WARNINGS) == [
        ("Throughput may be bound by Enqueue Time rather than GPU Compute and the GPU may be "
         "under-utilized. If not already in use, --useCudaGraph (utilize CUDA graphs where "
         "possible) may increase the throughput."),
        ("GPU compute time is unstable, with coefficient of variance = 1.22015%. If not already "
         "in use, locking GPU clock frequency or adding --useSpinWait may improve the stability."),
    ]
    assert trtexec.coefficient_of_variation_pct(WARNINGS) == 1.22015
    assert trtexec.parse_summary(WARNINGS)["gpu_compute_cv_pct"] == 1.22015


def test_trtexec_header_device_fixture():
    # The banner tag (v100200) wins over the later "TensorRT version: 8.6.3" line.
    assert trtexec.parse_version(HEADER) == {"version": "10.2.0", "major": 10, "minor": 2,
                                             "patch": 0}
    assert trtexec.parse_device(HEADER) == {"name": "NVIDIA GeForce RTX 2080",
                                            "compute_capability": "7.5", "sms": 46,
                                            "memory_mib": 7974}
    assert trtexec.parse_argv(HEADER) == (
        r"D:\TensorRT-10.2.0.19\bin\trtexec.exe --loadEngine=FM_P_D_fp16.engine "
        "--shapes=ref_y:1x128x100x160,c1:1x48x1600x2560,c2:1x64x800x1280,c3:1x96x400x640")
    assert trtexec.parse_status(HEADER) is None


def test_trtexec_footer_fixture():
    assert trtexec.parse_status(FOOTER) == "passed"
    assert trtexec.parse_version(FOOTER)["version"] == "10.10.0"
    assert trtexec.parse_argv(FOOTER).startswith("trtexec --onnx=/workspace/s2v_trt/stem.onnx")


@pytest.mark.parametrize("tag, version", [("v100200", "10.2.0"), ("v101000", "10.10.0"),
                                          ("v8502", "8.5.2"), ("v8601", "8.6.1"),
                                          ("v7103", "7.1.3")])
def test_trtexec_version_tags(tag, version):
    banner = f"&&&& RUNNING TensorRT.trtexec [TensorRT {tag}] # trtexec"
    assert trtexec.parse_version(banner)["version"] == version


def test_trtexec_version_line_without_banner():
    assert trtexec.parse_version("[I] TensorRT version: 8.6.3\n") == {
        "version": "8.6.3", "major": 8, "minor": 6, "patch": 3}
    assert trtexec.parse_version("nothing here") is None


def _as_8x(text):
    """The 10.x summary as TensorRT 8.5 prints it: one percentile and End-to-End Host Latency."""
    text = re.sub(r", percentile\(9[05]%\) = [\d.]+ ms", "", text)
    stamp = "[10/03/2024-10:47:59] [I] "
    e2e = (stamp + "End-to-End Host Latency: min = 9.1 ms, max = 25.5 ms, mean = 14.6 ms, "
           "median = 14.2 ms, percentile(99%) = 24.9 ms\n")
    text = text.replace(stamp + "Enqueue Time:", e2e + stamp + "Enqueue Time:")
    banner = "&&&& RUNNING TensorRT.trtexec [TensorRT v8502] # /usr/src/tensorrt/bin/trtexec --fp16\n"
    return banner + text + "&&&& PASSED TensorRT.trtexec [TensorRT v8502] # trtexec --fp16\n"


def test_trtexec_8x_single_percentile_and_end_to_end():
    parsed = trtexec.parse(_as_8x(SUMMARY))
    assert parsed["version"]["version"] == "8.5.2"
    assert parsed["status"] == "passed"
    assert parsed["argv"] == "/usr/src/tensorrt/bin/trtexec --fp16"
    m = parsed["metrics"]
    assert m["latency_ms"] == {"min": 5.38672, "max": 13.3664, "mean": 7.60628,
                               "median": 7.16092, "p99": 12.9675}
    assert m["end_to_end_ms"] == {"min": 9.1, "max": 25.5, "mean": 14.6, "median": 14.2,
                                  "p99": 24.9}
    assert set(m["gpu_compute_ms"]) == {"min", "max", "mean", "median", "p99"}


def test_trtexec_more_percentiles_and_exponents():
    line = ("[I] GPU Compute Time: min = 6.5918e-05 ms, max = 2 ms, mean = 1 ms, median = 1 ms, "
            "percentile(50%) = 1 ms, percentile(99%) = 1.9 ms, percentile(99.9%) = 1.99 ms\n")
    stats = trtexec.parse_summary(line)["gpu_compute_ms"]
    assert stats == {"min": 6.5918e-05, "max": 2.0, "mean": 1.0, "median": 1.0, "p50": 1.0,
                     "p99": 1.9, "p99.9": 1.99}


@pytest.mark.parametrize("transform", [
    lambda t: re.sub(r"(?m)^\[[^\]]*\] \[I\] ", "", t),    # no prefixes at all
    lambda t: re.sub(r"(?m)^\[[^\]]*\] ", "", t),          # severity only
    lambda t: t.replace("\n", "\r\n"),                     # Windows line endings
], ids=["no-prefix", "severity-only", "crlf"])
def test_trtexec_summary_line_forms(transform):
    assert trtexec.parse_summary(transform(SUMMARY)) == trtexec.parse_summary(SUMMARY)


@pytest.mark.parametrize("transform", [
    lambda t: re.sub(r"(?m)^\[[^\]]*\] ", "", t),
    lambda t: re.sub(r"(?m)^\[[^\]]*\] \[W\] ", "", t),
    lambda t: t.replace("\n", "\r\n"),
], ids=["severity-only", "no-prefix", "crlf"])
def test_trtexec_warning_line_forms(transform):
    assert trtexec.parse_warnings(transform(WARNINGS)) == trtexec.parse_warnings(WARNINGS)


def test_trtexec_failed_footer_and_unknown_option():
    log = ("&&&& RUNNING TensorRT.trtexec [TensorRT v110000] # trtexec --onnx=m.onnx --fp16\n"
           "[01/02/2026-10:00:00] [E] Unknown option: --fp16 \n"
           "&&&& FAILED TensorRT.trtexec [TensorRT v110000] # trtexec --onnx=m.onnx --fp16\n")
    assert trtexec.parse_status(log) == "failed"
    assert trtexec.unknown_option(log) == "--fp16"
    assert trtexec.parse_version(log)["major"] == 11
    assert trtexec.unknown_option("Invalid option: --int8") == "--int8"
    assert trtexec.unknown_option(SUMMARY) is None


def test_trtexec_parse_combines_all_fixtures():
    parsed = trtexec.parse(HEADER + SUMMARY + WARNINGS + FOOTER)
    assert parsed["version"]["version"] == "10.2.0"
    assert parsed["device"]["name"] == "NVIDIA GeForce RTX 2080"
    assert parsed["metrics"]["latency_ms"] == LATENCY_10X
    assert parsed["metrics"]["gpu_compute_cv_pct"] == 1.22015
    assert len(parsed["warnings"]) == 2
    assert parsed["status"] == "passed"
    assert parsed["argv"].startswith(r"D:\TensorRT-10.2.0.19\bin\trtexec.exe")


def test_trtexec_summarize_times():
    times = [{"startEnqMs": i, "endEnqMs": i + 0.1, "startComputeMs": i, "endComputeMs": i + 1,
              "inMs": 0.01, "computeMs": float(c), "outMs": 0.02, "latencyMs": float(c) + 0.03}
             for i, c in enumerate([5, 1, 4, 2, 3])]
    out = trtexec.summarize_times(times)
    assert out["samples"] == 5
    assert out["gpu_compute_ms"] == {"min": 1.0, "mean": 3.0, "median": 3.0,
                                     "p90": pytest.approx(4.6), "p95": pytest.approx(4.8),
                                     "p99": pytest.approx(4.96), "max": 5.0}
    assert out["latency_ms"]["median"] == pytest.approx(3.03)
    assert out["h2d_ms"]["mean"] == pytest.approx(0.01)
    assert trtexec.summarize_times([]) == {"samples": 0}


# ---------------------------------------------------------------- tegrastats


def test_tegrastats_orin_nano_jp6_fixture():
    s = tegrastats.parse_line(JP6.strip())
    assert s["time"] == "11-30-2025 13:26:01"
    assert (s["ram_used_mb"], s["ram_total_mb"]) == (2461.0, 7620.0)
    assert s["cpu"] == [{"load_pct": load, "freq_mhz": 729.0} for load in (19, 14, 22, 8, 15, 17)]
    assert (s["emc_load_pct"], s["emc_freq_mhz"]) == (4.0, 2133.0)
    assert (s["gpu_load_pct"], s["gpu_freq_mhz"]) == (0.0, 305.0)
    assert s["temps_c"] == {"cpu": 46.531, "soc2": 47.312, "soc0": 46.593, "gpu": 48.218,
                            "tj": 48.843, "soc1": 48.843}
    assert s["rails"] == {"VDD_IN": {"cur_mw": 5704.0, "avg_mw": 5704.0},
                          "VDD_CPU_GPU_CV": {"cur_mw": 831.0, "avg_mw": 831.0},
                          "VDD_SOC": {"cur_mw": 1624.0, "avg_mw": 1624.0}}


def test_tegrastats_jp4_fixture_values_without_units():
    s = tegrastats.parse_line(JP4.strip())
    assert "time" not in s
    assert len(s["cpu"]) == 6 and s["cpu"][1] == {"load_pct": 21.0, "freq_mhz": 345.0}
    assert s["gpu_load_pct"] == 0.0 and "gpu_freq_mhz" not in s
    assert s["temps_c"]["PMIC"] == 100.0 and s["temps_c"]["Tdiode"] == 41.25
    assert s["rails"]["VDD_IN"] == {"cur_mw": 3140.0, "avg_mw": 3208.0}
    assert set(s["rails"]) == {"VDD_SYS_GPU", "VDD_SYS_SOC", "VDD_4V0_WIFI", "VDD_IN",
                               "VDD_SYS_CPU", "VDD_SYS_DDR"}
    summary = tegrastats.summarize(JP4)
    assert summary["power_source"] == "VDD_IN"
    assert summary["power_w"] == {"avg": 3.14, "max": 3.14}


def test_tegrastats_memory_swap_emc_and_clocks_reach_the_summary():
    s = tegrastats.summarize(JP6)
    assert s["ram_used_mb"]["max"] >= s["ram_used_mb"]["avg"] > 2000 and s["ram_total_mb"] == 7620.0
    assert s["swap_used_mb"]["avg"] > 1000 and s["swap_total_mb"] == 3810.0
    assert "avg" in s["emc_load_pct"] and s["gpu_freq_mhz"]["min"] <= s["gpu_freq_mhz"]["max"]
    record = importers.parse_file("tegrastats", JP6)
    assert record["metrics"]["ram_used_mb"] == s["ram_used_mb"]
    assert record["environment"]["ram_total_mb"] == 7620.0


def test_throttling_is_seen_in_clocks_that_fall_or_a_hot_sensor_but_not_a_fixed_pmic_reading():
    steady = {"gpu_freq_mhz": {"min": 1020.0, "avg": 1020.0, "max": 1020.0}, "temps_c": {"tj": 60.0}}
    assert tegrastats.throttling(steady, clocks_locked=True) == []
    fell = dict(steady, gpu_freq_mhz={"min": 612.0, "avg": 900.0, "max": 1020.0})
    assert "clock fell from 1020 to 612 MHz" in tegrastats.throttling(fell, clocks_locked=True)[0]
    assert tegrastats.throttling(fell, clocks_locked=False) == []  # unlocked clocks may scale
    assert "tj reached 97.5 C" in tegrastats.throttling({"temps_c": {"tj": 97.5}})[0]
    assert tegrastats.throttling(tegrastats.summarize(JP4)) == []  # its PMIC@100C is not a temperature


def test_tegrastats_jp7_three_values_and_two_temperatures():
    line = ("RAM 9000/125000MB (lfb 10x4MB) CPU [1%@972,2%@972] EMC_FREQ 0%@3199 "
            "GR3D_FREQ 3%@[1575,1575] cpu@52.968C/52.968C tj@55.1C/54.0C "
            "VDD_GPU 2000mW/1900mW/2500mW VDD_CPU_SOC_MSS 3000mW/2900mW/3100mW "
            "VIN_SYS_5V0 4000mW/3900mW/4200mW")
    s = tegrastats.parse_line(line)
    assert s["temps_c"] == {"cpu": 52.968, "tj": 55.1}
    assert s["rails"]["VDD_GPU"] == {"cur_mw": 2000.0, "avg_mw": 1900.0}
    assert (s["gpu_load_pct"], s["gpu_freq_mhz"]) == (3.0, 1575.0)
    assert tegrastats.summarize([line])["power_w"]["avg"] == pytest.approx(9.0)


NANO = ("RAM {ram}/3964MB (lfb 100x4MB) SWAP 0/1982MB (cached 0MB) CPU [10%@1479,5%@1479,off,off] "
        "EMC_FREQ 3%@1600 GR3D_FREQ {load}%@921 APE 25 PLL@31C CPU@33.5C PMIC@100C GPU@32C "
        "AO@39C thermal@32.75C POM_5V_IN {total}/2035 POM_5V_GPU 40/40 POM_5V_CPU 400/400")


def test_tegrastats_pom_5v_in_board_and_cores_off():
    lines = [NANO.format(ram=1500, load=10, total=2000), "", "garbage line",
             NANO.format(ram=1600, load=90, total=4000)]
    first = tegrastats.parse_line(lines[0])
    assert first["cpu"][2:] == [None, None]
    assert first["gpu_freq_mhz"] == 921.0
    summary = tegrastats.summarize(lines)
    assert summary["samples"] == 2
    assert summary["power_source"] == "POM_5V_IN"
    assert summary["power_w"] == {"avg": 3.0, "max": 4.0}
    assert summary["rails_w"]["POM_5V_GPU"] == {"avg": 0.04, "max": 0.04}
    assert summary["gpu_load_pct"] == {"avg": 50.0, "max": 90.0}
    assert summary["temps_c"]["CPU"] == 33.5


def test_tegrastats_no_total_rail_sums_rails():
    line = ("RAM 3000/30536MB (lfb 5000x4MB) CPU [0%@729,1%@729] GR3D_FREQ 0%@[305,305] "
            "VDD_GPU_SOC 3182mW/3182mW VDD_CPU_CV 795mW/795mW VIN_SYS_5V0 3824mW/3824mW "
            "NC 0mW/0mW VDDQ_VDD2_1V8AO 503mW/503mW")
    summary = tegrastats.summarize(line)
    assert summary["power_source"] == "sum of rails"
    assert summary["power_w"]["avg"] == pytest.approx(8.304)


@pytest.mark.parametrize("field, load, freq", [
    ("GR3D_FREQ 50%@[305,305]", 50.0, 305.0),
    ("GR3D_FREQ 0%@[305]", 0.0, 305.0),
    ("GR3D_FREQ @[610]", None, 610.0),
    ("GR3D_FREQ 12%@1300", 12.0, 1300.0),
    ("GR3D_FREQ 7%", 7.0, None),
])
def test_tegrastats_gr3d_forms(field, load, freq):
    s = tegrastats.parse_line("RAM 1/2MB CPU [1%@100] " + field + " VDD_IN 1/1")
    assert s.get("gpu_load_pct") == load
    assert s.get("gpu_freq_mhz") == freq


def test_tegrastats_absent_sensors_and_old_cpu_form():
    s = tegrastats.parse_line("RAM 1/2MB CPU [2%,1%,off,off]@102 CV0@-256C CPU@45C GPU@-256C")
    assert s["temps_c"] == {"CPU": 45.0}
    assert s["cpu"] == [{"load_pct": 2.0, "freq_mhz": 102.0}, {"load_pct": 1.0, "freq_mhz": 102.0},
                        None, None]
    assert "time" not in s and "rails" not in s


def test_tegrastats_nothing_to_parse():
    assert tegrastats.parse_line("hello world") == {}
    assert tegrastats.summarize(["", "  ", "nope"]) == {"samples": 0}


# ---------------------------------------------------------------- hailortcli

BENCH_EXPECTED = {"net_name": "yolov5m_wo_spp_60p", "network_group": "yolov5m_wo_spp_60p", "fps": {"hw_only": 217.973, "streaming": 217.911},
                  "throughput_per_s": 217.911, "hw_latency_ms": 13.1348, "frames": 3270,
                  "frames_hw_only": 3271, "power_w": {"avg": 5.22191, "max": 5.25619}}


def test_hailo_benchmark_stdout_fixture():
    assert hailo.parse_benchmark_stdout(BENCH) == BENCH_EXPECTED


def _with_ansi(text):
    """Progress lines as a terminal gets them: redrawn in place with cursor codes."""
    out = []
    for line in text.split("\n"):
        m = re.match(r"(Network \S+: )100% \| (\d+) \| (.*)$", line)
        if m:
            half = int(m.group(2)) // 2
            head, frames, tail = m.group(1), m.group(2), m.group(3)
            out.append(f"\x1b[?25l\x1b[2K\r{head}50% | {half} | {tail}"
                       f"\x1b[2K\r{head}100% | {frames} | {tail}\x1b[?25h")
        else:
            out.append(line)
    return "\n".join(out)


def test_hailo_benchmark_stdout_with_ansi_codes():
    noisy = _with_ansi(BENCH)
    assert "\x1b[2K\r" in noisy
    assert hailo.parse_benchmark_stdout(noisy) == BENCH_EXPECTED


def test_hailo_benchmark_stdout_hw_only_spelling_and_overall_latency():
    text = BENCH.replace("hw_only", "HW-only").replace(
        "Device 0000", "        (overall)                 = 14.5 ms\nDevice 0000")
    out = hailo.parse_benchmark_stdout(text)
    assert out["fps"] == {"hw_only": 217.973, "streaming": 217.911}
    assert out["frames_hw_only"] == 3271
    assert out["overall_latency_ms"] == 14.5


def test_hailo_benchmark_stdout_without_power_monitor():
    text = BENCH.replace("Measuring FPS and Power in streaming mode", "Measuring FPS in streaming mode")
    text = "\n".join(line for line in text.split("\n")
                     if "Power in" not in line and "(max)" not in line
                     and not line.startswith("Device "))
    out = hailo.parse_benchmark_stdout(text)
    assert "power_w" not in out
    assert out["fps"]["streaming"] == 217.911 and out["frames"] == 3270


CSV_HEADER = ("net_name,fps,hw_only_fps,num_of_frames,num_of_frames_hw_only,hw_latency,"
              "overall_latency,min_power,average_power,max_power\n")


def test_hailo_benchmark_csv_with_power():
    text = CSV_HEADER + "yolov5m_wo_spp_60p,217.911,217.973,3270,3271,13.1348,,5.1,5.22191,5.25619\n"
    assert hailo.parse_benchmark_csv(text) == {
        "net_name": "yolov5m_wo_spp_60p", "fps": {"streaming": 217.911, "hw_only": 217.973},
        "throughput_per_s": 217.911, "frames": 3270, "frames_hw_only": 3271,
        "hw_latency_ms": 13.1348, "power_w": {"avg": 5.22191, "max": 5.25619, "min": 5.1}}


def test_hailo_benchmark_csv_without_power():
    out = hailo.parse_benchmark_csv(CSV_HEADER + "net,100.5,120,1500,1800,9.5,11.25,,,\n")
    assert out["fps"] == {"streaming": 100.5, "hw_only": 120.0}
    assert out["overall_latency_ms"] == 11.25
    assert "power_w" not in out
    assert hailo.parse_benchmark_csv(CSV_HEADER) == {}


def test_hailo_identify_hailo8l_fixture():
    assert hailo.parse_identify(IDENTIFY) == {
        "device_id": "0001:01:00.0", "control_protocol_version": 2, "firmware_version": "4.23.0",
        "firmware_build": "release,app,extended context switch buffer", "logger_version": 0,
        "board_name": "Hailo-8", "architecture": "HAILO8L", "serial": "HLDDLBB243303522",
        "part_number": "HM21LB1C2LAE", "product_name": "HAILO-8L AI ACC M.2 B+M KEY MODULE EXT TMP"}


def test_hailo_identify_hailo8_with_unset_attributes():
    text = (IDENTIFY.replace("Device Architecture: HAILO8L", "Device Architecture: HAILO8")
            .replace("HLDDLBB243303522", "<N/A>")
            .replace(" (release,app,extended context switch buffer)", " (release,app)"))
    out = hailo.parse_identify(text)
    assert out["architecture"] == "HAILO8"
    assert out["firmware_build"] == "release,app"
    assert "serial" not in out


@pytest.mark.parametrize("hef, device, ok", [
    ("HAILO8", "HAILO8", True), ("HAILO8R", "HAILO8", True), ("HAILO8L", "HAILO8", True),
    ("HAILO8L", "HAILO8L", True), ("HAILO8", "HAILO8L", False), ("HAILO8R", "HAILO8L", False),
    ("Hailo-8L", "hailo8l", True), (None, "HAILO8", False), ("HAILO8", None, False),
    ("HAILO8", "HAILO15H", False), ("HAILO10H", "HAILO8", False),
])
def test_hailo_hef_compatibility(hef, device, ok):
    result, reason = hailo.hef_compatible(hef, device)
    assert result is ok
    assert reason


def test_hailo_parse_hef_arch_and_version():
    text = ("Architecture HEF was compiled for: HAILO8L\n"
            "Network group name: yolov8n, Single Context\n"
            "    Network name: yolov8n/yolov8n\n")
    assert hailo.parse_hef_arch(text) == "HAILO8L"
    assert hailo.parse_hef_arch("[HailoRT] Architecture HEF was compiled for: hailo8\r\n") == "HAILO8"
    assert hailo.parse_hef_arch("Network group name: x") is None
    assert hailo.parse_hailortcli_version("HailoRT-CLI version 4.23.0\n") == "4.23.0"
    assert hailo.parse_hailortcli_version("command not found") is None


def test_hailo_run_fixture():
    assert hailo.parse_run(fixture("hailortcli-run.txt")) == {
        "net_name": "yolov5m_wo_spp_60p", "network_group": "yolov5m_wo_spp_60p", "frames": 1088,
        "fps": 217.34, "throughput_per_s": 217.34, "send_rate_mbit_s": 2136.58,
        "recv_rate_mbit_s": 3759.88}


def test_a_hailo_model_is_named_by_its_network_not_an_auto_named_group():
    auto = fixture("hailortcli-run.txt").replace("Network group: yolov5m_wo_spp_60p", "Network group: auto_group_0") \
        .replace("Network yolov5m_wo_spp_60p/yolov5m_wo_spp_60p:", "Network auto_group_0/yolov5m_wo_spp_60p:")
    out = hailo.parse_run(auto)
    assert (out["net_name"], out["network_group"]) == ("yolov5m_wo_spp_60p", "auto_group_0")
    bench = BENCH.replace("Network yolov5m_wo_spp_60p/", "Network auto_group_0/")
    assert hailo.parse_benchmark_stdout(bench)["net_name"] == "yolov5m_wo_spp_60p"
    csv_auto = CSV_HEADER + "\nauto_group_0,217.9,218.0,3270,3271,13.1,,,,\n"
    parsed = hailo.parse_benchmark_csv(csv_auto)
    assert "net_name" not in parsed and parsed["network_group"] == "auto_group_0"
    # without a network's name anywhere, an auto-named group names nothing
    only_group = "> Inference result:\n Network group: auto_group_1\n    Frames count: 10\n    FPS: 5.0\n"
    assert "net_name" not in hailo.parse_run(only_group)


def test_hailortcli_run_output_imports():
    record = importers.parse_file("hailortcli", fixture("hailortcli-run.txt"))
    assert record["tool"]["scenario"] == "run" and record["model"] == {"name": "yolov5m_wo_spp_60p"}
    assert record["metrics"]["fps"] == {"streaming": 217.34} and record["metrics"]["samples"] == 1088
    assert record["metrics"]["send_rate_mbit_s"] == 2136.58


# ---------------------------------------------------------------- nvidia


def test_nvidia_smi_query_two_gpus_with_na():
    text = ("NVIDIA GeForce RTX 4090, 550.54.14, 8.9, 210, 405, 3120, 10501, 450.00, 25.43, 36, "
            "P8, 24564, GPU-aaaa\n"
            "NVIDIA A2, 550.54.14, 8.6, [N/A], N/A, 1770, 6251, 60.00, [Not Supported], 40, P0, "
            "15356, GPU-bbbb\n")
    first, second = nvidia.parse_smi_query(text, nvidia.SMI_FIELDS)
    assert first == {"name": "NVIDIA GeForce RTX 4090", "driver_version": "550.54.14",
                     "compute_cap": "8.9", "clocks.sm": 210.0, "clocks.mem": 405.0,
                     "clocks.max.sm": 3120.0, "clocks.max.mem": 10501.0, "power.limit": 450.0,
                     "power.draw": 25.43, "temperature.gpu": 36.0, "pstate": "P8",
                     "memory.total": 24564.0, "uuid": "GPU-aaaa"}
    assert "clocks.sm" not in second and "clocks.mem" not in second
    assert "power.draw" not in second
    assert second["power.limit"] == 60.0 and second["name"] == "NVIDIA A2"


def test_nvidia_smi_version():
    header = ("| NVIDIA-SMI 550.54.14              Driver Version: 550.54.14      "
              "CUDA Version: 12.4     |\n")
    assert nvidia.parse_smi_version(header) == {"smi_version": "550.54.14",
                                                "driver_version": "550.54.14", "cuda": "12.4"}


def test_nvidia_tegra_release_fixture():
    assert nvidia.parse_tegra_release(fixture("nv_tegra_release.txt")) == {
        "l4t": "36.3.0", "release": "R36", "revision": "3.0", "gcid": "36923193",
        "board": "generic", "eabi": "aarch64", "date": "Fri Jul 19 23:24:25 UTC 2024",
        "jetpack": "6.0"}


@pytest.mark.parametrize("release, revision, l4t, jetpack", [
    ("35", "4.1", "35.4.1", "5.1.2"), ("32", "7.1", "32.7.1", "4.6.1"),
    ("36", "4.3", "36.4.3", "6.2"), ("36", "4.7", "36.4.7", "6.1/6.2"), ("99", "1.0", "99.1.0", None),
])
def test_nvidia_tegra_release_versions(release, revision, l4t, jetpack):
    text = (f"# R{release} (release), REVISION: {revision}, GCID: 33958178, BOARD: t186ref, "
            "EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023\n")
    out = nvidia.parse_tegra_release(text)
    assert out["l4t"] == l4t and out["board"] == "t186ref"
    assert out.get("jetpack") == jetpack
    assert nvidia.parse_tegra_release("not a release file") == {}


def test_nvidia_nvpmodel():
    assert nvidia.parse_nvpmodel(fixture("nvpmodel-q.txt")) == {"mode_name": "MAXN_SUPER",
                                                                "mode_id": 2}
    noisy = "NVPM WARN: fan mode is not set!\nNV Fan Mode:quiet\nNV Power Mode: 15W\r\n0\r\n"
    assert nvidia.parse_nvpmodel(noisy) == {"mode_name": "15W", "mode_id": 0}


def test_nvidia_jetson_clocks_fixture_not_locked():
    out = nvidia.parse_jetson_clocks(fixture("jetson_clocks-show.txt"))
    assert out["soc"] == "tegra234"
    assert out["machine"] == "NVIDIA Jetson Orin NX Engineering Reference Developer Kit"
    assert out["cpus"] == [{"name": "cpu0", "online": True, "governor": "schedutil",
                            "min_khz": 729600, "max_khz": 1510400, "cur_khz": 1510400}]
    assert out["gpu"] == {"min_hz": 306000000, "max_hz": 624750000, "cur_hz": 306000000}
    assert out["locked"] is False


LOCKED = """SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin Developer Kit
Online CPUs: 0-1
cpu0: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=0 c7=0
cpu1: Online=1 Governor=schedutil MinFreq=2201600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=0 c7=0
cpu2: Online=0 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=729600
GPU MinFreq=1300500000 MaxFreq=1300500000 CurrentFreq=1300500000
EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000 FreqOverride=1
NV Power Mode: MAXN
"""


def test_nvidia_jetson_clocks_locked():
    out = nvidia.parse_jetson_clocks(LOCKED)
    assert out["locked"] is True
    assert out["emc"] == {"min_hz": 204000000, "max_hz": 3199000000, "cur_hz": 3199000000}
    assert out["power_mode"] == "MAXN"
    assert [c["online"] for c in out["cpus"]] == [True, True, False]
    slow_gpu = LOCKED.replace("CurrentFreq=1300500000", "CurrentFreq=306000000")
    assert nvidia.parse_jetson_clocks(slow_gpu)["locked"] is False
    min_not_raised = LOCKED.replace("cpu1: Online=1 Governor=schedutil MinFreq=2201600",
                                    "cpu1: Online=1 Governor=schedutil MinFreq=729600")
    assert nvidia.parse_jetson_clocks(min_not_raised)["locked"] is False


def test_trtexec_7x_blocks_with_end_to_end_and_a_throughput_of_0_that_is_no_value():
    out = trtexec.parse_summary(fixture("trtexec-7.x-summary.txt"))
    assert out["latency_ms"] == {"min": 1.64058, "max": 6.2915, "mean": 1.66069, "median": 1.65601,
                                 "p99": 1.67065}
    assert out["end_to_end_ms"] == {"min": 1.66368, "max": 7.65552, "mean": 3.00909, "median": 3.01636,
                                    "p99": 3.03931}
    assert out["host_walltime_s"] == 3.00461
    assert "throughput_per_s" not in out  # "throughput: 0 qps": the trace counted nothing
    gpu = trtexec.parse_summary(fixture("trtexec-7.x-gpu-compute.txt"))
    assert gpu["enqueue_ms"] == {"min": 1.9541, "max": 8.28448, "median": 4.74475}
    assert gpu["gpu_compute_ms"] == {"min": 564.432, "max": 569.332, "mean": 567.144, "median": 567.073}
    # a line of another kind ends a block: its "min:" is not the block's
    assert "latency_ms" not in trtexec.parse_summary("Host Latency\nSomething else\nmin: 3 ms\n")
    # the 10.x summary is unaffected
    assert trtexec.parse_summary(SUMMARY)["throughput_per_s"] == 130.298


# ---------------------------------------------------------------- onnxruntime_perf_test


def test_ortperf_old_fixture():
    out = ortperf.parse(fixture("onnxruntime_perf_test-old.txt"))
    assert out == {"session_creation_s": 0.127918, "total_inference_s": 1.44871, "requests": 10,
                   "run_time_s": 1.44916, "cpu_usage_pct": 68.0,
                   "peak_working_set_bytes": 158171136, "latency_ms": {"mean": 144.871},
                   "throughput_per_s": pytest.approx(10 / 1.44916)}


def test_ortperf_new_build_with_percentiles():
    text = ("Session creation time cost: 0.05 s\nFirst inference time cost: 12 ms\n"
            "Total inference time cost: 2.5 s\nTotal inference requests: 1000\n"
            "Average inference time cost: 2.5 ms\nTotal inference run time: 2.6 s\n"
            "Number of inferences per second: 384.6 \nAvg CPU usage: 95 %\n"
            "Peak working set size: 1000 bytes\nAvg CPU usage:95\nPeak working set size:1000\n"
            "Runs:1000\nMin Latency: 0.00123 s\nMax Latency: 0.01 s\nP50 Latency: 0.0024 s\n"
            "P90 Latency: 0.003 s\nP95 Latency: 0.0035 s\nP99 Latency: 0.005 s\n"
            "P999 Latency: 8e-03 s\n")
    out = ortperf.parse(text)
    assert out["first_inference_ms"] == 12.0
    assert out["throughput_per_s"] == pytest.approx(1000 / 2.6)
    assert out["latency_ms"] == {"mean": 2.5, "min": pytest.approx(1.23), "max": pytest.approx(10),
                                 "p50": pytest.approx(2.4), "p90": pytest.approx(3.0),
                                 "p95": pytest.approx(3.5), "p99": pytest.approx(5.0),
                                 "p999": pytest.approx(8.0)}


def test_ortperf_2023_build_says_latency_is_x_sec():
    out = ortperf.parse(fixture("onnxruntime_perf_test-latency-is.txt"))
    assert out["requests"] == 1000 and out["total_inference_s"] == 58.8053
    assert out["latency_ms"] == {"mean": 58.8053, "min": pytest.approx(55.9777), "max": pytest.approx(62.3472),
                                 "p50": pytest.approx(58.7108), "p90": pytest.approx(59.9845),
                                 "p95": pytest.approx(60.5676), "p99": pytest.approx(61.9517),
                                 "p999": pytest.approx(62.3472)}
    assert out["throughput_per_s"] == pytest.approx(1000 / 58.8102)


def test_ortperf_2025_build_average_total_and_cpu_usage_twice():
    out = ortperf.parse(fixture("onnxruntime_perf_test-new.txt"))
    assert out["latency_ms"]["mean"] == 98.961997 and out["latency_ms"]["p50"] == pytest.approx(99.5086)
    assert out["cpu_usage_pct"] == 11.0 and out["peak_working_set_bytes"] == 271122432
    assert out["requests"] == 5 and out["first_inference_ms"] == 196.0
    assert out["throughput_per_s"] == pytest.approx(5 / 0.494854)


# ---------------------------------------------------------------- importers


def test_import_trtexec():
    record = importers.parse_file("trtexec", HEADER + SUMMARY + WARNINGS + FOOTER)
    assert record["raw_format"] == "trtexec"
    assert record["tool"]["name"] == "trtexec" and record["tool"]["version"] == "10.2.0"
    assert record["metrics"]["latency_ms"] == LATENCY_10X
    assert record["metrics"]["throughput_per_s"] == 130.298
    assert record["metrics"]["gpu_compute_cv_pct"] == 1.22015
    assert record["environment"] == {"tensorrt": "10.2.0", "gpu": "NVIDIA GeForce RTX 2080",
                                     "compute_capability": "7.5"}
    assert record["target"] == {"device_name": "NVIDIA GeForce RTX 2080",
                                "compute_capability": "7.5"}


@pytest.mark.parametrize("text", [
    BENCH,
    CSV_HEADER + "yolov5m_wo_spp_60p,217.911,217.973,3270,3271,13.1348,,5.1,5.22191,5.25619\n",
], ids=["stdout", "csv"])
def test_import_hailortcli(text):
    record = importers.parse_file("hailortcli", text)
    assert record["metrics"]["fps"] == {"hw_only": 217.973, "streaming": 217.911}
    assert record["metrics"]["throughput_per_s"] == 217.911
    assert record["metrics"]["hw_latency_ms"] == 13.1348
    assert record["metrics"]["power_w"]["avg"] == 5.22191
    assert record["model"] == {"name": "yolov5m_wo_spp_60p"}
    assert record["tool"]["output"] == ("csv" if text.startswith("net_name") else "stdout")


def test_import_tegrastats():
    record = importers.parse_file("tegrastats", JP6 + "\n" + JP6)
    assert record["metrics"]["samples"] == 2
    assert record["metrics"]["power_w"] == {"avg": 5.704, "max": 5.704}
    assert record["metrics"]["gpu_load_pct"] == {"avg": 0.0, "max": 0.0}
    assert record["environment"]["temps_c"]["tj"] == 48.843
    assert record["environment"]["power_source"] == "VDD_IN"
    assert record["environment"]["rails_w"]["VDD_SOC"] == {"avg": 1.624, "max": 1.624}


def test_import_ort_perf():
    record = importers.parse_file("ort-perf", fixture("onnxruntime_perf_test-old.txt"))
    assert record["tool"] == {"name": "onnxruntime_perf_test"}
    assert record["metrics"]["latency_ms"] == {"mean": 144.871}
    assert record["metrics"]["samples"] == 10


@pytest.mark.parametrize("fmt, text", [
    ("trtexec", HEADER + SUMMARY + WARNINGS + FOOTER), ("hailortcli", BENCH),
    ("tegrastats", JP4 + JP6), ("ort-perf", fixture("onnxruntime_perf_test-old.txt")),
])
def test_imports_pass_the_controllers_result_schema(fmt, text):
    from fleet.results import imported_record  # the controller side (fleet results import)

    record = imported_record(importers.parse_file(fmt, text), fmt=fmt, result_id="imp-1",
                             host="lab", device_class="test", name=None, source="fixture")
    assert record["raw"]["format"] == fmt


@pytest.mark.parametrize("fmt", importers.FORMATS)
def test_import_garbage_is_a_clear_error(fmt):
    with pytest.raises(ValueError, match=f"^{re.escape(fmt)}: "):
        importers.parse_file(fmt, "this is not the output of any tool\n")


def test_import_errors_name_the_problem():
    with pytest.raises(ValueError, match="rejected option --fp16"):
        importers.parse_file("trtexec", "[E] Unknown option: --fp16 \n&&&& FAILED TensorRT.trtexec")
    with pytest.raises(ValueError, match="unknown format"):
        importers.parse_file("nvprof", "")


# ---------------------------------------------------------------- Python 3.8


def test_devtools_parse_as_python38():
    files = sorted(DEVTOOLS.glob("*.py"))
    assert len(files) == 7
    for path in files:
        source = path.read_text()
        ast.parse(source, filename=str(path), feature_version=(3, 8))
        assert "from __future__" not in source
        assert not re.search(r"^\s*(import|from)\s+fleet\b", source, re.MULTILINE), path.name
