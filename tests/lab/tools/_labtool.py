"""What the fleet lab's stand-in device tools share (stdlib only, Python >= 3.8).

The stand-ins in this directory replay recorded real output (``tests/fixtures/tools``, see
SOURCES.md there) on lab hosts, where the real tools cannot run. ``tests/lab/homes.py`` installs
them into a host's ``~/bin`` (or under its host root) with the host's HOME written in, so a
stand-in always knows its host, whatever HOME the caller sets.

Per host, under ``<home>/.lab``:

* ``tools.json``  the host's configuration (versions, GPU, Hailo architecture, ``fail``...);
  written by ``prepare_home`` from :data:`TOOL_DEFAULTS` and the profile, rewritten by tests
  (``Lab.set_tools``). Keys missing from the file take their :data:`TOOL_DEFAULTS` value.
* ``state.json``  what the tools change: the power mode (``nvpmodel -m``), locked clocks
  (``jetson_clocks``, ``nvidia-smi -lgc``). Keys missing from it come from ``tools.json``.
* ``busy``        recent ``trtexec`` runs (``{"runs": [{"pid", "start", "end"}]}``), so that
  ``tegrastats`` shows GPU load and more power while a benchmark runs on the host.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import sys
import time

# Die quietly on a closed pipe (`tool | head`), as the real (C) tools do: only in a stand-in
# tool's own process (which imports this as `_labtool`), never in the test process that imports
# it as tests.lab.tools._labtool for TOOL_DEFAULTS (there it would make pytest itself die of
# SIGPIPE on the first write to a closed socket).
if __name__ == "_labtool":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)

FIXTURES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__)))),
    "fixtures",
    "tools",
)

# Every key a stand-in reads; a profile overrides some (tests/lab/profiles.py).
TOOL_DEFAULTS = {
    # NVIDIA (trtexec, nvidia-smi)
    "tensorrt": "10.2.0",
    "gpu_name": "NVIDIA GeForce RTX 5060",
    "compute_capability": "12.0",
    "sms": 30,
    "memory_mib": 7968,
    "driver": "575.51.03",
    "cuda": "12.9",
    "sm_clock_max_mhz": 3090,
    "mem_clock_max_mhz": 14001,
    "power_limit_w": 145.0,
    # how much slower than the recorded trtexec run this device is (latency multiplier)
    "latency_scale": 1.0,
    # Jetson (nvpmodel, jetson_clocks, tegrastats); "soc" is None on hosts that are not one
    "soc": None,
    "machine": None,
    "power_mode": "MAXN_SUPER",
    "power_mode_id": 2,
    "clocks_locked": False,
    # Hailo (hailortcli, hailo)
    "hailo_arch": "HAILO8",
    "hailort": "4.23.0",
    "dfc": "3.31.0",
    "power_monitor": True,
    # seconds a trtexec/hailortcli run really takes here (kept short: the lab must be fast)
    "run_seconds": 0.2,
    # name of a tool (or a list of names) that fails with exit status 1
    "fail": None,
}

# Orin Nano power modes (nvpmodel ids): name, CPU max kHz, GPU max Hz, busy power in mW
# (VDD_IN, VDD_CPU_GPU_CV, VDD_SOC). The frequencies follow NVIDIA's published Orin Nano
# (Super) modes; the busy power figures are illustrative, not recorded.
JETSON_MODES = {
    0: ("15W", 1510400, 624750000, (9800, 3900, 2300)),
    1: ("25W", 1344000, 918000000, (13900, 6700, 2800)),
    2: ("MAXN_SUPER", 1728000, 1020000000, (16400, 8600, 3100)),
}


def fixture(name):
    """The text of a recorded fixture file."""
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as handle:
        return handle.read()


def stable_int(*parts):
    """A deterministic integer from strings (for seeds and per-host identifiers)."""
    digest = hashlib.sha256("\0".join(str(part) for part in parts).encode()).hexdigest()
    return int(digest[:15], 16)


def g(value):
    """A float as C++ iostreams print it by default (6 significant digits, like ``%g``)."""
    return format(float(value), "g")


def out(line=""):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def err(line=""):
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path, data):
    """Write bytes or text to ``path`` through a temporary file and a rename."""
    tmp = f"{path}.tmp.{os.getpid()}"
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(tmp, mode) as handle:
        handle.write(data)
    os.replace(tmp, path)


def read_header(path, key):
    """The JSON header line of a file a stand-in wrote (engine, HAR, HEF) if it carries
    ``key``; None for a missing file or any other content."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline(65536)
    except OSError:
        return None
    try:
        header = json.loads(first.decode("utf-8"))
    except ValueError:
        return None
    return header if isinstance(header, dict) and key in header else None


