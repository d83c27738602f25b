#!/usr/bin/env python3
# fleet device lab STAND-IN for NVIDIA's `nvidia-smi`: no GPU here. tests/fixtures/tools holds
# no recorded nvidia-smi output, so it replays the formats seen in public output (documented in
# runners/devtools/nvidia.py) with this lab host's configuration (~/.lab/tools.json).
"""nvidia-smi stand-in.

  nvidia-smi                                  the summary table (Driver Version / CUDA Version)
  nvidia-smi -L | --list-gpus                 GPU 0: NAME (UUID: GPU-...)
  nvidia-smi --query-gpu=f1,f2 [--format=csv[,noheader][,nounits]] [-i 0]
  nvidia-smi -lgc MIN,MAX | --lock-gpu-clocks=MIN,MAX     locks clocks (state clocks_locked)
  nvidia-smi -rgc | --reset-gpu-clocks                    unlocks them
  nvidia-smi --version

An unknown --query-gpu field prints ``Field "x" is not a valid field to query.`` and exits 2
(seen in public logs). While a trtexec stand-in runs on the host the GPU reads busy (P0, high
power and utilization). Assumed, not verified: the exact table layout, the CSV header names
and units, the -lgc/-rgc messages, the --version layout, --format defaulting to csv.
"""

import os
import sys
import time

LAB_HOME = None  # the lab host's HOME: written in when tests/lab/homes.py installs this script
LAB_LIB = None  # the directory of _labtool.py: written in on install
sys.path.insert(0, LAB_LIB or os.path.dirname(os.path.realpath(__file__)))

import _labtool as lab

HOST = lab.host(LAB_HOME)
BUS_ID = "00000000:01:00.0"
INVALID = "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help."


def facts(cfg, state):
    """Every queryable field: canonical name -> (value, unit)."""
    busy = HOST.busy_between(time.time() - 1.0, time.time())
    locked = bool(state.get("clocks_locked"))
    sm_max = int(cfg["sm_clock_max_mhz"])
    mem_max = int(cfg["mem_clock_max_mhz"])
    sm = int(state.get("locked_sm_mhz") or sm_max) if locked or busy else 210
    mem = mem_max if locked or busy else 405
    used = 1184 if busy else 2
    total = int(cfg["memory_mib"])
    return {
        "name": (cfg["gpu_name"], ""),
        "driver_version": (cfg["driver"], ""),
        "compute_cap": (str(cfg["compute_capability"]), ""),
        "uuid": (HOST.uuid(), ""),
        "index": ("0", ""),
        "count": ("1", ""),
        "pci.bus_id": (BUS_ID, ""),
        "persistence_mode": ("Disabled", ""),
        "pstate": ("P0" if busy else ("P2" if locked else "P8"), ""),
        "clocks.current.sm": (str(sm), "MHz"),
        "clocks.current.graphics": (str(sm), "MHz"),
        "clocks.current.memory": (str(mem), "MHz"),
        "clocks.max.sm": (str(sm_max), "MHz"),
        "clocks.max.graphics": (str(sm_max), "MHz"),
        "clocks.max.memory": (str(mem_max), "MHz"),
        "power.limit": ("{:.2f}".format(float(cfg["power_limit_w"])), "W"),
        "power.draw": (f"{128.44 if busy else (21.6 if locked else 7.31):.2f}", "W"),
        "temperature.gpu": ("62" if busy else "35", ""),
        "utilization.gpu": ("98" if busy else "0", "%"),
        "utilization.memory": ("41" if busy else "0", "%"),
        "memory.total": (str(total), "MiB"),
        "memory.used": (str(used), "MiB"),
        "memory.free": (str(total - used), "MiB"),
        "fan.speed": ("47" if busy else "0", "%"),
    }


ALIASES = {
    "gpu_name": "name", "gpu_uuid": "uuid", "compute_capability": "compute_cap",
    "clocks.sm": "clocks.current.sm", "clocks.gr": "clocks.current.graphics",
    "clocks.graphics": "clocks.current.graphics", "clocks.mem": "clocks.current.memory",
    "clocks.memory": "clocks.current.memory", "clocks.max.gr": "clocks.max.graphics",
    "clocks.max.mem": "clocks.max.memory", "gpu_bus_id": "pci.bus_id",
    "power.max_limit": "power.limit", "enforced.power.limit": "power.limit",
}


def query(fields_text, fmt):
    cfg, state = HOST.config, HOST.state()
    table = facts(cfg, state)
    names = [name.strip() for name in fields_text.split(",") if name.strip()]
    for name in names:
        if ALIASES.get(name, name) not in table:
            lab.out(f'Field "{name}" is not a valid field to query.')
            lab.out()
            return 2
    options = {part.strip() for part in fmt.split(",")}
    if "csv" not in options:
        lab.out(f'"{fmt}" is not a valid format. Valid formats: csv.')  # assumed wording
        return 2
    units = "nounits" not in options
    if "noheader" not in options:
        header = []
        for name in names:
            unit = table[ALIASES.get(name, name)][1]
            canonical = ALIASES.get(name, name)
            header.append(f"{canonical} [{unit}]" if unit else canonical)
        lab.out(", ".join(header))
    row = []
    for name in names:
        value, unit = table[ALIASES.get(name, name)]
        row.append(f"{value} {unit}" if units and unit else value)
    lab.out(", ".join(row))
    return 0


