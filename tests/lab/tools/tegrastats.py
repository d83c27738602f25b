#!/usr/bin/env python3
# fleet device lab STAND-IN for Jetson's `tegrastats`: it replays the recorded real line
# tests/fixtures/tools/tegrastats-orin-nano-jp6.txt (config "tegrastats_fixture" may name
# another recorded line), with loads, clocks, temperatures and rail power moved a little per
# sample and up while a trtexec stand-in runs on this lab host.
"""tegrastats stand-in.

  tegrastats [--interval MS] [--logfile FILE]     a line now, then one every MS (default 1000)
                                                  until SIGTERM/SIGINT (then exit 0)
  tegrastats --start [--interval MS] [--logfile FILE]   the same as a background daemon (double
                                                  fork, new session); its pid is kept in
                                                  ~/.lab/tegrastats/<pid>.pid
  tegrastats --stop                               SIGTERM every daemon started with --start
  --verbose --readall --load_cfg F --save_cfg F   accepted, ignored

Each line is the recorded one with its fields rewritten in place, so its layout is exactly the
real one. A sample is "busy" when a trtexec stand-in ran on the host at any time since the
previous sample: GR3D_FREQ ~97% at the power mode's GPU maximum, higher CPU load, EMC and
temperatures, and VDD_IN / VDD_CPU_GPU_CV / VDD_SOC at the mode's (illustrative) busy power.
Locked clocks (jetson_clocks) raise idle frequencies and power a little. The second rail value
is the running average of this process's samples, like the real one.

Assumed, not verified: that the first line comes at once (not after one interval), --logfile
appending to FILE, the usage text for an unknown option, exit status 0 on SIGTERM/SIGINT.
"""

import contextlib
import os
import re
import signal
import sys
import time

LAB_HOME = None  # the lab host's HOME: written in when tests/lab/homes.py installs this script
LAB_LIB = None  # the directory of _labtool.py: written in on install
sys.path.insert(0, LAB_LIB or os.path.dirname(os.path.realpath(__file__)))

import _labtool as lab

HOST = lab.host(LAB_HOME)
PID_DIR = os.path.join(HOST.lab_dir, "tegrastats")
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")
USAGE = """Usage: tegrastats [-option]
Options:
    --help                  : print this help screen
    --interval <millisec>   : sample the information in <milliseconds>
    --logfile  <filename>   : dump the output of tegrastats to <filename>
    --load_cfg <filename>   : load the information from <filename>
    --readall               : collect all stats including performance intensive stats
    --save_cfg <filename>   : save the information to <filename>
    --start                 : run tegrastats as a daemon process in the background
    --stop                  : stop any running instances of tegrastats
    --verbose               : print verbose message"""


class Stop(Exception):
    pass


def _stop(signum, frame):
    raise Stop()


def jitter(k, salt, amount):
    """A deterministic value in [-amount, amount] for sample ``k``."""
    return ((lab.stable_int(k, salt) % 2001) / 1000.0 - 1.0) * amount


