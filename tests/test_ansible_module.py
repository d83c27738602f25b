"""The fleet.lab collection's fleet_job module, run by the real ansible-playbook against a real
fleet serve (embedded default host)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COLLECTIONS = REPO / "playbooks" / "collections"
BIN = Path(sys.executable).parent


def playbook(fleet, tmp_path, text: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "play.yml"
    path.write_text(text)
    return run(fleet, tmp_path, str(path), *args, check=check)


def run(fleet, tmp_path, path: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    info = json.loads(fleet.settings.server_file.read_text())
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), FLEET_SERVER=info["url"],
               FLEET_TOKEN=fleet.settings.token_file.read_text().strip(), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "atmp"), ANSIBLE_PYTHON_INTERPRETER=sys.executable,
               PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    proc = subprocess.run([str(BIN / "ansible-playbook"), path, *args], env=env, capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return proc


def dumped(tmp_path, name: str) -> dict:
    """What a playbook's ``dump`` task wrote for the registered variable ``name``."""
    return json.loads((tmp_path / f"{name}.json").read_text())


def dump(tmp_path, *names: str) -> str:
    """Tasks that write registered variables to files the test reads."""
    return "".join(f"""
    - name: dump {n}
      ansible.builtin.copy: {{content: "{{{{ {n} | to_json }}}}", dest: "{tmp_path / (n + '.json')}"}}
""" for n in names)


SUBMIT = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: submit
      fleet.lab.fleet_job:
        spec: {name: from-ansible, run: "echo hello from $FLEET_HOST"}
        wait: true
      register: job
    - name: check
      ansible.builtin.assert:
        that: [job.state == "SUCCEEDED", job.host == "localhost", job.reason == "succeeded"]
      when: not ansible_check_mode
"""


@pytest.mark.long
def test_submit_and_wait_from_a_playbook(fleet, tmp_path):
    client = fleet.start()
    playbook(fleet, tmp_path, SUBMIT + dump(tmp_path, "job"))
    res = dumped(tmp_path, "job")
    assert res["changed"] and res["submitted"] and res["state"] == "SUCCEEDED"
    assert client.job(res["job_id"]).name == "from-ansible"
    assert b"".join(client.logs(res["job_id"])).decode() == "hello from localhost\n"


def test_check_mode_submits_nothing(fleet, tmp_path):
    client = fleet.start()
    # (copy writes nothing in check mode: the module's answer is read from the output)
    proc = playbook(fleet, tmp_path, SUBMIT.replace("register: job", "register: job\n    - debug: var=job"), "--check")
    assert '"submitted": false' in proc.stdout and '"job_id": null' in proc.stdout
    assert client.jobs().items == []


@pytest.mark.long
def test_the_example_benchmark_playbook_runs_and_asserts_on_the_result(fleet, tmp_path):
    fleet.start()
    client = fleet.client
    proc = run(fleet, tmp_path, "playbooks/submit_benchmark.yml")
    assert "latency mean" in proc.stdout and "p99" in proc.stdout
    (job,) = client.jobs().items
    detail = client.job(job.id)
    assert detail.state == "SUCCEEDED" and detail.result["tool"]["name"] == "onnxruntime"
    assert f"{job.id} on localhost" in proc.stdout
    failing = run(fleet, tmp_path, "playbooks/submit_benchmark.yml", "-e", "max_p99_ms=0", check=False)
    assert failing.returncode != 0 and "is over 0 ms" in failing.stdout


def test_job_failures_and_bad_specs_fail_the_task_clearly(fleet, tmp_path):
    fleet.start()
    text = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: failing job
      fleet.lab.fleet_job: {spec: {name: boom, run: "exit 5"}, wait: true}
      ignore_errors: true
      register: boom
    - name: failing job tolerated
      fleet.lab.fleet_job: {spec: {name: boom2, run: "exit 5"}, wait: true, fail_on_job_failure: false}
      register: tolerated
    - name: bad spec
      fleet.lab.fleet_job: {spec: {name: bad, run: "true", runn: typo}}
      ignore_errors: true
      register: bad
""" + dump(tmp_path, "boom", "tolerated", "bad")
    playbook(fleet, tmp_path, text)
    boom = dumped(tmp_path, "boom")
    assert boom["failed"] and "ended FAILED (exit_nonzero)" in boom["msg"] and boom["state"] == "FAILED"
    tolerated = dumped(tmp_path, "tolerated")
    assert not tolerated.get("failed") and tolerated["state"] == "FAILED" and tolerated["reason"] == "exit_nonzero"
    bad = dumped(tmp_path, "bad")
    assert bad["failed"] and "HTTP 422" in bad["msg"] and "runn: unknown field" in bad["msg"]


def test_spec_file_inputs_are_uploaded(fleet, tmp_path):
    client = fleet.start()
    (tmp_path / "data.txt").write_text("payload 42\n")
    (tmp_path / "job.yaml").write_text("name: with-input\ninputs: {data: data.txt}\nrun: 'cat \"$FLEET_INPUT_DATA\"'\n")
    playbook(fleet, tmp_path, f"""
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: from file
      fleet.lab.fleet_job: {{spec_file: "{tmp_path / 'job.yaml'}", wait: true}}
      register: res
""" + dump(tmp_path, "res"))
    res = dumped(tmp_path, "res")
    assert b"".join(client.logs(res["job_id"])).decode() == "payload 42\n"


def test_module_documentation_parses():
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([str(BIN / "ansible-doc"), "--json", "fleet.lab.fleet_job"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)["fleet.lab.fleet_job"]["doc"]
    assert {"spec", "spec_file", "wait", "server", "token"} <= set(doc["options"])
