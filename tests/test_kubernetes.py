"""Cloud burst through the Kubernetes backend, against the real client (kubernetes_asyncio)
and kmock's stateful Kubernetes API, with the test playing the cluster (tests/kcluster.py says
exactly what it plays and what it adds to kmock). Pods run as local processes."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from fleet.backends.kubernetes import labels as lbl
from fleet.backends.kubernetes.settings import KubernetesSettings
from tests.helpers import eventually, free_port, kill_server
from tests.kcluster import FakeCluster

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
               "poll_interval": 0.5, "callback_listen": f"127.0.0.1:{free_port()}",
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
    cluster.add_node("gpu-2", T4, gpus=2, taints=[{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}])
    client = fleet.start(_inventory(tmp_path), config=_config(cluster, tmp_path))
    _good(client, "kubernetes-nvidia-t4")
    # the pool's health check says what the cluster has for it (fleet hosts: facts)
    facts = next(h for h in client.hosts() if h.name == "kubernetes-nvidia-t4").facts
    assert (facts["nodes"], facts["gpus"], facts["gpus_free"], facts["untolerated_taints"]) == (2, 3, 3, 1), facts
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
    # where it ran and what the cloud time cost are shown with the job
    assert attempt.cost is not None and attempt.cost >= 0
    status = fleet.cli("status", job.id).stdout
    assert "kubernetes-nvidia-t4 (kubernetes)" in status and "cloud:" in status, status
    # nothing left in the cluster
    eventually(lambda: not cluster.pods() and not cluster.secrets(), timeout=10, what="pod and secret deleted")


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
    # a class naming no image runs the runner image of images/ for its device class
    s = KubernetesSettings.model_validate({"image_registry": "registry.example/fleet/", "classes": {
        "x86_64/nvidia-t4": {"gpu": "T4"}, "x86_64/cpu": {}, "aarch64/jetson-orin-nano": {}}})
    assert s.classes["x86_64/nvidia-t4"].image == "registry.example/fleet/fleet-runner-cuda-trt10:10.7-x86_64"
    assert s.classes["x86_64/cpu"].image == "registry.example/fleet/fleet-runner-cpu-ort:1.20.1-x86_64"
    assert s.classes["aarch64/jetson-orin-nano"].image == "registry.example/fleet/fleet-runner-jetson-r36:36.4.0-aarch64"
    with pytest.raises(ValidationError, match=r"classes.x86_64/nvidia-t4.image: name the image"):
        KubernetesSettings.model_validate({"classes": {"x86_64/nvidia-t4": {"gpu": "T4"}}})


def _pod_of(cluster: FakeCluster, attempt_id: str) -> str:
    return f"fleet-{attempt_id}"


def _wait_running(fleet, cluster: FakeCluster, pod: str) -> None:
    """Wait for the kubelet to run ``pod``; a failure says what became of it."""
    try:
        eventually(lambda: pod in cluster.running, timeout=30, what=f"pod {pod} running")
    except AssertionError as exc:
        log = (cluster.root / "pods" / f"{pod}.log")
        raise AssertionError(f"{exc}; the pod: {cluster.pod(pod)}; ended: {cluster.ended.get(pod)}; "
                             f"started: {cluster.started}; its log: "
                             f"{log.read_text()[-1500:] if log.exists() else None}; "
                             f"server log: {fleet.server_log()[-2000:]}") from None


def test_the_lab_first_then_the_cloud_once_the_queue_is_deep(fleet, cluster, tmp_path):
    """``burst: allowed`` jobs take the lab's free host; with the lab full they wait until the
    queue is deeper than the policy's depth, and ``fleet why`` says so; ``fleet jobs`` shows
    where each ran. A job with ``burst: never`` never reaches the cluster."""
    cluster.add_node("gpu-1", T4, gpus=4)
    client = fleet.start(_inventory(tmp_path), config=_config(cluster, tmp_path, burst={"wait": "1h", "depth": 2}))
    _good(client, "localhost")
    _good(client, "kubernetes-nvidia-t4")
    spec = {"burst": "allowed", "resources": {"accelerator": "nvidia-t4"}}
    first = client.submit({**spec, "name": "lab-first", "run": "sleep 60"}).id
    eventually(lambda: client.job(first).state == "RUNNING", timeout=120, what="first job running")
    assert client.job(first).attempt_list[0].host == "localhost"
    waiting = [client.submit({**spec, "name": f"w{i}", "run": "echo ran in $FLEET_HOST"}).id for i in range(2)]
    never = client.submit({"name": "never", "resources": {"accelerator": "nvidia-t4"}, "run": "true"}).id
    why = fleet.cli_json("why", waiting[0])
    assert any(r.startswith("may burst, not yet") and "2 waiting, bursts past 2" in r for r in why["reasons"]), why
    assert client.job(waiting[0]).state == "PENDING" and not cluster.started
    why_never = fleet.cli_json("why", never)
    assert "elastic pool of backend kubernetes (the job has burst: never)" in why_never["reasons"], why_never
    third = client.submit({**spec, "name": "w2", "run": "echo ran in $FLEET_HOST"}).id  # 3 > depth 2
    # the excess over the depth bursts (the oldest first); the rest wait for the lab
    burst = client.wait(waiting[0], 60)
    assert burst.state == "SUCCEEDED" and burst.attempt_list[0].host == "kubernetes-nvidia-t4", burst
    assert [client.job(j).state for j in (waiting[1], third, never)] == ["PENDING"] * 3
    client.cancel(first)
    for job_id in (waiting[1], third, never):
        done = client.wait(job_id, 60)
        assert done.state == "SUCCEEDED" and done.attempt_list[0].host == "localhost", done
    assert len(cluster.started) == 1
    listing = fleet.cli("jobs", "--limit", "10").stdout
    assert "kubernetes-nvidia-t4" in listing and "localhost" in listing


def test_a_pod_no_node_takes_goes_back_to_the_lab(fleet, cluster, tmp_path):
    """Unschedulable past provision_timeout (no node has room): the pod is deleted and the job
    waits for the lab with the scheduler's words as the reason, and does not burst there again."""
    cluster.add_node("gpu-busy", T4, gpus=0)  # a T4 node with no GPU free
    client = fleet.start(_inventory(tmp_path), config=_config(
        cluster, tmp_path, backend={"provision_timeout": 2}))
    _good(client, "localhost")
    blocker = client.submit({"name": "blocker", "resources": {"accelerator": "nvidia-t4"}, "run": "sleep 60"}).id
    eventually(lambda: client.job(blocker).state == "RUNNING", timeout=120, what="blocker running")
    job = client.submit({"name": "bursty", "burst": "allowed", "resources": {"accelerator": "nvidia-t4"},
                         "run": "echo ran in $FLEET_HOST"}).id
    back = eventually(lambda: (d := client.job(job)).attempt_list and d.attempt_list[0].reason and d,
                      timeout=30, what="the pod given up")
    first = back.attempt_list[0]
    assert (first.host, first.reason) == ("kubernetes-nvidia-t4", "no_capacity"), first
    assert "0/1 nodes are available: 1 Insufficient nvidia.com/gpu" in first.message
    assert back.state in ("PENDING", "RETRYING")  # back in the lab's queue, not bursting again
    why = fleet.cli_json("why", job)
    assert "found no capacity for this job before (it waits for the lab)" in why["reasons"], why
    client.cancel(blocker)
    done = client.wait(job, 60)
    assert done.state == "SUCCEEDED", done
    assert [a.host for a in done.attempt_list] == ["kubernetes-nvidia-t4", "localhost"]
    assert not cluster.started and not cluster.pods()


