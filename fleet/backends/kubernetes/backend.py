"""The Kubernetes backend (DESIGN.md §5.8): each configured device class is an elastic pool of
pods; an attempt is one pod, followed through one namespace-wide watch and its log stream.

How an attempt can end, told apart (the rest of fleet sees reasons, not pod phases):

=========================================  =================  ===================================
cause                                      reason             what fleet does
=========================================  =================  ===================================
no node within provision_timeout           no_capacity        pod deleted; the job goes back to
(FailedScheduling: Insufficient GPU,                          the lab's queue and does not burst
node affinity, taints)                                        to this pool again
evicted, node shut down, spot pre-empted,  host_lost          retried (lab or cloud), on the
node lost (pod deleted under it)                              infra budget, at once: the pod is
                                                              surely gone
image cannot be pulled / bad image name    setup_failed       the job fails with the message
the job exits non-zero                     exit_nonzero       as on any host
fleet's timeout                            timed_out          TERM, KILL after the grace period
cancel                                     cancelled          pod deleted with the grace period
API server unreachable while following     host_lost (sent)   reattached when it answers again
=========================================  =================  ===================================
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fleet import containers
from fleet.backends.base import (
    AttemptPlan,
    AttemptSink,
    Backend,
    BackendContext,
    BackendError,
    Capability,
    HostLost,
    Outcome,
    SetupFailed,
)
from fleet.backends.kubernetes import labels as lbl
from fleet.backends.kubernetes import manifest
from fleet.backends.kubernetes.callback import Callback
from fleet.backends.kubernetes.settings import ClassSettings, KubernetesSettings
from fleet.inventory import Host
from fleet.models.enums import Reason
from fleet.runners import manifests

if TYPE_CHECKING:
    from pydantic import BaseModel

log = logging.getLogger(__name__)

IMAGE_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                "RegistryUnavailable"}
CONFIG_ERRORS = {"CreateContainerConfigError", "CreateContainerError"}
# A pod that ended for one of these did not end by itself: its node went or was taken.
LOST_REASONS = {"Evicted", "NodeShutdown", "Terminated", "NodeLost", "Shutdown", "Preempting",
                "UnexpectedAdmissionError", "OutOfcpu", "OutOfmemory", "OutOfnvidia.com/gpu"}
NODE_CACHE = 60.0  # seconds node labels are reused for pod placement


class Conflict(BackendError):
    """HTTP 409: the object exists already."""


class NoCapacity(BackendError):
    """No node took the pod within ``provision_timeout``: the pool had no room for the job."""

    reason = Reason.NO_CAPACITY


def _ts(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class KubernetesBackend(Backend):
    name = "kubernetes"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.CHECK, Capability.KILL_STALE, Capability.FETCH, Capability.GC})
    settings_model = KubernetesSettings

    def __init__(self, settings: KubernetesSettings, ctx: BackendContext) -> None:
        self.settings = settings
        self.backend = ctx.name
        root = ctx.settings.shared / "backends" / ctx.name
        self.callback = Callback(root / "attempts", root / "callback.key", ctx.blob_path,
                                 ctx.settings.max_upload_bytes)
        self.classes: dict[str, tuple[str, ClassSettings]] = {}  # host name -> (device class, settings)
        self.hosts: list[Host] = []
        for device_class, cls in settings.classes.items():
            arch, accelerator = device_class.split("/")
            name = cls.name or f"{ctx.name}-{accelerator}".replace("_", "-").lower()
            pools = cls.pools if cls.pools is not None else sorted(
                {p for h in ctx.inventory if h.device_class == device_class for p in h.pools})
            self.classes[name] = (device_class, cls)
            self.hosts.append(Host(
                name=name, pools=tuple(dict.fromkeys([*pools, ctx.name])), arch=arch, accelerator=accelerator,
                slots=min(cls.max_pods or settings.max_pods, settings.max_pods), connection="kubernetes",
                backend=ctx.name, elastic=True, startup_latency=settings.startup_latency, cost=cls.cost,
                group=ctx.name, group_slots=settings.max_pods,
                labels={"cloud": "kubernetes"} | ({"gpu": cls.gpu} if cls.gpu else {})))
        self._api: Any = None
        self._core: Any = None
        self._lock = asyncio.Lock()
        self._pods: dict[str, dict[str, Any]] = {}  # pod name -> latest object seen
        self._sightings = 0  # counts _see calls: a listing does not overrule what came after it
        self._seen_at: dict[str, int] = {}  # pod name -> the sighting that last stored it
        self._changed: dict[str, asyncio.Event] = {}
        self._watching = False
        self._watch_task: asyncio.Task[None] | None = None
        self._nodes: tuple[float, list[dict[str, Any]]] = (0.0, [])
        self._cancelled: set[str] = set()
        self._following: set[str] = set()

    @classmethod
    def create(cls, settings: BaseModel | None, ctx: BackendContext) -> KubernetesBackend:
        assert isinstance(settings, KubernetesSettings)
        return cls(settings, ctx)

    def offers(self) -> list[Host]:
        return list(self.hosts)

    # ---------------------------------------------------------------- the API client

    async def _client(self) -> Any:
        """The CoreV1 API (made on first use, in the controller's loop), the watch running and
        the callback listener up."""
        async with self._lock:
            if self._core is None:
                try:
                    from kubernetes_asyncio import client, config
                except ImportError as exc:  # pragma: no cover - the extra is not installed
                    raise BackendError("the kubernetes backend needs kubernetes_asyncio: "
                                       "pip install 'fleet[kubernetes]'") from exc
                conf = client.Configuration()
                try:
                    if self.settings.in_cluster:
                        config.load_incluster_config(client_configuration=conf)  # type: ignore[no-untyped-call]
                    else:
                        await config.load_kube_config(config_file=self.settings.kubeconfig,
                                                      context=self.settings.context,
                                                      client_configuration=conf, persist_config=False)
                except Exception as exc:  # noqa: BLE001 - any failure to read it says the same
                    raise BackendError(f"backends.{self.backend}: cannot load the cluster's "
                                       f"configuration: {exc}") from None
                self._api = client.ApiClient(conf)
                self._core = client.CoreV1Api(self._api)
                await self.callback.start(self.settings.callback_listen, self.settings.callback_url)
                self._watch_task = asyncio.create_task(self._watch(), name=f"{self.backend}-watch")
            return self._core

    async def _call(self, what: str, method: str, *args: Any, missing_ok: bool = False, **kwargs: Any) -> Any:
        """One API call; its JSON body (None for a 404 when ``missing_ok``). Raises Conflict
        for a 409, HostLost when the API server cannot be reached, BackendError for other
        refusals (with the server's message)."""
        from kubernetes_asyncio.client.exceptions import ApiException

        core = await self._client()
        try:
            resp = await getattr(core, method)(*args, _preload_content=False, **kwargs)
            status, body = resp.status, await resp.read()
        except ApiException as exc:
            status, body = exc.status, exc.body if isinstance(exc.body, bytes) else str(exc.body or "").encode()
        except (TimeoutError, OSError) as exc:
            raise HostLost(f"kubernetes API server unreachable ({what}): {exc}") from None
        except Exception as exc:
            if type(exc).__module__.startswith("aiohttp"):
                raise HostLost(f"kubernetes API server unreachable ({what}): {exc}") from None
            raise
        if status == 404 and missing_ok:
            return None
        if status >= 400:
            message = body.decode(errors="replace")
            with contextlib.suppress(ValueError, AttributeError):
                message = str(json.loads(message).get("message") or message)
            error = Conflict if status == 409 else BackendError
            raise error(f"kubernetes: {what}: HTTP {status}: {message[:500]}")
        return json.loads(body) if body else {}

    # ---------------------------------------------------------------- the watch

    def _mine(self, pod: dict[str, Any]) -> bool:
        meta_labels = (pod.get("metadata") or {}).get("labels") or {}
        return meta_labels.get(manifest.BACKEND) == self.backend and meta_labels.get(manifest.MANAGED_BY) == "fleet"

    def _see(self, pod: dict[str, Any]) -> None:
        name = (pod.get("metadata") or {}).get("name")
        if not name or not self._mine(pod):
            return
        self._pods[name] = pod
        self._sightings += 1
        self._seen_at[name] = self._sightings
        self._poke(name)

    def _gone(self, name: str) -> None:
        self._pods.pop(name, None)
        self._seen_at.pop(name, None)
        self._poke(name)

    def _poke(self, name: str) -> None:
        event = self._changed.get(name)
        if event is not None:
            event.set()

    async def _watch(self) -> None:
        """Every pod of this backend: listed, then watched; listed again when the watch
        breaks (a pod that vanished meanwhile is seen gone)."""
        core = self._core
        ns, sel = self.settings.namespace, manifest.selector(self.backend)
        while True:
            try:
                asked = self._sightings
                resp = await core.list_namespaced_pod(ns, label_selector=sel, _preload_content=False)
                if resp.status >= 400:
                    raise BackendError(f"list pods: HTTP {resp.status}: {(await resp.read())[:300]!r}")
                listing = json.loads(await resp.read())
                names = set()
                for pod in listing.get("items") or []:
                    names.add(pod["metadata"]["name"])
                    if self._seen_at.get(pod["metadata"]["name"], 0) <= asked:  # not newer news
                        self._see(pod)
                for name in set(self._pods) - names:
                    # A pod this controller made (or saw) while the listing was on its way may
                    # be missing from it: asked again, not taken for gone.
                    if self._seen_at.get(name, 0) > asked and await self._read(name) is not None:
                        continue
                    self._gone(name)
                self._watching = True
                version = (listing.get("metadata") or {}).get("resourceVersion")
                kwargs: dict[str, Any] = {"resource_version": version} if version and version.isdigit() else {}
                resp = await core.list_namespaced_pod(ns, label_selector=sel, watch=True, timeout_seconds=300,
                                                      _preload_content=False, **kwargs)
                if resp.status >= 400:
                    raise BackendError(f"watch pods: HTTP {resp.status}")
                async for line in resp.content:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind in ("ADDED", "MODIFIED"):
                        self._see(obj)
                    elif kind == "DELETED":
                        gone = (obj.get("metadata") or {}).get("name")
                        if gone and self._mine(obj):
                            self._gone(str(gone))
                    elif kind == "ERROR":
                        break
                resp.release()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the watch must go on; followers poll meanwhile
                log.warning("kubernetes %s: pod watch broke (%s: %s); listing again", self.backend,
                            type(exc).__name__, exc)
            self._watching = False
            for name in list(self._changed):
                self._poke(name)
            await asyncio.sleep(self.settings.poll_interval)

    async def _pod(self, name: str) -> dict[str, Any] | None:
        """The pod as last seen (read directly while the watch is down)."""
        return self._pods.get(name) if self._watching else await self._read(name)

    # ---------------------------------------------------------------- placement on nodes

    async def _node_labels(self) -> list[dict[str, str]]:
        at, nodes = self._nodes
        if time.monotonic() - at > NODE_CACHE:
            try:
                listing = await self._call("list nodes", "list_node")
                nodes = listing.get("items") or []
            except BackendError as exc:  # nodes may be forbidden to fleet's account: schemes then
                log.info("kubernetes %s: cannot list nodes (%s)", self.backend, exc)
                nodes = []
            self._nodes = (time.monotonic(), nodes)
        return [(n.get("metadata") or {}).get("labels") or {} for n in nodes]

    async def affinity(self, cls: ClassSettings) -> list[dict[str, Any]]:
        """The node match expressions for a class's accelerator (empty for CPU pods).
        Raises NoCapacity when the cluster gives no way to select it."""
        if cls.gpu is None:
            return []
        accel = lbl.Accelerator.parse(cls.gpu)
        nodes = await self._node_labels()
        scheme: str = self.settings.scheme
        try:
            if scheme == "auto":
                scheme = lbl.detect(accel, nodes, self.settings.custom_key, self.settings.custom_values)
            return lbl.selection(scheme, accel, nodes, self.settings.custom_key, self.settings.custom_values)
        except lbl.LabelError as exc:
            raise NoCapacity(f"kubernetes {self.backend}: {exc}") from None

    # ---------------------------------------------------------------- attempts

    def _class_of(self, plan: AttemptPlan) -> ClassSettings:
        found = self.classes.get(plan.host.name)
        if found is None:
            raise BackendError(f"kubernetes {self.backend}: no class serves host {plan.host.name}")
        return found[1]

    def _pod_plan(self, plan: AttemptPlan) -> dict[str, Any]:
        entry = None
        if plan.argv is None:
            runner = manifests().get(plan.runner)
            if runner is None:
                raise SetupFailed(f"no runner {plan.runner!r} in this fleet")
            entry = f"{plan.runner}/{runner.entry or 'run.py'}"
        return {"job": plan.job, "argv": plan.argv, "entry": entry, "setup": plan.setup,
                "timeout": plan.timeout, "grace": plan.grace,
                "inputs": [[f.rel_path, f.sha256] for f in plan.inputs],
                "outputs": list(plan.job.get("outputs") or [])}

    async def launch(self, plan: AttemptPlan, sink: AttemptSink, log_offset: int = 0) -> Outcome:
        aid, name = plan.attempt_id, manifest.pod_name(plan.attempt_id)
        cls = self._class_of(plan)
        await self._client()
        ended = self.callback.read(aid, "outcome.json")
        if isinstance(ended, dict):
            return _outcome(ended)
        self._following.add(aid)
        self._changed.setdefault(name, asyncio.Event())
        try:
            pod = await self._pod(name)
            if pod is None:
                if (self.callback.dir(aid) / "plan.json").exists() or plan.follow_only:
                    # It was created before (or given up on): never create it again.
                    return self._ended_without_pod(aid, "the pod is gone (deleted outside fleet, or "
                                                        "its node was removed)")
                await self._create(plan, cls, name)
            return await self._follow(plan, cls, name, sink, log_offset)
        finally:
            self._following.discard(aid)
            self._changed.pop(name, None)

    async def _read(self, name: str) -> dict[str, Any] | None:
        pod: dict[str, Any] | None = await self._call(f"read pod {name}", "read_namespaced_pod", name,
                                                      self.settings.namespace, missing_ok=True)
        # Kept, not announced: a follower reading the pod itself must not wake itself again.
        if pod is None:
            self._pods.pop(name, None)
            self._seen_at.pop(name, None)
        elif self._mine(pod):
            self._pods[name] = pod
        return pod

    async def _create(self, plan: AttemptPlan, cls: ClassSettings, name: str) -> None:
        affinity = await self.affinity(cls)
        self.callback.write_plan(plan.attempt_id, self._pod_plan(plan))  # the launch marker
        env = dict(plan.env, FLEET_CALLBACK_TOKEN=self.callback.token(plan.attempt_id))
        ns = self.settings.namespace
        with contextlib.suppress(Conflict):  # made by a launch a crash interrupted
            await self._call(f"create secret {name}", "create_namespaced_secret", ns,
                             manifest.secret(self.backend, ns, plan, env))
        # the spec's image (a runner image by name comes from image_registry), else the class's
        image = containers.resolve(plan.image, plan.host, self.settings.image_registry) if plan.image else None
        body = manifest.pod(self.backend, self.settings, cls, plan, affinity, self.callback.url, image)
        try:
            self._see(await self._call(f"create pod {name}", "create_namespaced_pod", ns, body))
        except Conflict:  # it exists, so follow it (never a second pod)
            await self._read(name)

    def _ended_without_pod(self, aid: str, why: str) -> Outcome:
        """The pod is gone and fleet did not delete it. What the pod handed in decides, unless
        it says its job was stopped by TERM or KILL: that is the node going down under it
        (a kubelet stops the containers of a node that shuts down), not the job's failure."""
        status = self.callback.read(aid, "status.json")
        if isinstance(status, dict) and status.get("ended_at"):
            outcome = self._from_status(aid, status, None)
            if outcome.signal not in (signal.SIGTERM, signal.SIGKILL) or outcome.timed_out:
                return outcome
            why = f"{why}; its job was stopped by signal {outcome.signal} as it went"
        return Outcome(exit_code=None, lost=why)

    async def _follow(self, plan: AttemptPlan, cls: ClassSettings, name: str, sink: AttemptSink,
                      offset: int) -> Outcome:
        aid = plan.attempt_id
        changed = self._changed[name]
        started_at: float | None = None
        started_mono = 0.0
        logs: asyncio.Task[None] | None = None
        stopped_for_timeout = False
        first = self._pods.get(name) or {}
        # creationTimestamp names a whole second (it is truncated): the pod was made before
        # the end of that second, which is where its provisioning time starts (from the start
        # of the second, a 1 s provision_timeout could end before the scheduler first looked).
        stamp = _ts((first.get("metadata") or {}).get("creationTimestamp"))
        created = stamp + 1.0 if stamp is not None else time.time()
        try:
            while True:
                changed.clear()
                pod = await self._pod(name)
                if pod is None:
                    if aid in self._cancelled:
                        return Outcome(exit_code=None, cancelled=True)
                    if stopped_for_timeout:
                        return Outcome(exit_code=None, timed_out=True, started_at=started_at)
                    return self._ended_without_pod(aid, "the pod vanished while it ran (its node was "
                                                        "removed, or it was deleted outside fleet)")
                status = pod.get("status") or {}
                phase = status.get("phase") or "Pending"
                container = _container(status)
                waiting = (container.get("state") or {}).get("waiting") or {}
                if phase == "Pending":
                    why = waiting.get("reason")
                    if why in IMAGE_ERRORS or why in CONFIG_ERRORS:
                        await self._delete(name, 0)
                        what = f"image {cls.image}" if why in IMAGE_ERRORS else "the pod's configuration"
                        raise SetupFailed(f"{what}: {why}: {waiting.get('message') or ''}".rstrip(": "))
                    if not _scheduled(status) and time.time() - created > self.settings.provision_timeout:
                        told = await self._scheduling_events(name) or _unschedulable(status) or "no node took it"
                        await self._delete(name, 0)
                        raise NoCapacity(f"no node for the pod in {self.settings.provision_timeout:g} s "
                                         f"(pool {plan.host.name}): {told}")
                elif started_at is None:
                    started_at = _ts(status.get("startTime")) or time.time()
                    started_mono = time.monotonic()
                    sink.started(0, started_at)
                    logs = asyncio.create_task(self._logs(name, sink, offset))
                if phase in ("Succeeded", "Failed"):
                    break
                if started_at is not None and plan.timeout and not stopped_for_timeout \
                        and time.monotonic() - started_mono > plan.timeout + plan.grace + 10:
                    # The pod's own timeout did not stop it (podboot enforces it): fleet does.
                    stopped_for_timeout = True
                    await self._delete(name, plan.grace)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), self.settings.poll_interval)
            if logs is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(logs), 15)
            outcome = self._ended(plan, pod, started_at, stopped_for_timeout)
            self.callback.write_outcome(aid, _dump(outcome))
            await self._delete(name, 0)
            return outcome
        finally:
            if logs is not None and not logs.done():
                logs.cancel()

    async def _logs(self, name: str, sink: AttemptSink, offset: int) -> None:
        """Stream the pod's log into fleet's log store from ``offset`` on; opened again if the
        stream breaks while the pod runs (what came before is skipped, not sent twice)."""
        delivered = offset
        for _ in range(1000):
            seen = 0
            try:
                resp = await self._call_raw("read_namespaced_pod_log", name, self.settings.namespace,
                                            container="job", follow=True)
                async for chunk in resp.content.iter_any():
                    start = max(0, delivered - seen)
                    seen += len(chunk)
                    if start < len(chunk):
                        sink.log(chunk[start:])
                        delivered = seen
                resp.release()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.debug("log stream of %s broke: %s", name, exc)
            pod = self._pods.get(name)
            phase = ((pod or {}).get("status") or {}).get("phase")
            if pod is None or phase in ("Succeeded", "Failed"):
                return
            await asyncio.sleep(0.5)

    async def _call_raw(self, method: str, *args: Any, **kwargs: Any) -> Any:
        core = await self._client()
        resp = await getattr(core, method)(*args, _preload_content=False, **kwargs)
        if resp.status >= 400:
            resp.release()
            raise BackendError(f"kubernetes: {method}: HTTP {resp.status}")
        return resp

    async def _scheduling_events(self, name: str) -> str | None:
        """The newest FailedScheduling message about the pod (why no node takes it)."""
        try:
            listing = await self._call("list events", "list_namespaced_event", self.settings.namespace,
                                       field_selector=f"involvedObject.name={name}")
        except BackendError:
            return None
        events = [e for e in listing.get("items") or []
                  if (e.get("involvedObject") or {}).get("name") == name and e.get("reason") == "FailedScheduling"]
        events.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        return str(events[-1].get("message")) if events else None

    def _ended(self, plan: AttemptPlan, pod: dict[str, Any], started_at: float | None, timed_out: bool) -> Outcome:
        aid = plan.attempt_id
        status = pod.get("status") or {}
        terminated = (_container(status).get("state") or {}).get("terminated") or {}
        reason = status.get("reason") or ""
        message = status.get("message") or terminated.get("message") or ""
        if aid in self._cancelled:
            return Outcome(exit_code=terminated.get("exitCode"), cancelled=True, started_at=started_at)
        disrupted = any(c.get("type") == "DisruptionTarget" and c.get("status") == "True"
                        for c in status.get("conditions") or [])
        if reason in LOST_REASONS or disrupted:
            why = reason or next((c.get("reason") for c in status.get("conditions") or []
                                  if c.get("type") == "DisruptionTarget"), "disrupted")
            return Outcome(exit_code=None, lost=f"pod {why}: {message}".rstrip(": "), started_at=started_at)
        if reason == "DeadlineExceeded" or timed_out:
            return Outcome(exit_code=terminated.get("exitCode"), timed_out=True, started_at=started_at,
                           ended_at=_ts(terminated.get("finishedAt")))
        st = self.callback.read(aid, "status.json")
        if isinstance(st, dict):
            return self._from_status(aid, st, terminated)
        code = terminated.get("exitCode")
        if terminated.get("reason") == "OOMKilled":
            return Outcome(exit_code=code, error="the pod ran out of memory (OOMKilled)", started_at=started_at)
        if code == 125:
            return Outcome(exit_code=None, lost="the pod could not reach fleet's callback listener "
                                                f"at {self.callback.url}")
        # The pod could not hand its status in: the cluster's record of the exit stands; what
        # only the status carries (outputs) is reported missing, never silently dropped.
        log.warning("kubernetes %s: pod of %s ended without handing in its status", self.backend, aid)
        wanted = plan.job.get("outputs") or []
        return Outcome(exit_code=code, started_at=started_at, ended_at=_ts(terminated.get("finishedAt")),
                       outputs_problem="the pod could not hand in its outputs" if wanted else None)

    def _from_status(self, aid: str, st: dict[str, Any], terminated: dict[str, Any] | None) -> Outcome:
        result = self.callback.read(aid, "result.json")
        error = self.callback.read(aid, "error.json")
        handed = {o["path"]: o for o in self.callback.outputs(aid)}
        outputs, missing = [], []
        for claimed in st.get("outputs") or []:
            got = handed.get(str(claimed.get("path")))
            if got is None:
                missing.append(str(claimed.get("path")))
            else:
                outputs.append(got)
        problems = [p for p in [st.get("outputs_problem")] if p]
        if missing:
            problems.append("outputs not handed in: " + ", ".join(missing[:5]))
        if st.get("result_problem"):
            problems.append(str(st["result_problem"]))
        code = st.get("exit_code") if isinstance(st.get("exit_code"), int) else None
        sig = st.get("signal") if isinstance(st.get("signal"), int) else None
        cluster = (terminated or {}).get("exitCode")
        if isinstance(cluster, int) and not (sig is not None and cluster == 128 + sig):
            code, sig = cluster, None  # the cluster's record of the exit, not the pod's word
        return Outcome(
            exit_code=code, signal=sig,
            timed_out=bool(st.get("timed_out")), phase=str(st.get("phase") or "run"),
            error=str(st["error"]) if st.get("error") else None,
            result=result if isinstance(result, dict) else None,
            runner_error=error if isinstance(error, dict) else None,
            started_at=st.get("started_at"), ended_at=st.get("ended_at"),
            outputs=outputs, outputs_problem="; ".join(problems) or None)

    async def _delete(self, name: str, grace: float) -> None:
        ns = self.settings.namespace
        for what, method in (("pod", "delete_namespaced_pod"), ("secret", "delete_namespaced_secret")):
            try:
                await self._call(f"delete {what} {name}", method, name, ns,
                                 grace_period_seconds=int(grace), missing_ok=True)
            except BackendError as exc:
                log.warning("kubernetes %s: %s", self.backend, exc)

    async def cancel(self, plan: AttemptPlan, grace: float) -> None:
        self._cancelled.add(plan.attempt_id)
        await self._delete(manifest.pod_name(plan.attempt_id), grace)

    async def check(self, host: Host, timeout: float) -> dict[str, Any] | None:
        """The API answers and the namespace is readable; the class's accelerator can be
        selected. Returns what the cluster has for the class: matching nodes, their GPUs and
        how many are free (allocatable minus the requests of the pods on them, as dstack
        counts), nodes whose taints the pods do not tolerate."""
        return await asyncio.wait_for(self._check(host), timeout)

    async def _check(self, host: Host) -> dict[str, Any]:
        await self._call("list pods", "list_namespaced_pod", self.settings.namespace,
                         label_selector=manifest.selector(self.backend), limit=1)
        cls = self.classes[host.name][1]
        self._nodes = (0.0, [])  # read the nodes afresh
        exprs = await self.affinity(cls)  # a class the cluster cannot select says so here
        facts: dict[str, Any] = {"backend": "kubernetes", "namespace": self.settings.namespace}
        if cls.gpu is None:
            return facts
        nodes = [n for n in self._nodes[1] if lbl.matches(exprs, (n.get("metadata") or {}).get("labels") or {})]
        gpu = self.settings.gpu_resource
        tolerations = manifest.pod_tolerations(self.settings, cls)
        allocatable = {n["metadata"]["name"]: _quantity(((n.get("status") or {}).get("allocatable") or {}).get(gpu))
                       for n in nodes}
        tainted = sum(1 for n in nodes if not all(
            _tolerated(t, tolerations) for t in (n.get("spec") or {}).get("taints") or []
            if t.get("effect") in ("NoSchedule", "NoExecute")))
        facts.update(gpu=cls.gpu, label_scheme=exprs[0]["key"] if exprs else None, nodes=len(nodes),
                     gpus=sum(allocatable.values()), untolerated_taints=tainted)
        try:
            pods = (await self._call("list pods on nodes", "list_pod_for_all_namespaces")).get("items") or []
        except BackendError:
            return facts  # fleet's account may not see other namespaces: free GPUs unknown
        used = 0
        for pod in pods:
            spec = pod.get("spec") or {}
            if spec.get("nodeName") in allocatable and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                used += sum(_quantity(((c.get("resources") or {}).get("requests") or {}).get(gpu))
                            for c in spec.get("containers") or [])
        facts["gpus_free"] = max(0, facts["gpus"] - used)
        return facts

    async def kill_stale(self, host: Host, attempt_ids: list[str], grace: float) -> None:
        for aid in attempt_ids:
            await self._delete(manifest.pod_name(aid), grace)

    async def fetch(self, plan: AttemptPlan, rel_path: str, dest: Path, size: int = 0) -> None:
        src = self.callback.output_path(plan.attempt_id, rel_path)
        try:
            await asyncio.to_thread(shutil.copyfile, src, dest)
        except OSError as exc:
            raise BackendError(f"kubernetes {self.backend}: output {rel_path} of {plan.attempt_id}: {exc}") from None

    async def gc_attempts(self, host: Host, max_age: float, max_bytes: int, keep: list[str],
                          timeout: float) -> tuple[int, int, int] | None:
        """Fleet's own sweep: pods and secrets of this backend whose attempts are neither
        followed nor kept are deleted (a crash's leftovers), and what pods handed in is kept
        ``max_age`` seconds after the attempt ended."""
        if host.name != self.hosts[0].name:
            return None  # one sweep serves every class of the backend
        kept = set(keep)
        ns, sel = self.settings.namespace, manifest.selector(self.backend)
        pods = (await self._call("list pods", "list_namespaced_pod", ns, label_selector=sel)).get("items") or []
        secrets = (await self._call("list secrets", "list_namespaced_secret", ns, label_selector=sel)).get("items") or []
        live = {p["metadata"]["name"] for p in pods
                if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")}
        for obj in [*pods, *secrets]:
            meta = obj.get("metadata") or {}
            found = meta.get("labels") or {}
            aid = found.get(manifest.ATTEMPT)
            # A pod still running is kill_stale's to decide; a secret whose pod may still start stays.
            # What is followed is asked now, not before the listings: an attempt launched while
            # they were on their way has a secret and pod the pod listing may predate.
            if aid and aid not in kept and aid not in self._following \
                    and found.get(manifest.BACKEND) == self.backend and meta.get("name") not in live:
                await self._delete(manifest.pod_name(aid), 0)
        removed = freed = left = 0
        now = time.time()
        for d in sorted(self.callback.root.iterdir()) if self.callback.root.exists() else []:
            size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
            ended = d / "outcome.json"
            if d.name not in kept and d.name not in self._following and ended.exists() and now - ended.stat().st_mtime > max_age:
                shutil.rmtree(d, ignore_errors=True)
                removed, freed = removed + 1, freed + size
            else:
                left += size
        return removed, freed, left

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watch_task
        await self.callback.stop()
        if self._api is not None:
            await self._api.close()


def _quantity(value: Any) -> int:
    try:
        return int(str(value or 0))
    except ValueError:
        return 0


def _tolerated(taint: dict[str, Any], tolerations: list[dict[str, Any]]) -> bool:
    for t in tolerations:
        if t.get("effect") not in (None, "", taint.get("effect")):
            continue
        if t.get("operator") == "Exists" and t.get("key") in (None, "", taint.get("key")):
            return True
        if t.get("key") == taint.get("key") and t.get("value") == taint.get("value"):
            return True
    return False


def _container(status: dict[str, Any]) -> dict[str, Any]:
    for c in status.get("containerStatuses") or []:
        if c.get("name") == "job":
            return dict(c)
    return {}


def _scheduled(status: dict[str, Any]) -> bool:
    return any(c.get("type") == "PodScheduled" and c.get("status") == "True" for c in status.get("conditions") or [])


def _unschedulable(status: dict[str, Any]) -> str | None:
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return str(c.get("message") or c.get("reason") or "")
    return None


def _dump(o: Outcome) -> dict[str, Any]:
    return {"exit_code": o.exit_code, "signal": o.signal, "timed_out": o.timed_out, "cancelled": o.cancelled,
            "phase": o.phase, "error": o.error, "result": o.result, "runner_error": o.runner_error,
            "started_at": o.started_at, "ended_at": o.ended_at, "lost": o.lost, "outputs": o.outputs,
            "outputs_problem": o.outputs_problem}


def _outcome(d: dict[str, Any]) -> Outcome:
    fields = Outcome.__dataclass_fields__
    return Outcome(**{k: v for k, v in d.items() if k in fields})
