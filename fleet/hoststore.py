"""The hosts' rows (``Store.hosts``): health, drain and what a probe found, each change
told as an event. The scheduler's host book (fleet.scheduler.hostbook) holds them in memory."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import insert
from sqlalchemy.engine import Connection
from sqlmodel import select

from fleet.db import Database
from fleet.models.enums import Health
from fleet.models.tables import HostStatus
from fleet.statements import EVENTS, IN_CHUNK


class HostStore:
    def __init__(self, db: Database, telling: Callable[[], AbstractContextManager[Connection]],
                 event: Callable[..., None]) -> None:
        self.db = db
        self._telling = telling  # Store._telling: a write transaction that tells its events
        self._event = event  # Store.add_event

    def statuses(self) -> dict[str, HostStatus]:
        with self.db.session() as s:
            return {h.name: h for h in s.exec(select(HostStatus)).all()}

    def add(self, names: Sequence[str], health: Health, message: str | None) -> None:
        """Rows for hosts the database has never seen, with their health, and a host.health
        event each: one transaction (a new inventory of 1,000 hosts, not 1,000 transactions).
        A name that has a row already keeps it."""
        if not names:
            return
        table = HostStatus.__table__  # type: ignore[attr-defined]
        now = time.time()
        with self._telling() as conn:
            have = {n for i in range(0, len(names), IN_CHUNK) for n in conn.execute(
                select(table.c.name).where(table.c.name.in_(list(names[i:i + IN_CHUNK])))).scalars()}
            new = [n for n in names if n not in have]
            if not new:
                return
            conn.execute(insert(table), [{"name": n, "health": health.value, "health_message": message,
                                          "drained": False, "updated_at": now} for n in new])
            conn.execute(insert(EVENTS), [{
                "at": now, "type": "host.health", "user": None, "job_id": None, "attempt_id": None,
                "host": n, "state": health.value, "reason": None, "message": message, "data_json": None}
                for n in new])

    def set_drained(self, name: str, drained: bool) -> None:
        with self.db.session() as s:
            row = s.get(HostStatus, name) or HostStatus(name=name, updated_at=time.time())
            changed = row.drained != drained
            row.drained, row.updated_at = drained, time.time()
            s.add(row)
        if changed:
            self._event("host.drain", host=name, state="drained" if drained else "undrained")

    def set_facts(self, name: str, facts: dict[str, Any]) -> None:
        """What a probe found on the host (``fleet hosts probe``)."""
        with self.db.session() as s:
            row = s.get(HostStatus, name) or HostStatus(name=name, updated_at=time.time())
            row.facts_json, row.probed_at, row.updated_at = json.dumps(facts), time.time(), time.time()
            s.add(row)

    def set_health(self, name: str, health: Health, message: str | None) -> None:
        with self.db.session() as s:
            row = s.get(HostStatus, name)
            if row is None:
                row = HostStatus(name=name, updated_at=time.time())
            changed = (row.health, row.health_message) != (health.value, message)
            row.health, row.health_message, row.updated_at = health.value, message, time.time()
            s.add(row)
        if changed:
            self._event("host.health", host=name, state=health.value, message=message)