@pytest.mark.parametrize("how", ["preempted", "evicted", "lost"])
def test_a_pod_that_loses_its_node_is_retried(fleet, cluster, tmp_path, how):
    """Spot pre-emption, eviction, a node gone: the attempt is lost (not the job's fault) and
    the job runs again, here on a second node."""
    cluster.add_node("spot-1", T4, gpus=1)
    client = fleet.start(_inventory(tmp_path), config=_config(cluster, tmp_path))
    # The first pod runs until its node goes (however late the test sees it running); the
    # second finds the first one's mark and ends at once.
    mark = tmp_path / "first-pod-ran"
    job = client.submit({"name": "long", "burst": "only", "resources": {"accelerator": "nvidia-t4"},
                         "run": f"echo start; if [ -e {mark} ]; then echo done; exit 0; fi; "
                                f"touch {mark}; sleep 120"}).id
    detail = eventually(lambda: (d := client.job(job)).state == "RUNNING" and d, timeout=120, what="running")
    pod = _pod_of(cluster, detail.attempt_list[0].id)
    _wait_running(fleet, cluster, pod)
    eventually(mark.exists, timeout=60, what="the job running in its first pod")
    cluster.add_node("spot-2", T4, gpus=1)
    if how == "evicted":
        cluster.evict(pod)
    else:
        cluster.remove_node("spot-1", how)
    done = client.wait(job, 60)
    assert done.state == "SUCCEEDED", (done, fleet.server_log()[-2000:])
    first, second = done.attempt_list
    assert first.reason == "host_lost", first
    assert {"preempted": "Terminated", "evicted": "Evicted", "lost": "vanished"}[how] in first.message
    assert second.state == "SUCCEEDED" and len(cluster.started) == 2


