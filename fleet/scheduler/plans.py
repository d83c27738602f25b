"""What an attempt is, as a backend runs it: its command, environment, inputs and the account
it runs as. Pure functions of the job, the host and the scheduler's settings."""

from __future__ import annotations

import shlex
from typing import Any

from fleet import containers
from fleet.backends.base import AttemptPlan, InputFile
from fleet.inventory import ACCOUNT_ISOLATIONS, Host, unix_account
from fleet.models.spec import JobSpec


def account_for(host: Host, user: str, owner: str) -> str | None:
    """The Unix account a job of ``user`` runs as on ``host`` (None: the agent's own).
    ``isolation: user`` gives each fleet user an account of their own; ``fleet_job_user``
    names one account for everyone's jobs; on the controller's machine the server's owner's
    jobs run as the server's account, nobody else's do (placement refuses them where no
    other account is configured)."""
    if host.connection == "local" and user == owner:
        return None
    if host.isolation in ACCOUNT_ISOLATIONS:
        return unix_account(user)
    return host.job_user


def build(job_id: str, spec: JobSpec, attempt_id: str, host: Host, *, env: dict[str, str],
          secrets: list[str], secret_failure: str | None, inputs: list[InputFile], grace: float,
          run_as: str | None, facts: dict[str, Any] | None = None) -> AttemptPlan:
    """The plan of one attempt. ``env`` holds the spec's variables, secrets opened;
    ``secret_failure`` says why they could not be (the attempt then fails in setup)."""
    setup = spec.setup
    image = spec.image or host.container_image
    if secret_failure is not None:
        setup = f"echo {shlex.quote('fleet: ' + secret_failure)} >&2; exit 1"
    env = dict(env, FLEET_JOB_ID=job_id, FLEET_ATTEMPT_ID=attempt_id, FLEET_HOST=host.name,
               FLEET_DEVICE_CLASS=host.device_class)
    inputs_map: dict[str, str] = {}
    for name, ref in spec.uploaded().items():
        inputs_map[name] = ref.host_path(name)
        env[f"FLEET_INPUT_{name.upper().replace('-', '_').replace('.', '_')}"] = ref.host_path(name)
    job_doc = {
        "schema": 1, "job_id": job_id, "attempt_id": attempt_id, "host": host.name,
        "name": spec.name, "kind": spec.kind.value, "runner": spec.runner,
        "device_class": host.device_class, "inputs": inputs_map, "params": spec.params,
        "outputs": spec.outputs,
    }
    return AttemptPlan(
        attempt_id=attempt_id, job_id=job_id, host=host, job=job_doc,
        argv=["/bin/sh", "-c", spec.run] if spec.runner == "shell" and spec.run else None,
        runner=spec.runner or "shell", setup=setup, env=env, timeout=spec.timeout,
        grace=grace, inputs=inputs, run_as=run_as, secrets=secrets,
        image=image, network=spec.network,
        pull=spec.pull, limits=containers.limits(host, spec.resources.slots, facts) if image else (),
    )
