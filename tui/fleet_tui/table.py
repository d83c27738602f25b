"""A virtual table: it draws only the rows on screen and asks its source for each of them, so
its cost does not grow with the number of rows (100,000 jobs draw as fast as 10).

Textual's DataTable keeps every row as a widget-side object and measures them all; at 100k rows
adding them takes seconds. Here a row that is not loaded yet is drawn as a placeholder and the
source fetches its page in the background (``RowSource.row`` must never block).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rich.cells import set_cell_size
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Static

Cell = Text | str
Row = Sequence[Cell]


@dataclass(frozen=True)
class Column:
    title: str
    width: int  # characters; 0: takes what is left (at least 10)


class RowSource(Protocol):
    def __len__(self) -> int: ...

    def row(self, index: int) -> Row | None:
        """The row's cells, or None while it is being fetched (never blocks)."""


class ListSource:
    """Rows held in memory (hosts, queues, series: hundreds to a few thousand)."""

    def __init__(self, rows: list[Row] | None = None) -> None:
        self.rows: list[Row] = rows or []

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, index: int) -> Row | None:
        return self.rows[index] if 0 <= index < len(self.rows) else None


HEADER = Style(bold=True, reverse=True)


@functools.lru_cache(maxsize=256)
def _style(spec: str | Style) -> Style:
    return spec if isinstance(spec, Style) else Style.parse(spec)
CURSOR = Style(reverse=True)
UNDERLINE = Style(underline=True)
PLACEHOLDER = Text("…", style="dim")


