#!/usr/bin/env python3
# fleet device lab STAND-IN for HailoRT's `hailortcli`: no Hailo device here. It replays the
# recorded real output tests/fixtures/tools/hailortcli-4.x-benchmark.txt, hailortcli-run.txt and
# hailortcli-fw-control-identify.txt (sources in SOURCES.md there) for this lab host's device
# (~/.lab/tools.json: hailo_arch, hailort, power_monitor) and the HEF it is given.
"""hailortcli stand-in.

  hailortcli -v | --version                 HailoRT-CLI version X.Y.Z
  hailortcli scan                           the one device
  hailortcli fw-control identify [-s ID]    recorded layout; Device Architecture from the config,
                                            Board Name stays "Hailo-8" (as on a real 8L)
  hailortcli parse-hef HEF [--parse-streams] [--parse-vstreams]
  hailortcli benchmark HEF [-t SECONDS] [--csv OUT] [--no-power [BOOL]] [--batch-size N]
                       [--power-mode M] [-s ID] [--bdf BDF] [--sampling-period P]
                       [--averaging-factor F] [--device-count N] [--multi-process-service]
  hailortcli run HEF [-t SECONDS | -c FRAMES] [--measure-latency] [--measure-power]
                 [--batch-size N] [-s ID]

HEFs are the ones the `hailo` stand-in writes: a JSON header line ``{"fleet_lab_hef": 1,
"arch": "HAILO8", "net_name": ...}`` then bytes. A HAILO8 device runs HAILO8, HAILO8R and
HAILO8L HEFs, a HAILO8L device only HAILO8L ones; otherwise the run fails as HailoRT does
("HEF format is not compatible with device", HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE(93), from
hailort's source and public logs; HailoRT < 4.21 words it "HEF arch: X" and fails with
HAILO_INVALID_HEF(26)). The exit status is the HailoRT status, as hailortcli returns it.
Figures are the recorded ones scaled by the HEF's ``fps_scale`` and architecture (an 8L HEF
or device runs at ~0.55x); progress lines redraw with ``\\x1b[F\\x1b[2K\\r`` as
inference_progress.cpp does; [HailoRT] log lines go to stderr. Power lines only with
"power_monitor": true and no --no-power. HailoRT >= 4.18 (assumed cut-over) prints "HW-only"
and "Measuring FPS (and Power on supported platforms) in streaming mode".

Assumed, not verified: that cut-over version, the CLI11 error texts and exit codes (105 for a
missing file, 109 for an unexpected argument), the scan layout, the identify Serial/Part/Product
for a HAILO8, --no-power still being accepted by 4.23, the run default of 5 seconds.
"""

import os
import re
import sys
import time

LAB_HOME = None  # the lab host's HOME: written in when tests/lab/homes.py installs this script
LAB_LIB = None  # the directory of _labtool.py: written in on install
sys.path.insert(0, LAB_LIB or os.path.dirname(os.path.realpath(__file__)))

import _labtool as lab

HOST = lab.host(LAB_HOME)
DEVICE = "0000:01:00.0"
COMPATIBLE_HEFS = {"HAILO8": ("HAILO8", "HAILO8R", "HAILO8L"), "HAILO8L": ("HAILO8L",)}
STATUS = {
    "HAILO_INVALID_HEF": 26,
    "HAILO_HEF_NOT_SUPPORTED": 92,
    "HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE": 93,
    "HAILO_OUT_OF_PHYSICAL_DEVICES": 74,
}
REDRAW = "\x1b[F\x1b[2K\r"


class Exit(Exception):
    def __init__(self, status):
        Exception.__init__(self, status)
        self.status = status


def hailort_error(message):
    lab.err("[HailoRT] [error] " + message)


def cli_error(message):
    lab.err("[HailoRT CLI] [error] " + message)


def usage_error(message, status):
    lab.err(message)
    lab.err("Run with --help for more information.")
    raise Exit(status)


def version_at_least(version, wanted):
    return lab.parse_version(version) >= wanted


def device_arch():
    return str(HOST.config.get("hailo_arch") or "HAILO8").upper()


# -- recorded figures -----------------------------------------------------------------------------


def recorded_benchmark():
    text = lab.fixture("hailortcli-4.x-benchmark.txt")
    number = r"([0-9]*\.?[0-9]+)"
    found = {"net": "yolov5m_wo_spp_60p/yolov5m_wo_spp_60p"}
    progress = re.findall(r"Network (\S+): 100% \| (\d+) \|", text)
    if progress:
        found["net"] = progress[0][0]
        found["frames_hw_only"], found["frames"], found["frames_latency"] = (
            int(p[1]) for p in progress[:3])
    for key, pattern in (
        ("hw_only", r"FPS\s+\(hw_only\)\s+= " + number),
        ("streaming", r"\(streaming\)\s+= " + number),
        ("latency", r"Latency \(hw\)\s+= " + number),
        ("power_avg", r"\(average\) = " + number),
        ("power_max", r"\(max\)\s+= " + number),
    ):
        m = re.search(pattern, text)
        found[key] = float(m.group(1))
    found["warning"] = [line for line in text.splitlines()
                        if line.startswith(("[HailoRT] [warning]", "If "))]
    return found


