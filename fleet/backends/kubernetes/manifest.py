"""The objects an attempt becomes in the cluster: a Pod and the Secret that carries its
environment. Pure functions of the attempt, its device class and the backend's settings.

A bare Pod, not a batch/v1 Job: fleet already owns retries, timeouts and placement, and a Job
controller retrying on its own would run an attempt twice out of fleet's sight. The pod's name
is the attempt's (``fleet-ATTEMPT``), so creating it twice is a 409 from the API server, never a
second run; its labels name the job, the attempt and the backend, so a restarted controller
finds what runs. The environment (the spec's variables, secrets opened, and the attempt's
callback token) goes in a Secret of the same name, deleted with the attempt; the pod spec holds
nothing secret.
"""

from __future__ import annotations

from typing import Any

from fleet.backends.base import AttemptPlan
from fleet.backends.kubernetes.settings import ClassSettings, KubernetesSettings

MANAGED_BY = "app.kubernetes.io/managed-by"
BACKEND = "fleet.dev/backend"
JOB = "fleet.dev/job"
ATTEMPT = "fleet.dev/attempt"
CLASS = "fleet.dev/device-class"
WORKDIR = "/fleet"  # an emptyDir the job works in (images run as a non-root user)

# Started as ``python3 -c LOADER``: fetch fleet's runner bundle from the controller's callback
# listener (retrying while the controller restarts), unpack it, run its pod bootstrap
# (runners/podboot.py). Stdlib only, as on every host.
LOADER = r"""
import io, os, sys, tarfile, time, urllib.request as rq
url, tok, aid = (os.environ[k] for k in ("FLEET_CALLBACK_URL", "FLEET_CALLBACK_TOKEN", "FLEET_ATTEMPT_ID"))
lib = os.path.join(os.getcwd(), ".fleet-lib")
err = None
for i in range(40):
    try:
        req = rq.Request("%s/v1/%s/bundle" % (url, aid), headers={"Authorization": "Bearer " + tok})
        data = rq.urlopen(req, timeout=60).read()
        break
    except Exception as exc:
        err = exc
        time.sleep(min(2 ** i, 15))
else:
    sys.stderr.write("fleet: cannot reach the controller at %s: %s\n" % (url, err))
    sys.exit(125)
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    tar.extractall(lib)
sys.path.insert(0, lib)
os.execv(sys.executable, [sys.executable, "-B", os.path.join(lib, "podboot.py")])
"""


def pod_name(attempt_id: str) -> str:
    return f"fleet-{attempt_id.lower()}"


def class_label(device_class: str) -> str:
    """A device class as a label value (no '/')."""
    return device_class.replace("/", ".")


def labels(backend: str, plan: AttemptPlan) -> dict[str, str]:
    return {MANAGED_BY: "fleet", BACKEND: backend, JOB: plan.job_id, ATTEMPT: plan.attempt_id,
            CLASS: class_label(plan.host.device_class)}


def selector(backend: str) -> str:
    """The label selector of every pod and secret this backend made."""
    return f"{MANAGED_BY}=fleet,{BACKEND}={backend}"


def secret(backend: str, namespace: str, plan: AttemptPlan, env: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": pod_name(plan.attempt_id), "namespace": namespace,
                     "labels": labels(backend, plan)},
        "stringData": env,
    }


def pod_tolerations(settings: KubernetesSettings, cls: ClassSettings) -> list[dict[str, Any]]:
    """The configured tolerations, and the usual GPU-node taint's for GPU pods."""
    out = list(settings.tolerations)
    if cls.gpu is not None and settings.tolerate_gpu_taint:
        out.append({"key": settings.gpu_resource, "operator": "Exists", "effect": "NoSchedule"})
    return out


def pod(backend: str, settings: KubernetesSettings, cls: ClassSettings, plan: AttemptPlan,
        affinity: list[dict[str, Any]], callback_url: str, image: str | None = None) -> dict[str, Any]:
    """The pod of one attempt. ``affinity``: node match expressions that pick the class's
    accelerator (fleet.backends.kubernetes.labels.selection); ``image``: the job's own image
    (its spec's ``image:``) instead of the class's."""
    name = pod_name(plan.attempt_id)
    limits: dict[str, str] = dict(cls.limits)
    requests: dict[str, str] = dict(cls.requests)
    if cls.gpu is not None:
        limits[settings.gpu_resource] = str(cls.gpus)
        requests[settings.gpu_resource] = str(cls.gpus)
    tolerations = pod_tolerations(settings, cls)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": int(plan.grace) + 1,
        "automountServiceAccountToken": settings.service_account is not None,
        "containers": [{
            "name": "job",
            "image": image or cls.image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["python3", "-c", LOADER],
            "workingDir": WORKDIR,
            "env": [{"name": "FLEET_CALLBACK_URL", "value": callback_url},
                    {"name": "FLEET_ATTEMPT_ID", "value": plan.attempt_id}],
            "envFrom": [{"secretRef": {"name": name}}],
            "resources": {"limits": limits, "requests": requests},
            "volumeMounts": [{"name": "work", "mountPath": WORKDIR}],
        }],
        "volumes": [{"name": "work", "emptyDir": {}}],
    }
    if plan.timeout:  # the cluster's own backstop; fleet stops it at the timeout itself
        spec["activeDeadlineSeconds"] = int(plan.timeout + plan.grace) + 60
    if tolerations:
        spec["tolerations"] = tolerations
    if cls.node_selector:
        spec["nodeSelector"] = dict(cls.node_selector)
    if affinity:
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": affinity}]}}}
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    if settings.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in settings.image_pull_secrets]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": settings.namespace, "labels": labels(backend, plan),
                     "annotations": {"fleet.dev/host": plan.host.name}},
        "spec": spec,
    }
