"""High availability: several ``fleet serve`` replicas on one database, one leader.

The replicas share the database and a directory for logs and blobs (``shared_dir``) and run
jobs on one host (a local one with a fixed workdir, so any replica reaches the same attempt
directories). Kill the leader: a follower takes over, reattaches the running attempts, starts
the queued ones; each job appends its id to a file on the host, so a job run twice shows.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest
import yaml

from fleet.client.sync import Client
from tests.helpers import eventually, free_port, pid_alive
from tests.zygote import zygote

LINES = 30
LEASE = 3.0




class Replica:
    def __init__(self, root: Path, n: int, db_url: str, inventory: Path, shared: Path) -> None:
        self.home = root / f"replica{n}"
        self.home.mkdir(parents=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (self.home / "config.yaml").write_text(yaml.safe_dump({
            "database": db_url, "inventory": str(inventory), "shared_dir": str(shared),
            "leader_lease": LEASE, "kill_grace": 2, "keepalive_interval": 2,
        }))
        env = dict(os.environ, FLEET_HOME=str(self.home))
        for var in ("FLEET_SERVER", "FLEET_TOKEN", "FLEET_INVENTORY", "FLEET_DATABASE"):
            env.pop(var, None)
        self.log = (self.home / "server.log").open("ab")
        self.n = n
        self.proc = zygote().spawn(["serve", "--host", "127.0.0.1", "--port", str(self.port)],
                                   stdout=self.log, stderr=self.log, env=env, new_session=True)

    def wait_listening(self) -> None:
        eventually(self.health, timeout=60, what=f"replica {self.n} listening")

    def health(self) -> dict | None:
        try:
            # plain HTTP on loopback: verify=False spares loading the CA store on every call
            return httpx.get(f"{self.url}/health", timeout=1, verify=False).json()
        except httpx.HTTPError:
            return None

    def role(self) -> str | None:
        h = self.health()
        return h and h["role"]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()

    def server_log(self) -> str:
        return (self.home / "server.log").read_text(errors="replace")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def replicas(tmp_path, db_url):
    shared = tmp_path / "shared"
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(
        f"box ansible_connection=local fleet_slots=3 fleet_workdir={tmp_path / 'box'}\n")
    made: list[Replica] = []

    def start() -> Replica:
        replica = Replica(tmp_path, len(made) + 1, db_url, inventory, shared)
        made.append(replica)  # before waiting: a replica that fails to come up is stopped too
        replica.wait_listening()
        return replica

    yield start
    for replica in made:
        replica.stop()


def _job(name: str, side: Path) -> dict:
    return {"name": name, "run": (
        f'echo "$FLEET_JOB_ID" >> {side}; i=0; '
        f'while [ $i -lt {LINES} ]; do echo "line $i"; i=$((i+1)); sleep 0.1; done')}


@pytest.mark.long
def test_leader_killed_follower_takes_over_nothing_lost_or_run_twice(replicas, tmp_path):
    side = tmp_path / "side.txt"
    first = replicas()
    assert eventually(lambda: first.role() == "leader", what="first replica leads")
    second = replicas()
    assert second.role() == "follower" and second.health()["leader"] == first.url
    token = (first.home / "token").read_text().strip()

    # Submitted through the follower: it writes the jobs, the leader runs them.
    client = Client(second.url, token, timeout=60)
    ids = [client.submit(_job(f"j{i}", side)).id for i in range(6)]
    eventually(lambda: sum(client.job(j).state == "RUNNING" for j in ids) == 3, what="3 running")
    eventually(lambda: all(len(b"".join(client.logs(j)).splitlines()) >= 5
                           for j in ids if client.job(j).state == "RUNNING"), what="logs flowing")
    # Only the leader can explain a job (a follower forwards the request). The last job waits
    # behind the first three, unless on a loaded machine three of them ended meanwhile (each
    # runs ~3 s): then it runs.
    why = client.why(ids[-1])
    assert why.state in ("waiting", "running"), (why, [client.job(j).state for j in ids])

    first.kill(signal.SIGKILL)
    killed_at = time.monotonic()
    eventually(lambda: second.role() == "leader", timeout=LEASE + 10, what="takeover")
    took = time.monotonic() - killed_at
    assert took < LEASE + 2, took

    for job_id in ids:
        assert client.wait(job_id, 60).state == "SUCCEEDED", second.server_log()
    expected = "".join(f"line {i}\n" for i in range(LINES))
    for job_id in ids:
        assert b"".join(client.logs(job_id)).decode() == expected, job_id
        assert len(client.job(job_id).attempt_list) == 1
    assert sorted(side.read_text().split()) == sorted(ids)  # each ran exactly once
    assert "Traceback" not in second.server_log()


def test_a_hung_leader_is_replaced_and_steps_down_when_it_wakes(replicas, tmp_path):
    side = tmp_path / "side.txt"
    first = replicas()
    assert eventually(lambda: first.role() == "leader", what="first replica leads")
    second = replicas()
    token = (first.home / "token").read_text().strip()
    client = Client(second.url, token, timeout=60)
    ids = [client.submit(_job(f"h{i}", side)).id for i in range(2)]
    eventually(lambda: all(client.job(j).state == "RUNNING" for j in ids), what="running")

    first.kill(signal.SIGSTOP)  # hung: holds the lease but cannot renew it
    try:
        eventually(lambda: second.role() == "leader", timeout=LEASE + 10, what="takeover")
    finally:
        first.kill(signal.SIGCONT)
    # Awake again, the old leader sees its lease gone and exits without acting.
    eventually(lambda: first.proc.poll() is not None, timeout=LEASE + 5, what="old leader exits")
    assert first.proc.returncode == 75
    assert "lost the leader lease" in first.server_log()
    assert not pid_alive(first.proc.pid)
    for job_id in ids:
        assert client.wait(job_id, 60).state == "SUCCEEDED"
        assert len(client.job(job_id).attempt_list) == 1
    assert sorted(side.read_text().split()) == sorted(ids)


def test_a_revoked_token_stops_working_at_once_on_every_replica(replicas):
    """Tokens used to be cached per replica: a deleted one kept working until a restart. Now
    every replica reads the token on every request."""
    first = replicas()
    assert eventually(lambda: first.role() == "leader", what="first replica leads")
    second = replicas()
    admin_token = (first.home / "token").read_text().strip()
    admin = Client(first.url, admin_token)
    made = admin.create_token(name="laptop")
    on_second = httpx.Client(base_url=second.url, headers={"Authorization": f"Bearer {made.token}"})
    assert on_second.get("/whoami").status_code == 200  # used (and so cached, before) on the follower
    admin.revoke_token(made.id)  # through the leader
    assert on_second.get("/whoami").status_code == 401
    assert httpx.get(f"{first.url}/whoami", headers={"Authorization": f"Bearer {made.token}"}).status_code == 401
    on_second.close()
    admin.close()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_follower_answers_health_while_the_database_keeps_it_waiting(replicas, db_url):
    """A follower's ``GET /health`` names the leader. It read the lease row on the event loop,
    so a database that kept it waiting (a lock, a slow disk, the network) stopped its liveness
    answers too. Now the row is the one its lease keeper read last (each second), however old.
    Here the lease table is locked by another session, longer than the lease: a read of it
    waits until the lock goes."""
    import psycopg

    first = replicas()
    assert eventually(lambda: first.role() == "leader", what="first replica leads")
    second = replicas()
    assert eventually(lambda: (second.health() or {}).get("leader") == first.url, what="follower sees the leader")
    with psycopg.connect(db_url) as locker, psycopg.connect(db_url, autocommit=True) as reader:
        locker.execute("LOCK TABLE leases IN ACCESS EXCLUSIVE MODE")
        reader.execute("SET statement_timeout = 200")
        with pytest.raises(psycopg.errors.QueryCanceled):  # the lock holds: a read waits
            reader.execute("SELECT holder FROM leases")
        health = second.health()  # gives up after 1 s
        assert health is not None and health["role"] == "follower" and health["leader"] == first.url, health
        time.sleep(LEASE + 1)  # the keeper's last read is old now; the leader's lease ran out
        health = second.health()
        assert health is not None and health["role"] == "follower", health
        locker.rollback()
    # The lock gone, one of them leads (the lease lapsed while neither could write).
    assert eventually(lambda: "leader" in (first.role(), second.role()), what="a leader again")
