#!/usr/bin/python
"""Ansible module: submit a job to fleet, optionally wait, return its state and result.

Documentation only: the action plugin ``plugins/action/fleet_job.py`` does the work, through
fleet's client library."""

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

from ansible.module_utils.basic import AnsibleModule


def main():
    """The work is done by the action plugin of the same name, on the controller (it uses
    fleet's client library); this runs only if the module is called some other way."""
    module = AnsibleModule(argument_spec={}, supports_check_mode=True, bypass_checks=True)
    module.fail_json(msg="fleet.lab.fleet_job runs as an action plugin on the Ansible controller; "
                         "call it as a task of the fleet.lab collection")


if __name__ == "__main__":
    main()