def _submit_and_see_its_pod(client, cluster: FakeCluster, run: str) -> str:
    """A burst-only job, once its pod is made (while the test holds the cluster's listings)."""
    job = client.submit({"name": "during", "burst": "only", "resources": {"accelerator": "nvidia-t4"},
                         "run": run}).id
    eventually(lambda: cluster.emulator.created, timeout=60, what="the pod made")
    return job


def _ran_once(fleet, client, cluster: FakeCluster, job: str) -> None:
    """The job succeeded in its first attempt, in the one pod ever made for it."""
    done = client.wait(job, 60)
    assert done.state == "SUCCEEDED" and len(done.attempt_list) == 1, (done, fleet.server_log()[-2000:])
    assert len(cluster.emulator.created) == 1 and len(cluster.started) == 1


def test_a_pod_made_while_the_sweep_lists_is_not_swept(fleet, cluster, tmp_path):
    """The retention sweep lists pods, then secrets, and removes what no followed attempt
    owns. An attempt launched while the pod listing was on its way has a secret and a pod
    the listing predates: it is followed, so nothing of it goes (it went, and the attempt was
    lost and run again: seen on a loaded CI machine, where the first pass came at start)."""
    cluster.add_node("gpu-1", T4, gpus=1)
    client = fleet.start(_inventory(tmp_path), config=_config(cluster, tmp_path, gc_interval=1))
    _good(client, "kubernetes-nvidia-t4")
    cluster.hold_lists = True  # the watch lasts; the next whole listing is the sweep's
    eventually(lambda: cluster.lists_held >= 1, timeout=30, what="the sweep listing pods")
    job = _submit_and_see_its_pod(client, cluster, "echo made during the sweep")
    cluster.hold_lists = False
    _ran_once(fleet, client, cluster, job)


def test_a_pod_made_while_the_watch_lists_again_is_not_taken_for_gone(fleet, cluster, tmp_path):
    """The backend lists its pods again whenever its watch breaks. A listing taken before a pod
    was made and answered after it lacks that pod: the pod is asked for again, not taken for
    vanished (which would give the attempt up and make a second pod)."""
    cluster.add_node("gpu-1", T4, gpus=1)
    client = fleet.start(_inventory(tmp_path), config=_config(cluster, tmp_path, gc_interval=3600))
    _good(client, "kubernetes-nvidia-t4")
    # The retention sweep's one pass at start has come and gone: the next whole listing is the
    # watch's (were it the sweep's, the test could pass without the fix, never fail with it).
    eventually(lambda: cluster.pod_lists >= 1, timeout=30, what="the watch's first listing")
    time.sleep(2)
    cluster.paused = True  # the pod waits while no watch tells its changes (kmock keeps no history)
    cluster.hold_lists = True
    cluster.break_watches()
    eventually(lambda: cluster.lists_held >= 1, timeout=30, what="the backend listing its pods again")
    job = _submit_and_see_its_pod(client, cluster, "echo made during a listing")
    cluster.hold_lists = False
    eventually(lambda: cluster.emulator.streams, timeout=30, what="the watch again")
    cluster.paused = False
    _ran_once(fleet, client, cluster, job)


