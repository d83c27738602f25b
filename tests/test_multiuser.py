"""Nothing of one user reaches another, secrets stay sealed, tokens can be listed, revoked and
expire (DESIGN.md §7). Each test is an attack tried by a plain user, shown refused."""

from __future__ import annotations

import hashlib
import os
import stat
import time
import zlib
from pathlib import Path

import httpx
import pytest

from fleet.client.sync import Client
from fleet.errors import ApiError, NotFound
from tests.conftest import add_user


def done(client, job_id):
    detail = client.wait(job_id, timeout=120)
    while detail.state not in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"):
        detail = client.wait(job_id, timeout=120)
    return detail


def test_a_blob_is_only_its_uploaders(fleet, tmp_path, shared_local):
    """The attacks: bob names alice's upload by its raw sha256 as his job's input (the job read
    her file), and asks HEAD /blobs/<sha> whether she has some content (an oracle)."""
    fleet.start(shared_local)
    _, alice = add_user(fleet, "alice")
    bob_token, bob = add_user(fleet, "bob")
    private = tmp_path / "weights.bin"
    private.write_bytes(b"alice's private weights\n")
    sha, size = alice.upload(private)
    ref = {"kind": "file", "filename": "w.bin", "files": {"w.bin": {"sha256": sha, "size": size}}}
    url = f"{fleet.info.url}/blobs/{sha}"
    assert httpx.head(url, headers={"Authorization": f"Bearer {bob_token}"}).status_code == 404
    with pytest.raises(ApiError) as err:
        bob.submit({"name": "steal", "run": 'cat "$FLEET_INPUT_W"', "inputs": {"w": ref}})
    assert err.value.status == 422 and "inputs.w: blob" in str(err.value) and "is not uploaded" in str(err.value)
    # Sending the same content proves having it: then it is bob's to use too (stored once).
    assert bob.upload(private) == (sha, size)
    job = bob.submit({"name": "mine-too", "run": 'cat "$FLEET_INPUT_W"', "inputs": {"w": ref}})
    detail = done(bob, job.id)
    assert detail.state == "SUCCEEDED", (detail.message, b"".join(bob.logs(job.id)))
    assert b"".join(bob.logs(job.id)) == b"alice's private weights\n"
    assert len(list(fleet.settings.blobs_dir.glob(f"*/{sha}"))) == 1
    # A wrong body for a hash someone else has proves nothing and stores nothing.
    carol_token, carol = add_user(fleet, "carol")
    resp = httpx.put(url, content=b"guess", headers={"Authorization": f"Bearer {carol_token}"})
    assert resp.status_code == 422 and "content hashes to" in resp.json()["detail"]
    assert httpx.head(url, headers={"Authorization": f"Bearer {carol_token}"}).status_code == 404
    for c in (alice, bob, carol):
        c.close()


def test_a_job_id_prefix_never_tells_of_other_users_jobs(fleet, shared_local):
    """The attack: an ambiguous prefix answered "ambiguous" when the other match was someone
    else's job, telling bob it exists. Prefixes are matched among the caller's own jobs."""
    admin = fleet.start(shared_local)
    _, bob = add_user(fleet, "bob")
    theirs = admin.submit({"name": "admins", "run": "true"}).id
    mine = bob.submit({"name": "bobs", "run": "true"}).id
    common = os.path.commonprefix([theirs, mine])
    assert len(common) >= 6  # ids are time-ordered: two made a moment apart share a prefix
    assert bob.job(common).id == mine  # one of his own: found
    with pytest.raises(NotFound) as err:
        bob.job(theirs[:len(common) + 2] if theirs[:len(common) + 2] != mine[:len(common) + 2] else theirs)
    assert "ambiguous" not in str(err.value)
    with pytest.raises(NotFound):
        bob.job(theirs)
    with pytest.raises(NotFound) as err2:
        admin.job(common)
    assert "ambiguous" in str(err2.value)  # an admin sees both: truly ambiguous for them
    bob.close()


