"""Secrets in ``envs`` ({secret: ...}) reach the job and nothing else: not the database, not the
API, not the controller's logs, not job.json on the host (DESIGN.md §7)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import stat
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from fleet.models.spec import JobSpec, SecretValue
from fleet.secrets import PREFIX, Redactor, SecretBox, SecretError

# ---------------------------------------------------------------------- units


def test_redactor_masks_a_secret_split_at_any_point() -> None:
    secret = "hunter2-xyz"
    text = f"a {secret} b {secret}{secret}\nend {secret[:4]}".encode()
    for cut1, cut2 in itertools.combinations(range(len(text) + 1), 2):
        r = Redactor([secret, "other-secret"])
        out = r.feed(text[:cut1]) + r.feed(text[cut1:cut2]) + r.feed(text[cut2:]) + r.flush()
        assert out == text.replace(secret.encode(), b"*" * len(secret)), (cut1, cut2)


def test_redactor_byte_by_byte_overlapping_secrets_and_nothing_held_without_need() -> None:
    r = Redactor(["abab", "ba"])
    out = b"".join(r.feed(bytes([c])) for c in b"xababa-ba") + r.flush()
    assert out == b"x*****-**"
    r = Redactor(["secret"])
    assert r.feed(b"no match here\n") == b"no match here\n"  # nothing held back
    assert r.feed(b"ends with se") == b"ends with " and r.flush() == b"se"
    assert Redactor([]).feed(b"x") == b"x" and Redactor([""]).feed(b"x") == b"x"


def test_secret_box_seals_opens_and_keeps_its_key_private(tmp_path: Path) -> None:
    key = tmp_path / "home" / "secret.key"
    box = SecretBox(key)
    sealed = box.seal("pa$$ word")
    assert sealed.startswith(PREFIX) and "pa$$" not in sealed
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert SecretBox(key).open(sealed) == "pa$$ word"  # the key is read back, not remade
    assert box.open("stored before sealing existed") == "stored before sealing existed"
    other = tmp_path / "other.key"
    other.write_bytes(Fernet.generate_key())
    with pytest.raises(SecretError, match="cannot be decrypted"):
        SecretBox(other).open(sealed)
    spec = JobSpec(name="s", run="true", envs={"A": "plain", "B": SecretValue(value="hidden")})
    sealed_spec = box.seal_spec(spec)
    assert "hidden" not in sealed_spec.model_dump_json() and spec.envs["B"].value == "hidden"
    assert box.open_envs(sealed_spec) == ({"A": "plain", "B": "hidden"}, ["hidden"])


# ---------------------------------------------------------------------- end to end


def _files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_secret_reaches_the_job_and_nowhere_else(fleet, tmp_path: Path) -> None:
    fleet.start()
    secret = f"hunter2-{uuid.uuid4().hex}"
    digest = hashlib.sha256(secret.encode()).hexdigest()
    check = tmp_path / "check.py"
    check.write_text(
        "import hashlib, json, os, sys\n"
        f"ok = hashlib.sha256(os.environ['TOKEN'].encode()).hexdigest() == {digest!r}\n"
        "job = open('job.json').read()\n"  # cwd is the attempt directory
        "print('job.json holds the token:', os.environ['TOKEN'] in job)\n"
        "sys.exit(0 if ok else 1)\n"
    )
    spec = tmp_path / "secret.yaml"
    # Printed whole, then in two halves with a pause between (two log chunks), then on stderr.
    spec.write_text(json.dumps({
        "name": "secret",
        "envs": {"TOKEN": {"secret": True, "value": secret}, "PLAIN": "visible"},
        "run": (f'echo "token=$TOKEN plain=$PLAIN"; printf %s "$TOKEN" | head -c 10; sleep 0.3; '
                f'printf "%s\\n" "$TOKEN" | tail -c +11; echo "$TOKEN" >&2; '
                f"{sys.executable} {check}"),
    }))
    proc = fleet.cli("submit", str(spec), "--wait", "--json", check=False)
    detail = json.loads(proc.stdout)
    assert detail["state"] == "SUCCEEDED", (detail, fleet.server_log())  # the job got the value
    job_id = detail["id"]
    mask = "*" * len(secret)

    logs = fleet.cli("logs", job_id).stdout
    assert secret not in logs
    assert logs.splitlines()[:4] == [f"token={mask} plain=visible", mask, mask,
                                     "job.json holds the token: False"]

    # Every answer of the API about the job.
    token = fleet.settings.token_file.read_text().strip()
    with httpx.Client(base_url=fleet.info.url, headers={"Authorization": f"Bearer {token}"}) as http:
        for path in (f"/jobs/{job_id}", "/jobs", f"/jobs/{job_id}/logs", f"/jobs/{job_id}/why",
                     f"/jobs/{job_id}/wait", "/results"):
            resp = http.get(path)
            assert resp.status_code == 200 and secret not in resp.text, path
        shown = http.get(f"/jobs/{job_id}").json()["spec"]["envs"]
    assert shown == {"TOKEN": {"value": "***", "secret": True}, "PLAIN": "visible"}
    assert secret not in fleet.cli("status", job_id, "--json").stdout

    # The database holds it sealed; no file of the controller holds it in clear.
    fleet.stop()
    home = fleet.home
    db = b"".join(p.read_bytes() for p in home.glob("fleet.db*"))
    assert secret.encode() not in db and PREFIX.encode() in db
    assert stat.S_IMODE((home / "secret.key").stat().st_mode) == 0o600
    host_side = home / "local-host"  # the embedded host's own directory, i.e. the device
    leaks = [p for p in _files_holding(home, secret.encode()) if host_side not in p.parents]
    assert leaks == []
    # On the device only the job's own output holds it (it printed it); job.json does not.
    on_host = _files_holding(host_side, secret.encode())
    assert [p.name for p in on_host] == ["log"]
    for job_json in host_side.rglob("job.json"):
        assert secret not in job_json.read_text()


def test_sealed_secret_survives_a_restart_and_a_lost_key_fails_the_job_clearly(fleet) -> None:
    client = fleet.start()
    client.host_action("localhost", "drain")
    secret = f"s3cret-{uuid.uuid4().hex}"
    spec = {"name": "later", "envs": {"T": {"secret": True, "value": secret}},
            "run": f'test "$T" = "{secret}"'}
    ok = client.submit(spec).id
    fleet.stop()
    client = fleet.start()  # a new process reads the same key
    client.host_action("localhost", "undrain")
    assert client.wait(ok, 60).state == "SUCCEEDED", fleet.server_log()

    client.host_action("localhost", "drain")
    lost = client.submit(spec).id
    fleet.stop()
    (fleet.home / "secret.key").write_bytes(Fernet.generate_key())  # the operator lost the key
    client = fleet.start()
    client.host_action("localhost", "undrain")
    detail = client.wait(lost, 60)
    assert detail.state == "FAILED" and detail.reason == "setup_failed", detail
    log = b"".join(client.logs(lost)).decode()
    assert "cannot be decrypted" in log and secret not in log
    assert "Traceback" not in fleet.server_log()


def test_secret_env_with_shell_metacharacters_arrives_verbatim(fleet, tmp_path: Path) -> None:
    client = fleet.start()
    marker = tmp_path / "pwned"
    secret = f"$(touch {marker}) `touch {marker}`; touch {marker} '\"\n"
    out = tmp_path / "got"
    job = client.submit({"name": "meta", "envs": {"S": {"secret": True, "value": secret}},
                         "run": f'printf %s "$S" > {out}'}).id
    assert client.wait(job, 60).state == "SUCCEEDED"
    assert out.read_text() == secret and not marker.exists()
    assert os.path.getsize(out) == len(secret.encode())