def test_cancel_timeout_image_errors_and_exit_codes_in_pods(fleet, cluster, tmp_path):
    cluster.add_node("gpu-1", T4, gpus=4)
    cluster.bad_images.add("fleet/missing:1")
    config = _config(cluster, tmp_path)
    config["backends"]["kubernetes"]["classes"]["x86_64/nvidia-l4"] = {
        "gpu": "T4", "image": "fleet/missing:1", "name": "k8s-broken"}
    client = fleet.start(_inventory(tmp_path), config=config)
    only = {"burst": "only", "resources": {"accelerator": "nvidia-t4"}}
    nap = client.submit({**only, "name": "nap", "run": "echo napping; sleep 30"}).id
    slow = client.submit({**only, "name": "slow", "timeout": 2, "run": "sleep 30"}).id
    bad = client.submit({**only, "name": "bad", "run": "echo oops >&2; exit 3"}).id
    pull = client.submit({"burst": "only", "resources": {"accelerator": "nvidia-l4"}, "name": "pull",
                          "run": "true"}).id
    detail = eventually(lambda: (d := client.job(nap)).state == "RUNNING" and d, timeout=120, what="nap running")
    pod = _pod_of(cluster, detail.attempt_list[0].id)
    _wait_running(fleet, cluster, pod)
    client.cancel(nap)
    assert client.wait(nap, 30).state == "CANCELLED"
    eventually(lambda: cluster.pod(pod) is None, timeout=10, what="cancelled pod deleted")
    timed = client.wait(slow, 30)
    assert (timed.state, timed.reason) == ("TIMED_OUT", "timed_out"), timed
    failed = client.wait(bad, 30)
    assert (failed.state, failed.reason, failed.attempt_list[0].exit_code) == ("FAILED", "exit_nonzero", 3)
    assert b"oops" in b"".join(client.logs(bad))
    pulled = client.wait(pull, 30)
    assert (pulled.state, pulled.reason) == ("FAILED", "setup_failed"), pulled
    assert "image fleet/missing:1: ErrImagePull" in pulled.message
    eventually(lambda: not cluster.pods() and not cluster.secrets(), timeout=10, what="everything deleted")


def test_pods_survive_a_controller_kill_9_and_are_never_created_twice(fleet, cluster, tmp_path):
    cluster.add_node("gpu-1", T4, gpus=4)
    config = _config(cluster, tmp_path)
    client = fleet.start(_inventory(tmp_path), config=config)
    script = 'i=0; while [ $i -lt 40 ]; do echo "line $i"; i=$((i+1)); sleep 0.05; done'
    ids = [client.submit({"name": f"k{i}", "burst": "only", "resources": {"accelerator": "nvidia-t4"},
                          "run": script}).id for i in range(3)]
    for job_id in ids:
        eventually(lambda j=job_id: client.job(j).state == "RUNNING", timeout=120, what=f"{job_id} running")
    kill_server(fleet)
    client = fleet.start(_inventory(tmp_path), config=config)
    expected = "".join(f"line {i}\n" for i in range(40))
    for job_id in ids:
        job = client.wait(job_id, 60)
        assert job.state == "SUCCEEDED", (job, fleet.server_log()[-2000:])
        assert len(job.attempt_list) == 1
        assert b"".join(client.logs(job_id)).decode() == expected
    assert len(cluster.emulator.created) == 3 and len(cluster.started) == 3  # one pod each, ever
    eventually(lambda: not cluster.pods(), timeout=10, what="pods deleted")


def test_the_sweep_removes_what_a_crash_left_and_nothing_that_runs(fleet, cluster, tmp_path):
    """Pods and secrets of this backend whose attempts fleet no longer knows (a crash between
    a pod's end and its deletion) go with the retention pass; a running job's pod stays."""
    cluster.add_node("gpu-1", T4, gpus=4)
    labels = {"app.kubernetes.io/managed-by": "fleet", "fleet.dev/backend": "kubernetes",
              "fleet.dev/job": "j0stray", "fleet.dev/attempt": "a0stray"}
    other = dict(labels, **{"fleet.dev/backend": "another-fleet"})
    for kind, plural, extra in [("Pod", "pods", {"spec": {"nodeName": "gone"}}), ("Secret", "secrets", {})]:
        for name, lab in [("fleet-a0stray", labels), ("fleet-a0other", other)]:
            cluster.call(cluster._api("POST", f"/api/v1/namespaces/default/{plural}", {
                "apiVersion": "v1", "kind": kind, "metadata": {"name": name, "labels": lab}, **extra}))
    cluster.call(cluster._status("fleet-a0stray", {"phase": "Succeeded"}))
    cluster.call(cluster._status("fleet-a0other", {"phase": "Succeeded"}))
    client = fleet.start(_inventory(tmp_path), config=_config(cluster, tmp_path, gc_interval=1))
    job = client.submit({"name": "busy", "burst": "only", "resources": {"accelerator": "nvidia-t4"},
                         "run": "sleep 3; echo still here"}).id
    eventually(lambda: not any(o["metadata"]["name"] == "fleet-a0stray" for o in cluster.pods() + cluster.secrets()),
               timeout=30, what="stray pod and secret swept")
    assert client.wait(job, 60).state == "SUCCEEDED"
    assert b"still here" in b"".join(client.logs(job))
    left = {o["metadata"]["name"] for o in cluster.pods() + cluster.secrets()}
    assert left == {"fleet-a0other"}, left  # another controller's objects are not ours to remove