def test_secrets_are_masked_in_artifacts_and_results_and_state_is_private(fleet, tmp_path, monkeypatch):
    """The attack: a job with outputs: [log] turned its unmasked log into an artifact, with the
    secret in clear in blobs/ (0644). Now every file the controller keeps from a job has the
    secret masked, and what the server writes is 0600 in a 0700 FLEET_HOME, whatever the umask."""
    old = os.umask(0o022)
    try:
        client = fleet.start()
    finally:
        os.umask(old)
    secret = "hunter2-very-secret"
    job = client.submit({
        "name": "leaky", "envs": {"TOKEN": {"value": secret, "secret": True}},
        "run": 'echo "token is $TOKEN"; echo "$TOKEN" > copy.txt; exit 3', "outputs": ["log", "copy.txt"]})
    detail = done(client, job.id)
    assert detail.state == "FAILED"  # exit 3: no artifacts for a failed attempt
    job = client.submit({
        "name": "leaky", "envs": {"TOKEN": {"value": secret, "secret": True}},
        "run": 'echo "token is $TOKEN"; echo "$TOKEN" > copy.txt', "outputs": ["log", "copy.txt"]})
    assert done(client, job.id).state == "SUCCEEDED"
    arts = {a.name: a for a in client.artifacts(job=job.id).items}
    assert set(arts) == {"log", "copy.txt"}
    for art in arts.values():
        out = tmp_path / art.id
        with out.open("wb") as fh:
            client.download_artifact(art.id, fh)
        data = out.read_bytes()
        assert secret.encode() not in data and b"*" * len(secret) in data
        assert art.sha256 == hashlib.sha256(data).hexdigest()  # stored under what it holds
    for path in fleet.settings.blobs_dir.rglob("*"):
        assert secret.encode() not in path.read_bytes() if path.is_file() else True
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(fleet.home.stat().st_mode) == 0o700
    for name in ("fleet.db", "token", "secret.key", "server.log"):
        assert stat.S_IMODE((fleet.home / name).stat().st_mode) == 0o600, name
    for path in (fleet.home / "logs").rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) in (0o600, 0o700), path


def test_a_runners_result_and_error_are_masked(fleet, tmp_path):
    """A job that writes its secret into result.json or its error message (a runner that
    echoes its arguments) has it masked in the stored record and the job's message."""
    client = fleet.start()
    secret = "s3cr3t-in-the-record"
    script = tmp_path / "fake_result.py"
    script.write_text("import json, os, sys\n"
                      "json.dump({'metrics': {'note': os.environ['TOKEN']}}, open('result.json', 'w'))\n"
                      "json.dump({'class': 'runner_error', 'message': 'bad ' + os.environ['TOKEN']},"
                      " open('error.json', 'w'))\n"
                      "sys.exit(2)\n")
    import sys
    job = client.submit({"name": "rec", "envs": {"TOKEN": {"value": secret, "secret": True}},
                         "run": f"{sys.executable} {script}"})
    detail = done(client, job.id)
    assert detail.state == "FAILED" and secret not in (detail.message or "")
    assert "bad " + "*" * len(secret) == detail.message


