"""Placement: feasibility -> ranking -> a plan to commit (DESIGN.md §5.5). Pure, no I/O.

``Demand`` is what a job asks of a host; jobs with equal demands share one queue, and a host's
static feasibility for a demand is computed once (Nomad's "computed class" idea). Dynamic checks
(health, drain, free slots) run on every pass. Every rejected host is counted under a reason so
``fleet why`` can say "3 hosts in pool jetson: 2 busy, 1 health=bad".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet import images
from fleet.inventory import Host
from fleet.models.enums import Health
from fleet.models.spec import JobSpec
from fleet.probe import unmet
from fleet.runners import RunnerManifest


@dataclass(frozen=True)
class Demand:
    pool: str | None
    arch: str | None
    accelerator: str | None
    labels: tuple[tuple[str, str], ...]
    slots: int
    runner: str
    kind: str = "shell"
    requires: tuple[str, ...] = ()
    guest: bool = False  # a job of someone other than the server's owner (DESIGN.md §7)
    burst: str = "never"  # never | allowed (to an elastic pool when the burst policy says) | only
    image: str | None = None  # runs in this image: a host with a container engine, or a cloud pool

    @classmethod
    def of(cls, spec: JobSpec, guest: bool = False) -> Demand:
        r = spec.resources
        return cls(
            pool=r.pool, arch=r.arch, accelerator=r.accelerator,
            labels=tuple(sorted(r.labels.items())), slots=r.slots, runner=spec.runner or "shell",
            kind=spec.kind.value, requires=tuple(r.requires), guest=guest, burst=spec.burst,
            image=spec.image,
        )

    @property
    def key(self) -> str:
        """The queue name, e.g. ``jetson/aarch64/jetson-orin-nano`` or ``*/*/*+gpu=1``."""
        parts = [self.pool or "*", self.arch or "*", self.accelerator or "*"]
        key = "/".join(parts)
        if self.labels:
            key += "+" + ",".join(f"{k}={v}" for k, v in self.labels)
        if self.slots != 1:
            key += f"#{self.slots}"
        if self.requires:
            key += "?" + ",".join(self.requires)
        if self.runner != "shell":
            key += f"@{self.runner}"
            if self.kind == "compile":
                key += ".compile"
        if self.guest:
            key += "~guest"
        if self.burst != "never":
            key += "^burst" if self.burst == "allowed" else "^cloud"
        if self.image is not None:
            key += f"[{self.image}]"
        return key

    def describe_scope(self) -> str:
        return f"pool {self.pool}" if self.pool else "the inventory"


@dataclass(frozen=True)
class HostView:
    """A host as the scheduler sees it at one moment."""

    host: Host
    used_slots: int = 0
    health: Health = Health.GOOD
    drained: bool = False
    cached: frozenset[str] = frozenset()
    last_placed: float = 0.0  # when the scheduler last placed a job here (spreads equal hosts)
    unchecked: bool = False  # fleet has never reached it (a check is on its way)
    group_free: int | None = None  # free slots of the capacity group it shares (Host.group)

    @property
    def free_slots(self) -> int:
        return self.host.slots - self.used_slots


@dataclass(frozen=True)
class Placement:
    host: str
    score: float


@dataclass(frozen=True)
class Unplaceable:
    """No host fits now. ``reasons`` counts rejected hosts by reason; ``static`` is True when
    no host could ever fit (pool/arch/accelerator/labels/runner), whatever the load."""

    considered: int
    reasons: Counter[str] = field(default_factory=Counter)
    scope: str = "the inventory"
    static: bool = False

    def summary(self) -> str:
        if self.considered == 0:
            return f"no hosts in {self.scope}"
        parts = ", ".join(f"{n} {reason}" for reason, n in self.reasons.most_common())
        noun = "host" if self.considered == 1 else "hosts"
        return f"{self.considered} {noun} in {self.scope}: {parts}"


def static_reason(demand: Demand, host: Host, runner: RunnerManifest | None,
                  facts: dict[str, Any] | None = None) -> str | None:
    """Why ``host`` can never take jobs of ``demand`` (None if it can). Pure."""
    if not host.schedulable:
        return "runs no jobs (fleet_jobs=false)"
    if host.elastic and demand.burst == "never":
        return f"elastic pool of backend {host.backend} (the job has burst: never)"
    if not host.elastic and demand.burst == "only":
        return "not an elastic pool (the job has burst: only)"
    if not host.elastic:
        image = demand.image or host.container_image  # the host's (its pool's) default image
        if demand.image is not None and host.container_engine is None:
            return "no container engine (the job has image:; set fleet_container_engine)"
        if image is None and host.isolation == "container":
            return "isolation: container and the job names no image (set image:, or fleet_container_image)"
        why = images.refuses(image, host.arch, facts) if image is not None else None
        if why:
            return why
    if demand.guest and host.connection == "local" and host.job_user is None and not host.needs_root:
        # A job there would run as the server's own account, next to its token and keys.
        return "runs only the server owner's jobs (it is the controller's machine; set fleet_job_user)"
    if demand.pool is not None and demand.pool not in host.pools:
        return f"not in pool {demand.pool}"
    if demand.arch is not None and host.arch != demand.arch:
        return f"arch {host.arch}" if host.arch != "unknown" else "arch unknown (probe the host)"
    if demand.accelerator is not None and host.accelerator != demand.accelerator:
        return f"accelerator {host.accelerator}"
    for key, value in demand.labels:
        have = host.labels.get(key)
        if have != value:
            return f"label {key}={have}" if have is not None else f"no label {key}"
    if demand.slots > host.slots:
        return f"only {host.slots} slot{'s' if host.slots != 1 else ''}"
    if runner is not None:
        why = runner.unsupported(host.arch, host.accelerator, demand.kind)
        if why:
            return why
    if demand.requires:
        return unmet(demand.requires, facts)
    return None


NO_CAPACITY_AGAIN = "found no capacity for this job before (it waits for the lab)"

# Why a host that is not good takes no jobs, in the words `fleet hosts` uses for it.
_HEALTH_REASON = {
    Health.UNKNOWN: "unreachable (a check runs again)",
    Health.BAD: "unreachable, quarantined (health=bad)",
    Health.MAINTENANCE: "in maintenance",
}


def dynamic_reason(demand: Demand, view: HostView, burst_block: str | None = None,
                   no_capacity: frozenset[str] | set[str] = frozenset()) -> str | None:
    """Why ``view`` cannot take a job of ``demand`` right now (None if it can). Pure.
    ``burst_block``: why the burst policy holds the job's queue back from elastic pools;
    ``no_capacity``: elastic pools that found no room for this job before."""
    if view.host.name in no_capacity:
        return NO_CAPACITY_AGAIN
    if view.host.elastic and burst_block is not None and demand.burst == "allowed":
        return burst_block
    if view.health is not Health.GOOD:  # unknown: a health check runs first
        return _HEALTH_REASON[view.health] if not view.unchecked else "not checked yet"
    if view.drained:  # the words `fleet hosts` uses for the host's state
        return "draining" if view.used_slots else "drained"
    if view.free_slots < demand.slots:
        return "busy"
    if view.group_free is not None and view.group_free < demand.slots:
        return f"busy (backend {view.host.backend} at its limit)"
    return None


ELASTIC_PENALTY = 4.0  # below any free fixed host, even one the job failed on


def rank(view: HostView, inputs: Iterable[str], failed_on: frozenset[str]) -> float:
    """Higher is better: free capacity, inputs already cached, not a host that failed the job.
    An elastic pool ranks below every free fixed host (it bursts when the lab is full), and
    among pools the quicker to start and the cheaper first."""
    inputs = list(inputs)
    score = view.free_slots / max(view.host.slots, 1)
    if inputs:
        score += 0.5 * sum(1 for sha in inputs if sha in view.cached) / len(inputs)
    if view.host.name in failed_on:
        score -= 2.0
    if view.host.elastic:
        score -= ELASTIC_PENALTY + min(view.host.startup_latency, 3600.0) / 3600.0 \
            + min(view.host.cost, 1000.0) / 1000.0
    return score


def place(
    demand: Demand,
    views: list[HostView],
    static: Mapping[str, str | None],
    inputs: Iterable[str] = (),
    failed_on: frozenset[str] = frozenset(),
    burst_block: str | None = None,
    no_capacity: frozenset[str] = frozenset(),
) -> Placement | Unplaceable:
    """Pick the best host for one job. Pure.

    Args:
        demand: what the job asks for.
        views: every host, with its current load and health.
        static: host name -> ``static_reason`` for this demand (None: the host can fit).
        inputs: sha256s of the job's inputs (hosts that cache them rank higher).
        failed_on: hosts this job already failed on (ranked last, still allowed).
        burst_block: why the burst policy keeps the queue off elastic pools now (None: it
            does not; see fleet.scheduler.burst).
        no_capacity: elastic pools that found no capacity for this job before (its pod
            stayed unschedulable): the job waits for the lab instead.
    """
    in_scope = [v for v in views if demand.pool is None or demand.pool in v.host.pools]
    reasons: Counter[str] = Counter()
    dynamic_only = True
    best: Placement | None = None
    best_key: tuple[float, float, str] | None = None
    inputs = tuple(inputs)
    for view in in_scope:
        why = static.get(view.host.name)
        if why is not None:
            reasons[why] += 1
            continue
        dynamic_only = False
        why = dynamic_reason(demand, view, burst_block, no_capacity)
        if why is not None:
            reasons[why] += 1
            continue
        score = rank(view, inputs, failed_on)
        # Best score first; among equals the least recently used host, then the name.
        key = (-score, view.last_placed, view.host.name)
        if best_key is None or key < best_key:
            best_key, best = key, Placement(host=view.host.name, score=score)
    if best is not None:
        return best
    return Unplaceable(
        considered=len(in_scope), reasons=reasons, scope=demand.describe_scope(), static=dynamic_only
    )


def static_report(demand: Demand, hosts: list[Host], runner: RunnerManifest | None,
                  facts: Mapping[str, dict[str, Any]] | None = None) -> Unplaceable | None:
    """None if some host can ever take the demand; else the per-reason counts. Pure."""
    in_scope = [h for h in hosts if demand.pool is None or demand.pool in h.pools]
    reasons: Counter[str] = Counter()
    for host in in_scope:
        why = static_reason(demand, host, runner, (facts or {}).get(host.name))
        if why is None:
            return None
        reasons[why] += 1
    return Unplaceable(considered=len(in_scope), reasons=reasons, scope=demand.describe_scope(), static=True)
