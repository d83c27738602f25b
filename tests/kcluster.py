"""A Kubernetes cluster for tests, played by the test: kmock's stateful Kubernetes API (real
HTTP, the real kubernetes_asyncio client talks to it) plus a small scheduler and kubelet.

No API server can run on these machines (../shared/NOTES-machine.md). kmock stores objects and
serves create/read/patch/delete/list/watch; what it lacks is added here, and is this file's
honest approximation of Kubernetes, not Kubernetes:

* label selectors on list and watch (``key=value`` terms, comma-separated), ``watch=True``
  spelled as the Python client spells it, ``timeoutSeconds`` on watches;
* ``uid``, ``resourceVersion`` and ``creationTimestamp`` stamped on create;
* pod logs (``/pods/NAME/log``, with ``follow``) served from the kubelet's files;
* the scheduler: a pod goes to a ready node whose labels satisfy its nodeSelector and required
  node affinity (In / NotIn / Exists / DoesNotExist), whose NoSchedule taints it tolerates and
  whose allocatable GPUs minus the requests of the pods on it cover its request; otherwise the
  pod stays Pending with ``PodScheduled=False/Unschedulable`` and a ``FailedScheduling`` event
  in the words the real scheduler uses;
* the kubelet: runs the container's command as a local process (the image is not pulled:
  ``bad_images`` play a registry that refuses), with the container env and its Secret's keys,
  streams stdout+stderr to the log, and reports Running / Succeeded / Failed with the exit
  code; a deleted pod's process is stopped (TERM, KILL after its grace period) — at once, where
  a real API server would keep the pod Terminating until its containers exit;
* what the test does to the cluster: end the watches, hold pod listings back (a listing
  taken before a pod was made, answered after), add and remove nodes (a node lost: its pods deleted by the
  pod garbage collector; pre-empted: its pods Failed/``Terminated`` with a DisruptionTarget
  condition, as GKE reports spot pre-emption), evict a pod.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import kmock
from aiohttp import web

LOG_RE = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")
POD_RE = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)$")


def _now() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _selected(obj: dict[str, Any], selector: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key.rstrip("=")) != value:
                return False
        elif labels.get(term) is None:
            return False
    return True


def _fields_selected(obj: dict[str, Any], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, _, value = term.partition("=")
        cur: Any = obj
        for part in key.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if str(cur) != value:
            return False
    return True


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with the gaps above filled in."""

    cluster: FakeCluster | None = None
    created: list[dict[str, Any]] = []  # every pod create request, as sent (set per instance)
    streams: set[asyncio.Task[None]] = set()  # watches being served (set per instance)
    _version = 0

    async def _handle(self, request: kmock.Request) -> web.StreamResponse:
        raw = request._raw_request
        assert raw is not None
        m = LOG_RE.match(raw.path)
        if m and raw.method == "GET":
            assert self.cluster is not None
            return await self.cluster.serve_log(raw, m.group(1), m.group(2))
        if raw.method == "POST" and isinstance(request.data, dict):
            Emulator._version += 1
            meta = request.data.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta["resourceVersion"] = str(Emulator._version)
            meta.setdefault("creationTimestamp", _now())
            if request.data.get("kind") == "Pod":
                self.created.append(json.loads(json.dumps(request.data)))
        query = dict(raw.query)
        if raw.method == "GET" and request.resource is not None and request.name is None:
            labels, fields = query.get("labelSelector", ""), query.get("fieldSelector", "")
            if query.get("watch", "").lower() in ("true", "1"):
                return await self._watch(raw, request, labels, float(query.get("timeoutSeconds") or 0))
            response = await super()._handle(request)
            if (labels or fields) and isinstance(response, web.Response) and response.body:
                listing = json.loads(response.body)  # type: ignore[arg-type]
                listing["items"] = [o for o in listing.get("items") or []
                                    if _selected(o, labels) and _fields_selected(o, fields)]
                response = web.json_response(listing)
            cluster = self.cluster
            if cluster is not None and request.resource.plural == "pods" and "limit" not in query:
                cluster.pod_lists += 1
                if cluster.hold_lists:
                    cluster.lists_held += 1  # taken now, answered when the test lets it go
                    while cluster.hold_lists:
                        await asyncio.sleep(0.02)
            return response
        return await super()._handle(request)

    async def _watch(self, raw: web.BaseRequest, request: kmock.Request, selector: str,
                     timeout: float) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(raw)

        async def pump() -> None:
            async for event in self._serve_watch(request):
                if isinstance(event, dict) and _selected(event.get("object") or {}, selector):
                    await resp.write(json.dumps(event).encode() + b"\n")

        task = asyncio.create_task(pump())
        self.streams.add(task)  # ended when the cluster stops (a watch never ends by itself)
        with contextlib.suppress(asyncio.TimeoutError, ConnectionResetError, asyncio.CancelledError):
            await asyncio.wait_for(task, timeout or None)
        self.streams.discard(task)
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        return resp


