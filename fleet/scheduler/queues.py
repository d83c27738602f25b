"""Per-device-class queues. Pure data structures, no I/O.

One ``ClassQueue`` per ``Demand`` key, so a flood of Jetson jobs never blocks RTX jobs. Within a
queue: highest priority first, then the user with the fewest running attempts (fair share),
then the oldest job (ids are time-ordered, so smaller id = older).
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field


@dataclass
class ClassQueue:
    key: str
    # priority -> user -> job ids in age order
    _buckets: dict[int, dict[str, list[str]]] = field(default_factory=dict)
    _where: dict[str, tuple[int, str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._where

    def push(self, job_id: str, priority: int, user: str) -> None:
        """Add a job (or re-add a retried one) in age order. Idempotent."""
        if job_id in self._where:
            return
        users = self._buckets.setdefault(priority, {})
        bisect.insort(users.setdefault(user, []), job_id)
        self._where[job_id] = (priority, user)

    def remove(self, job_id: str) -> bool:
        """Take a job out (placed or cancelled). Returns False if it was not queued."""
        where = self._where.pop(job_id, None)
        if where is None:
            return False
        priority, user = where
        users = self._buckets[priority]
        ids = users[user]
        ids.pop(bisect.bisect_left(ids, job_id))
        if not ids:
            del users[user]
            if not users:
                del self._buckets[priority]
        return True

    def head(self, running: Mapping[str, int]) -> str | None:
        """The job to place next, given each user's running count. Does not remove it."""
        if not self._buckets:
            return None
        users = self._buckets[max(self._buckets)]
        best_user = min(users, key=lambda u: (running.get(u, 0), users[u][0]))
        return users[best_user][0]

    def oldest(self) -> str | None:
        """The oldest queued job (ids are time-ordered): one look per user, not a sort."""
        firsts = [ids[0] for users in self._buckets.values() for ids in users.values()]
        return min(firsts) if firsts else None

    def job_ids(self) -> list[str]:
        """Every queued job id, oldest first (for listings and why)."""
        return sorted(self._where)

    def order(self, running: Mapping[str, int], limit: int) -> list[str]:
        """The first ``limit`` jobs in the order ``head`` would hand them out, if each one
        placed started (its user's running count going up by one)."""
        out: list[str] = []
        if limit <= 0:
            return out
        for job_id in self._taken(running):
            out.append(job_id)
            if len(out) >= limit:
                break
        return out

    def position(self, job_id: str, running: Mapping[str, int]) -> int:
        """How many jobs are taken before ``job_id``: the order is walked only up to it (not
        built for the whole queue). 0 if it is not queued."""
        if job_id not in self._where:
            return 0
        for i, taken in enumerate(self._taken(running)):
            if taken == job_id:
                return i
        return 0

    def _taken(self, running: Mapping[str, int]) -> Iterator[str]:
        counts = dict(running)
        for priority in sorted(self._buckets, reverse=True):
            users = self._buckets[priority]
            heap = [(counts.get(u, 0), ids[0], u, 0) for u, ids in users.items()]
            heapq.heapify(heap)
            while heap:
                count, job_id, u, i = heapq.heappop(heap)
                yield job_id
                counts[u] = count + 1
                if i + 1 < len(users[u]):
                    heapq.heappush(heap, (count + 1, users[u][i + 1], u, i + 1))
