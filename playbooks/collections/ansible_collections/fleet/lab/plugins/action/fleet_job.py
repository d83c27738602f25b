"""Action plugin of fleet.lab.fleet_job: runs on the Ansible controller, in the Python that runs
ansible-playbook, and does everything through fleet's client library (``fleet.client``): spec
loading, input upload, submission, server discovery and waiting on the event stream. The
module file next door holds only the documentation. Install fleet where ansible-playbook runs
(``pip install fleet`` brings ansible-core along)."""

from __future__ import annotations

import os
from pathlib import Path

from ansible.plugins.action import ActionBase

ARGS = {
    "server": {"type": "str"},
    "token": {"type": "str", "no_log": True},
    "spec": {"type": "dict"},
    "spec_file": {"type": "path"},
    "wait": {"type": "bool", "default": False},
    "wait_timeout": {"type": "int", "default": 600},
    "fail_on_job_failure": {"type": "bool", "default": True},
    "validate_certs": {"type": "bool", "default": True},
}


def _summary(job):
    data = job.model_dump(mode="json")
    return dict(job_id=job.id, state=job.state, reason=job.reason, message=job.message, host=job.host,
                attempts=data.get("attempts"), result=data.get("result"), job=data)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(ARGS)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        _spec, params = self.validate_argument_spec(
            argument_spec=ARGS, mutually_exclusive=[("spec", "spec_file")],
            required_one_of=[("spec", "spec_file")])
        try:
            from fleet.client import discovery, specs
            from fleet.client.sync import Client
            from fleet.config import load_settings
            from fleet.errors import ApiError, FleetError
        except ImportError as exc:
            return dict(result, failed=True, msg="fleet.lab.fleet_job needs fleet installed where "
                                                 "ansible-playbook runs (%s)" % exc)
        try:
            if params["spec_file"]:
                path = Path(params["spec_file"]).expanduser().absolute()
                spec, base = specs.read_spec(path), path.parent
            else:
                spec, base = dict(params["spec"]), Path(os.getcwd())
            if not spec.get("name"):
                return dict(result, failed=True, msg="the job spec must be a mapping with a name")
            if self._play_context.check_mode:
                return dict(result, changed=True, submitted=False, job_id=None,
                            msg="check mode: job %s would be submitted" % spec["name"])
            settings = load_settings()
            if params["server"]:
                settings.server = params["server"]
            token = params["token"] or discovery.read_token(settings)
            info = discovery.resolve(settings, None, autostart=False)
            if not token:
                return dict(result, failed=True, msg="no fleet token: set token or FLEET_TOKEN, or "
                                                     "run a local server (fleet server start)")
            with Client(info.url, token, verify=params["validate_certs"]) as client:
                specs.upload_inputs(client.upload, spec, base)
                job = specs.submit(client, spec)[-1]  # a chain: its last step stands for it
                detail = client.job(job.id)
                if params["wait"]:
                    (detail,) = client.wait_all([job.id], timeout=params["wait_timeout"])
        except ApiError as exc:
            return dict(result, failed=True, msg="HTTP %d: %s" % (exc.status, exc))
        except FleetError as exc:
            return dict(result, failed=True, msg=str(exc))
        except Exception as exc:  # noqa: BLE001 - a connection refused, a broken file: say it
            return dict(result, failed=True, msg="%s: %s" % (type(exc).__name__, exc))
        out = dict(result, changed=True, submitted=True, **_summary(detail))
        if params["wait"] and detail.state not in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"):
            return dict(out, failed=True, msg="job %s still %s after %d s"
                        % (detail.id, detail.state, params["wait_timeout"]))
        if params["wait"] and params["fail_on_job_failure"] and detail.state != "SUCCEEDED":
            return dict(out, failed=True, msg="job %s ended %s (%s): %s"
                        % (detail.id, detail.state, detail.reason, detail.message))
        return out