@dataclass
class Node:
    name: str
    labels: dict[str, str]
    gpus: int = 0
    taints: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Kubelet:
    """A pod the kubelet runs: its process and log file."""

    proc: subprocess.Popen[bytes]
    log: Path
    node: str
    grace: float


class FakeCluster:
    """The cluster in a thread of its own (the test and the fleet server are separate)."""

    GPU = "nvidia.com/gpu"

    def __init__(self, root: Path, namespace: str = "default") -> None:
        self.root = root
        self.namespace = namespace
        self.nodes: dict[str, Node] = {}
        self.bad_images: set[str] = set()
        self.running: dict[str, Kubelet] = {}
        self.ended: dict[str, int] = {}  # pod -> exit code (what the kubelet saw)
        self.started: list[str] = []  # every pod the kubelet started, in order
        self.images: dict[str, str] = {}  # pod -> the image it asked for
        self.told: dict[str, str] = {}  # pod -> the last FailedScheduling message
        self.paused = False  # the scheduler and kubelet stop acting (pods stay as they are)
        # Whole pod listings (not those with a limit) are taken, then held back while this is
        # True: what a slow API server does to a listing a pod is made during.
        self.hold_lists = False
        self.lists_held = 0
        self.pod_lists = 0  # whole pod listings served
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.url = ""
        self.emulator: Emulator | None = None
        self._session: aiohttp.ClientSession | None = None
        self._thread = threading.Thread(target=self._run, name="fake-cluster", daemon=True)

    # ---------------------------------------------------------------- life

    def start(self) -> FakeCluster:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("the fake cluster did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)
        for kubelet in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(kubelet.proc.pid, signal.SIGKILL)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with Emulator() as emulator, kmock.Server(emulator) as server:
            for resource in ("v1/pods", "v1/secrets", "v1/events", "v1/nodes"):
                emulator.resources[resource] = {}
            emulator.cluster = self
            emulator.created = []
            emulator.streams = set()
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._session = aiohttp.ClientSession()
            ticker = asyncio.create_task(self._tick_forever())
            self._ready.set()
            await self._stop.wait()
            self.paused = True
            for name in list(self.running):  # pods' processes end, and with them log streams
                self._kill(name, 0)
            for task in list(emulator.streams):
                task.cancel()
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            await self._session.close()

    def call(self, coro: Any, timeout: float = 20) -> Any:
        """Run a coroutine in the cluster's loop from the test's thread."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "test", "user": {"token": "test-token"}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test",
                                                     "namespace": self.namespace}}],
        }))
        return path

    # ---------------------------------------------------------------- the API, as a kubelet uses it

    async def _api(self, method: str, path: str, body: Any = None) -> Any:
        assert self._session is not None
        async with self._session.request(method, self.url + path, json=body) as resp:
            text = await resp.text()
            return json.loads(text) if text and resp.status < 400 else None

    def _objects(self, plural: str) -> list[dict[str, Any]]:
        assert self.emulator is not None
        out = []
        for (resource, _ns, _name), obj in list(self.emulator._objects.items()):
            if resource.plural == plural and not obj.deleted:
                out.append(obj.raw)
        return out

    def pods(self) -> list[dict[str, Any]]:
        return self.call(self._pods())

    async def _pods(self) -> list[dict[str, Any]]:
        return self._objects("pods")

    def secrets(self) -> list[dict[str, Any]]:
        return self.call(self._secrets())

    async def _secrets(self) -> list[dict[str, Any]]:
        return self._objects("secrets")

    def pod(self, name: str) -> dict[str, Any] | None:
        return next((p for p in self.pods() if p["metadata"]["name"] == name), None)

    async def _status(self, name: str, status: dict[str, Any]) -> None:
        await self._api("PATCH", f"/api/v1/namespaces/{self.namespace}/pods/{name}/status", {"status": status})

    # ---------------------------------------------------------------- what the test does

    def add_node(self, name: str, labels: dict[str, str], gpus: int = 0,
                 taints: list[dict[str, str]] | None = None) -> None:
        self.nodes[name] = Node(name, labels, gpus, list(taints or []))
        self.call(self._api("POST", "/api/v1/nodes", {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": list(taints or [])},
            "status": {"allocatable": {self.GPU: str(gpus)}, "capacity": {self.GPU: str(gpus)}}}))

    def remove_node(self, name: str, how: str = "lost") -> None:
        """``lost``: the node vanished and the pod garbage collector deleted its pods;
        ``preempted``: a spot node shut down, its pods Failed with a DisruptionTarget."""
        self.call(self._remove_node(name, how))

    async def _remove_node(self, name: str, how: str) -> None:
        self.nodes.pop(name, None)
        await self._api("DELETE", f"/api/v1/nodes/{name}")
        for pod, kubelet in list(self.running.items()):
            if kubelet.node != name:
                continue
            self._kill(pod, 0)
            if how == "preempted":
                await self._status(pod, {
                    "phase": "Failed", "reason": "Terminated",
                    "message": "Pod was terminated in response to imminent node shutdown.",
                    "conditions": [{"type": "DisruptionTarget", "status": "True",
                                    "reason": "TerminationByKubelet"}],
                    "containerStatuses": [{"name": "job", "state": {"terminated": {
                        "exitCode": 137, "reason": "Error", "finishedAt": _now()}}}]})
            else:
                await self._api("DELETE", f"/api/v1/namespaces/{self.namespace}/pods/{pod}")

    def break_watches(self) -> None:
        """End every watch being served (as an API server does at its timeout or restart)."""
        self.call(self._break_watches())

    async def _break_watches(self) -> None:
        assert self.emulator is not None
        for task in list(self.emulator.streams):
            task.cancel()

    def evict(self, pod: str) -> None:
        self.call(self._evict(pod))

    async def _evict(self, pod: str) -> None:
        self._kill(pod, 0)
        await self._status(pod, {"phase": "Failed", "reason": "Evicted",
                                 "message": "The node was low on resource: memory.",
                                 "containerStatuses": [{"name": "job", "state": {"terminated": {
                                     "exitCode": 137, "reason": "Error", "finishedAt": _now()}}}]})

    # ---------------------------------------------------------------- scheduler and kubelet

    async def _tick_forever(self) -> None:
        while True:
            try:
                if not self.paused:
                    await self._tick()
            except Exception as exc:  # the test sees the pods stuck; say why
                print(f"fake cluster: tick failed: {type(exc).__name__}: {exc}")
            await asyncio.sleep(0.05)

    async def _tick(self) -> None:
        pods = {p["metadata"]["name"]: p for p in self._objects("pods")}
        for name in list(self.running):  # deleted pods: stop their processes
            if name not in pods:
                self._kill(name, self.running[name].grace)
        for name, pod in pods.items():
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                continue
            kubelet = self.running.get(name)
            if kubelet is not None:
                code = kubelet.proc.poll()
                if code is not None:
                    del self.running[name]
                    self.ended[name] = code
                    await self._status(name, {
                        "phase": "Succeeded" if code == 0 else "Failed",
                        "containerStatuses": [{"name": "job", "state": {"terminated": {
                            "exitCode": code if code >= 0 else 128 - code,
                            "reason": "Completed" if code == 0 else "Error", "finishedAt": _now()}}}]})
                continue
            if name in self.ended:
                continue
            node = (pod.get("spec") or {}).get("nodeName")
            if node is None:
                await self._schedule(name, pod, pods)
            else:
                await self._start(name, pod, node)

    def _requests(self, pod: dict[str, Any]) -> int:
        total = 0
        for c in (pod.get("spec") or {}).get("containers") or []:
            limits = (c.get("resources") or {}).get("limits") or {}
            total += int(limits.get(self.GPU, 0))
        return total

    async def _schedule(self, name: str, pod: dict[str, Any], pods: dict[str, dict[str, Any]]) -> None:
        spec = pod.get("spec") or {}
        want = self._requests(pod)
        affinity = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                    .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []
        tolerations = spec.get("tolerations") or []
        mismatch = taint = short = 0
        for node in self.nodes.values():
            if not _node_matches(node.labels, spec.get("nodeSelector") or {}, affinity):
                mismatch += 1
                continue
            if not all(_tolerated(t, tolerations) for t in node.taints if t.get("effect") == "NoSchedule"):
                taint += 1
                continue
            used = sum(self._requests(p) for p in pods.values()
                       if (p.get("spec") or {}).get("nodeName") == node.name
                       and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))
            if node.gpus - used < want:
                short += 1
                continue
            await self._api("PATCH", f"/api/v1/namespaces/{self.namespace}/pods/{name}",
                            {"spec": {"nodeName": node.name}})
            await self._status(name, {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "True"}]})
            return
        parts = []
        if short:
            parts.append(f"{short} Insufficient {self.GPU}")
        if mismatch:
            parts.append(f"{mismatch} node(s) didn't match Pod's node affinity/selector")
        if taint:
            parts.append(f"{taint} node(s) had untolerated taint(s)")
        message = f"0/{len(self.nodes)} nodes are available: {', '.join(parts) or 'no nodes'}."
        if self.told.get(name) != message:
            self.told[name] = message
            await self._status(name, {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]})
            await self._api("POST", f"/api/v1/namespaces/{self.namespace}/events", {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": f"{name}.{uuid.uuid4().hex[:8]}", "namespace": self.namespace},
                "involvedObject": {"kind": "Pod", "name": name, "namespace": self.namespace},
                "reason": "FailedScheduling", "type": "Warning", "message": message,
                "lastTimestamp": _now()})

    async def _start(self, name: str, pod: dict[str, Any], node: str) -> None:
        spec = pod.get("spec") or {}
        container = (spec.get("containers") or [{}])[0]
        image = container.get("image", "")
        self.images[name] = image
        if image in self.bad_images:
            statuses = (pod.get("status") or {}).get("containerStatuses") or []
            if not statuses:
                await self._status(name, {"containerStatuses": [{"name": "job", "state": {"waiting": {
                    "reason": "ErrImagePull",
                    "message": f'failed to pull and unpack image "{image}": not found'}}}]})
            return
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.root)}
        for item in container.get("env") or []:
            env[item["name"]] = item.get("value", "")
        for ref in container.get("envFrom") or []:
            secret_name = (ref.get("secretRef") or {}).get("name")
            secret = next((s for s in self._objects("secrets") if s["metadata"]["name"] == secret_name), None)
            if secret is None:
                await self._status(name, {"containerStatuses": [{"name": "job", "state": {"waiting": {
                    "reason": "CreateContainerConfigError", "message": f'secret "{secret_name}" not found'}}}]})
                return
            env.update(secret.get("stringData") or {})
            env.update({k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()})
        workdir = self.root / "pods" / name
        workdir.mkdir(parents=True, exist_ok=True)
        log = workdir.with_suffix(".log")
        with log.open("ab") as out:
            proc = subprocess.Popen(container.get("command") or ["true"], cwd=workdir, env=env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.running[name] = Kubelet(proc, log, node, float(spec.get("terminationGracePeriodSeconds", 30)))
        self.started.append(name)
        await self._status(name, {"phase": "Running", "startTime": _now(),
                                  "conditions": [{"type": "PodScheduled", "status": "True"}],
                                  "containerStatuses": [{"name": "job", "state": {"running": {"startedAt": _now()}}}]})

    def _kill(self, name: str, grace: float) -> None:
        kubelet = self.running.pop(name, None)
        if kubelet is None:
            return
        self.ended[name] = -int(signal.SIGTERM)  # never started again
        with contextlib.suppress(ProcessLookupError):
            os.killpg(kubelet.proc.pid, signal.SIGTERM)

        def later() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(kubelet.proc.pid, signal.SIGKILL)
            kubelet.proc.poll()

        self._loop.call_later(max(grace, 0.05), later)

    async def serve_log(self, raw: web.BaseRequest, ns: str, name: str) -> web.StreamResponse:
        log = self.root / "pods" / f"{name}.log"
        if not log.exists():
            return web.json_response({"kind": "Status", "code": 400, "message":
                                      f'container "job" in pod "{name}" is waiting to start'}, status=400)
        follow = raw.query.get("follow", "").lower() in ("true", "1")
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(raw)
        offset = 0
        try:
            while True:
                with log.open("rb") as fh:
                    fh.seek(offset)
                    data = fh.read()
                if data:
                    offset += len(data)
                    await resp.write(data)
                if not follow or name not in self.running:
                    with log.open("rb") as fh:  # what came after the last look
                        fh.seek(offset)
                        data = fh.read()
                    if data:
                        await resp.write(data)
                    break
                await asyncio.sleep(0.02)
            await resp.write_eof()
        except ConnectionResetError:
            pass
        return resp


def _node_matches(labels: dict[str, str], selector: dict[str, str], terms: list[dict[str, Any]]) -> bool:
    if any(labels.get(k) != v for k, v in selector.items()):
        return False
    if not terms:
        return True
    for term in terms:  # terms are ORed, expressions ANDed
        ok = True
        for e in term.get("matchExpressions") or []:
            key, op, values = e["key"], e["operator"], [str(v) for v in e.get("values") or []]
            have = labels.get(key)
            if (op == "In" and have not in values) or (op == "NotIn" and have in values) \
                    or (op == "Exists" and have is None) or (op == "DoesNotExist" and have is not None):
                ok = False
                break
        if ok:
            return True
    return False


def _tolerated(taint: dict[str, str], tolerations: list[dict[str, Any]]) -> bool:
    for t in tolerations:
        if t.get("effect") not in (None, "", taint.get("effect")):
            continue
        if t.get("operator") == "Exists" and t.get("key") in (None, "", taint.get("key")):
            return True
        if t.get("key") == taint.get("key") and t.get("value") == taint.get("value"):
            return True
    return False