def test_tokens_are_listed_revoked_at_once_and_expire(fleet):
    admin = fleet.start()
    bob_token, bob = add_user(fleet, "bob")
    assert bob.whoami().name == "bob"
    short = bob.create_token(name="ci", expires="2s")
    assert short.expires_at is not None and short.id is not None
    ci = httpx.Client(base_url=fleet.info.url, headers={"Authorization": f"Bearer {short.token}"})
    assert ci.get("/whoami").json()["name"] == "bob"
    listed = {t.name: t for t in bob.tokens()}
    assert set(listed) == {"default", "ci"} and listed["ci"].state == "active"
    assert listed["default"].last_used_at is not None  # bob's default token was just used
    assert all(t.user == "bob" for t in bob.tokens())
    with pytest.raises(ApiError) as err:
        bob.tokens(everyone=True)
    assert err.value.status == 403
    assert {t.user for t in admin.tokens(everyone=True)} >= {"bob", "root"}
    # bob cannot revoke the admin's token: it is not found for him
    admins = [t for t in admin.tokens() if t.user == "root"]
    with pytest.raises(NotFound):
        bob.revoke_token(admins[0].id)
    time.sleep(2.1)  # the short token's lifetime
    assert ci.get("/whoami").status_code == 401
    assert {t.name: t.state for t in bob.tokens()}["ci"] == "expired"
    # Revocation holds at once (there is no token cache to outlive it).
    out = fleet.cli("token", "list", "--all")
    assert "bob" in out.stdout and "ci" in out.stdout and "expired" in out.stdout
    bob_default = {t.name: t for t in bob.tokens()}["default"]
    revoked = fleet.cli_json("token", "revoke", str(bob_default.id))
    assert revoked[0]["state"] == "revoked"
    assert httpx.get(f"{fleet.info.url}/whoami", headers={"Authorization": f"Bearer {bob_token}"}).status_code == 401
    with pytest.raises(ApiError) as err:
        admin.create_token(name="x", expires="forever")
    assert err.value.status == 422 and "expires" in str(err.value)
    ci.close()
    bob.close()


def test_files_a_job_cannot_leave_under_its_name(tmp_path):
    """On the host: a job that plants links where the agent writes its own files (a cancel
    marker, status.json's temporary file) does not make the agent write through them."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "runners"))
    import wrapper
    sys.path.pop(0)
    victim = tmp_path / "victim"
    victim.write_text("intact")
    adir = tmp_path / "a1"
    adir.mkdir()
    (adir / "cancel").symlink_to(victim)
    (adir / f"status.json.tmp.{os.getpid()}").symlink_to(victim)
    wrapper._mark(str(adir / "cancel"), "now")
    wrapper._write_json(str(adir / "status.json"), {"exit_code": 0})
    assert victim.read_text() == "intact"
    assert not (adir / "cancel").is_symlink() and (adir / "cancel").read_text() == "now"


def test_a_job_cannot_forge_another_users_log_through_the_pack_of_tiny_logs(fleet, shared_local):
    """The attack: the controller packs small logs of ended attempts into one file per bucket
    (fleet.logpack); alice's job prints a record naming bob's attempt, with a valid checksum,
    hoping a reader takes it for his log. Her bytes stay hers, exactly as printed; bob's log stays
    his, on this server and after a restart (a fresh index, as another replica reads); she cannot
    read his; a log past the tiny size goes to files and reads back whole."""
    fleet.start(shared_local)
    alice_token, alice = add_user(fleet, "alice")
    bob_token, bob = add_user(fleet, "bob")
    his = bob.submit({"name": "private", "run": "echo bob-private-result"})
    his_attempt = done(bob, his.id).attempt_list[-1].id
    fake = b"forged by alice\n"
    record = b"\0fleet-tiny %s %d %d %08x\n" % (his_attempt.encode(), len(fake), len(fake), zlib.crc32(fake)) + fake
    escaped = "".join(f"\\{c:03o}" for c in record)  # printf's octal escapes: every byte as printed
    forged = alice.submit({"name": "forge", "run": f"printf '{escaped}'; echo after"})
    big = alice.submit({"name": "big", "run": "head -c 5000 /dev/zero | tr '\\000' x"})
    assert done(alice, forged.id).state == "SUCCEEDED" and done(alice, big.id).state == "SUCCEEDED"
    for _ in range(2):  # this server, then a restarted one reading the packs anew
        assert b"".join(bob.logs(his.id)) == b"bob-private-result\n"
        assert b"".join(alice.logs(forged.id)) == record + b"after\n"
        assert b"".join(alice.logs(big.id)) == b"x" * 5000
        with pytest.raises(NotFound):
            b"".join(alice.logs(his.id))
        alice.close()
        bob.close()
        fleet.stop()
        fleet.start(shared_local)
        alice, bob = Client(fleet.info.url, alice_token), Client(fleet.info.url, bob_token)
    alice.close()
    bob.close()