class VirtualTable(ScrollView, can_focus=True):
    """Columns over a ``RowSource``; a cursor moved with the keys; ``Selected`` on enter."""

    DEFAULT_CSS = """
    VirtualTable { height: 1fr; overflow-x: hidden; }
    """
    BINDINGS = [
        Binding("up,k", "move(-1)", "up", show=False),
        Binding("down,j", "move(1)", "down", show=False),
        Binding("pageup,ctrl+b", "page(-1)", "page up", show=False),
        Binding("pagedown,ctrl+f,space", "page(1)", "page down", show=False),
        Binding("home,g", "first", "first", show=False),
        Binding("end,G", "last", "last", show=False),
        Binding("enter", "select", "open"),
    ]

    cursor: reactive[int] = reactive(0, always_update=True, repaint=False)

    class Highlighted(Message):
        def __init__(self, table: VirtualTable, index: int) -> None:
            super().__init__()
            self.table, self.index = table, index

    class Selected(Message):
        def __init__(self, table: VirtualTable, index: int) -> None:
            super().__init__()
            self.table, self.index = table, index

    def __init__(self, columns: list[Column], source: RowSource, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.columns = columns
        self.source = source
        self._widths: list[int] = []
        self._count = 0
        # Drawn lines by (row, how it is drawn): scrolling by a row redraws every line on screen,
        # and each is then a lookup, not a formatting. Cleared when the data, size or focus change.
        self._strips: dict[tuple[int, int], Strip] = {}
        self._base: Style | None = None
        self._drawn_width = -1

    # ------------------------------------------------------------------ data

    def set_source(self, source: RowSource) -> None:
        self.source = source
        self.reload()

    def _forget(self, index: int | None = None) -> None:
        if index is None:
            self._strips.clear()
            self._base = None
        else:
            for mode in range(3):
                self._strips.pop((index, mode), None)

    def reload(self) -> None:
        """The source changed (rows added, removed, or fetched): redraw."""
        self._forget()
        count = len(self.source)
        if count != self._count:
            self._count = count
            self.virtual_size = Size(self.scrollable_content_region.width, count + 1)
        if self.cursor >= count:
            self.cursor = max(0, count - 1)
        self.refresh()

    def refresh_row(self, index: int) -> None:
        """One row changed: redraw just that line if it is on screen."""
        self._forget(index)
        y = index - self.scroll_offset.y + 1
        if 1 <= y < self.size.height:
            self.refresh(Region(0, y, self.size.width, 1))

    @property
    def page_size(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    @property
    def top(self) -> int:
        return self.scroll_offset.y

    # ------------------------------------------------------------------ drawing

    def on_resize(self) -> None:
        width = self.scrollable_content_region.width
        if width != self._drawn_width:  # shown again at the same width: the drawn lines hold
            self._forget()
            self._drawn_width = width
        self.virtual_size = Size(width, len(self.source) + 1)
        self._layout(width)

    def _layout(self, width: int) -> None:
        fixed = sum(c.width for c in self.columns if c.width) + len(self.columns) - 1
        flex = [c for c in self.columns if not c.width]
        left = max(10, width - fixed) // max(1, len(flex)) if flex else 0
        self._widths = [c.width or left for c in self.columns]

    @property
    def base_style(self) -> Style:
        if self._base is None:
            self._base = self.rich_style
        return self._base

    def _line(self, cells: Sequence[Cell], style: Style | None) -> Text:
        line = Text(no_wrap=True, overflow="ellipsis", style=self.base_style)
        for i, (cell, width) in enumerate(zip(cells, self._widths, strict=False)):
            text = cell if isinstance(cell, Text) else Text(str(cell))
            if text.cell_len > width:
                text = text.copy()
                text.truncate(width, overflow="ellipsis")
            line.append_text(text)
            pad = width - text.cell_len
            if i < len(self._widths) - 1:
                pad += 1
            if pad > 0:
                line.append(" " * pad)
        if style is not None:
            line.stylize(style)
        return line

    def _row_strip(self, cells: Sequence[Cell], style: Style | None, width: int) -> Strip:
        """A row as segments, built directly for plain and single-style cells (most cells); a
        cell with several styles goes through rich's renderer."""
        base = self.base_style if style is None else self.base_style + style
        segments: list[Segment] = []
        last = len(self._widths) - 1
        for i, (cell, cell_width) in enumerate(zip(cells, self._widths, strict=False)):
            if isinstance(cell, Text) and cell.spans:
                text = cell.copy()
                text.truncate(cell_width, overflow="ellipsis", pad=True)
                if style is not None:
                    text.stylize(style)
                segments.extend(s for s in text.render(self.app.console) if s.text != "\n")
                segments.append(Segment(" " if i < last else "", base))
                continue
            if isinstance(cell, Text):
                plain, own = cell.plain, cell.style
                cell_style = base + (_style(own) if own else Style())
            else:
                plain, cell_style = str(cell), base
            if plain.isascii() and "\n" not in plain:
                if len(plain) > cell_width:
                    plain = plain[: max(0, cell_width - 1)] + "…"
                segments.append(Segment(plain.ljust(cell_width), cell_style))
            else:
                segments.append(Segment(set_cell_size(plain.replace("\n", " "), cell_width), cell_style))
            if i < last:
                segments.append(Segment(" ", base))
        return Strip(segments).crop_extend(0, width, base)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        if not self._widths:
            self._layout(width)
        if y == 0:
            header = self._strips.get((-1, 0))
            if header is None:
                line = self._line([c.title for c in self.columns], None)
                line.stylize(HEADER)
                header = self._strips[(-1, 0)] = self._strip(line, width, HEADER)
            return header
        index = self.scroll_offset.y + y - 1
        if index >= len(self.source):
            return Strip.blank(width, self.base_style)
        mode = 0 if index != self.cursor else (1 if self.has_focus else 2)
        strip = self._strips.get((index, mode))
        if strip is not None:
            return strip
        row = self.source.row(index)
        style = (None, CURSOR, UNDERLINE)[mode]
        strip = self._row_strip(row if row is not None else [PLACEHOLDER], style, width)
        if row is not None:  # a placeholder is drawn again when its page comes
            if len(self._strips) > 2000:
                self._strips.clear()
            self._strips[(index, mode)] = strip
        return strip

    def _strip(self, line: Text, width: int, pad: Style) -> Strip:
        segments = [s for s in line.render(self.app.console) if s.text != "\n"]
        return Strip(segments).crop_extend(0, width, pad).simplify() if segments else Strip(
            [Segment(" " * width, pad)])

    # ------------------------------------------------------------------ the cursor

    def watch_cursor(self, old: int, new: int) -> None:
        self.refresh_row(old)
        self.refresh_row(new)
        if new < self.top:
            self.scroll_to(y=new, animate=False, immediate=True)
        elif new >= self.top + self.page_size:
            self.scroll_to(y=new - self.page_size + 1, animate=False, immediate=True)
        self.post_message(self.Highlighted(self, new))

    def on_focus(self) -> None:
        self._forget()
        self.refresh()

    def on_blur(self) -> None:
        self._forget()
        self.refresh()

    def move_to(self, index: int) -> None:
        count = len(self.source)
        self.cursor = max(0, min(index, count - 1)) if count else 0

    def action_move(self, delta: int) -> None:
        self.move_to(self.cursor + delta)

    def action_page(self, pages: int) -> None:
        step = self.page_size * pages
        self.scroll_to(y=max(0, self.top + step), animate=False, immediate=True)
        self.move_to(self.cursor + step)

    def action_first(self) -> None:
        self.move_to(0)

    def action_last(self) -> None:
        self.move_to(len(self.source) - 1)

    def action_select(self) -> None:
        if len(self.source):
            self.post_message(self.Selected(self, self.cursor))

    def on_click(self, event: object) -> None:
        y = getattr(event, "y", 0)
        if y >= 1:
            index = self.top + y - 1
            if index < len(self.source):
                if index == self.cursor and getattr(event, "chain", 1) >= 2:
                    self.action_select()
                self.move_to(index)


class PromptLine(Static, can_focus=True):
    """A one-line prompt (k9s's ``:`` and ``/``): typing happens in place, so opening it
    changes no layout (Textual's Input is three lines: showing one reflows the whole screen).

    Printable keys type, backspace deletes, ctrl+u clears, enter sends ``Submitted``, escape
    sends ``Cancelled``; when not editing it shows ``idle`` text."""

    DEFAULT_CSS = """
    PromptLine { height: 1; }
    """

    class Submitted(Message):
        def __init__(self, prompt: PromptLine, value: str) -> None:
            super().__init__()
            self.prompt, self.value = prompt, value

        @property
        def control(self) -> PromptLine:
            return self.prompt

    class Cancelled(Message):
        def __init__(self, prompt: PromptLine) -> None:
            super().__init__()
            self.prompt = prompt

        @property
        def control(self) -> PromptLine:
            return self.prompt

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__("", id=id, classes=classes)
        self.editing = False
        self.prefix = ""
        self.value = ""
        self.idle: Text | str = ""

    def open(self, prefix: str, value: str = "") -> None:
        self.editing, self.prefix, self.value = True, prefix, value
        self.focus()
        self._draw()

    def close(self) -> None:
        self.editing = False
        self._draw()

    def show_idle(self, text: Text | str) -> None:
        self.idle = text
        if not self.editing:
            self._draw()

    def _draw(self) -> None:
        if self.editing:
            self.update(Text.assemble((self.prefix, "bold"), self.value, ("█", "blink")))
        else:
            self.update(self.idle)

    def on_key(self, event: Any) -> None:
        if not self.editing:
            return
        key = event.key
        if key == "enter":
            self.editing = False
            self._draw()
            self.post_message(self.Submitted(self, self.value))
        elif key == "escape":
            self.editing = False
            self._draw()
            self.post_message(self.Cancelled(self))
        elif key == "backspace":
            self.value = self.value[:-1]
            self._draw()
        elif key == "ctrl+u":
            self.value = ""
            self._draw()
        elif event.is_printable and event.character:
            self.value += event.character
            self._draw()
        else:
            return
        event.stop()
        event.prevent_default()

    def on_blur(self) -> None:
        if self.editing:
            self.editing = False
            self._draw()
