#!/usr/bin/python
"""Ansible module: submit a job to fleet, optionally wait, return its state and result."""

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_job
short_description: Submit a job to a fleet server and optionally wait for its result
description:
  - Submits a job spec to the fleet API (C(POST /jobs)), uploading local input files first (and hook playbook files, which only admins may send; a bare hook name is a hook of the server's catalog).
  - With I(wait), waits until the job ends and returns its state, reason and result record.
  - In check mode nothing is submitted.
version_added: "0.1.0"
options:
  server:
    description: URL of the fleet API. Default C(FLEET_SERVER), else the local server recorded in C($FLEET_HOME/server.json).
    type: str
  token:
    description: Bearer token. Default C(FLEET_TOKEN), else C($FLEET_HOME/token).
    type: str
  spec:
    description: The job spec as a mapping (what C(fleet submit) reads from YAML).
    type: dict
  spec_file:
    description: A YAML job spec file; its relative input paths are relative to it.
    type: path
  wait:
    description: Wait until the job ends.
    type: bool
    default: false
  wait_timeout:
    description: Seconds to wait at most.
    type: int
    default: 600
  fail_on_job_failure:
    description: When waiting, fail the task if the job did not end SUCCEEDED (the job is still returned).
    type: bool
    default: true
  validate_certs:
    description: Verify the server's TLS certificate.
    type: bool
    default: true
notes:
  - Exactly one of I(spec) and I(spec_file).
author: fleet developers
"""

EXAMPLES = r"""
- name: Benchmark the model on a Jetson and keep the numbers
  fleet.lab.fleet_job:
    spec:
      name: yolo-orin
      kind: benchmark
      runner: onnxruntime
      resources: {pool: jetson}
      inputs: {model: models/yolo.onnx}
      params: {iterations: 200}
    wait: true
  register: bench

- ansible.builtin.assert:
    that: bench.result.metrics.latency_ms.p99 < 20
"""

RETURN = r"""
job_id:
  description: The job's id (null in check mode).
  type: str
  returned: always
submitted:
  description: Whether a job was submitted (false in check mode).
  type: bool
  returned: always
state:
  description: The job's state (PENDING, RUNNING, SUCCEEDED, FAILED, ...), as last seen.
  type: str
  returned: when submitted
reason:
  description: Why it ended (succeeded, exit_nonzero, setup_failed, ...).
  type: str
  returned: when submitted
message:
  description: The job's message.
  type: str
  returned: when submitted
host:
  description: The host it ran on.
  type: str
  returned: when submitted
attempts:
  description: Number of attempts.
  type: int
  returned: when submitted
result:
  description: The result record (metrics, environment, ...), null for jobs without one.
  type: dict
  returned: when submitted
job:
  description: The whole job as the API returns it.
  type: dict
  returned: when submitted
"""

import hashlib
import json
import os
import re
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.six.moves.urllib.error import HTTPError, URLError
from ansible.module_utils.urls import open_url

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")


class ApiError(Exception):
    pass


class Api:
    def __init__(self, server, token, validate_certs):
        self.server, self.token, self.validate_certs = server.rstrip("/"), token, validate_certs

    def call(self, method, path, body=None, data=None, content_type="application/json", timeout=60):
        headers = {"Authorization": "Bearer " + self.token, "Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = content_type
        try:
            resp = open_url(self.server + path, method=method, data=data, headers=headers,
                            validate_certs=self.validate_certs, timeout=timeout)
            text = resp.read()
        except HTTPError as exc:
            raise ApiError("%s %s%s: HTTP %d: %s" % (method, self.server, path, exc.code, _detail(exc)))
        except URLError as exc:
            raise ApiError("cannot reach the fleet server at %s: %s" % (self.server, exc.reason))
        return json.loads(text) if text else None


def _detail(exc):
    try:
        body = json.loads(exc.read())
    except Exception:
        return str(exc)
    errors = body.get("errors") or []
    if errors:
        return "; ".join("%s: %s" % (e.get("field") or "(spec)", e.get("problem")) for e in errors)
    return str(body.get("detail") or body)


def _home():
    return os.path.expanduser(os.environ.get("FLEET_HOME") or "~/.fleet")


def _server_and_token(params):
    server = params["server"] or os.environ.get("FLEET_SERVER")
    if not server:
        try:
            with open(os.path.join(_home(), "server.json")) as fh:
                server = json.load(fh).get("url")
        except (OSError, ValueError):
            server = None
    token = params["token"] or os.environ.get("FLEET_TOKEN")
    if not token:
        try:
            with open(os.path.join(_home(), "token")) as fh:
                token = fh.read().strip()
        except OSError:
            token = None
    return server, token


def _upload(api, path):
    with open(path, "rb") as fh:
        data = fh.read()
    sha = hashlib.sha256(data).hexdigest()
    api.call("PUT", "/blobs/" + sha, data=data, content_type="application/octet-stream", timeout=600)
    return {"sha256": sha, "size": len(data)}


def _upload_inputs(api, spec, base):
    """Local input paths (and hook playbooks) become uploaded blob refs, as the CLI does."""
    for key in ("inputs", "hooks"):
        section = spec.get(key)
        if not isinstance(section, dict):
            continue
        for name, value in list(section.items()):
            if not isinstance(value, str):
                continue
            if key == "hooks" and re.match(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", value.strip()):
                continue  # a hook of the server's catalog, by name
            path = value if os.path.isabs(value) else os.path.join(base, os.path.expanduser(value))
            if os.path.isfile(path):
                fname = os.path.basename(path)
                section[name] = {"kind": "file", "filename": fname, "files": {fname: _upload(api, path)}}
            elif os.path.isdir(path) and key == "inputs":
                files = {}
                for root, _dirs, names in os.walk(path):
                    for n in sorted(names):
                        full = os.path.join(root, n)
                        files[os.path.relpath(full, path)] = _upload(api, full)
                section[name] = {"kind": "dir", "filename": os.path.basename(path.rstrip("/")), "files": files}
            else:
                raise ApiError("%s.%s: %s: no such file or directory" % (key, name, path))
    for step in spec.get("steps") or []:
        if isinstance(step, dict):
            _upload_inputs(api, step, base)


def _load_spec(module):
    params = module.params
    if params["spec_file"]:
        import yaml  # ansible-core depends on PyYAML
        try:
            with open(params["spec_file"]) as fh:
                spec = yaml.safe_load(fh)
        except (OSError, yaml.YAMLError) as exc:
            module.fail_json(msg="spec_file %s: %s" % (params["spec_file"], exc))
        base = os.path.dirname(os.path.abspath(params["spec_file"]))
    else:
        spec, base = params["spec"], os.getcwd()
    if not isinstance(spec, dict) or not spec.get("name"):
        module.fail_json(msg="the job spec must be a mapping with a name")
    return json.loads(json.dumps(spec)), base


def _summary(job):
    return dict(job_id=job["id"], state=job["state"], reason=job.get("reason"), message=job.get("message"),
                host=job.get("host"), attempts=job.get("attempts"), result=job.get("result"), job=job)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            server=dict(type="str"), token=dict(type="str", no_log=True), spec=dict(type="dict"),
            spec_file=dict(type="path"), wait=dict(type="bool", default=False),
            wait_timeout=dict(type="int", default=600),
            fail_on_job_failure=dict(type="bool", default=True),
            validate_certs=dict(type="bool", default=True),
        ),
        mutually_exclusive=[("spec", "spec_file")],
        required_one_of=[("spec", "spec_file")],
        supports_check_mode=True,
    )
    spec, base = _load_spec(module)
    if module.check_mode:
        module.exit_json(changed=True, submitted=False, job_id=None,
                         msg="check mode: job %s would be submitted" % spec["name"])
    server, token = _server_and_token(module.params)
    if not server or not token:
        module.fail_json(msg="no fleet server or token: set server/token, FLEET_SERVER/FLEET_TOKEN, "
                             "or run a local server (fleet server start)")
    api = Api(server, token, module.params["validate_certs"])
    try:
        _upload_inputs(api, spec, base)
        if spec.get("steps"):
            jobs = api.call("POST", "/jobs/batch", {"jobs": [spec]})
            job = jobs[-1]  # a chain: its last step stands for it
        else:
            job = api.call("POST", "/jobs", spec)
        detail = api.call("GET", "/jobs/" + job["id"])
        if module.params["wait"]:
            deadline = time.time() + module.params["wait_timeout"]
            while detail["state"] not in TERMINAL:
                left = deadline - time.time()
                if left <= 0:
                    module.fail_json(msg="job %s still %s after %d s" % (job["id"], detail["state"],
                                                                          module.params["wait_timeout"]),
                                     changed=True, submitted=True, **_summary(detail))
                detail = api.call("GET", "/jobs/%s/wait?timeout=%d" % (job["id"], min(60, max(1, int(left)))),
                                  timeout=90)
    except ApiError as exc:
        module.fail_json(msg=str(exc))
    out = _summary(detail)
    if module.params["wait"] and module.params["fail_on_job_failure"] and detail["state"] != "SUCCEEDED":
        module.fail_json(msg="job %s ended %s (%s): %s" % (detail["id"], detail["state"], detail.get("reason"),
                                                         detail.get("message")),
                         changed=True, submitted=True, **out)
    module.exit_json(changed=True, submitted=True, **out)


if __name__ == "__main__":
    main()