def recorded_run():
    text = lab.fixture("hailortcli-run.txt")
    rates = {}
    for key in ("FPS", "Send Rate", "Recv Rate"):
        m = re.search(r"^\s*" + key + r": ([0-9.]+)", text, re.MULTILINE)
        rates[key] = float(m.group(1))
    return rates


# -- HEFs -------------------------------------------------------------------------------------------


def load_hef(path):
    """The lab HEF header; fails like HailoRT on a missing or foreign file."""
    if not os.path.isfile(path):
        usage_error(f"hef: File does not exist: {path}", 105)
    header = lab.read_header(path, "fleet_lab_hef")
    if header is None:
        with open(path, "rb") as handle:
            magic = int.from_bytes((handle.read(4) + b"\0\0\0\0")[:4], "little")
        hailort_error(f"CHECK failed - HEF magic does not match. detected magic - {magic:x}")
        hailort_error("CHECK_SUCCESS failed with status=HAILO_HEF_NOT_SUPPORTED(92)")
        hailort_error("Failed creating HEF")
        cli_error("CHECK_EXPECTED failed with status=HAILO_HEF_NOT_SUPPORTED(92)")
        raise Exit(STATUS["HAILO_HEF_NOT_SUPPORTED"])
    return header


def check_compatible(header, failing_step):
    hef_arch = str(header.get("arch", "")).upper()
    device = device_arch()
    if hef_arch in COMPATIBLE_HEFS.get(device, (device,)):
        return
    if version_at_least(HOST.config["hailort"], (4, 21, 0)):
        compatible = "HAILO8L HAILO8 " if hef_arch == "HAILO8L" else (
            "HAILO8 " if hef_arch in ("HAILO8", "HAILO8R") else hef_arch + " ")
        hailort_error(f"HEF format is not compatible with device. Device arch: {device}, HEF compatible "
                      f"for: {compatible}")
        status = "HAILO_HEF_NOT_COMPATIBLE_WITH_DEVICE"
    else:
        hailort_error(f"HEF format is not compatible with device. Device arch: {device}, HEF arch: {hef_arch}"
                      )
        status = "HAILO_INVALID_HEF"
    code = STATUS[status]
    hailort_error(f"CHECK_SUCCESS failed with status={status}({code})")
    hailort_error(f"CHECK_SUCCESS failed with status={status}({code})")
    cli_error(f"CHECK_SUCCESS failed with status={status}({code}) - {failing_step}")
    raise Exit(code)


def speed(header):
    """How fast this HEF runs on this device relative to the recorded run."""
    factor = float(header.get("fps_scale", 1.0))
    if "HAILO8L" in (str(header.get("arch", "")).upper(), device_arch()):
        factor *= 0.55
    elif str(header.get("arch", "")).upper() == "HAILO8R":
        factor *= 0.9
    return factor


def net_of(header):
    name = header.get("net_name") or "net"
    return f"{name}/{name}"


# -- commands ---------------------------------------------------------------------------------------


