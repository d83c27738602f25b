"""``fleet tui``: the lab at a glance, live, keys instead of clicks (k9s for a device lab).

The app holds one ``AsyncClient`` (fleet's client library) and nothing else of the server:
it reads the API and follows ``GET /events``. The event stream is followed by one worker for
the app's life; a drop marks the server unreachable, and the client resumes it from the last
event seen (``Last-Event-ID``), so nothing is lost; after a drop every view loads again.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import ContentSwitcher, Static

from fleet.api.schemas import HostOut, PoolOut, QueueOut, UserOut
from fleet.client import calls
from fleet.client.aio import AsyncClient
from fleet.errors import ApiError, FleetError

from .render import clean
from .table import PromptLine
from .views import VIEW_BY_NAME, VIEWS, JobView, View

T = TypeVar("T")

COMMANDS = {v.name_: v.name_ for v in VIEWS} | {"o": "overview", "h": "hosts", "host": "hosts", "q": "queue",
                                                 "j": "jobs", "r": "results", "m": "matrices",
                                                 "matrix": "matrices", "series": "results"}


class Confirm(ModalScreen[bool]):
    """y / n (enter / escape) on a destructive action."""

    BINDINGS = [Binding("y,enter", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(Text(self.question, style="bold"))
            yield Static(Text("y: yes    n / escape: no", style="dim"))

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class Info(ModalScreen[None]):
    """A text to read (help, why); any of escape, q, ? or enter closes it."""

    BINDINGS = [Binding("escape,q,question_mark,enter", "close", "close")]

    def __init__(self, body: Any) -> None:
        super().__init__()
        self.body = body

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Static(self.body)

    def action_close(self) -> None:
        self.dismiss(None)


class FleetApp(App[None]):
    TITLE = "fleet"
    AUTO_FOCUS = "VirtualTable"  # not the hidden prompt: keys go to the view from the start
    CSS = """
    Screen { layout: vertical; }
    #bar { height: 1; background: $primary-background; color: $text; }
    #bar.down { background: $error; }
    #keys { dock: bottom; height: 1; background: $panel; }
    .caption { height: 1; color: $text-muted; text-style: bold; }
    .verdict { height: auto; padding: 0 1; }
    ContentSwitcher { height: 1fr; }
    #pools { height: auto; max-height: 12; }
    #job-top { height: auto; max-height: 50%; }
    #job-log { height: 1fr; }
    #runs { height: auto; max-height: 40%; }
    #grid-box { height: 1fr; }
    Confirm, Info { align: center middle; }
    .dialog { width: 70; height: auto; border: thick $accent; background: $surface; padding: 1 2; }
    .dialog.wide { width: 100; max-height: 90%; }
    """
    BINDINGS = [
        Binding("colon", "command", ":view", key_display=":"),
        Binding("question_mark", "help", "help", key_display="?"),
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),
        Binding("escape,backspace", "go_back", "back", show=False),
        Binding("1", "view('overview')", "overview", show=False),
        Binding("2", "view('hosts')", "hosts", show=False),
        Binding("3", "view('queue')", "queue", show=False),
        Binding("4", "view('jobs')", "jobs", show=False),
        Binding("5", "view('job')", "job", show=False),
        Binding("6", "view('results')", "results", show=False),
        Binding("7", "view('matrices')", "matrices", show=False),
        Binding("S", "submit", "submit file"),
        Binding("ctrl+r", "reload", "reload", show=False),
    ]

    def __init__(self, client: AsyncClient, *, readonly: bool = False, label: str = "",
                 rediscover: Callable[[], str | None] | None = None) -> None:
        """``rediscover``: where the server is now (the local server's file), asked after a
        drop: a local server started again listens on a new port."""
        super().__init__()
        self.client = client
        self.rediscover = rediscover
        self.readonly = readonly
        self.label = label or client.url
        self.user: UserOut | None = None
        self.hosts: list[HostOut] = []
        self.hosts_version = 0  # changes to the hosts read so far (0: not read yet)
        self.host_index: dict[str, int] = {}
        self.pools: list[PoolOut] = []
        self.lab_loaded = False  # pools and queues
        self.queues: list[QueueOut] = []
        self.connected = False
        self.down_since: float | None = None
        self.error: str | None = None
        self.events_seen = 0
        self.last_event: float | None = None
        self.history: list[str] = []
        self.flash: tuple[str, Any, float] | None = None  # the last notification
        self._debounced: dict[str, asyncio.TimerHandle] = {}

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Static(id="bar")
        with ContentSwitcher(initial="overview"):
            yield VIEWS[0](id=VIEWS[0].name_)  # the others are made when first shown
        yield PromptLine(id="keys")

    @property
    def view(self) -> View:
        switcher = self.query_one(ContentSwitcher)
        return self.query_one(f"#{switcher.current}", View)

    async def on_mount(self) -> None:
        self.draw_bar()
        self.draw_keys()
        self.run_worker(self._follow(), group="events", exclusive=True)
        self.run_worker(self._start(), group="start")
        self.set_interval(1.0, self.draw_bar)

    async def _start(self) -> None:
        async def who() -> None:
            self.user = await self.api(calls.whoami())

        await asyncio.gather(who(), self.load_lab(), self.view.load())  # one round trip, not four
        self.set_timer(1.0, self._settle)  # after the first frame is on screen

    def _settle(self) -> None:
        """What exists now (Textual, the views, the first data) lives as long as the app: out of
        the collector's full passes, which otherwise walk all of it (keys paused up to ~120 ms
        at 100,000 jobs and 1,000 hosts; ~35 ms after this)."""
        gc.collect()
        gc.freeze()

    # ------------------------------------------------------------------ the server

    async def api(self, call: calls.Call[Any], doing: str | None = None, heavy: bool = False) -> Any:
        """Send one call; None if it failed (said in the bar or a notification). ``heavy``: the
        answer is read in a thread (a thousand hosts take ~20 ms to validate: not on the loop
        that draws)."""
        try:
            if heavy:
                resp = await self.client.http.request(call.method, call.path, **call.request())
                got = await asyncio.to_thread(call.read, resp)
            else:
                got = await self.client.call(call)
        except httpx.TransportError as exc:
            self.lost(exc)
            return None
        except (ApiError, FleetError) as exc:
            self.notify(f"{doing + ': ' if doing else ''}{clean(exc)}", severity="error", timeout=8)
            return None
        self.reached()
        return got

    def lost(self, exc: BaseException | None) -> None:
        if self.connected or self.down_since is None:
            self.down_since = time.time()
        if self.rediscover is not None:
            url = self.rediscover()
            if url and url.rstrip("/") != self.client.url:
                self.client.url = url.rstrip("/")
                self.client.http.base_url = httpx.URL(self.client.url)
                self.label = self.client.url
        self.connected = False
        self.error = "server unreachable" if exc is None or isinstance(exc, httpx.TransportError) else clean(exc)
        self.draw_bar()

    def reached(self) -> None:
        if not self.connected and self.error is None:
            return
        self.draw_bar()

    async def load_lab(self) -> None:
        """Pools and queues (small, drawn at once), and every host (up to thousands, read off
        the loop and drawn when they come)."""

        async def hosts() -> None:
            got = await self.api(calls.hosts(), heavy=True)
            if got is not None:
                self.hosts = got
                self.host_index = {h.name: i for i, h in enumerate(got)}
                self.hosts_version += 1
                self.draw_lab()

        await asyncio.gather(self._small(), hosts())

    async def _small(self) -> None:
        pools, queues = await asyncio.gather(self.api(calls.pools()), self.api(calls.queues()))
        if pools is not None:
            self.pools = pools
            self.lab_loaded = True
        if queues is not None:
            self.queues = queues
        self.draw_lab()

    async def _one_host(self, name: str) -> None:
        got = await self.api(calls.host(name))
        at = self.host_index.get(name)
        if got is None or at is None:
            return
        self.hosts[at] = got
        self.hosts_version += 1
        self.debounce("draw-lab", 0.03, self._draw_lab_soon)

    async def _draw_lab_soon(self) -> None:
        self.draw_lab()

    def draw_lab(self) -> None:
        try:
            view = self.view  # the others draw what is new when they are shown (action_view)
        except NoMatches:  # the app is closing (a host's news came in its last moments)
            return
        if view.name_ == "overview":
            view.draw_lab()  # type: ignore[attr-defined]
        elif view.name_ == "hosts":
            view.draw()  # type: ignore[attr-defined]
        elif view.name_ == "queue":
            view.draw(self.queues)  # type: ignore[attr-defined]
        self.draw_bar()

    async def _follow(self) -> None:
        """The event stream, for the app's life: each event to the views; a drop said in the
        bar; the stream resumed after the last event seen."""
        while True:
            try:
                async for event in self.client.events(reconnect=1_000_000_000, dropped=self.lost):
                    self.dispatch_event(event)
            except (ApiError, FleetError, httpx.HTTPError, ValueError) as exc:
                self.lost(exc)  # refused (a revoked token), a server that answers 5xx, a bad frame
                await asyncio.sleep(1.0)

    def dispatch_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "ready":
            was_down = not self.connected
            self.connected, self.error, self.down_since = True, None, None
            self.draw_bar()
            if was_down and self.events_seen:  # back after a drop: what changed meanwhile
                self.action_reload()
            return
        self.events_seen += 1
        self.last_event = time.time()
        # What an event changes is read again: the one host it names (not all thousand: ~0.4 MB),
        # at once for its health or drain, within 0.2 s for its slots; the pools and queues
        # (small) at most twice a second.
        host = event.get("host")
        if kind in ("host.health", "host.drain", "attempt.started", "attempt.ended") and isinstance(host, str):
            self.debounce(f"host:{host}", 0.05 if kind.startswith("host.") else 0.2,
                          functools.partial(self._one_host, host))
        if kind in ("host.health", "host.drain", "attempt.started", "attempt.ended", "queue.depth"):
            self.debounce("small", 0.05 if kind.startswith("host.") else 0.5, self._small)
        for view in self.query(View):
            # A view being added is in the DOM before its children are made: it loads afresh
            # once mounted, so an event it missed meanwhile is in what it loads.
            if view.is_mounted and (view.display or view.name_ in ("overview", "jobs")):
                view.fleet_event(event)

    def debounce(self, key: str, delay: float, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` in ``delay`` seconds, once however often it is asked meanwhile."""
        if key in self._debounced:
            return

        def fire() -> None:
            self._debounced.pop(key, None)
            # The function, not a coroutine made here: a worker the app drops as it closes then
            # leaves no coroutine that was never awaited.
            self.run_worker(work, group=key)

        self._debounced[key] = asyncio.get_running_loop().call_later(delay, fire)

    def notify(self, message: str, *, title: str = "", severity: Any = "information",
               timeout: float | None = None, markup: bool = False) -> None:
        """A notification, also kept in the bar until the next one (a toast is gone in seconds;
        the bar says what the last action did for as long as it matters)."""
        self.flash = (message, severity, time.time())
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)
        self.draw_bar()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.run_worker(coro, group="fetch")

    def draw_bar(self) -> None:
        try:
            bar = self.query_one("#bar", Static)
        except NoMatches:  # not composed yet, or closing
            return
        who = f"{self.user.name}{' (admin)' if self.user.admin else ''}" if self.user else "…"
        if self.connected:
            link = Text("● live", style="bold green")
        else:
            since = f" for {time.time() - self.down_since:.0f}s" if self.down_since else ""
            link = Text(f"✕ {self.error or 'connecting'}{since}, reconnecting…", style="bold white")
        bar.set_class(not self.connected and self.down_since is not None, "down")
        try:
            current = self.query_one(ContentSwitcher).current or ""
        except NoMatches:  # closing
            return
        line = Text.assemble((" fleet ", "bold reverse"), f" {clean(self.label)}  {clean(who)}  ", link,
                             f"   [{current}]", "  read-only" if self.readonly else "")
        if self.flash is not None and time.time() - self.flash[2] > 15:
            self.flash = None
        if self.flash is not None:
            message, severity, _ = self.flash
            style = {"error": "bold red", "warning": "yellow"}.get(str(severity), "green")
            line.append("   " + " ".join(message.split()), style=style)
        bar.update(line)

    # ------------------------------------------------------------------ navigation

    def draw_keys(self) -> None:
        """The keys of this view and the global ones, on the bottom line (Textual's Footer
        rebuilds a widget per key on every focus change: tens of ms a view switch)."""
        line = Text()
        bindings = [b for b in type(self.view).BINDINGS if isinstance(b, Binding) and b.show]
        bindings += [b for b in self.BINDINGS if isinstance(b, Binding) and b.show]
        for b in bindings:
            line.append(f" {_key(b)} ", style="bold reverse")
            line.append(f" {b.description}  ")
        line.append(" 1-7 ", style="bold reverse")
        line.append(" views")
        self.query_one("#keys", PromptLine).show_idle(line)

    async def action_view(self, name: str) -> None:
        try:
            switcher = self.query_one(ContentSwitcher)
        except NoMatches:  # the app is closing
            return
        if not switcher.query_children(f"#{name}"):
            await switcher.add_content(VIEW_BY_NAME[name](id=name))
        if switcher.current != name:
            self.history.append(switcher.current or "overview")
            self.history = self.history[-20:]
        switcher.current = name
        view = self.view
        if name != "job":
            self.run_worker(view.load(), group=f"view:{name}", exclusive=True)
        view.focus_main()
        self.draw_bar()
        self.draw_keys()

    async def action_go_back(self) -> None:
        if self.history:
            await self.action_view(self.history.pop())
            if self.history:
                self.history.pop()  # going back is not a new step

    def open_job(self, job_id: str) -> None:
        self.run_worker(self._open_job(job_id), group="open-job", exclusive=True)

    async def _open_job(self, job_id: str) -> None:
        await self.action_view("job")
        self.query_one(JobView).show(job_id)

    def action_command(self, value: str = "") -> None:
        self.query_one("#keys", PromptLine).open(":", value)

    @on(PromptLine.Cancelled, "#keys")
    def command_cancelled(self, message: PromptLine.Cancelled) -> None:
        message.stop()
        self.view.focus_main()

    @on(PromptLine.Submitted, "#keys")
    async def run_command(self, message: PromptLine.Submitted) -> None:
        message.stop()
        self.view.focus_main()
        words = message.value.strip().lstrip(":").split(maxsplit=1)
        if not words:
            return
        word, rest = words[0].lower(), (words[1] if len(words) > 1 else "")
        if word in ("quit", "q!", "exit"):
            self.exit()
        elif word in COMMANDS and not rest:
            await self.action_view(COMMANDS[word])
        elif word == "job" and rest:
            self.open_job(rest.strip())
        elif word == "submit" and rest:
            await self.submit_file(rest.strip())
        elif word == "help":
            self.action_help()
        else:
            self.notify(f"unknown command {clean(message.value)!r}: try " + ", ".join(v.name_ for v in VIEWS)
                        + ", job ID, submit FILE, quit", severity="error")

    def action_help(self) -> None:
        lines = Text()
        lines.append("fleet tui — keys\n\n", style="bold")
        lines.append("Views:  1 overview  2 hosts  3 queue  4 jobs  5 job  6 results  7 matrices\n"
                     "        :NAME switches too (:hosts, :jobs, …), :job ID opens a job, :submit FILE\n")
        lines.append("Everywhere:  ↑↓ / j k move   PgUp PgDn page   Home End / g G first, last   enter open\n"
                     "             escape back   S submit a file   ctrl+r reload   ? this help   q quit\n")
        for view in VIEWS:
            if view.BINDINGS:
                keys = "   ".join(f"{_key(b)} {b.description}" for b in view.BINDINGS if isinstance(b, Binding))
                lines.append(f"{view.title + ':':<10}{keys}\n")
        lines.append("\nJobs filter (/):  words match names, users, hosts and id starts; "
                     "state:running,failed user:NAME pool:NAME kind:benchmark matrix:RUN\n")
        if self.readonly:
            lines.append("\nRead-only: actions are refused here.\n", style="yellow")
        self.push_screen(Info(lines))

    def action_reload(self) -> None:
        try:
            view = self.view
        except NoMatches:  # closing
            return
        self.run_worker(self.load_lab(), group="lab")
        if view.name_ == "jobs":
            view.pages.refresh(view.rows_on_screen())  # type: ignore[attr-defined]
        else:
            self.run_worker(view.load(), group=f"view:{view.name_}")

    # ------------------------------------------------------------------ actions

    def may_act(self, what: str) -> bool:
        if self.readonly:
            self.notify(f"read-only: not doing {what} (started with --readonly)", severity="warning")
            return False
        return True

    def confirm_then(self, question: str, then: Callable[[], Awaitable[None]]) -> None:
        def done(yes: bool | None) -> None:
            if yes:
                self.run_worker(then(), group="action")

        self.push_screen(Confirm(question), done)

    async def cancel_job(self, job_id: str, name: str) -> None:
        if not self.may_act(f"cancel {job_id}"):
            return

        async def go() -> None:
            got = await self.api(calls.cancel(job_id), doing=f"cancel {job_id}")
            if got is not None:
                self.notify(f"{job_id}: {got.state}")

        self.confirm_then(f"Cancel {job_id} ({clean(name)})?", go)

    async def resubmit(self, job_id: str) -> None:
        if not self.may_act(f"resubmit {job_id}"):
            return
        detail = await self.api(calls.job(job_id))
        if detail is None:
            return
        spec = dict(detail.spec)
        secret = [k for k, v in (spec.get("envs") or {}).items() if isinstance(v, dict) and v.get("secret")]
        if secret:
            self.notify(f"cannot resubmit {job_id}: its secret envs ({', '.join(secret)}) are not given back by "
                        "the server; submit its file again (S)", severity="error", timeout=8)
            return
        if detail.chain:
            self.notify(f"{job_id} is a step of chain {detail.chain}: submit the chain's file again (S)",
                        severity="error", timeout=8)
            return

        async def go() -> None:
            got = await self.api(calls.submit(spec), doing=f"resubmit {job_id}")
            if got is not None:
                self.notify(f"resubmitted as {got.id}")
                self.open_job(got.id)

        self.confirm_then(f"Submit {clean(detail.name)} again (as a new job)?", go)

    async def show_why(self, job_id: str) -> None:
        why = await self.api(calls.why(job_id), doing=f"why {job_id}")
        if why is None:
            return
        text = Text()
        text.append(f"why {job_id}: {why.state} in queue {clean(why.queue)}\n\n", style="bold")
        text.append(clean(why.summary) + "\n")
        if why.queued is not None:
            text.append(f"\n{why.ahead} of {why.queued} waiting jobs go before it\n")
        for reason, n in sorted(why.reasons.items()):
            text.append(f"  {n:4d} host{'s' if n != 1 else ' '} {clean(reason)}\n")
        if why.hosts:
            text.append("\n")
            for host, reason in sorted(why.hosts.items()):
                text.append(f"  {clean(host):<20} {clean(reason)}\n", style="green" if reason == "free" else "")
        self.push_screen(Info(text))

    def action_submit(self) -> None:
        if not self.may_act("submit"):
            return
        self.action_command("submit ")

    async def submit_file(self, path: str) -> None:
        from fleet.client.specs import aload_spec_file

        if not self.may_act(f"submit {path}"):
            return
        file = Path(path).expanduser()
        self.notify(f"submitting {clean(file)}…", timeout=3)
        try:
            spec = await aload_spec_file(self.client, file)
            jobs = await (self.client.submit_many([spec]) if spec.get("steps") else self.client.submit(spec))
        except httpx.TransportError as exc:
            self.lost(exc)
            return
        except (ApiError, FleetError) as exc:
            self.notify(clean(exc), severity="error", timeout=10)
            return
        first = jobs[0] if isinstance(jobs, list) else jobs
        self.notify(f"submitted {first.id}" + (f" (+{len(jobs) - 1} steps)" if isinstance(jobs, list) and len(jobs) > 1 else ""))
        self.open_job(first.id)


def _key(b: Binding) -> str:
    return (b.key_display or b.key.split(",")[0]).replace("slash", "/").replace("question_mark", "?")
