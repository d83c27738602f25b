"""A submission is made once, however often it is sent (an idempotency key), and a client
whose answer was lost sends it again by itself."""

from __future__ import annotations

import socket
import threading
import uuid
from urllib.parse import urlparse

import httpx
import pytest

from fleet.client.calls import Call
from fleet.client.sync import Client
from tests.conftest import add_user


def test_the_same_key_makes_the_jobs_once_per_user(fleet, shared_local):
    fleet.start(shared_local)
    url, token = fleet.info.url, fleet.info.token
    key = uuid.uuid4().hex
    batch = {"jobs": [{"name": f"b{i}", "run": "true"} for i in range(5)]}
    auth = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
    first = httpx.post(f"{url}/jobs/batch", json=batch, headers=auth).json()
    again = httpx.post(f"{url}/jobs/batch", json=batch, headers=auth).json()
    assert [j["id"] for j in first] == [j["id"] for j in again] and len(first) == 5
    bob_token, bob = add_user(fleet, "bob")  # the key is per user: bob's makes bob's jobs
    his = httpx.post(f"{url}/jobs/batch", json=batch,
                     headers={"Authorization": f"Bearer {bob_token}", "Idempotency-Key": key}).json()
    assert {j["user"] for j in his} == {"bob"} and not {j["id"] for j in his} & {j["id"] for j in first}
    admin = Client(url, token)
    assert len(admin.jobs(limit=100).items) == 10
    bad = httpx.post(f"{url}/jobs", json={"name": "x", "run": "true"},
                     headers={"Authorization": f"Bearer {token}", "Idempotency-Key": "no spaces allowed"})
    assert bad.status_code == 422 and "Idempotency-Key" in bad.text
    admin.close()
    bob.close()


class DropFirstAnswer:
    """A TCP proxy in front of the server that passes the first request on and then closes
    the client's connection without its answer (a server killed after committing, a network
    cut), and relays everything after that."""

    def __init__(self, target: str) -> None:
        parsed = urlparse(target)
        self.target = (parsed.hostname, parsed.port)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.dropped = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        server = socket.create_connection(self.target)
        drop = self.dropped == 0
        self.dropped += 1

        def up() -> None:
            try:
                while data := client.recv(65536):
                    server.sendall(data)
            except OSError:
                pass

        threading.Thread(target=up, daemon=True).start()
        try:
            while data := server.recv(65536):
                if drop:  # the request went through; its answer never arrives
                    break
                client.sendall(data)
        except OSError:
            pass
        for sock in (client, server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.sock.close()


def test_a_client_that_lost_the_answer_retries_and_the_jobs_are_made_once(fleet):
    fleet.start()
    proxy = DropFirstAnswer(fleet.info.url)
    client = Client(proxy.url, fleet.info.token)
    jobs = client.submit_many([{"name": f"r{i}", "run": "true"} for i in range(50)])
    assert proxy.dropped >= 2  # the first answer was lost, the retry got through
    direct = Client(fleet.info.url, fleet.info.token)
    assert sorted(j.id for j in direct.jobs(limit=200).items) == sorted(j.id for j in jobs)
    assert len(jobs) == 50
    proxy.close()
    client.close()
    direct.close()


def test_a_read_whose_connection_broke_is_sent_again_and_a_submit_without_a_key_is_not(fleet):
    """A read (or a cancel) is safe to send twice: the client sends it again when its
    connection broke before the answer (issue 16: httpx.ReadError on a keep-alive connection
    the server had closed). Only those: a POST that is not safe is never resent by ``call``."""
    fleet.start()
    direct = Client(fleet.info.url, fleet.info.token)
    job = direct.submit({"name": "r", "run": "sleep 60"})
    proxy = DropFirstAnswer(fleet.info.url)
    client = Client(proxy.url, fleet.info.token)
    assert client.job(job.id).id == job.id
    assert proxy.dropped >= 2
    proxy2 = DropFirstAnswer(fleet.info.url)
    client2 = Client(proxy2.url, fleet.info.token)
    assert client2.cancel(job.id).state in ("CANCELLED", "CANCELLING")
    assert proxy2.dropped >= 2
    proxy3 = DropFirstAnswer(fleet.info.url)
    client3 = Client(proxy3.url, fleet.info.token)
    with pytest.raises(httpx.TransportError):
        client3.call(Call("POST", "/users", lambda r: r.json(), json={"name": "unsafe-x"}))
    assert proxy3.dropped == 1
    for c in (client, client2, client3, direct):
        c.close()
    for p in (proxy, proxy2, proxy3):
        p.close()


async def test_a_retry_whose_spec_would_no_longer_pass_gets_the_jobs_made_before(tmp_path):
    """A new key costs no lookup (the write meets the earlier key's row); a spec that fails
    the checks is looked up under its key before its error is given, so a retry after, say,
    its input was removed still gets the jobs the first request made."""
    from tests.harness import harness, host

    async with harness(tmp_path, [host("h1")]) as h:
        key = {"Idempotency-Key": uuid.uuid4().hex}
        first = await h.api.post("/jobs", json={"name": "once", "run": "true"}, headers=key)
        assert first.status_code == 201, first.text
        again = await h.api.post("/jobs", json={"name": "once", "run": "true"}, headers=key)
        assert again.json()["id"] == first.json()["id"]
        stale = await h.api.post("/jobs", json={"name": "once", "run": "true", "pool": 3}, headers=key)
        assert stale.status_code in (200, 201) and stale.json()["id"] == first.json()["id"]
        fresh = await h.api.post("/jobs", json={"name": "once", "run": "true", "pool": 3},
                                 headers={"Idempotency-Key": uuid.uuid4().hex})
        assert fresh.status_code == 422 and "pool" in fresh.text
        assert len((await h.api.get("/jobs")).json()["items"]) == 1


async def test_a_key_reused_by_another_user_a_path_as_a_hash_or_an_oversized_spec_gets_nothing_of_anyones(tmp_path):
    """Keys are per user: bob reusing alice's key, with a spec that lies (a path where a
    blob's hash belongs) or one over the size limit, is refused with a clear error and never
    gets alice's job; alice's own retry with the same key still gets hers."""
    from tests.harness import harness, host

    async with harness(tmp_path, [host("h1")]) as h:
        auth = {}
        for name in ("alice", "bob"):
            auth[name] = {"Authorization": f"Bearer {h.store.create_token(h.store.create_user(name))}"}
        key = {"Idempotency-Key": uuid.uuid4().hex}
        made = await h.api.post("/jobs", json={"name": "hers", "run": "true"}, headers=auth["alice"] | key)
        assert made.status_code == 201 and made.json()["user"] == "alice"
        lying = {"name": "x", "run": "true", "inputs": {"m": {"kind": "file", "filename": "m",
                 "files": {"m": {"sha256": "../../etc/passwd", "size": 1}}}}}
        refused = await h.api.post("/jobs", json=lying, headers=auth["bob"] | key)
        assert refused.status_code == 422 and "sha256" in refused.text and made.json()["id"] not in refused.text
        huge = {"name": "x", "run": "true", "env": {"BIG": "x" * (2 << 20)}}
        too_big = await h.api.post("/jobs", json=huge, headers=auth["bob"] | key)
        assert too_big.status_code == 413 and "max_spec_bytes" in too_big.text
        again = await h.api.post("/jobs", json=lying, headers=auth["alice"] | key)
        assert again.json()["id"] == made.json()["id"]  # her retry: her job, made once
        assert [j["user"] for j in (await h.api.get("/jobs")).json()["items"]] == ["alice"]
