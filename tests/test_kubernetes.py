"""Cloud burst through the Kubernetes backend, against the real client (kubernetes_asyncio)
and kmock's stateful Kubernetes API, with the test playing the cluster (tests/kcluster.py says
exactly what it plays and what it adds to kmock). Pods run as local processes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from fleet.backends.kubernetes import labels as lbl
from fleet.backends.kubernetes.settings import KubernetesSettings
from tests.helpers import eventually, pid_alive
from tests.kcluster import FakeCluster, wait_for

T4 = {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
IMAGE = "fleet/runner-cuda-trt10:latest"


@pytest.fixture
def cluster(tmp_path):
    c = FakeCluster(tmp_path / "cluster").start()
    yield c
    c.stop()


def _inventory(tmp_path: Path, slots: int = 1) -> Path:
    inv = tmp_path / "hosts.ini"
    inv.write_text(f"[t4]\nlocalhost ansible_connection=local fleet_slots={slots} fleet_arch=x86_64 "
                   "fleet_accelerator=nvidia-t4\n")
    return inv


def _config(cluster: FakeCluster, tmp_path: Path, **extra) -> dict:
    backend = {"kubeconfig": str(cluster.kubeconfig(tmp_path / "kubeconfig")), "max_pods": 4,
               "poll_interval": 0.5,
               "classes": {"x86_64/nvidia-t4": {"gpu": "T4", "image": IMAGE, "cost": 0.35}}}
    backend.update(extra.pop("backend", {}))
    return {"backends": {"kubernetes": backend}, **extra}


def _good(client, name: str) -> None:
    eventually(lambda: next(h for h in client.hosts() if h.name == name).health == "good",
               timeout=30, what=f"{name} checked")


def test_a_burst_only_job_runs_in_a_pod_end_to_end(fleet, cluster, tmp_path):
    """Inputs in, log streamed, result record and outputs back, secrets through a Secret that
    goes with the pod, the pod labelled with the job and attempt and asked for a T4 the way
    the cluster's labels say, everything deleted after."""
    cluster.add_node("gpu-1", T4, gpus=1, taints=[{"key": "nvidia.com/gpu", "value": "present",
                                                    "effect": "NoSchedule"}])
    client = fleet.start(_inventory(tmp_path), config=_config(cluster, tmp_path))
    _good(client, "kubernetes-nvidia-t4")
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not really onnx" * 100)
    sha, size = client.upload(model)
    inputs = {"model": {"kind": "file", "filename": "model.onnx", "files": {"model.onnx": {"sha256": sha, "size": size}}}}
    job = client.submit({
        "name": "cloud-bench", "burst": "only", "resources": {"accelerator": "nvidia-t4"},
        "inputs": inputs, "outputs": ["engine.bin"],
        "envs": {"API_KEY": {"secret": True, "value": "s3cr3t-value"}, "PLAIN": "visible"},
        "run": 'echo "hello from $FLEET_HOST key=$API_KEY plain=$PLAIN"; '
               'sha256sum "$FLEET_INPUT_MODEL" | cut -c1-12; cp "$FLEET_INPUT_MODEL" engine.bin; '
               'printf \'{"metrics": {"latency_ms": {"median": 1.5}}}\' > "$FLEET_RESULT"'})
    done = client.wait(job.id, 60)
    assert done.state == "SUCCEEDED", (done, fleet.server_log()[-3000:])
    attempt = done.attempt_list[0]
    assert (attempt.host, attempt.backend) == ("kubernetes-nvidia-t4", "kubernetes")
    log = b"".join(client.logs(job.id)).decode()
    assert "hello from kubernetes-nvidia-t4 key=" in log and "plain=visible" in log
    assert "s3cr3t-value" not in log
    assert hashlib.sha256(model.read_bytes()).hexdigest()[:12] in log
    pod_name = f"fleet-{attempt.id}"
    assert cluster.images[pod_name] == IMAGE
    # the pod (gone now) asked for the T4 in GKE's words, with the taint tolerated
    assert len(cluster.emulator.created) == 1
    pod = cluster.emulator.created[0]
    assert pod["metadata"]["labels"]["fleet.dev/job"] == job.id
    assert pod["metadata"]["labels"]["fleet.dev/attempt"] == attempt.id
    expr = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"]
    assert expr == [{"key": "cloud.google.com/gke-accelerator", "operator": "In", "values": ["nvidia-tesla-t4"]}]
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "s3cr3t-value" not in json.dumps(pod)  # the secret is in the Secret only
    # result and artifact came back like from any host
    assert done.result is not None and done.result["metrics"]["latency_ms"]["median"] == 1.5
    assert [(a.name, a.size) for a in done.artifacts] == [("engine.bin", size)]
    # nothing left in the cluster
    wait_for(lambda: not cluster.pods() and not cluster.secrets(), 10, "pod and secret deleted")