@pytest.mark.parametrize(("scheme", "node_labels", "key"), [
    ("auto", {"nvidia.com/gpu.product": "Tesla-T4"}, "nvidia.com/gpu.product"),
    ("auto", {"karpenter.k8s.aws/instance-gpu-name": "t4"}, "karpenter.k8s.aws/instance-gpu-name"),
    ({"custom": {"key": "lab.example/gpu", "values": {"T4": "tesla-t4-16g"}}},
     {"lab.example/gpu": "tesla-t4-16g"}, "lab.example/gpu"),
], ids=["auto-gfd", "auto-karpenter", "custom"])
def test_pods_find_their_gpu_node_under_each_label_scheme(fleet, cluster, tmp_path, scheme, node_labels, key):
    cluster.add_node("cpu-1", {"kubernetes.io/arch": "amd64"}, gpus=0)
    cluster.add_node("gpu-1", node_labels, gpus=1)
    client = fleet.start(_inventory(tmp_path), config=_config(cluster, tmp_path, backend={"labels": scheme}))
    job = client.submit({"name": "where", "burst": "only", "resources": {"accelerator": "nvidia-t4"},
                         "run": "echo ok"}).id
    assert client.wait(job, 60).state == "SUCCEEDED"
    pod = cluster.emulator.created[0]
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["key"] == key
    assert cluster.running == {} and cluster.started == [pod["metadata"]["name"]]


def test_a_cluster_without_accelerator_labels_makes_the_pool_unhealthy_saying_why(fleet, cluster, tmp_path):
    cluster.add_node("cpu-1", {"kubernetes.io/arch": "amd64"}, gpus=0)
    client = fleet.start(_inventory(tmp_path), config=_config(cluster, tmp_path))
    check = client.check_host("kubernetes-nvidia-t4")
    assert not check.ok and "no node of the cluster carries an accelerator label" in (check.message or "")


def test_a_job_only_the_cloud_can_run_fails_no_capacity_after_its_retries(fleet, cluster, tmp_path):
    """With no lab host of its class, waiting for the lab would be forever: a pod that finds
    no node draws on the job's infra retries, and the job ends no_capacity with the reason."""
    cluster.add_node("gpu-busy", T4, gpus=0)
    inv = tmp_path / "hosts.ini"
    inv.write_text("localhost ansible_connection=local fleet_slots=1\n")  # a CPU host only
    client = fleet.start(inv, config=_config(cluster, tmp_path, backend={"provision_timeout": 1}))
    job = client.submit({"name": "t4-only-in-cloud", "burst": "allowed", "retries": {"infra": 1},
                         "resources": {"accelerator": "nvidia-t4"}, "run": "true"}).id
    done = client.wait(job, 60)
    assert (done.state, done.reason) == ("FAILED", "no_capacity"), done
    assert [a.reason for a in done.attempt_list] == ["no_capacity", "no_capacity"]
    assert "Insufficient nvidia.com/gpu" in done.message