def progress(net, frames, seconds, fps=None, latency=None):
    """Progress lines as inference_progress.cpp redraws them, then the final line."""
    def text(pct, count, eta):
        tail = f" | FPS: {fps:.2f}" if latency is None else \
            f" | HW Latency: {latency:.2f} ms"
        return f"Network {net}: {pct}% | {count}{tail} | ETA: 00:{eta // 60:02d}:{eta % 60:02d}"
    chunks = []
    for pct in (25, 50, 75):
        eta = round(seconds * (100 - pct) / 100.0)
        chunks.append(text(pct, frames * pct // 100, eta) + "\n" + REDRAW)
    chunks.append(text(100, frames, 0) + "\n")
    sys.stdout.write("".join(chunks))
    sys.stdout.flush()


def identify():
    cfg = HOST.config
    arch = device_arch()
    serial = "HLLWM2B{:09d}".format(lab.stable_int("serial", HOST.home) % 10 ** 9)
    for line in lab.fixture("hailortcli-fw-control-identify.txt").splitlines():
        key, sep, value = line.partition(": ")
        if key == "Executing on device":
            value = DEVICE
        elif key == "Firmware Version":
            value = re.sub(r"^\S+", cfg["hailort"], value)
        elif key == "Device Architecture":
            value = arch
        elif key == "Serial Number":
            value = serial
        elif key == "Part Number" and arch == "HAILO8":
            value = "HM218B1C2FAE"
        elif key == "Product Name" and arch == "HAILO8":
            value = "HAILO-8 AI ACC M.2 M KEY MODULE EXT TEMP"
        lab.out(key + sep + value if sep else line)
    return 0


def parse_hef(path):
    header = load_hef(path)
    net = header.get("net_name") or "net"
    contexts = int(header.get("contexts", 1))
    shape = header.get("input_shape") or "640x640x3"
    kind = "Single Context" if contexts == 1 else \
        f"Multi Context - Number of contexts: {contexts}"
    lab.out("Architecture HEF was compiled for: {}".format(str(header.get("arch", "")).upper()))
    lab.out(f"Network group name: {net}, {kind}")
    lab.out(f"    Network name: {net}/{net}")
    lab.out("        VStream infos:")
    lab.out(f"            Input  {net}/input_layer1 UINT8, NHWC({shape})")
    lab.out(f"            Output {net}/output_layer1 UINT8, NC(1000)")
    lab.out("")
    return 0


def benchmark(path, seconds, csv_path, measure_power):
    cfg = HOST.config
    header = load_hef(path)
    new_wording = version_at_least(cfg["hailort"], (4, 18, 0))
    power = measure_power and bool(cfg.get("power_monitor"))
    rec = recorded_benchmark()
    factor = speed(header)
    net = net_of(header)
    hw_only = rec["hw_only"] * factor
    streaming = rec["streaming"] * factor
    latency = rec["latency"] / factor
    scale = seconds / 15.0  # the recorded run used the default 15 seconds per measurement
    frames_hw = round(rec["frames_hw_only"] * factor * scale)
    frames = round(rec["frames"] * factor * scale)
    frames_latency = round(rec["frames_latency"] * factor * scale)
    power_factor = 0.75 if "HAILO8L" in (device_arch(), str(header.get("arch", "")).upper()) \
        else 1.0
    power_avg = rec["power_avg"] * power_factor
    power_max = rec["power_max"] * power_factor
    lab.out("Starting Measurements...")
    lab.out("Measuring FPS in HW-only mode" if new_wording else "Measuring FPS in hw_only mode")
    check_compatible(header, "Measuring FPS in HW-only mode failed" if new_wording
                     else "hw_only measuring failed")
    time.sleep(HOST.run_seconds() / 2)
    progress(net, frames_hw, seconds, fps=hw_only + 0.005)
    if new_wording:
        lab.out("Measuring FPS (and Power on supported platforms) in streaming mode")
    else:
        lab.out("Measuring FPS {}in streaming mode".format("and Power " if measure_power else ""))
    if power:
        for line in rec["warning"]:
            lab.err(line)
    time.sleep(HOST.run_seconds() / 2)
    progress(net, frames, seconds, fps=streaming + 0.005)
    lab.out("Measuring HW Latency")
    progress(net, frames_latency, seconds, latency=latency)
    lab.out("")
    lab.out("=======")
    lab.out("Summary")
    lab.out("=======")
    lab.out(f"FPS     (hw_only)                 = {lab.g(hw_only)}")
    lab.out(f"        (streaming)               = {lab.g(streaming)}")
    lab.out(f"Latency (hw)                      = {lab.g(latency)} ms")
    if power:
        lab.out(f"Device {DEVICE}:")
        lab.out(f"  Power in streaming mode (average) = {lab.g(power_avg)} W")
        lab.out(f"                          (max)     = {lab.g(power_max)} W")
    if csv_path:
        row = [net.split("/")[0], lab.g(streaming), lab.g(hw_only), str(frames), str(frames_hw),
               lab.g(latency), ""]
        row += [lab.g(power_avg * 0.985), lab.g(power_avg), lab.g(power_max)] if power else \
            ["", "", ""]
        try:
            lab.write_atomic(csv_path, "net_name,fps,hw_only_fps,num_of_frames,"
                             "num_of_frames_hw_only,hw_latency,overall_latency,min_power,"
                             "average_power,max_power\n" + ",".join(row) + "\n")
        except OSError:
            cli_error(f"Failed creating csv output file {csv_path}")
            raise Exit(13)
    return 0


def run(path, seconds, frames_count, measure_latency):
    header = load_hef(path)
    rec = recorded_run()
    factor = speed(header)
    fps = rec["FPS"] * factor
    frames = frames_count if frames_count else round(fps * seconds)
    lab.out(f"Running streaming inference ({path}):")
    lab.out("  Transform data: true")
    lab.out("    Type:      auto")
    lab.out("    Quantized: true")
    check_compatible(header, "Failed running inference")
    time.sleep(HOST.run_seconds() / 2)
    net = net_of(header)
    if frames_count:
        line = f"Network {net}: 100% | {frames}/{frames} | FPS: {fps:.2f} | ETA: 00:00:00"
        lab.out(line)
    else:
        progress(net, frames, seconds, fps=fps)
    lab.out("> Inference result:")
    lab.out(" Network group: {}".format(net.split("/")[0]))
    lab.out(f"    Frames count: {frames}")
    lab.out(f"    FPS: {fps:.2f}")
    lab.out("    Send Rate: {:.2f} Mbit/s".format(rec["Send Rate"] * factor))
    lab.out("    Recv Rate: {:.2f} Mbit/s".format(rec["Recv Rate"] * factor))
    if measure_latency:
        lab.out("    HW Latency: {} ms".format(lab.g(recorded_benchmark()["latency"] / factor)))
    return 0


# -- arguments --------------------------------------------------------------------------------------

VALUE_OPTIONS = {"-t", "--time-to-run", "--csv", "--batch-size", "--power-mode", "-s",
                 "--device-id", "--bdf", "--ip", "--sampling-period", "--averaging-factor",
                 "--input-files", "--device-count", "--group-id", "-c", "--frames-count",
                 "-m", "--mode"}
FLAG_OPTIONS = {"--multi-process-service", "--measure-latency", "--measure-power",
                "--measure-overall-latency", "--parse-streams", "--parse-vstreams"}


def parse(args):
    """CLI11-like: positionals and options (``--x v`` or ``--x=v``)."""
    positionals, options = [], {}
    i = 0
    while i < len(args):
        arg = args[i]
        key, has_value, value = arg.partition("=")
        if key in VALUE_OPTIONS:
            if not has_value:
                if i + 1 >= len(args):
                    usage_error(f"{key} requires an argument", 106)
                i += 1
                value = args[i]
            options[key] = value
        elif key == "--no-power":
            # an option taking a bool in 4.x; accept it bare too
            if has_value:
                options[key] = value
            elif i + 1 < len(args) and args[i + 1].lower() in ("true", "false", "1", "0"):
                i += 1
                options[key] = args[i]
            else:
                options[key] = "true"
        elif key in FLAG_OPTIONS:
            options[key] = True
        elif arg.startswith("-"):
            usage_error(f"The following argument was not expected: {arg}", 109)
        else:
            positionals.append(arg)
        i += 1
    return positionals, options


def number(options, keys, default, conv=float):
    for key in keys:
        if key in options:
            try:
                value = conv(options[key])
            except ValueError:
                usage_error(f"{key}: Value {options[key]} could not be converted", 105)
            if value <= 0:
                usage_error(f"{key}: Value {options[key]} not in range 0 to ...", 105)
            return value
    return default


def main(argv):
    if argv and argv[0] in ("-v", "--version"):
        lab.out("HailoRT-CLI version {}".format(HOST.config["hailort"]))
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        lab.out("HailoRT CLI")
        lab.out("Usage: hailortcli [OPTIONS] SUBCOMMAND")
        lab.out("Subcommands: run, scan, benchmark, parse-hef, fw-control")
        return 0 if argv else 106
    if HOST.fails("hailortcli"):
        hailort_error("Failed to create vdevice. there are not enough free devices. requested: 1, "
                      "found: 0 (fleet lab: hailortcli configured to fail)")
        cli_error("CHECK_EXPECTED failed with status=HAILO_OUT_OF_PHYSICAL_DEVICES(74)")
        return 1
    command, rest = argv[0], argv[1:]
    try:
        if command == "scan":
            lab.out("Hailo Devices:")
            lab.out(f"[-] Device: {DEVICE}")
            return 0
        if command == "fw-control":
            if rest[:1] != ["identify"]:
                usage_error("A subcommand is required", 106)
            parse(rest[1:])
            return identify()
        if command == "parse-hef":
            positionals, _ = parse(rest)
            if len(positionals) != 1:
                usage_error("hef is required", 106)
            return parse_hef(positionals[0])
        if command == "benchmark":
            positionals, options = parse(rest)
            if len(positionals) != 1:
                usage_error("hef is required", 106)
            seconds = number(options, ("-t", "--time-to-run"), 15.0)
            no_power = str(options.get("--no-power", "false")).lower() in ("true", "1")
            return benchmark(positionals[0], seconds, options.get("--csv"), not no_power)
        if command == "run":
            positionals, options = parse(rest)
            if len(positionals) != 1:
                usage_error("hef is required", 106)
            seconds = number(options, ("-t", "--time-to-run"), 5.0)
            frames = number(options, ("-c", "--frames-count"), 0, int)
            return run(positionals[0], seconds, frames, "--measure-latency" in options)
        usage_error(f"The following argument was not expected: {command}", 109)
    except Exit as exc:
        return exc.status
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