def write_with_header(path, header, size=4096):
    """Write a fake binary artifact: one JSON header line, then ``size`` bytes derived from it
    (deterministic: the same header gives the same file)."""
    line = (json.dumps(header, sort_keys=True) + "\n").encode()
    seed = hashlib.sha256(line).digest()
    body = bytearray()
    counter = 0
    while len(body) < size:
        body += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    write_atomic(path, line + bytes(body[:size]))


class Host:
    """The lab host a stand-in runs on: its HOME, configuration and state."""

    def __init__(self, home):
        self.home = os.path.abspath(home)
        self.lab_dir = os.path.join(self.home, ".lab")
        self.root = os.path.join(self.home, "root")

    # -- configuration and state ---------------------------------------------------------------

    def _read(self, name):
        try:
            with open(os.path.join(self.lab_dir, name), encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def config(self):
        merged = dict(TOOL_DEFAULTS)
        merged.update(self._read("tools.json"))
        return merged

    def state(self):
        """The mutable state over the configuration (power mode, clocks)."""
        merged = self.config
        merged.update(self._read("state.json"))
        return merged

    @contextlib.contextmanager
    def _locked(self, name):
        os.makedirs(self.lab_dir, exist_ok=True)
        with open(os.path.join(self.lab_dir, name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def update_state(self, **changes):
        with self._locked("state.json"):
            state = self._read("state.json")
            state.update(changes)
            write_atomic(os.path.join(self.lab_dir, "state.json"), json.dumps(state, indent=1))

    def fails(self, tool):
        """Whether the configuration says ``tool`` must fail."""
        fail = self.config.get("fail")
        return fail == tool or (isinstance(fail, list) and tool in fail)

    def run_seconds(self):
        try:
            return max(0.0, float(self.config.get("run_seconds", 0.2)))
        except (TypeError, ValueError):
            return 0.2

    # -- a trtexec run marks the host busy while it runs ----------------------------------------

    @contextlib.contextmanager
    def busy(self):
        """Record this process's run in ``.lab/busy`` (start now, end when the block ends)."""
        start = time.time()
        self._set_run(os.getpid(), start, None)
        try:
            yield
        finally:
            self._set_run(os.getpid(), start, time.time())

    def _set_run(self, pid, start, end):
        path = os.path.join(self.lab_dir, "busy")
        with self._locked("busy"):
            runs = [r for r in self._read("busy").get("runs", []) if r.get("pid") != pid]
            runs.append({"pid": pid, "start": start, "end": end})
            write_atomic(path, json.dumps({"runs": runs[-16:]}))

    def busy_between(self, t0, t1):
        """Whether some trtexec ran on this host at any time in [t0, t1]."""
        for run in self._read("busy").get("runs", []):
            start, end = run.get("start"), run.get("end")
            if not isinstance(start, (int, float)):
                continue
            if end is None and not _alive(run.get("pid")):
                continue  # killed before it could record its end
            if start <= t1 and (end is None or end >= t0):
                return True
        return False

    # -- the host's identity ----------------------------------------------------------------------

    def uuid(self):
        h = hashlib.sha256(("gpu-uuid\0" + self.home).encode()).hexdigest()
        return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _alive(pid):
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def host(lab_home):
    """The host of an installed stand-in (``lab_home`` written in on install), else $HOME."""
    return Host(lab_home or os.environ.get("HOME") or os.path.expanduser("~"))


def fail_if_configured(lab_host, tool, lines, status=1):
    """Print ``lines`` to stderr and exit with ``status`` if the host's config says ``tool``
    fails (``"fail": "<tool>"`` in tools.json)."""
    if lab_host.fails(tool):
        for line in lines:
            err(line)
        sys.exit(status)


def parse_version(text):
    """``"10.2.0"`` -> (10, 2, 0); missing parts are 0."""
    parts = []
    for piece in str(text).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)