def summary():
    cfg, state = HOST.config, HOST.state()
    table = facts(cfg, state)

    def row(*cells):
        widths = (41, 24, 22)
        return "|" + "|".join(cell.ljust(width) for cell, width in zip(cells, widths)) + "|"

    def box(text):
        return "|" + text.ljust(89) + "|"

    rule = "+" + "-" * 41 + "+" + "-" * 24 + "+" + "-" * 22 + "+"
    power = "{:.0f}W / {:>4.0f}W".format(float(table["power.draw"][0]),
                                         float(table["power.limit"][0]))
    memory = "{}MiB / {:>6}MiB".format(table["memory.used"][0], table["memory.total"][0])
    lines = [
        time.strftime("%a %b %d %H:%M:%S %Y") + "       ",
        "+" + "-" * 89 + "+",
        box(" NVIDIA-SMI {:<22}Driver Version: {:<15}CUDA Version: {}".format(
            cfg["driver"], cfg["driver"], cfg["cuda"])),
        "|" + "-" * 41 + "+" + "-" * 24 + "+" + "-" * 22 + "+",
        row(" GPU  Name                 Persistence-M", " Bus-Id          Disp.A",
            " Volatile Uncorr. ECC"),
        row(" Fan  Temp   Perf          Pwr:Usage/Cap", "           Memory-Usage",
            " GPU-Util  Compute M."),
        row("", "", "               MIG M."),
        "|" + "=" * 41 + "+" + "=" * 24 + "+" + "=" * 22 + "|",
        row("{:>4}  {:<30}{:>4} ".format(0, cfg["gpu_name"][:30], "Off"),
            "{:>19}{:>4} ".format(BUS_ID, "Off"), "{:>21} ".format("N/A")),
        row("{:>4}{:>6}{:>6}{:>24} ".format(table["fan.speed"][0] + "%",
                                           table["temperature.gpu"][0] + "C",
                                           table["pstate"][0], power),
            f"{memory:>23} ",
            "{:>9}{:>12} ".format(table["utilization.gpu"][0] + "%", "Default")),
        row("", "", "{:>21} ".format("N/A")),
        rule,
        " " * 91,
        "+" + "-" * 89 + "+",
        box(" Processes:"),
        box("  GPU   GI   CI              PID   Type   Process name                        GPU Memory"),
        box("        ID   ID                                                               Usage"),
        "|" + "=" * 89 + "|",
        box("  No running processes found"),
        "+" + "-" * 89 + "+",
    ]
    for line in lines:
        lab.out(line)
    return 0


def main(argv):
    if HOST.fails("nvidia-smi"):
        lab.out("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                "Make sure that the latest NVIDIA driver is installed and running.")
        lab.out()
        lab.err("(fleet lab: nvidia-smi configured to fail)")
        return 1
    cfg = HOST.config
    if not argv:
        return summary()
    fields, fmt, lock, reset = None, "csv", None, False
    i = 0
    while i < len(argv):
        arg = argv[i]
        key, has_value, value = arg.partition("=")
        if key in ("--query-gpu", "--format", "--lock-gpu-clocks", "-i", "--id", "-lgc"):
            if not has_value:
                if i + 1 >= len(argv):
                    lab.out(INVALID)
                    return 2
                i += 1
                value = argv[i]
            if key == "--query-gpu":
                fields = value
            elif key == "--format":
                fmt = value
            elif key in ("--lock-gpu-clocks", "-lgc"):
                lock = value
            elif value not in ("0", BUS_ID, HOST.uuid()):
                lab.out("No devices were found")
                return 6
        elif arg in ("-L", "--list-gpus"):
            lab.out("GPU 0: {} (UUID: {})".format(cfg["gpu_name"], HOST.uuid()))
            return 0
        elif arg in ("-rgc", "--reset-gpu-clocks"):
            reset = True
        elif arg == "--version":
            lab.out("NVIDIA-SMI version  : {}".format(cfg["driver"]))
            lab.out("NVML version        : {}".format(".".join(cfg["driver"].split(".")[:2])))
            lab.out("DRIVER version      : {}".format(cfg["driver"]))
            lab.out("CUDA Version        : {}".format(cfg["cuda"]))
            return 0
        else:
            lab.out(INVALID)
            return 2
        i += 1
    if lock is not None:
        try:
            low, high = [int(float(x)) for x in lock.split(",")]
        except ValueError:
            lab.out(INVALID)
            return 2
        HOST.update_state(clocks_locked=True, locked_sm_mhz=min(high, int(cfg["sm_clock_max_mhz"])))
        lab.out(f'GPU clocks set to "(gpuClkMin {low}, gpuClkMax {high})" for GPU {BUS_ID}')
        lab.out("All done.")
        return 0
    if reset:
        HOST.update_state(clocks_locked=False, locked_sm_mhz=None)
        lab.out("All done.")
        return 0
    if fields is not None:
        return query(fields, fmt)
    return summary()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
