"""The views: overview, hosts, queue, jobs, job, results, matrices. Each reads the server
through the app's client (``FleetApp.api``), never blocks the UI (fetches run as workers), and
takes the events the app hands it (``on_event``)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import statistics
import time
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Log, Static

from fleet.api.schemas import HostOut, JobDetail, JobOut, QueueOut, SeriesOut
from fleet.client import calls
from fleet.errors import ApiError, FleetError

from .pages import JOB_COLUMNS, SORTS, JobFilter, JobPages, job_row
from .render import (
    HOST_STATE_STYLE,
    VERDICT_STYLE,
    clean,
    clock,
    health,
    number,
    sparkline,
    state,
    styled,
    took,
)
from .table import Column, ListSource, PromptLine, Row, VirtualTable

if TYPE_CHECKING:
    from .app import FleetApp

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"}


class View(Vertical):
    """One view of the app. ``load`` fetches what it shows (run as a worker by the app)."""

    name_: ClassVar[str] = ""
    title: ClassVar[str] = ""

    @property
    def fleet(self) -> FleetApp:
        return self.app  # type: ignore[return-value]

    async def load(self) -> None:
        return None

    def fleet_event(self, event: dict[str, Any]) -> None:
        return None

    def reload(self, delay: float = 0.05) -> None:
        """Load again soon (once for a burst of events)."""
        self.fleet.debounce(f"view:{self.name_}", delay, self.load)

    def focus_main(self) -> None:
        tables = self.query(VirtualTable)
        if tables:
            tables.first().focus()


# ---------------------------------------------------------------------- overview

class Overview(View):
    name_, title = "overview", "Overview"

    def compose(self) -> ComposeResult:
        yield Static(id="verdict", classes="verdict")
        yield Static("Pools", classes="caption")
        self.pools = VirtualTable([Column("POOL", 14), Column("HOSTS", 6), Column("SLOTS", 9),
                                   Column("USE", 22), Column("HEALTH", 0)], ListSource(), id="pools")
        yield self.pools
        yield Static("Newest jobs (live)", classes="caption")
        self.newest = VirtualTable(JOB_COLUMNS, ListSource(), id="newest")
        yield self.newest

    async def load(self) -> None:
        page = await self.fleet.api(calls.jobs(limit=30))
        if page is None:
            return
        self.jobs: list[JobOut] = page.items
        self.newest.set_source(ListSource([job_row(j) for j in self.jobs]))
        self.draw_lab()

    def draw_lab(self) -> None:
        """The pools (``GET /pools``: small, so the first screen does not wait for every host)
        and the verdict: broken, busy or idle."""
        if not self.fleet.lab_loaded:
            self.query_one("#verdict", Static).update(Text("loading the lab…", style="dim"))
            return
        pools, queues = self.fleet.pools, self.fleet.queues
        rows: list[Row] = []
        for pool in pools:
            bar = int(20 * pool.used_slots / pool.slots) if pool.slots else 0
            rows.append([clean(pool.name), str(pool.hosts), f"{pool.used_slots}/{pool.slots}",
                         Text("█" * bar, style="cyan") + Text("░" * (20 - bar), style="dim"),
                         Text(" ").join(health(k) + Text(f" {n}") for k, n in sorted(pool.health.items()))])
        self.pools.set_source(ListSource(rows))
        hosts = self.fleet.hosts
        waiting = sum(q.waiting for q in queues)
        slots = sum(p.slots for p in pools)
        used = sum(p.used_slots for p in pools)
        if self.fleet.hosts_version:
            broken = [h.name for h in hosts if h.state == "offline" or h.health == "bad"]
            count = len(hosts)
        else:  # the hosts are still on their way: the pools' counts say as much
            broken = [f"{n} in {p.name}" for p in pools for n in [p.states.get("offline", 0)] if n]
            count = sum(p.hosts for p in pools)
        parts: list[Text] = []
        if broken:
            parts.append(Text(f"BROKEN: {len(broken)} host{'s' * (len(broken) != 1)} offline or bad "
                              f"({', '.join(clean(b) for b in broken[:5])}{'…' if len(broken) > 5 else ''})",
                              style="bold red"))
        if used or waiting:
            parts.append(Text(f"BUSY: {used}/{slots} slots in use, {waiting} job{'s' * (waiting != 1)} "
                              f"waiting in {sum(1 for q in queues if q.waiting)} queue(s)", style="bold cyan"))
        if not parts:
            parts.append(Text(f"IDLE: {count} host{'s' * (count != 1)}, {slots} slot{'s' * (slots != 1)} free, "
                              "nothing waiting", style="bold green"))
        self.query_one("#verdict", Static).update(Text("   ").join(parts))

    def fleet_event(self, event: dict[str, Any]) -> None:
        if event["type"] == "job.state":
            for i, j in enumerate(getattr(self, "jobs", [])):
                if j.id == event.get("job"):
                    self.jobs[i] = JobOut.model_validate({**j.model_dump(), "state": event.get("state", j.state),
                                                          "host": event.get("host", j.host)})
                    source = self.newest.source
                    assert isinstance(source, ListSource)
                    source.rows[i] = job_row(self.jobs[i])
                    self.newest.refresh_row(i)
                    return
            self.reload(0.05)  # a new job: at the top


# ---------------------------------------------------------------------- hosts

HOST_COLUMNS = [Column("NAME", 16), Column("POOL", 10), Column("CLASS", 20), Column("ARCH", 7), Column("HEALTH", 11),
                Column("STATE", 9), Column("SLOTS", 5), Column("RUNNING", 15), Column("DRIVER", 9),
                Column("JETPACK", 7), Column("TRT", 8), Column("HAILORT", 7), Column("LAST ERROR", 0)]


class Hosts(View):
    name_, title = "hosts", "Hosts"
    BINDINGS = [
        Binding("d", "host('drain')", "drain"),
        Binding("u", "host('undrain')", "undrain"),
        Binding("m", "host('maintenance')", "maintenance"),
        Binding("C", "host('check')", "check"),
    ]

    def compose(self) -> ComposeResult:
        self.table = VirtualTable(HOST_COLUMNS, ListSource(), id="hosts-table")
        self.names: list[str | None] = []
        yield self.table

    drawn = -1  # the version of the hosts drawn
    built: dict[str, tuple[HostOut, Row]] = {}  # host name -> (the host drawn, its row)

    async def load(self) -> None:
        self.draw()

    def draw(self) -> None:
        if self.drawn == self.fleet.hosts_version:
            return  # a thousand rows are not built again for nothing
        self.drawn = self.fleet.hosts_version
        by_pool: dict[str, list[HostOut]] = defaultdict(list)
        for h in self.fleet.hosts:
            by_pool[h.pools[0] if h.pools else "-"].append(h)
        rows: list[Row] = []
        names: list[str | None] = []
        built: dict[str, tuple[HostOut, Row]] = {}
        for pool, hs in sorted(by_pool.items()):
            slots, used = sum(h.slots for h in hs), sum(h.used_slots for h in hs)
            counts = Counter(h.health for h in hs)
            summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            rows.append([Text(f"▾ {clean(pool)}", style="bold"),
                         Text(f"{len(hs)} host{'s' * (len(hs) != 1)}", style="bold"), "", "",
                         Text(summary, style="bold"), "", Text(f"{used}/{slots}", style="bold")])
            names.append(None)
            for h in sorted(hs, key=lambda h: h.name):
                seen = self.built.get(h.name)
                row = seen[1] if seen is not None and seen[0] is h else host_row(h)  # unchanged: as drawn
                built[h.name] = (h, row)
                rows.append(row)
                names.append(h.name)
        self.names, self.built = names, built
        cursor = self.table.cursor
        self.table.set_source(ListSource(rows))
        self.table.move_to(cursor)

    def selected(self) -> str | None:
        i = self.table.cursor
        return self.names[i] if 0 <= i < len(self.names) else None

    async def action_host(self, action: str) -> None:
        name = self.selected()
        if name is None:
            self.fleet.notify("select a host (not a pool row)", severity="warning")
            return
        if not self.fleet.may_act(f"{action} {name}"):
            return
        if action == "drain":
            self.fleet.confirm_then(f"Drain {name}? It finishes what runs and takes no new jobs.",
                                    lambda: self._act(name, action))
        else:
            await self._act(name, action)

    async def _act(self, name: str, action: str) -> None:
        if action == "check":
            checked = await self.fleet.api(calls.check_host(name), doing=f"check {name}")
            if checked is not None:
                self.fleet.notify(f"{name}: {'ok' if checked.ok else 'FAILED'} {clean(checked.message or '')}",
                                  severity="information" if checked.ok else "error")
        else:
            params: dict[str, Any] = {}
            if action == "maintenance":
                host = next((h for h in self.fleet.hosts if h.name == name), None)
                params["on"] = not (host is not None and host.health == "maintenance")
            got = await self.fleet.api(calls.host_action(name, action, **params), doing=f"{action} {name}")
            if got is not None:
                self.fleet.notify(f"{name}: {got.state}, health {got.health}")
        await self.fleet.load_lab()


def host_row(h: HostOut) -> Row:
    f = h.facts
    maintenance = h.health == "maintenance"
    return [clean(h.name), clean(",".join(h.pools)), clean(h.device_class), clean(h.arch), health(h.health),
            Text(h.state + (" M" if maintenance else ""), style=HOST_STATE_STYLE.get(h.state, "")),
            f"{h.used_slots}/{h.slots}", clean(", ".join(h.running) or "-"),
            clean(f.get("driver") or "-"), clean(f.get("jetpack") or "-"),
            clean(f.get("tensorrt") or "-"), clean(f.get("hailort") or "-"),
            styled(h.health_message or ("; ".join(h.mismatches) or ""), "red" if h.health == "bad" else "dim")]


# ---------------------------------------------------------------------- queue

QUEUE_COLUMNS = [Column("#", 5), Column("ID", 15), Column("NAME", 0), Column("USER", 10), Column("PRIO", 5),
                 Column("STATE", 10), Column("HOST", 14), Column("AGE", 7)]


class Queue(View):
    name_, title = "queue", "Queue"

    def compose(self) -> ComposeResult:
        self.table = VirtualTable(QUEUE_COLUMNS, ListSource(), id="queue-table")
        self.ids: list[str | None] = []
        yield self.table

    async def load(self) -> None:
        self.draw(self.fleet.queues)

    def draw(self, queues: list[QueueOut]) -> None:
        rows: list[Row] = []
        ids: list[str | None] = []
        now = time.time()
        for q in queues:
            why = q.why.summary if q.why is not None else "nothing waiting"
            rows.append([Text("▾", style="bold"), Text("queue", style="bold"),
                         Text(f"{clean(q.key)}: {q.waiting} waiting, {q.running} running — {clean(why)}",
                              style="bold yellow" if q.waiting else "bold")])
            ids.append(None)
            for j in q.jobs:
                rows.append([str(j.position or ""), j.id, clean(j.name), clean(j.user), str(j.priority),
                             state(j.state.value), clean(j.host or "-"), took(j.created_ts, now)])
                ids.append(j.id)
            hidden = q.waiting + q.running - len(q.jobs)
            if hidden > 0:
                rows.append(["", "", Text(f"+ {hidden} other job{'s' * (hidden != 1)} (other users')", style="dim")])
                ids.append(None)
        if not queues:
            rows.append(["", "", Text("nothing waiting, nothing running", style="dim")])
            ids.append(None)
        self.ids = ids
        self.table.set_source(ListSource(rows))

    def on_virtual_table_selected(self, message: VirtualTable.Selected) -> None:
        job_id = self.ids[message.index] if message.index < len(self.ids) else None
        if job_id:
            self.fleet.open_job(job_id)


# ---------------------------------------------------------------------- jobs

class Jobs(View):
    name_, title = "jobs", "Jobs"
    BINDINGS = [
        Binding("slash", "filter", "filter"),
        Binding("o", "sort", "sort"),
        Binding("O", "reverse", "reverse"),
        Binding("c", "cancel", "cancel"),
        Binding("R", "resubmit", "resubmit"),
    ]

    def compose(self) -> ComposeResult:
        self.prompt = PromptLine(id="jobs-status", classes="caption")
        yield self.prompt
        self.pages = JobPages(self._fetch, self.fleet.spawn, self._loaded, self.fleet.lost)
        self.table = VirtualTable(JOB_COLUMNS, self.pages, id="jobs-table")
        yield self.table

    async def _fetch(self, offset: int, limit: int, total: bool, f: JobFilter) -> Any:
        return await self.fleet.client.call(calls.jobs(offset=offset, limit=limit, total=total, **f.params()))

    def _loaded(self) -> None:
        self.fleet.reached()
        self.table.reload()
        self.status()

    def status(self) -> None:
        f = self.pages.filter
        sort = f.sort.lstrip("-") + (" ↓" if f.sort.startswith("-") else " ↑")
        self.prompt.show_idle(
            Text.assemble((f"{self.pages.total:,} jobs", "bold"), f"   sort: {sort}   ",
                          ("filter: " + clean(f.describe()) if f.describe() else "no filter  (/ to filter)", "dim")))

    async def load(self) -> None:
        if not self.pages.known and not self.pages.pending:
            self.pages.set_filter(self.pages.filter)

    def show(self, f: JobFilter) -> None:
        self.pages.set_filter(f)
        self.table.move_to(0)
        self.table.scroll_to(y=0, animate=False, immediate=True)
        self.status()

    def rows_on_screen(self) -> range:
        return range(self.table.top, self.table.top + self.table.page_size + 1)

    def fleet_event(self, event: dict[str, Any]) -> None:
        if event["type"] != "job.state":
            return
        index = self.pages.patch(event)
        if index is not None:
            self.table.refresh_row(index)
            if self.pages.filter.may_hold(str(event.get("state"))) and not self.pages.filter.sort.lstrip("-") == "state":
                return
        elif event.get("state") != "PENDING" and not self.pages.filter.state:
            return  # a job not on screen moved on: nothing here changes place
        self.fleet.debounce("jobs:refresh", 0.05, self._refresh)

    async def _refresh(self) -> None:
        self.pages.refresh(self.rows_on_screen())

    def action_filter(self) -> None:
        self.prompt.open("filter (state: user: pool: kind: matrix: and words) /", self.pages.filter.describe())

    def on_prompt_line_submitted(self, message: PromptLine.Submitted) -> None:
        message.stop()
        try:
            f = JobFilter.parse(message.value, self.pages.filter.sort)
        except ValueError as exc:
            self.fleet.notify(str(exc), severity="error")
            self.prompt.open("filter /", message.value)
            return
        self.show(f)
        self.table.focus()

    def on_prompt_line_cancelled(self, message: PromptLine.Cancelled) -> None:
        message.stop()
        self.status()
        self.table.focus()

    def action_sort(self) -> None:
        f = self.pages.filter
        field = f.sort.lstrip("-")
        nxt = SORTS[(SORTS.index(field) + 1) % len(SORTS)]
        self.show(dataclasses.replace(f, sort=("-" if nxt in ("created", "priority") else "") + nxt))

    def action_reverse(self) -> None:
        f = self.pages.filter
        sort = f.sort[1:] if f.sort.startswith("-") else "-" + f.sort
        self.show(dataclasses.replace(f, sort=sort))

    def selected(self) -> JobOut | None:
        return self.pages.job(self.table.cursor)

    def on_virtual_table_selected(self, message: VirtualTable.Selected) -> None:
        job = self.pages.job(message.index)
        if job is not None:
            self.fleet.open_job(job.id)

    async def action_cancel(self) -> None:
        job = self.selected()
        if job is not None:
            await self.fleet.cancel_job(job.id, job.name)

    async def action_resubmit(self) -> None:
        job = self.selected()
        if job is not None:
            await self.fleet.resubmit(job.id)


# ---------------------------------------------------------------------- one job

class JobView(View):
    name_, title = "job", "Job"
    BINDINGS = [
        Binding("c", "cancel", "cancel"),
        Binding("R", "resubmit", "resubmit"),
        Binding("w", "why", "why"),
        Binding("f", "follow", "follow log"),
        Binding("slash", "search", "search log"),
        Binding("n", "next_match(1)", "next match"),
        Binding("N", "next_match(-1)", "previous match"),
        Binding("G,end", "log_end", "end of log"),
    ]

    job_id: str | None = None

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.detail: JobDetail | None = None
        self.lines: list[str] = []
        self.matches: list[int] = []
        self.match = -1
        self.following = True

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="job-top"):
            yield Static(id="job-detail")
        self.prompt = PromptLine(id="log-status", classes="caption")
        yield self.prompt
        self.log_widget = Log(id="job-log", max_lines=20_000, auto_scroll=True)
        yield self.log_widget

    def show(self, job_id: str) -> None:
        self.job_id = job_id
        self.detail = None
        self.lines = []
        self.matches = []
        self.match = -1
        self.following = True
        self.log_widget.clear()
        self.query_one("#job-detail", Static).update(Text(f"loading {job_id}…", style="dim"))
        self.fleet.run_worker(self.load(), group="job", exclusive=True)
        self.fleet.run_worker(self._stream(job_id), group="job-log", exclusive=True)

    def focus_main(self) -> None:
        self.log_widget.focus()

    async def load(self) -> None:
        if self.job_id is None:
            return
        detail = await self.fleet.api(calls.job(self.job_id))
        if detail is None:
            return
        self.detail = detail
        self.query_one("#job-detail", Static).update(render_detail(detail))

    async def _stream(self, job_id: str) -> None:
        """The log, followed while the job runs (resumed from where it was after a drop)."""
        partial = ""
        offset = 0
        while self.job_id == job_id:
            try:
                params: dict[str, Any] = {"follow": "true", "offset": offset}
                async with self.fleet.client.http.stream(
                        "GET", f"/jobs/{calls.q(job_id)}/logs", params=params,
                        timeout=calls.stream_timeout(self.fleet.client.http.timeout)) as resp:
                    if resp.status_code >= 400:
                        await resp.aread()
                        calls.check(resp)
                    async for chunk in resp.aiter_bytes():
                        if self.job_id != job_id:
                            return
                        offset += len(chunk)
                        text = partial + chunk.decode("utf-8", "replace")
                        *done, partial = text.split("\n")
                        self._add([clean(line) for line in done])
                if partial:
                    self._add([clean(partial)])
                    partial = ""
                self.log_status("end of log" if self.detail is None or self.detail.state in TERMINAL
                                else "log ended")
                return
            except (ApiError, FleetError) as exc:  # the job is not there (or not ours)
                self.log_status(f"log: {clean(exc)}")
                return
            except httpx.HTTPError as exc:  # the server went away: try again from where we were
                self.fleet.lost(exc)
                self.log_status("log: server unreachable, resuming…")
                await asyncio.sleep(1.0)

    def _add(self, lines: list[str]) -> None:
        if not lines:
            return
        self.lines.extend(lines)
        if len(self.lines) > 20_000:
            del self.lines[: len(self.lines) - 20_000]
        self.log_widget.write_lines(lines)
        if self.following:
            self.log_widget.scroll_end(animate=False)
        self.log_status()

    def log_status(self, note: str = "") -> None:
        text = f"log: {len(self.lines):,} lines" + ("  following" if self.following else "  (f: follow)")
        if self.matches:
            text += f"   match {self.match + 1}/{len(self.matches)}"
        self.prompt.show_idle(text + (f"   {note}" if note else ""))

    def fleet_event(self, event: dict[str, Any]) -> None:
        if self.job_id is not None and event.get("job") == self.job_id:
            self.reload(0.03)

    async def action_cancel(self) -> None:
        if self.job_id:
            await self.fleet.cancel_job(self.job_id, self.detail.name if self.detail else self.job_id)

    async def action_resubmit(self) -> None:
        if self.job_id:
            await self.fleet.resubmit(self.job_id)

    async def action_why(self) -> None:
        if self.job_id:
            await self.fleet.show_why(self.job_id)

    def action_follow(self) -> None:
        self.following = not self.following
        self.log_widget.auto_scroll = self.following
        if self.following:
            self.log_widget.scroll_end(animate=False)
        self.log_status()

    def action_log_end(self) -> None:
        self.log_widget.scroll_end(animate=False)

    def action_search(self) -> None:
        self.prompt.open("search the log /")

    def on_prompt_line_submitted(self, message: PromptLine.Submitted) -> None:
        message.stop()
        needle = message.value.lower()
        offset = max(0, self.log_widget.line_count - len(self.lines))
        self.matches = [i + offset for i, line in enumerate(self.lines) if needle and needle in line.lower()]
        self.match = -1
        self.log_widget.focus()
        if not self.matches:
            self.fleet.notify(f"not in the log: {clean(message.value)}", severity="warning")
            self.log_status()
            return
        self.action_next_match(1)

    def on_prompt_line_cancelled(self, message: PromptLine.Cancelled) -> None:
        message.stop()
        self.log_status()
        self.log_widget.focus()

    def action_next_match(self, step: int) -> None:
        if not self.matches:
            return
        self.match = (self.match + step) % len(self.matches)
        self.following = False
        self.log_widget.auto_scroll = False
        self.log_widget.scroll_to(y=max(0, self.matches[self.match] - 2), animate=False)
        self.log_status()


def render_detail(d: JobDetail) -> Group:
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("job", Text.assemble((d.id, "bold"), "  ", clean(d.name), "  ", state(d.state.value)))
    head.add_row("user / kind", f"{clean(d.user)} / {d.kind.value} ({clean(d.runner)})")
    head.add_row("queue", f"{clean(d.queue)}  priority {d.priority}" + (f"  pool {clean(d.pool)}" if d.pool else ""))
    head.add_row("times", f"created {clock(d.created_ts)}  started {clock(d.started_ts)}  took "
                          f"{took(d.started_ts, d.ended_ts)}")
    if d.reason or d.message:
        head.add_row("reason", styled(f"{d.reason.value if d.reason else ''} {d.message or ''}".strip(),
                                      "red" if d.state.value in ("FAILED", "TIMED_OUT") else None))
    run = d.spec.get("run")
    if isinstance(run, str):
        head.add_row("run", clean(run if len(run) < 300 else run[:300] + "…"))
    parts: list[Any] = [head]
    if d.attempt_list:
        t = Table(title="attempts", title_justify="left", expand=False, box=None, padding=(0, 1))
        for c in ("#", "host", "backend", "state", "reason", "exit", "log", "message"):
            t.add_column(c, style="bold" if c == "#" else None)
        for a in d.attempt_list:
            t.add_row(str(a.number), clean(a.host), clean(a.backend), state(a.state.value),
                      a.reason.value if a.reason else "-", "-" if a.exit_code is None else str(a.exit_code),
                      f"{a.log_bytes:,} B", clean(a.message or ""))
        parts.append(t)
    if len(d.chain_jobs) > 1:
        t = Table(title="chain", title_justify="left", box=None, padding=(0, 1))
        for title in ("step", "job", "state", "host"):
            t.add_column(title)
        for step in d.chain_jobs:
            t.add_row(clean(step.step or step.name), Text(step.id, style="bold" if step.id == d.id else ""),
                      state(step.state.value), clean(step.host or "-"))
        parts.append(t)
    if d.artifacts:
        t = Table(title="artifacts", title_justify="left", box=None, padding=(0, 1))
        for c in ("id", "name", "kind", "size"):
            t.add_column(c)
        for art in d.artifacts:
            t.add_row(art.id, clean(art.name), clean(art.kind), f"{art.size:,} B")
        parts.append(t)
    if d.result:
        parts.append(render_result(d.result))
    return Group(*parts)


def render_result(record: dict[str, Any]) -> Table:
    valid = record.get("status", "ok") == "ok" and not record.get("invalid_reasons")
    title = Text.assemble("result  ", ("valid", "green") if valid else ("INVALID", "bold red"))
    if not valid:
        title.append("  " + clean("; ".join(str(r) for r in record.get("invalid_reasons") or [])), style="red")
    t = Table(title=title, title_justify="left", box=None, padding=(0, 1))
    for c in ("metric", "value", "unit", "spread"):
        t.add_column(c)
    for name, value in sorted((record.get("metrics") or {}).items()):
        if isinstance(value, dict):
            center = next((value[k] for k in ("median", "p50", "mean", "avg") if isinstance(value.get(k), (int, float))), None)
            spread = ", ".join(f"{k} {number(value[k])}" for k in ("p90", "p99", "min", "max", "std")
                               if isinstance(value.get(k), (int, float)))
            t.add_row(clean(name), number(center), clean(value.get("unit") or ""), spread)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            t.add_row(clean(name), number(float(value)), "", "")
    tool = record.get("tool") or {}
    env = record.get("environment") or {}
    if isinstance(tool, dict) and tool:
        t.add_row("tool", clean(f"{tool.get('name', '')} {tool.get('version', '')}"), "", "")
    if isinstance(env, dict):
        for key in ("driver", "jetpack", "hailort", "power_mode"):
            if env.get(key):
                t.add_row(key, clean(env[key]), "", "")
    return t


# ---------------------------------------------------------------------- results

class Results(View):
    name_, title = "results", "Results"

    def compose(self) -> ComposeResult:
        yield Static("Series: the latest results of each comparison key (a regression in red)", classes="caption")
        self.table = VirtualTable([Column("SERIES", 0), Column("METRIC", 16), Column("LAST", 9), Column("Δ MEDIAN", 8),
                                   Column("TREND", 30), Column("N", 4), Column("", 11)], ListSource(), id="series")
        self.series: list[SeriesOut] = []
        yield self.table

    async def load(self) -> None:
        got = await self.fleet.api(calls.series(limit=200))
        if got is None:
            return
        self.series = got
        rows: list[Row] = []
        for s in got:
            values = [p.value for p in s.points if p.valid]
            last = values[-1] if values else None
            change = ""
            if len(values) >= 2:
                before = statistics.median(values[:-1])  # the last value against the series' median
                change = f"{100 * (values[-1] - before) / before:+.1f}%" if before else ""
            flag = Text("REGRESSION", style="bold white on red") if s.regression else Text("")
            style = "red" if s.regression else None
            rows.append([styled(s.label, style), clean(s.metric + (f" ({s.unit})" if s.unit else "")),
                         number(last), change, Text(sparkline(values, 30), style="red" if s.regression else "cyan"),
                         str(len(s.points)), flag])
        self.table.set_source(ListSource(rows))

    def on_virtual_table_selected(self, message: VirtualTable.Selected) -> None:
        if 0 <= message.index < len(self.series) and self.series[message.index].points:
            self.fleet.open_job(self.series[message.index].points[-1].job_id)


# ---------------------------------------------------------------------- matrices

class Matrices(View):
    name_, title = "matrices", "Matrices"

    def compose(self) -> ComposeResult:
        self.table = VirtualTable([Column("RUN", 15), Column("NAME", 0), Column("USER", 10), Column("STATE", 10),
                                   Column("DONE", 5), Column("FAILED", 6), Column("RUNNING", 7), Column("WAITING", 7),
                                   Column("CREATED", 20)], ListSource(), id="runs")
        self.runs: list[dict[str, Any]] = []
        yield self.table
        with VerticalScroll(id="grid-box"):
            yield Static(id="grid")

    async def load(self) -> None:
        got = await self.fleet.api(calls.matrix_runs(limit=100))
        if got is None:
            return
        self.runs = got
        rows: list[Row] = []
        for r in got:
            p = r.get("progress") or {}
            rows.append([r["id"], clean(r["name"]), clean(r["user"]),
                         Text(r["state"], style={"RUNNING": "cyan", "DONE": "green", "ERROR": "red"}.get(r["state"], "")),
                         str(p.get("done", 0)), str(p.get("failed", 0)), str(p.get("running", 0)),
                         str(p.get("waiting", 0)), clean(r.get("created_at") or "")[:19]])
        self.table.set_source(ListSource(rows))
        if got:
            await self.draw_grid(got[min(self.table.cursor, len(got) - 1)]["id"])
        else:
            self.query_one("#grid", Static).update(Text("no matrix runs yet (fleet matrix run FILE)", style="dim"))

    def on_virtual_table_highlighted(self, message: VirtualTable.Highlighted) -> None:
        if 0 <= message.index < len(self.runs):
            run_id = self.runs[message.index]["id"]
            self.fleet.run_worker(self.draw_grid(run_id), group="grid", exclusive=True)

    async def draw_grid(self, run_id: str) -> None:
        status = await self.fleet.api(calls.matrix_status(run_id))
        if status is None:
            return
        jobs = await self.fleet.api(calls.jobs(matrix=run_id, limit=1000))
        queue_of = {j.id: j.queue for j in (jobs.items if jobs else [])}
        verdicts: dict[int, str] = {}
        if status.get("state") in ("DONE", "REGRESSED", "ERROR") or status["progress"].get("waiting", 0) == 0 and \
                status["progress"].get("running", 0) == 0:
            try:
                text: str = await self.fleet.client.call(calls.matrix_report(run_id))
                report = json.loads(text)
                verdicts = {p["index"]: p.get("verdict", "") for p in report.get("points", [])}
            except (ApiError, FleetError, httpx.HTTPError, ValueError):  # not judged: states are shown
                verdicts = {}
        self.query_one("#grid", Static).update(render_grid(status, queue_of, verdicts))


def render_grid(status: dict[str, Any], queue_of: dict[str, str], verdicts: dict[int, str]) -> Table:
    """Points (their axis values but the device class) × device classes, each cell coloured by
    its verdict, or by its state while the run is not judged."""
    cells: dict[tuple[str, str], tuple[str, int]] = {}
    classes: list[str] = []
    labels: list[str] = []
    for p in status.get("points", []):
        device = next((queue_of[j] for j in p.get("jobs", []) if j in queue_of), "?")
        device = device.split("~")[0]
        label = " ".join(f"{k}={v}" for k, v in sorted((p.get("values") or {}).items())
                         if str(v) not in device.split("/") and k not in ("device_class", "device", "pool"))
        label = clean(label or f"point {p['index']}")
        if device not in classes:
            classes.append(device)
        if label not in labels:
            labels.append(label)
        cells[(label, device)] = (verdicts.get(p["index"]) or p.get("state", "waiting"), p["index"])
    t = Table(title=Text.assemble((clean(status.get("name", "")), "bold"), f" {status.get('id', '')} ",
                                  status.get("state", "")), title_justify="left", padding=(0, 1))
    t.add_column("point")
    for c in classes:
        t.add_column(clean(c), justify="center")
    for label in labels:
        row: list[Any] = [label]
        for c in classes:
            got = cells.get((label, c))
            if got is None:
                row.append("")
            else:
                verdict, index = got
                row.append(Text(f" {verdict.replace('_', ' ')} ", style=VERDICT_STYLE.get(verdict, "")))
        t.add_row(*row)
    return t


VIEWS: list[type[View]] = [Overview, Hosts, Queue, Jobs, JobView, Results, Matrices]
VIEW_BY_NAME = {v.name_: v for v in VIEWS}
