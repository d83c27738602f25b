"""Integers in requests are bounded where they reach SQL or a file offset: a value past a signed
64-bit column is a 422 naming the parameter, never a 500 from the database driver (found by
tests/test_fuzz_api.py: ``GET /results?before=-50940584465217095729152`` answered 500 on SQLite).
In process (tests/harness.py): the API over an ASGI transport on a real SQLite database."""

from __future__ import annotations

import pytest

from tests.harness import harness, host

HUGE = 2**63  # one past the largest signed 64-bit integer


@pytest.mark.parametrize(("path", "field"), [
    (f"/results?before={HUGE}", "before"),
    (f"/results?before=-{HUGE * 1000}", "before"),
    (f"/events?after={HUGE}&timeout=0.01", "after"),
    (f"/jobs/JOB/logs?offset={HUGE}", "offset"),
    (f"/jobs/JOB/logs?attempt={HUGE}", "attempt"),
])
async def test_huge_integers_in_queries_are_422_naming_the_parameter(tmp_path, path: str, field: str):
    async with harness(tmp_path, [host("h1")]) as h:
        job = await h.submit({"name": "one", "run": "true"})
        resp = await h.api.get(path.replace("JOB", job))
        assert resp.status_code == 422, resp.text
        assert any(err["field"].endswith(field) for err in resp.json()["errors"]), resp.json()
        # and the largest value that fits is an ordinary request
        ok = await h.api.get(path.replace("JOB", job).replace(str(HUGE * 1000), str(HUGE - 1))
                             .replace(str(HUGE), str(HUGE - 1)).replace("-", ""))
        assert ok.status_code in (200, 404), ok.text


async def test_revoking_a_token_id_past_64_bits_is_422(tmp_path):
    async with harness(tmp_path, [host("h1")]) as h:
        resp = await h.api.delete(f"/tokens/{HUGE}")
        assert resp.status_code == 422, resp.text
        assert (await h.api.delete(f"/tokens/{HUGE - 1}")).status_code == 404


async def test_a_non_admin_gets_the_same_422_and_cannot_reach_anothers_token(tmp_path):
    """As a plain user: the bound holds before anything else is looked at, and an id that fits
    is still only ever one's own token (someone else's is 404, like one that does not exist)."""
    async with harness(tmp_path, [host("h1")]) as h:
        alice = h.store.create_user("alice")
        bob = h.store.create_user("bob")
        h.store.create_token(bob, "bobs")
        as_alice = {"Authorization": f"Bearer {h.store.create_token(alice, 'mine')}"}
        bobs_id = next(t.id for t, name in h.store.list_tokens("bob"))
        for path in (f"/results?before={HUGE}", f"/events?after={HUGE}&timeout=0.01"):
            resp = await h.api.get(path, headers=as_alice)
            assert resp.status_code == 422, resp.text
        assert (await h.api.delete(f"/tokens/{HUGE}", headers=as_alice)).status_code == 422
        assert (await h.api.delete(f"/tokens/{bobs_id}", headers=as_alice)).status_code == 404
        assert h.store.list_tokens("bob")[0][0].revoked_at is None
