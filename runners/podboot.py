"""Runs one attempt inside a Kubernetes pod (fleet.backends.kubernetes). Stdlib only.

The pod's loader fetched fleet's runner bundle and started this. It asks the controller's
callback listener for the attempt's plan, fetches the inputs (checking each one's sha256),
runs setup and the command with its output on the pod's stdout (the pod log, which fleet
streams), enforces the timeout, then hands back status.json, result.json / error.json and the
outputs. The pod's exit status is the job's, so the cluster's own record of it agrees.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from wrapper import collect_outputs

URL = os.environ.get("FLEET_CALLBACK_URL", "")
TOKEN = os.environ.get("FLEET_CALLBACK_TOKEN", "")
ATTEMPT = os.environ.get("FLEET_ATTEMPT_ID", "")
LIB = os.path.dirname(os.path.abspath(__file__))


def _call(method, path, data=None, retries=8):
    """One request to the callback listener, retried while the controller restarts."""
    err = None
    for i in range(retries):
        req = urllib.request.Request(URL + "/v1/%s/%s" % (ATTEMPT, path), data=data, method=method,
                                     headers={"Authorization": "Bearer " + TOKEN})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code not in (502, 503, 504):
                raise RuntimeError("%s %s: HTTP %s %s" % (method, path, exc.code, exc.read()[:200])) from None
            err = exc
        except OSError as exc:
            err = exc
        time.sleep(min(2 ** i, 15))
    raise RuntimeError("%s %s: the controller did not answer: %s" % (method, path, err))


def _say(text):
    sys.stdout.write("fleet: %s\n" % text)
    sys.stdout.flush()


def _fetch_inputs(adir, inputs):
    for rel, sha in inputs:
        dest = os.path.join(adir, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        data = _call("GET", "inputs/" + sha)
        if hashlib.sha256(data).hexdigest() != sha:
            raise RuntimeError("input %s arrived damaged (sha256 differs)" % rel)
        with open(dest, "wb") as fh:
            fh.write(data)


def _run(argv, env, deadline, grace):
    """Run one phase in its own process group; (exit code, signal, timed out)."""
    proc = subprocess.Popen(argv, env=env, cwd=env["FLEET_ATTEMPT_DIR"], stdin=subprocess.DEVNULL,
                            start_new_session=True)
    stopping = []

    def stop(signum, frame):  # the pod is being deleted (cancel): pass it on to the job
        stopping.append(signum)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except OSError:
            pass

    signal.signal(signal.SIGTERM, stop)
    timed_out = False
    while True:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            code = proc.wait(timeout=timeout)
            break
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=grace)
            except (OSError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
            code = proc.wait()
            break
    if code < 0:
        return None, -code, timed_out
    return code, None, timed_out


def main():
    adir = os.path.join(os.getcwd(), "attempt")
    os.makedirs(adir, exist_ok=True)
    status = {"exit_code": None, "signal": None, "timed_out": False, "phase": "setup", "error": None}
    code = 1
    try:
        plan = json.loads(_call("GET", "plan"))
        with open(os.path.join(adir, "job.json"), "w") as fh:
            json.dump(plan["job"], fh)
        _fetch_inputs(adir, plan.get("inputs") or [])
        env = {k: v for k, v in os.environ.items() if k != "FLEET_CALLBACK_TOKEN"}
        env["FLEET_ATTEMPT_DIR"] = adir
        env["FLEET_RESULT"] = os.path.join(adir, "result.json")
        deadline = time.monotonic() + float(plan["timeout"]) if plan.get("timeout") else None
        grace = float(plan.get("grace") or 10)
        status["started_at"] = time.time()
        sys.stdout.flush()
        result = None
        if plan.get("setup"):
            c, sig, timed_out = _run(["/bin/sh", "-c", plan["setup"]], env, deadline, grace)
            status.update(exit_code=c, signal=sig, timed_out=timed_out)
            if c != 0 or timed_out:
                code = c if c is not None else 128 + (sig or 0)
                return code
        argv = plan.get("argv") or [sys.executable, "-B", os.path.join(LIB, plan["entry"]), "job.json"]
        status["phase"] = "run"
        c, sig, timed_out = _run(argv, env, deadline, grace)
        status.update(exit_code=c, signal=sig, timed_out=timed_out)
        code = c if c is not None else 128 + (sig or 0)
        for name in ("result.json", "error.json"):
            path = os.path.join(adir, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as fh:
                    data = fh.read(16 << 20)
                try:
                    parsed = json.loads(data)
                except ValueError:
                    status["error"] = "%s is not JSON" % name if name == "error.json" else status["error"]
                    parsed = None
                    if name == "result.json":
                        status["result_problem"] = "result.json is not JSON"
                if parsed is not None:
                    _call("PUT", "files/" + name, json.dumps(parsed).encode())
                    if name == "result.json":
                        result = parsed
        if c == 0 and not timed_out:
            files, problem = collect_outputs(adir, plan.get("outputs") or [], result)
            for f in files:
                with open(os.path.join(adir, f["path"]), "rb") as fh:
                    _call("PUT", "outputs?path=" + urllib.parse.quote(f["path"]), fh.read())
            status["outputs"] = files
            status["outputs_problem"] = problem
        return code
    except Exception as exc:  # the pod must always leave a status behind
        status["error"] = "pod bootstrap: %s: %s" % (type(exc).__name__, exc)
        _say(status["error"])
        return 1 if code == 0 else code
    finally:
        status["ended_at"] = time.time()
        try:
            _call("PUT", "files/status.json", json.dumps(status).encode(), retries=5)
        except Exception as exc:
            _say("cannot hand in the status: %s" % exc)
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
