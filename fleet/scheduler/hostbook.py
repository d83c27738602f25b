"""The host book: every host (or elastic pool) the backends offer, as the scheduler knows it
now: slots in use, health, drain, what a probe found, which inputs each has cached. Its views
are what placement (a pure function) decides on; the scheduler's loop is its only writer of
slot use, health checks and operators write health and drain."""

from __future__ import annotations

import dataclasses
import heapq
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from fleet.errors import NotFound
from fleet.inventory import ARCH_ALIASES, CONTAINER_ENGINES, UNKNOWN_ARCH, Host
from fleet.models.enums import Health
from fleet.runners import manifests
from fleet.scheduler.placement import Demand, HostView, dynamic_reason, rank, static_reason
from fleet.store import Store

log = logging.getLogger(__name__)

NOT_CHECKED = "not checked yet"


class HostBook:
    def __init__(self, hosts: list[Host], store: Store) -> None:
        self.hosts = {h.name: h for h in hosts}
        self.store = store
        self.used: Counter[str] = Counter()
        self.group_used: Counter[str] = Counter()  # slots in use per capacity group (Host.group)
        self.health: dict[str, Health] = {}
        self.unchecked: set[str] = set()  # never reached yet: their first check is on its way
        self.drained: set[str] = set()
        self.cached: dict[str, set[str]] = {}  # inputs each host has (by sha256)
        self.holders: dict[str, set[str]] = {}  # sha256 -> hosts that have it (see add_cached)
        self.last_placed: dict[str, float] = {}
        self.facts: dict[str, dict[str, Any]] = {}  # what `fleet hosts probe` found, per host
        self._static: dict[str, dict[str, str | None]] = {}  # demand key -> host -> reason
        self._fits: dict[str, list[str]] = {}  # demand key -> hosts that can ever take it
        # Hosts that could take a job now (good, not drained, a slot free): kept up to date
        # as slots are taken and given back, so a placement looks at these, not every host.
        self.free: set[str] = set()
        # Per demand key, its free hosts ordered as placement ranks them for a job without
        # cached inputs (a heap; entries go stale when their host changes: ``version``).
        self._heaps: dict[str, list[tuple[float, float, str, int]]] = {}
        self._keys_of: dict[str, set[str]] = {}  # host -> demand keys it fits (their heaps)
        self.version: Counter[str] = Counter()
        self.elastic = any(h.elastic for h in hosts)  # whether the burst policy matters at all
        self.groups: dict[str, list[str]] = {}  # capacity group -> its hosts
        for h in hosts:
            if h.group is not None:
                self.groups.setdefault(h.group, []).append(h.name)

    def _refresh(self, name: str) -> None:
        host = self.hosts.get(name)
        self.version[name] += 1
        if host is not None and self.health.get(name) is Health.GOOD and name not in self.drained \
                and self.used[name] < host.slots:
            self.free.add(name)
            entry = self._entry(host)
            for key in self._keys_of.get(name, ()):
                heap = self._heaps.get(key)
                if heap is not None:
                    heapq.heappush(heap, entry)
        else:
            self.free.discard(name)

    def _entry(self, host: Host) -> tuple[float, float, str, int]:
        """A free host's place in its demands' heaps: placement's order (best score, least
        recently placed, name) for a job whose inputs no host has cached."""
        score = rank(self.view(host), (), frozenset())
        return (-score, self.last_placed.get(host.name, 0.0), host.name, self.version[host.name])

    def add_cached(self, name: str, shas: Iterable[str]) -> None:
        """``name`` has these inputs in its cache now (placement prefers it for their jobs)."""
        have = self.cached.setdefault(name, set())
        for sha in shas:
            have.add(sha)
            self.holders.setdefault(sha, set()).add(name)

    def host(self, name: str) -> Host:
        host = self.hosts.get(name)
        if host is None:
            raise NotFound(f"no host named {name!r} in the inventory")
        return host

    def load(self) -> list[str]:
        """Health, drain and facts as the database has them. A host fleet has never reached
        is unknown ("not checked yet") and takes no jobs until a check reached it: an
        inventory of hosts that do not answer must not eat jobs' retries. Returns the hosts
        to check now."""
        self.load_facts()
        for name, row in self.store.hosts.statuses().items():
            if name in self.hosts:
                self.health[name] = Health(row.health)
                if row.drained:
                    self.drained.add(name)
        new = [name for name, host in self.hosts.items() if name not in self.health and host.schedulable]
        for name in new:
            self.unchecked.add(name)
            self.health[name] = Health.UNKNOWN
        self.store.hosts.add(new, Health.UNKNOWN, NOT_CHECKED)
        if new:
            log.info("%d host(s) new to the database: health unknown (%s)", len(new), NOT_CHECKED)
        for name in self.hosts:
            self._refresh(name)
        return [n for n, h in self.health.items() if h in (Health.UNKNOWN, Health.BAD)]

    def load_facts(self) -> None:
        self.facts = {name: json.loads(row.facts_json) for name, row in self.store.hosts.statuses().items()
                      if row.facts_json and name in self.hosts}
        for name, facts in self.facts.items():
            self._fill_in(name, facts)

    def set_facts(self, name: str, facts: dict[str, Any]) -> None:
        """A probe's findings: stored, and placement sees them from now on."""
        self.store.hosts.set_facts(name, facts)
        self.facts[name] = facts
        self._fill_in(name, facts)
        self._static.clear()
        self._fits.clear()
        self._heaps.clear()
        self._keys_of.clear()

    def _fill_in(self, name: str, facts: dict[str, Any]) -> None:
        """What the inventory left out and the probe found: a host without ``fleet_arch``
        takes the kernel's (DESIGN.md §5.1). What the inventory says stays; a disagreement is
        only reported (``fleet hosts``: MISMATCH)."""
        host = self.hosts.get(name)
        if host is not None and host.arch == UNKNOWN_ARCH and facts.get("arch") in ARCH_ALIASES.values():
            host = self.hosts[name] = dataclasses.replace(host, arch=facts["arch"])
        if host is not None and host.container_engine is None and facts.get("container_engine") in CONTAINER_ENGINES:
            # jobs with image: may run there (fleet_container_engine, found by the probe)
            self.hosts[name] = dataclasses.replace(host, container_engine=facts["container_engine"])

    def set_health(self, name: str, health: Health, message: str | None) -> None:
        if self.health.get(name, Health.GOOD) is not health:
            log.info("host %s: health %s%s", name, health.value, f" ({message})" if message else "")
        self.health[name] = health
        self._refresh(name)
        self.store.hosts.set_health(name, health, message)

    def drain(self, name: str, drained: bool) -> None:
        self.host(name)
        if drained:
            self.drained.add(name)
        else:
            self.drained.discard(name)
        self._refresh(name)
        self.store.hosts.set_drained(name, drained)

    def take(self, host: Host, slots: int, placed: bool = True) -> None:
        self.used[host.name] += slots
        if host.group is not None:
            self.group_used[host.group] += slots
        if placed:
            self.last_placed[host.name] = time.monotonic()
        self._refresh(host.name)

    def give_back(self, host: Host, slots: int) -> None:
        self.used[host.name] -= slots
        if host.group is not None:
            self.group_used[host.group] -= slots
        self._refresh(host.name)

    def view(self, h: Host) -> HostView:
        return HostView(
            host=h, used_slots=self.used[h.name], health=self.health.get(h.name, Health.UNKNOWN),
            drained=h.name in self.drained, cached=frozenset(self.cached.get(h.name, ())),
            last_placed=self.last_placed.get(h.name, 0.0), unchecked=h.name in self.unchecked,
            group_free=None if h.group is None else h.group_slots - self.group_used[h.group],
        )

    def views(self) -> list[HostView]:
        return [self.view(h) for h in self.hosts.values()]

    def static_for(self, demand: Demand) -> dict[str, str | None]:
        """Why each host can never take ``demand`` (None: it can), computed once per queue."""
        static = self._static.get(demand.key)
        if static is None:
            runner = manifests().get(demand.runner)
            static = {h.name: static_reason(demand, h, runner, self.facts.get(h.name))
                      for h in self.hosts.values()}
            self._static[demand.key] = static
            fits = self._fits[demand.key] = [name for name, why in static.items() if why is None]
            for name in fits:
                self._keys_of.setdefault(name, set()).add(demand.key)
        return static

    def fits(self, demand: Demand) -> bool:
        """Whether some host could ever take ``demand`` (cached per queue)."""
        self.static_for(demand)
        return bool(self._fits[demand.key])

    def _heap(self, demand: Demand) -> list[tuple[float, float, str, int]]:
        heap = self._heaps.get(demand.key)
        fits = self._fits[demand.key]
        if heap is None or len(heap) > 4 * len(fits) + 1024:  # new, or grown with stale entries
            heap = [self._entry(self.hosts[n]) for n in fits if n in self.free]
            heapq.heapify(heap)
            self._heaps[demand.key] = heap
        return heap

    def pick(self, demand: Demand, inputs: Iterable[str], failed_on: frozenset[str],
             burst_block: str | None, no_capacity: frozenset[str]) -> list[HostView]:
        """The few hosts among which ``place`` finds the same best host it would find among
        all of them: the best free host in placement's order that the job may use now (and
        any it failed on that rank before it), and the free hosts that cache its inputs (they
        rank higher by that). Costs about log(hosts), not the fleet."""
        self.static_for(demand)
        heap = self._heap(demand)
        out: list[HostView] = []
        taken: list[tuple[float, float, str, int]] = []
        while heap:
            entry = heap[0]
            name = entry[2]
            if entry[3] != self.version[name] or name not in self.free:
                heapq.heappop(heap)  # stale: the host changed since (a newer entry exists)
                continue
            taken.append(heapq.heappop(heap))
            view = self.view(self.hosts[name])
            if dynamic_reason(demand, view, burst_block, no_capacity) is None:
                out.append(view)
                if name not in failed_on:
                    break
        for entry in taken:
            heapq.heappush(heap, entry)
        static = self._static[demand.key]
        seen = {v.host.name for v in out}
        for sha in set(inputs):
            for name in self.holders.get(sha, ()):
                if name not in seen and name in self.free and static.get(name, "gone") is None:
                    seen.add(name)
                    out.append(self.view(self.hosts[name]))
        return out