async def test_the_callback_listener_opens_an_attempts_files_to_its_token_only(tmp_path):
    """A pod's token reads its own plan and inputs and hands in its own files; another
    attempt's token, a wrong one, a path leaving the attempt, or outputs past the size the
    controller allows one attempt are refused."""
    import aiohttp

    from fleet.backends.kubernetes.callback import Callback

    blob = tmp_path / "blob"
    blob.write_bytes(b"model bytes")
    sha = hashlib.sha256(b"model bytes").hexdigest()
    cb = Callback(tmp_path / "attempts", tmp_path / "key", lambda s: blob, max_upload=1000)
    await cb.start("127.0.0.1:0", None)
    try:
        cb.write_plan("a1mine", {"job": {}, "inputs": [["inputs/m", sha]]})
        cb.write_plan("a1other", {"job": {}, "inputs": []})
        mine = {"Authorization": f"Bearer {cb.token('a1mine')}"}
        async with aiohttp.ClientSession() as http:
            async def status(method: str, path: str, headers: dict, data: bytes | None = None) -> int:
                async with http.request(method, cb.url + path, headers=headers, data=data) as resp:
                    await resp.read()
                    return resp.status

            assert await status("GET", "/v1/a1mine/plan", mine) == 200
            assert await status("GET", f"/v1/a1mine/inputs/{sha}", mine) == 200
            assert await status("GET", "/v1/a1other/plan", mine) == 403  # another attempt's files
            assert await status("GET", "/v1/a1mine/plan", {"Authorization": "Bearer nope"}) == 403
            assert await status("GET", f"/v1/a1other/inputs/{sha}",
                                {"Authorization": f"Bearer {cb.token('a1other')}"}) == 404  # not its input
            assert await status("PUT", "/v1/a1mine/outputs?path=../../key", mine, b"x") == 400
            assert await status("PUT", "/v1/a1mine/files/plan.json", mine, b"{}") == 404
            # a path where a hash belongs, an attempt id that is a path, an oversized report
            for bad in ("..%2F..%2Fkey", "..", "plan.json", sha.upper()):
                assert await status("GET", f"/v1/a1mine/inputs/{bad}", mine) == 404, bad
            assert await status("GET", "/v1/..%2Fa1mine/plan", mine) == 404
            assert await status("PUT", "/v1/a1mine/files/result.json", mine, b"[" + b"0," * (9 << 20) + b"0]") == 413
            assert await status("PUT", "/v1/a1mine/outputs?path=a.bin", mine, b"a" * 600) == 200
            assert await status("PUT", "/v1/a1mine/outputs?path=b.bin", mine, b"b" * 600) == 413  # 1,200 > 1,000
            assert await status("PUT", "/v1/a1mine/outputs?path=b.bin", mine, b"b" * 400) == 200
        assert [o["path"] for o in cb.outputs("a1mine")] == ["a.bin", "b.bin"]
        cb.write_outcome("a1mine", {"exit_code": 0})
        async with aiohttp.ClientSession() as http:  # ended: nothing more is handed in
            async with http.put(cb.url + "/v1/a1mine/files/status.json", headers=mine, data=b"{}") as resp:
                assert resp.status == 409
    finally:
        await cb.stop()


def test_what_a_lying_pod_hands_in_is_not_believed(tmp_path):
    """A pod (or a job that took its bootstrap's token) may claim anything in status.json:
    outputs it never handed in, paths where a hash belongs, a result that is not a record.
    fleet keeps only what it received and hashed itself, and reports the rest as missing."""
    from fleet.backends.base import BackendContext
    from fleet.backends.kubernetes.backend import KubernetesBackend
    from fleet.config import Settings

    settings = KubernetesSettings.model_validate({"classes": {"x86_64/nvidia-t4": {"gpu": "T4", "image": IMAGE}}})
    ctx = BackendContext(name="kubernetes", settings=Settings(home=tmp_path), inventory=[],
                         blob_path=lambda sha: tmp_path / sha, state_dir=tmp_path / "state")
    backend = KubernetesBackend(settings, ctx)
    cb = backend.callback
    cb.write_plan("a1liar", {"job": {}, "inputs": []})
    out = cb.output_path("a1liar", "real.bin")
    out.parent.mkdir(parents=True)
    out.write_bytes(b"real")
    real = {"path": "real.bin", "size": 4, "sha256": hashlib.sha256(b"real").hexdigest()}
    (cb.dir("a1liar") / "outputs.json").write_text(json.dumps({"real.bin": real}))
    (cb.dir("a1liar") / "result.json").write_text(json.dumps(["not", "a", "record"]))
    status = {"exit_code": 0, "signal": "nine", "phase": "run", "started_at": 1.0, "ended_at": 2.0,
              "outputs": [{"path": "real.bin", "size": 999, "sha256": "f" * 64},
                          {"path": "../../callback.key", "size": 1, "sha256": "0" * 64},
                          {"path": "never-sent.bin", "size": 1, "sha256": "1" * 64}]}
    outcome = backend._from_status("a1liar", status, {"exitCode": 3})
    assert outcome.outputs == [real]  # as hashed on arrival, not as claimed
    assert "outputs not handed in: ../../callback.key, never-sent.bin" in outcome.outputs_problem
    assert outcome.result is None  # a list is not a result record
    assert (outcome.exit_code, outcome.signal) == (3, None)  # the cluster's exit code, not the pod's 0
    killed = backend._from_status("a1liar", {"exit_code": None, "signal": 15}, {"exitCode": 143})
    assert (killed.exit_code, killed.signal) == (None, 15)  # 128 + TERM: the pod and the cluster agree
