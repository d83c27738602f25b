"""What every device-side runner shares (stdlib only, Python >= 3.8): the job document, error
records, running a device tool with its output kept in a file, and where host files are.

Runners run with the attempt directory as their working directory: ``python3 run.py job.json``.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

EX_SETUP = 78


class RunnerError(Exception):
    """Ends the runner with an error record: ``cls`` is ``runner_error`` (the job's inputs or
    params are wrong, or the tool failed) or ``setup_failed`` (the host lacks something)."""

    def __init__(self, message, cls="runner_error"):
        Exception.__init__(self, message)
        self.cls = cls


def write_result(result):
    """``result.json``: the runner's record; run in a container image, its environment names
    the image's digest (a part of the comparison key: fleet.results)."""
    if os.environ.get("FLEET_IMAGE_DIGEST"):
        result.setdefault("environment", {})["image_digest"] = os.environ["FLEET_IMAGE_DIGEST"]
    write_json("result.json", result)


def write_json(path, data):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, path)


def log(message):
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def host_root():
    """Where the host's own files are: ``/``, unless FLEET_HOST_ROOT says otherwise (a
    container with the host's /etc mounted elsewhere; the test lab)."""
    return os.environ.get("FLEET_HOST_ROOT") or "/"


def host_file(path):
    """``path`` (absolute, e.g. /etc/nv_tegra_release) under the host root."""
    return os.path.join(host_root(), path.lstrip("/"))


def read_host_file(path):
    try:
        with open(host_file(path)) as fh:
            return fh.read()
    except OSError:
        return None


def find_tool(name, *extra_paths):
    """A tool on PATH, else at one of ``extra_paths`` (absolute, under the host root)."""
    found = shutil.which(name)
    if found:
        return found
    for path in extra_paths:
        full = host_file(path)
        if os.path.isfile(full) and os.access(full, os.X_OK):
            return full
    return None


def run_tool(argv, log_path=None, timeout=None, echo=True):
    """Run a device tool; its output goes to ``log_path`` (and to our log as it comes, so
    ``fleet logs -f`` shows it). Returns (exit code, output text)."""
    out = []
    log("$ " + " ".join(argv))
    fh = open(log_path, "w") if log_path else None
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, universal_newlines=True, errors="replace")
        deadline = time.time() + timeout if timeout else None
        for line in proc.stdout:
            out.append(line)
            if fh:
                fh.write(line)
            if echo:
                sys.stdout.write(line)
            if deadline and time.time() > deadline:
                proc.kill()
                break
        code = proc.wait()
    except OSError as exc:
        raise RunnerError("cannot run %s: %s" % (argv[0], exc), "setup_failed")
    finally:
        if fh:
            fh.close()
        sys.stdout.flush()
    return code, "".join(out)


def quiet(argv, timeout=20):
    """Output of a small query command, or None if it is missing or fails."""
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL, universal_newlines=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def load_job(argv):
    if len(argv) != 1:
        raise RunnerError("usage: run.py job.json")
    with open(argv[0]) as fh:
        return json.load(fh)


def cache_dir(*parts):
    """fleet's cache on this host (``<workdir>/cache``; the attempt dir is
    ``<workdir>/attempts/<id>``), created on demand."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath("."))), "cache", *parts)
    os.makedirs(path, exist_ok=True)
    return path


def main(body, argv):
    """Run ``body(job)``; turn failures into error.json and the runner's exit status."""
    try:
        job = load_job(argv)
        body(job)
        return 0
    except RunnerError as exc:
        write_json("error.json", {"class": exc.cls, "message": str(exc)})
        log("error (%s): %s" % (exc.cls, exc))
        return EX_SETUP if exc.cls == "setup_failed" else 1
    except Exception as exc:  # a clear record, not a bare traceback
        write_json("error.json", {"class": "runner_error", "message": "%s: %s" % (type(exc).__name__, exc)})
        log("error: %s: %s" % (type(exc).__name__, exc))
        return 1


def check_params(params, defaults, name):
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise RunnerError("%s: unknown param(s) %s (known: %s)" % (
            name, ", ".join(unknown), ", ".join(sorted(defaults))))
    merged = dict(defaults)
    merged.update(params)
    return merged


def param_number(params, key, minimum=0, integer=False):
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum or (
            integer and int(value) != value):
        raise RunnerError("param %s must be %s >= %s, not %r" % (
            key, "an integer" if integer else "a number", minimum, value))
    return int(value) if integer else float(value)
