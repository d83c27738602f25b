#!/usr/bin/env python3
# fleet device lab STAND-IN for Jetson's `jetson_clocks`: it replays the recorded real output
# tests/fixtures/tools/jetson_clocks-show.txt (an Orin NX), adapted to this lab host's board,
# power mode and clock state (~/.lab/state.json).
"""jetson_clocks stand-in.

  jetson_clocks                 lock CPU, GPU and EMC at the power mode's maximum (state
                                clocks_locked=true); stores the unlocked settings to
                                ~/l4t_dfs.conf first when that file does not exist
  jetson_clocks --show          the current settings (recorded layout)
  jetson_clocks --store [FILE]  store the settings (default ~/l4t_dfs.conf)
  jetson_clocks --restore [FILE]  restore stored settings (unlocks); "Error: FILE file not
                                found !" and exit 1 without the file, as the real script does
  jetson_clocks --fan           accepted

--show prints, like the real script (whose source is public): "SOC family:... Machine:...",
"Online CPUs: 0-5", one line per CPU, "GPU MinFreq= MaxFreq= CurrentFreq=", then "EMC ...",
"Fan: PWM=..." and "NV Power Mode: ...". Locked, each minimum equals the maximum, the current
frequencies are the maxima and CPU idle states read disabled (=0). No root needed here.
Assumed, not verified: the automatic store before the first lock, the Orin Nano frequency
values (the recorded output is an Orin NX's), "Active GPU TPCs: 4".
"""

import json
import os
import re
import sys

LAB_HOME = None  # the lab host's HOME: written in when tests/lab/homes.py installs this script
LAB_LIB = None  # the directory of _labtool.py: written in on install
sys.path.insert(0, LAB_LIB or os.path.dirname(os.path.realpath(__file__)))

import _labtool as lab

HOST = lab.host(LAB_HOME)
CONF_FILE = os.path.join(HOST.home, "l4t_dfs.conf")
CPU_MIN_KHZ = 729600
GPU_MIN_HZ = 306000000
EMC_MIN_HZ, EMC_MAX_HZ = 204000000, 3199000000
USAGE = """Maximize jetson performance by setting static max frequency to CPU, GPU and EMC clocks.
Usage:
jetson_clocks [options]
  options,
  --help, -h         show this help message
  --show             display current settings
  --fan              set PWM fan speed to maximal
  --store [file]     store current settings to a file (default: ${HOME}/l4t_dfs.conf)
  --restore [file]   restore saved settings from a file (default: ${HOME}/l4t_dfs.conf)
  run jetson_clocks without any option to set static max frequency to CPU, GPU and EMC clocks."""


def show():
    cfg, state = HOST.config, HOST.state()
    mode_id = int(state.get("power_mode_id", 2))
    name, cpu_max, gpu_max, _ = lab.JETSON_MODES.get(mode_id, lab.JETSON_MODES[2])
    locked = bool(state.get("clocks_locked"))
    recorded = lab.fixture("jetson_clocks-show.txt").splitlines()
    soc = cfg.get("soc") or "tegra234"
    machine = cfg.get("machine") or "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit"
    first = re.sub(r"SOC family:\S*", "SOC family:" + soc, recorded[0])
    lab.out(re.sub(r"Machine:.*", "Machine:" + machine, first))
    lab.out(recorded[1])  # Online CPUs: 0-5
    cpu_template = next(line for line in recorded if line.startswith("cpu"))
    for n in range(6):
        line = re.sub(r"^cpu\d+:", f"cpu{n}:", cpu_template)
        line = re.sub(r"MinFreq=\d+", f"MinFreq={cpu_max if locked else CPU_MIN_KHZ}", line)
        line = re.sub(r"MaxFreq=\d+", f"MaxFreq={cpu_max}", line)
        line = re.sub(r"CurrentFreq=\d+",
                      f"CurrentFreq={cpu_max if locked else CPU_MIN_KHZ}", line)
        head, sep, idle = line.partition("IdleStates:")
        if locked:
            idle = re.sub(r"=1\b", "=0", idle)
        lab.out(head + sep + idle)
    gpu = next(line for line in recorded if line.startswith("GPU "))
    gpu = re.sub(r"MinFreq=\d+", f"MinFreq={gpu_max if locked else GPU_MIN_HZ}", gpu)
    gpu = re.sub(r"MaxFreq=\d+", f"MaxFreq={gpu_max}", gpu)
    gpu = re.sub(r"CurrentFreq=\d+", f"CurrentFreq={gpu_max if locked else GPU_MIN_HZ}",
                 gpu)
    lab.out(gpu)
    tpcs = next((line for line in recorded if line.startswith("Active GPU TPCs")), None)
    if tpcs:
        lab.out(re.sub(r"\d+", "4", tpcs))
    emc_max = EMC_MAX_HZ if name != "15W" else 2133000000
    emc_min = emc_max if locked else EMC_MIN_HZ
    emc_cur = emc_max if locked else 2133000000
    lab.out(f"EMC MinFreq={emc_min} MaxFreq={emc_max} CurrentFreq={emc_cur} "
            f"FreqOverride={1 if locked else 0}")
    lab.out("Fan: PWM={}".format(255 if state.get("fan_max") else 46))
    lab.out(f"NV Power Mode: {name}")
    return 0


def store(path):
    state = HOST.state()
    lab.write_atomic(path, json.dumps({"clocks_locked": bool(state.get("clocks_locked")),
                                       "fan_max": bool(state.get("fan_max"))}) + "\n")


def main(argv):
    action, path, fan = "lock", CONF_FILE, False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--show":
            action = "show"
        elif arg in ("--store", "--restore"):
            action = arg[2:]
            if i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                i += 1
                path = argv[i]
        elif arg == "--fan":
            fan = True
        elif arg in ("-h", "--help"):
            lab.err(USAGE)
            return 0
        else:
            lab.out(f"Unknown option: {arg}")
            lab.err(USAGE)
            return 1
        i += 1
    if HOST.fails("jetson_clocks"):
        lab.out("Error: Failed to max GPU frequency! (fleet lab: jetson_clocks configured to "
                "fail)")
        return 1
    if action == "show":
        return show()
    if action == "store":
        store(path)
        return 0
    if action == "restore":
        if not os.path.exists(path):
            lab.out(f"Error: {path} file not found !")
            return 1
        try:
            with open(path) as handle:
                saved = json.load(handle)
        except (OSError, ValueError):
            saved = {}
        HOST.update_state(clocks_locked=bool(saved.get("clocks_locked", False)),
                          fan_max=bool(saved.get("fan_max", False)))
        return 0
    if not os.path.exists(path):
        store(path)
    changes = {"clocks_locked": True}
    if fan:
        changes["fan_max"] = True
    HOST.update_state(**changes)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