class Sampler:
    def __init__(self):
        cfg = HOST.config
        line = lab.fixture(cfg.get("tegrastats_fixture") or "tegrastats-orin-nano-jp6.txt")
        line = line.strip().splitlines()[0]
        m = re.match(r"^\d\d-\d\d-\d{4} \d\d:\d\d:\d\d ", line)
        self.stamped = bool(m)
        self.template = line[m.end():] if m else line
        idle = {name: int(cur) for name, cur in
                re.findall(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/\d+", self.template)}
        self.idle_rails = {k: v for k, v in idle.items() if k not in ("RAM", "SWAP")}
        self.sums = {}
        self.k = 0
        self.last = None

    def line(self):
        now = time.time()
        busy = HOST.busy_between(self.last if self.last is not None else now, now)
        self.last = now
        state = HOST.state()
        mode = lab.JETSON_MODES.get(int(state.get("power_mode_id", 2)), lab.JETSON_MODES[2])
        _, cpu_khz, gpu_hz, busy_power = mode
        locked = bool(state.get("clocks_locked"))
        k = self.k
        self.k += 1
        text = self.template

        def ram(m):
            return "RAM {}/".format(int(m.group(1)) + (900 if busy else 0) + int(jitter(k, "ram", 6)))

        def cpu(m):
            items = []
            for i, item in enumerate(m.group(1).split(",")):
                parts = re.match(r"^(\d+)%(?:@(\d+))?$", item.strip())
                if not parts:
                    items.append(item)
                    continue
                load = int(parts.group(1)) + (45 if busy and i == 0 else (18 if busy else 0))
                load = max(0, min(100, load + int(jitter(k, f"cpu{i}", 4))))
                freq = parts.group(2)
                if freq is not None and (busy or locked):
                    freq = str(cpu_khz // 1000)
                items.append(f"{load}%@{freq}" if freq is not None else f"{load}%")
            return "CPU [{}]".format(",".join(items)) + (m.group(2) or "")

        def emc(m):
            if busy:
                load = 38 + int(jitter(k, "emc", 4))
            else:
                load = max(0, int(m.group(1)) + int(jitter(k, "emc", 1)))
            freq = m.group(2)
            if freq and (busy or locked) and mode[0] != "15W":
                freq = "@3199"
            return "EMC_FREQ {}%{}".format(load, freq or "")

        def gr3d(m):
            load = 97 + int(jitter(k, "gr3d", 2)) if busy else 0
            mhz = str(gpu_hz // 1000000) if (busy or locked) else m.group(3)
            if m.group(2) == "@[":
                return f"GR3D_FREQ {load}%@[{mhz}]"
            if m.group(2) == "@":
                return f"GR3D_FREQ {load}%@{mhz}"
            return f"GR3D_FREQ {load}%"

        def temp(m):
            value = float(m.group(2))
            if value <= -256:
                return m.group(0)
            value += (7.0 if busy else 0.0) + jitter(k, m.group(1), 0.3)
            return f"{m.group(1)}@{value:.3f}C"

        def rail(m):
            name, unit = m.group(1), m.group(3) or ""
            if name not in self.idle_rails:
                return m.group(0)
            idle = self.idle_rails[name]
            if busy:
                if name in TOTAL_RAILS:
                    value = busy_power[0]
                elif name == "VDD_CPU_GPU_CV":
                    value = busy_power[1]
                elif name == "VDD_SOC":
                    value = busy_power[2]
                else:
                    value = idle * busy_power[0] / 5704.0
            else:
                value = idle * (1.1 if locked else 1.0)
            value = int(value * (1 + jitter(k, name, 0.03)))
            total, count = self.sums.get(name, (0, 0))
            self.sums[name] = (total + value, count + 1)
            average = (total + value) // (count + 1)
            return f"{name} {value}{unit}/{average}{unit}"

        text = re.sub(r"RAM (\d+)/", ram, text)
        text = re.sub(r"CPU \[([^\]]*)\](@\d+)?", cpu, text)
        text = re.sub(r"EMC_FREQ (\d+)%(@\d+)?", emc, text)
        text = re.sub(r"GR3D_FREQ (\d+)%(@\[|@)?\[?(\d+)?\]?", gr3d, text)
        text = re.sub(r"(?<![\w%])([A-Za-z][\w-]*)@(-?\d+(?:\.\d+)?)C", temp, text)
        text = re.sub(r"\b([A-Z][A-Z0-9_]*) (\d+)(mW)?/(\d+)(?:mW)?", rail, text)
        if self.stamped:
            text = time.strftime("%m-%d-%Y %H:%M:%S ", time.localtime(now)) + text
        return text


def run(interval_ms, logfile):
    sampler = Sampler()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    sink = open(logfile, "a") if logfile else contextlib.nullcontext(sys.stdout)
    try:
        with sink as stream:
            while True:
                stream.write(sampler.line() + "\n")
                stream.flush()
                time.sleep(interval_ms / 1000.0)
    except (Stop, BrokenPipeError):
        pass
    return 0


def start(interval_ms, logfile):
    """Run as a daemon (double fork, new session, stdio on /dev/null); the parent returns."""
    os.makedirs(PID_DIR, exist_ok=True)
    if os.fork() > 0:
        return 0
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    pid_file = os.path.join(PID_DIR, f"{os.getpid()}.pid")
    lab.write_atomic(pid_file, f"{os.getpid()}\n")
    try:
        run(interval_ms, logfile or os.devnull)
    finally:
        try:
            os.unlink(pid_file)
        except OSError:
            pass
    os._exit(0)


def stop():
    try:
        names = os.listdir(PID_DIR)
    except OSError:
        return 0
    for name in names:
        path = os.path.join(PID_DIR, name)
        try:
            with open(path) as handle:
                pid = int(handle.read().strip())
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            pass
        deadline = time.time() + 2.0
        while os.path.exists(path) and time.time() < deadline:
            time.sleep(0.01)
        try:
            os.unlink(path)
        except OSError:
            pass
    return 0


def main(argv):
    interval, logfile, mode = 1000, None, "run"
    i = 0
    while i < len(argv):
        key, has_value, value = argv[i].partition("=")
        if key in ("--interval", "--logfile", "--load_cfg", "--save_cfg"):
            if not has_value:
                if i + 1 >= len(argv):
                    lab.out(USAGE)
                    return 1
                i += 1
                value = argv[i]
            if key == "--interval":
                try:
                    interval = int(value)
                except ValueError:
                    lab.out(USAGE)
                    return 1
            elif key == "--logfile":
                logfile = value
        elif key == "--start":
            mode = "start"
        elif key == "--stop":
            mode = "stop"
        elif key in ("--verbose", "--readall"):
            pass
        elif key in ("--help", "-h"):
            lab.out(USAGE)
            return 0
        else:
            lab.out(USAGE)
            return 1
        i += 1
    if HOST.fails("tegrastats"):
        lab.err("Error: failed to read system statistics (fleet lab: tegrastats configured to "
                "fail)")
        return 1
    if mode == "stop":
        return stop()
    interval = max(1, interval)
    if mode == "start":
        return start(interval, logfile)
    return run(interval, logfile)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
