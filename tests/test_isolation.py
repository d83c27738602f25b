"""Who a job runs as and what it can see (DESIGN.md §7): on the controller's machine a user's
job never runs as the server's account; every job gets a clean environment; on a host with
``isolation: user`` each fleet user's jobs run as their own Unix account, so one user's job
cannot read another's environment, log or files, nor fleet's bundle and cache."""

from __future__ import annotations

import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from fleet.errors import ApiError
from tests.conftest import add_user
from tests.lab.fixtures import requires_sshd


def done(client, job_id):
    detail = client.wait(job_id, timeout=120)
    while detail.state not in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"):
        detail = client.wait(job_id, timeout=120)
    return detail


def log(client, job_id) -> str:
    return b"".join(client.logs(job_id)).decode()


def test_a_users_job_is_refused_on_the_controllers_machine_without_a_job_account(fleet):
    """The embedded default runs jobs as the server's own account: only its owner's."""
    admin = fleet.start()
    _, bob = add_user(fleet, "bob")
    with pytest.raises(ApiError) as err:
        bob.submit({"name": "steal", "run": "cat ~/.fleet/token"})
    assert err.value.status == 422
    assert ("no host can ever run this job: 1 host in the inventory: 1 runs only the server owner's "
            "jobs (it is the controller's machine; set fleet_job_user)") in str(err.value)
    mine = admin.submit({"name": "mine", "run": "true"})  # the single-user default keeps working
    assert done(admin, mine.id).state == "SUCCEEDED"
    bob.close()


def test_jobs_get_a_clean_environment_and_guests_run_as_the_job_account(fleet, shared_local, monkeypatch):
    """The attack: a plain shell job printed $FLEET_HOME/token, secret.key and the FLEET_TOKEN
    the server inherited. Now the server's environment stays with the server, and another
    user's job runs as fleet_job_user (nobody), which cannot read the controller's files."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "inherited-by-the-server")
    admin = fleet.start(shared_local)
    home = fleet.home
    probe = (f"id -un; env | sort; for f in {home}/token {home}/secret.key {home}/fleet.db; do "
             f'cat "$f" >/dev/null 2>&1 && echo "READ $f"; done; ls {home} >/dev/null 2>&1 && echo LISTED; true')
    mine = admin.submit({"name": "mine", "run": probe})
    _, bob = add_user(fleet, "bob")
    theirs = bob.submit({"name": "theirs", "run": probe, "envs": {"MINE": "yes"}})
    for client, job, user in ((admin, mine, "root"), (bob, theirs, "nobody")):
        assert done(client, job.id).state == "SUCCEEDED"
        out = log(client, job.id)
        lines = out.splitlines()
        assert lines[0] == user
        env = dict(line.split("=", 1) for line in lines[1:] if "=" in line and not line.startswith("READ"))
        assert "AWS_SECRET_ACCESS_KEY" not in env and "FLEET_HOME" not in env, env
        assert not any(k.startswith(("VIRTUAL_ENV", "PYENV", "FLEET_TOKEN")) for k in env)
        assert {"FLEET_JOB_ID", "FLEET_ATTEMPT_ID", "FLEET_HOST", "FLEET_ATTEMPT_DIR", "PATH"} <= set(env)
        if user == "nobody":
            assert "READ" not in out and "LISTED" not in out, out
            assert env["MINE"] == "yes" and env["USER"] == "nobody"
            adir = Path(env["FLEET_ATTEMPT_DIR"])
            mode = adir.stat()
            assert stat.S_IMODE(mode.st_mode) == 0o1770 and mode.st_uid == 0  # the job's group only
    bob.close()


# ---------------------------------------------------------------------- isolation: user (real sshd)

SNOOP = r"""
echo "me=$(id -un)"
for p in /proc/[0-9]*; do
  if tr '\0' '\n' < "$p/environ" 2>/dev/null | grep -q "^ALICE_SECRET="; then echo "SAW-ENV $p"; fi
done
for f in "$(dirname "$FLEET_ATTEMPT_DIR")"/*/log; do cat "$f" 2>/dev/null | grep -q alice-was-here && echo "SAW-LOG $f"; done
ls "$(dirname "$FLEET_ATTEMPT_DIR")" >/dev/null 2>&1 && echo LISTED-ATTEMPTS
for f in "$(dirname "$(dirname "$FLEET_ATTEMPT_DIR")")"/lib/*/wrapper.py; do (echo "# x" >> "$f") 2>/dev/null && echo "WROTE-BUNDLE"; done
(echo evil > "$FLEET_INPUT_MODEL") 2>/dev/null && echo WROTE-CACHE
true
"""


@pytest.fixture
def traversable():
    """A work directory every account can pass through (pytest's temp dirs are root's)."""
    path = Path(tempfile.mkdtemp(prefix="fleet-iso-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@requires_sshd
@pytest.mark.parametrize("isolation", ["user", "none"])
def test_users_jobs_on_one_host_cannot_see_each_other_with_isolation_user(
        fleet, lab, tmp_path, traversable, isolation):
    """alice's job holds a secret in its environment and prints a marker in its log; bob's job
    on the same host looks for both, and tries to write fleet's bundle and a cached input.
    With isolation: user it finds nothing; with none it finds the environment (which is what
    `none` means, and proves the snoop works)."""
    host = lab.add_hosts("rtx5060", 1, kind="openssh", slots=2)[0]
    (fleet.home / "known_hosts").write_text(lab.known_hosts_text())
    inventory = lab.write_inventory(tmp_path / "inv.ini", extra_host_vars={host.name: {
        "fleet_isolation": isolation, "fleet_workdir": str(traversable / host.name)}})
    fleet.start(inventory)
    _, alice = add_user(fleet, "alice")
    _, bob = add_user(fleet, "bob")
    model = tmp_path / "model.bin"
    model.write_bytes(b"shared model\n")
    sha, size = bob.upload(model)
    alice.upload(model)
    ref = {"kind": "file", "filename": "model.bin", "files": {"model.bin": {"sha256": sha, "size": size}}}
    holder = alice.submit({"name": "holder", "envs": {"ALICE_SECRET": {"value": "s3cret-alice", "secret": True}},
                           "run": "echo alice-was-here; echo \"me=$(id -un)\"; sleep 30"})
    import time
    deadline = time.monotonic() + 60
    while "alice-was-here" not in log(alice, holder.id):
        assert time.monotonic() < deadline, "alice's job did not start"
        time.sleep(0.2)
    snoop = bob.submit({"name": "snoop", "run": SNOOP, "inputs": {"model": ref}})
    assert done(bob, snoop.id).state == "SUCCEEDED"
    seen = log(bob, snoop.id)
    alice.cancel(holder.id)
    assert done(alice, holder.id).state == "CANCELLED"
    if isolation == "user":
        assert "me=fleet-bob" in seen and "me=fleet-alice" in log(alice, holder.id)
        for finding in ("SAW-ENV", "SAW-LOG", "LISTED-ATTEMPTS", "WROTE-BUNDLE", "WROTE-CACHE"):
            assert finding not in seen, seen
    else:
        assert "SAW-ENV" in seen  # one account: jobs see each other (documented)
    check = alice.submit({"name": "check", "run": 'cat "$FLEET_INPUT_MODEL"', "inputs": {"model": ref}})
    assert done(alice, check.id).state == "SUCCEEDED"
    assert log(alice, check.id) == "shared model\n"  # whatever the snoop did, the input is intact
    alice.close()
    bob.close()
