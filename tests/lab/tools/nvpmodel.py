#!/usr/bin/env python3
# fleet device lab STAND-IN for Jetson's `nvpmodel`: it replays the recorded real output
# tests/fixtures/tools/nvpmodel-q.txt ("NV Power Mode: <name>" then the mode id) with this lab
# host's power mode, kept in ~/.lab/state.json.
"""nvpmodel stand-in (Orin Nano modes: 0 "15W", 1 "25W", 2 "MAXN_SUPER").

  nvpmodel -q [--verbose]       the current mode, in the recorded format
  nvpmodel -m N                 set mode N (silent on success, like the real tool); no root
                                needed here
  nvpmodel -p --verbose         list the modes ("POWER_MODEL: ID=N NAME=...")

Assumed, not verified: the wording of the invalid-mode error and of -p --verbose, and that
a mode change needs no reboot (the real tool may ask for one when entering or leaving MAXN).
"""

import os
import re
import sys

LAB_HOME = None  # the lab host's HOME: written in when tests/lab/homes.py installs this script
LAB_LIB = None  # the directory of _labtool.py: written in on install
sys.path.insert(0, LAB_LIB or os.path.dirname(os.path.realpath(__file__)))

import _labtool as lab

HOST = lab.host(LAB_HOME)


def query():
    state = HOST.state()
    mode_id = int(state.get("power_mode_id", 2))
    name = lab.JETSON_MODES.get(mode_id, (state.get("power_mode"),))[0]
    recorded = lab.fixture("nvpmodel-q.txt").splitlines()
    lab.out(re.sub(r"(NV Power Mode:\s*).*", lambda m: m.group(1) + str(name), recorded[0]))
    lab.out(str(mode_id))
    return 0


def usage():
    lab.err("Usage: nvpmodel [-m <mode id>] [-q] [-p --verbose] [-f <config file>]")
    return 1


def main(argv):
    if HOST.fails("nvpmodel"):
        lab.err("NVPM ERROR: failed to read the power mode (fleet lab: nvpmodel configured to "
                "fail)")
        return 1
    if not argv:
        return usage()
    i = 0
    action, mode = None, None
    while i < len(argv):
        arg = argv[i]
        if arg in ("-q", "--query"):
            action = action or "query"
        elif arg in ("-m", "--mode"):
            if i + 1 >= len(argv):
                return usage()
            i += 1
            action, mode = "set", argv[i]
        elif arg.startswith("-m") and arg[2:].isdigit():
            action, mode = "set", arg[2:]
        elif arg == "-p":
            action = "list"
        elif arg in ("--verbose", "-v"):
            pass
        elif arg == "-f" and i + 1 < len(argv):
            i += 1
        else:
            return usage()
        i += 1
    if action == "query":
        return query()
    if action == "list":
        for mode_id in sorted(lab.JETSON_MODES):
            lab.out(f"NVPM VERB: POWER_MODEL: ID={mode_id} NAME={lab.JETSON_MODES[mode_id][0]}")
        return 0
    if action == "set":
        try:
            mode_id = int(mode)
        except ValueError:
            mode_id = -1
        if mode_id not in lab.JETSON_MODES:
            lab.err(f"NVPM ERROR: Invalid mode id {mode}")
            return 1
        HOST.update_state(power_mode_id=mode_id, power_mode=lab.JETSON_MODES[mode_id][0])
        return 0
    return usage()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
