"""Jobs as pages fetched on demand: the jobs view's row source.

The view holds at most ``KEEP`` pages of ``PAGE`` rows, whatever the number of jobs on the
server (a window, not the history): a row not held is drawn as a placeholder while its page is
fetched (``GET /jobs?offset=&limit=``), and the pages least recently drawn are dropped. A job
that changes state is patched where it is held (the event carries its new state), so the list
shows it at once; a change that may move rows (a new job, a filter on state) refetches the pages
on screen and the total, once per burst of events.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import httpx

from fleet.api.schemas import JobOut, JobPage
from fleet.errors import ApiError, FleetError

from .render import clean, clock, state, styled, took
from .table import Column, Row

PAGE = 100
KEEP = 12  # pages held: 1,200 rows at most

JOB_COLUMNS = [Column("ID", 15), Column("NAME", 0), Column("USER", 10), Column("KIND", 9), Column("STATE", 10),
               Column("QUEUE", 18), Column("HOST", 14), Column("TRY", 3), Column("CREATED", 11), Column("TOOK", 7)]
SORTS = ("created", "name", "state", "user", "host", "priority", "pool", "kind")
FILTER_KEYS = ("state", "user", "pool", "kind", "matrix")


@dataclass(frozen=True)
class JobFilter:
    """What the jobs view lists: a text search and field filters (``state:running``)."""

    text: str = ""
    state: tuple[str, ...] = ()
    user: str | None = None
    pool: str | None = None
    kind: str | None = None
    matrix: str | None = None
    sort: str = "-created"

    @classmethod
    def parse(cls, line: str, sort: str = "-created") -> JobFilter:
        """``resnet state:running,failed user:alice`` -> text ``resnet`` and the fields. An
        unknown field is an error naming it."""
        words, fields = [], {}
        for word in line.split():
            key, sep, value = word.partition(":")
            if sep and key in FILTER_KEYS and value:
                fields[key] = value
            elif sep and key.isalpha() and key not in FILTER_KEYS:
                raise ValueError(f"unknown filter {key!r} (filters: {', '.join(FILTER_KEYS)}; other words "
                                 "are searched in names, users and hosts)")
            else:
                words.append(word)
        states = tuple(s.strip().upper() for s in fields.pop("state", "").split(",") if s.strip())
        return cls(text=" ".join(words), state=states, sort=sort, **fields)

    def describe(self) -> str:
        parts = [self.text] if self.text else []
        if self.state:
            parts.append("state:" + ",".join(s.lower() for s in self.state))
        parts += [f"{k}:{getattr(self, k)}" for k in ("user", "pool", "kind", "matrix") if getattr(self, k)]
        return " ".join(parts)

    def params(self) -> dict[str, Any]:
        return {"states": list(self.state) or None, "user": self.user, "pool": self.pool, "kind": self.kind,
                "matrix": self.matrix, "search": self.text or None, "sort": self.sort}

    def may_hold(self, job_state: str) -> bool:
        return not self.state or job_state in self.state


def job_row(j: JobOut) -> Row:
    return [j.id, clean(j.name), clean(j.user), j.kind.value, state(j.state.value),
            clean(j.queue), styled(j.host or "-", None), str(j.attempts), clock(j.created_ts),
            took(j.started_ts, j.ended_ts)]


Fetch = Callable[[int, int, bool, JobFilter], Awaitable[JobPage]]


class JobPages:
    """The ``RowSource`` of the jobs view (see the module's docstring)."""

    def __init__(self, fetch: Fetch, spawn: Callable[[Coroutine[Any, Any, None]], None],
                 loaded: Callable[[], None], failed: Callable[[Exception], None]) -> None:
        self.fetch, self.spawn, self.loaded, self.failed = fetch, spawn, loaded, failed
        self.filter = JobFilter()
        self.total = 0
        self.known = False  # the total was read at least once
        self.pages: OrderedDict[int, list[JobOut]] = OrderedDict()
        self.where: dict[str, tuple[int, int]] = {}  # job id -> (page, index in page)
        self.pending: set[int] = set()
        self.generation = 0
        self.fetches = 0

    def __len__(self) -> int:
        return self.total

    def job(self, index: int) -> JobOut | None:
        rows = self.pages.get(index // PAGE)
        if rows is None or index % PAGE >= len(rows):
            return None
        return rows[index % PAGE]

    def row(self, index: int) -> Row | None:
        page = index // PAGE
        rows = self.pages.get(page)
        if rows is None:
            self.request(page)
            return None
        self.pages.move_to_end(page)
        return job_row(rows[index % PAGE]) if index % PAGE < len(rows) else None

    # ------------------------------------------------------------------ fetching

    def request(self, page: int, *, with_total: bool = False) -> None:
        if page in self.pending:
            return
        self.pending.add(page)
        self.spawn(self._load(page, self.generation, with_total or not self.known))

    async def _load(self, page: int, generation: int, with_total: bool) -> None:
        try:
            self.fetches += 1
            got = await self.fetch(page * PAGE, PAGE, with_total, self.filter)
        except (httpx.HTTPError, ApiError, FleetError) as exc:  # the view says so; rows stay placeholders
            if generation == self.generation:
                self.pending.discard(page)
            self.failed(exc)
            return
        if generation != self.generation:
            return  # a newer filter or refresh asked again
        self.pending.discard(page)
        if got.total is not None:
            self.total, self.known = got.total, True
        old = self.pages.pop(page, None)
        for job in old or []:
            self.where.pop(job.id, None)
        self.pages[page] = got.items
        for i, job in enumerate(got.items):
            self.where[job.id] = (page, i)
        while len(self.pages) > KEEP:
            _, dropped = self.pages.popitem(last=False)
            for job in dropped:
                self.where.pop(job.id, None)
        self.loaded()

    def set_filter(self, new: JobFilter) -> None:
        self.filter = new
        self.generation += 1
        self.pages.clear()
        self.where.clear()
        self.pending.clear()
        self.known = False
        self.request(0, with_total=True)

    def refresh(self, visible: range) -> None:
        """Fetch again the pages on screen and the total (after events that move rows); what is
        held stays drawn until the new pages come."""
        self.generation += 1
        self.pending.clear()
        pages = sorted({i // PAGE for i in visible} or {0})
        for page in list(self.pages):
            if page not in pages:
                for job in self.pages.pop(page):
                    self.where.pop(job.id, None)
        for n, page in enumerate(pages):
            self.request(page, with_total=n == 0)

    # ------------------------------------------------------------------ events

    def patch(self, event: dict[str, Any]) -> int | None:
        """A ``job.state`` event: the job's row updated where it is held; its index, or None."""
        at = self.where.get(str(event.get("job")))
        if at is None:
            return None
        page, i = at
        old = self.pages[page][i]
        fields: dict[str, Any] = {"state": event.get("state", old.state)}
        if "host" in event:
            fields["host"] = event["host"]
        if "reason" in event:
            fields["reason"] = event["reason"]
        if event.get("state") in ("STARTING", "RUNNING") and old.started_ts is None:
            fields["started_ts"] = event.get("at")
        if event.get("state") in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"):
            fields["ended_ts"] = event.get("at")
        try:
            self.pages[page][i] = JobOut.model_validate({**old.model_dump(), **fields})
        except ValueError:  # an event we cannot read: the row stays as it was
            return None
        return page * PAGE + i