def test_label_schemes_give_each_accelerator_in_the_clusters_words():
    """What each scheme asks the scheduler for, for three accelerators (T4, L4, A100-80GB),
    and what ``auto`` detects from node labels."""
    want = {
        ("gke", "T4"): [{"key": lbl.GKE_KEY, "operator": "In", "values": ["nvidia-tesla-t4"]}],
        ("gke", "L4"): [{"key": lbl.GKE_KEY, "operator": "In", "values": ["nvidia-l4"]}],
        ("gke", "A100-80GB"): [{"key": lbl.GKE_KEY, "operator": "In", "values": ["nvidia-a100-80gb"]}],
        ("gfd", "T4"): [{"key": lbl.GFD_KEY, "operator": "In", "values": ["Tesla-T4"]}],
        ("gfd", "L4"): [{"key": lbl.GFD_KEY, "operator": "In", "values": ["NVIDIA-L4"]}],
        ("gfd", "A100-80GB"): [{"key": lbl.GFD_KEY, "operator": "In",
                                "values": ["NVIDIA-A100-80GB-PCIe", "NVIDIA-A100-SXM4-80GB"]}],
        ("karpenter", "T4"): [{"key": lbl.KARPENTER_KEY, "operator": "In", "values": ["t4"]}],
        ("karpenter", "L4"): [{"key": lbl.KARPENTER_KEY, "operator": "In", "values": ["l4"]}],
        ("karpenter", "A100-80GB"): [{"key": lbl.KARPENTER_KEY, "operator": "In", "values": ["a100"]},
                                     {"key": lbl.KARPENTER_MEMORY_KEY, "operator": "In", "values": ["81920"]}],
    }
    for (scheme, gpu), exprs in want.items():
        assert lbl.selection(scheme, lbl.Accelerator.parse(gpu)) == exprs, (scheme, gpu)
    custom = lbl.selection("custom", lbl.Accelerator.parse("A100-80GB"), custom_key="lab.example/gpu",
                           custom={"A100-80GB": "a100-80g"})
    assert custom == [{"key": "lab.example/gpu", "operator": "In", "values": ["a100-80g"]}]
    # GFD strings seen on nodes join the selection; other sizes and models stay out
    nodes = [{lbl.GFD_KEY: "NVIDIA-A100-SXM4-80GB-MIG"}, {lbl.GFD_KEY: "NVIDIA-A100-SXM4-40GB"},
             {lbl.GFD_KEY: "Tesla-T4-SHARED"}]
    a100 = lbl.selection("gfd", lbl.Accelerator.parse("A100-80GB"), nodes)[0]["values"]
    assert "NVIDIA-A100-SXM4-80GB-MIG" in a100 and "NVIDIA-A100-SXM4-40GB" not in a100
    assert "NVIDIA-A100-SXM4-40GB" in lbl.selection("gfd", lbl.Accelerator.parse("A100"), nodes)[0]["values"]
    # auto: the scheme whose key a node carries naming the accelerator
    t4 = lbl.Accelerator.parse("T4")
    assert lbl.detect(t4, [{lbl.GKE_KEY: "nvidia-tesla-t4"}]) == "gke"
    assert lbl.detect(t4, [{lbl.GFD_KEY: "Tesla-T4"}, {lbl.KARPENTER_KEY: "a10g"}]) == "gfd"
    assert lbl.detect(t4, [{lbl.KARPENTER_KEY: "t4"}]) == "karpenter"
    assert lbl.detect(t4, [{"lab.example/gpu": "T4"}], custom_key="lab.example/gpu") == "custom"
    assert lbl.detect(t4, [{lbl.KARPENTER_KEY: "a10g"}]) == "karpenter"  # the only key there
    with pytest.raises(lbl.LabelError, match="no node of the cluster carries an accelerator label"):
        lbl.detect(t4, [{"kubernetes.io/arch": "amd64"}])


def test_settings_errors_name_the_key():
    from pydantic import ValidationError

    base = {"classes": {"x86_64/nvidia-t4": {"gpu": "T4", "image": IMAGE}}}
    KubernetesSettings.model_validate(base)
    for bad, where in [({"classes": {"t4": {"image": IMAGE}}}, "classes"),
                       ({**base, "namespace": "Bad_NS"}, "namespace"),
                       ({"classes": {"x86_64/nvidia-t4": {"gpu": "tesla t4!", "image": IMAGE}}}, "gpu"),
                       ({**base, "labels": {"custom": {}}}, "labels"),
                       ({**base, "provision_timeout": "soon"}, "provision_timeout")]:
        with pytest.raises(ValidationError) as info:
            KubernetesSettings.model_validate(bad)
        assert where in str(info.value), (bad, info.value)
