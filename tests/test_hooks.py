"""Job hooks: Ansible playbooks (real ansible-playbook through ansible-runner, run by the real
server) before and after a job on its host (here the embedded default, ansible_connection
local), with the job's variables; their events in the job's log."""

from __future__ import annotations

import json

BEFORE = """
- hosts: all
  gather_facts: false
  tasks:
    - name: prepare the device
      ansible.builtin.copy:
        dest: "{{ marker_dir }}/before-{{ fleet_job_name }}"
        content: "{{ fleet_job_id }} {{ fleet_attempt_id }} {{ fleet_host }} {{ fleet_params.model }}\\n"
"""
AFTER = """
- hosts: all
  gather_facts: false
  tasks:
    - name: record the end
      ansible.builtin.shell: echo "{{ fleet_job_state }} {{ fleet_job_reason }} {{ fleet_exit_code }}" >> {{ marker_dir }}/after-{{ fleet_job_name }}
"""
FAIL = """
- hosts: all
  gather_facts: false
  tasks:
    - name: the device is not ready
      ansible.builtin.fail:
        msg: fan broken on {{ fleet_host }}
"""


def write(tmp_path, name, text, marker):
    path = tmp_path / name
    path.write_text(text.replace("{{ marker_dir }}", str(marker)))
    return path


def submit(fleet, tmp_path, name, run, hooks, extra=""):
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(f"name: {name}\nrun: {json.dumps(run)}\nparams: {{model: yolo}}\n"
                    f"hooks: {json.dumps(hooks)}\n{extra}")
    out = fleet.cli("submit", str(spec), "--wait", "--json", check=False, timeout=300)
    return json.loads(out.stdout)


def test_hooks_run_in_order_with_the_jobs_variables_and_log(fleet, tmp_path):
    fleet.start()
    marker = tmp_path / "marks"
    marker.mkdir()
    write(tmp_path, "before.yml", BEFORE, marker)
    write(tmp_path, "after.yml", AFTER, marker)
    job = submit(fleet, tmp_path, "ok", f"cat {marker}/before-ok", {"before": "before.yml", "after": "after.yml"})
    assert job["state"] == "SUCCEEDED", job
    attempt = job["attempt_list"][0]["id"]
    assert (marker / "before-ok").read_text() == f"{job['id']} {attempt} localhost yolo\n"
    assert (marker / "after-ok").read_text() == "SUCCEEDED succeeded 0\n"
    log = fleet.cli("logs", job["id"]).stdout
    first, job_out, last = log.index("[hook before"), log.index(f"{job['id']} {attempt}"), log.index("[hook after")
    assert first < job_out < last  # the before hook's events, what the job printed, the after hook's
    assert "ok: [localhost] prepare the device (changed)" in log

    failed = submit(fleet, tmp_path, "bad", "exit 4", {"after": "after.yml"})
    assert (failed["state"], failed["reason"]) == ("FAILED", "exit_nonzero")
    assert (marker / "after-bad").read_text() == "FAILED exit_nonzero 4\n"  # after runs after a failure too


def test_a_failing_before_hook_ends_the_job_setup_failed_without_running_it(fleet, tmp_path):
    fleet.start()
    marker = tmp_path / "marks"
    marker.mkdir()
    write(tmp_path, "fail.yml", FAIL, marker)
    write(tmp_path, "after.yml", AFTER, marker)
    job = submit(fleet, tmp_path, "blocked", f"touch {marker}/ran", {"before": "fail.yml", "after": "after.yml"})
    assert (job["state"], job["reason"]) == ("FAILED", "setup_failed")
    assert "before hook fail.yml failed on localhost" in job["message"] and "fan broken" in job["message"]
    assert not (marker / "ran").exists()
    assert (marker / "after-blocked").read_text().startswith("FAILED setup_failed")
    assert "FAILED: [localhost] the device is not ready" in fleet.cli("logs", job["id"]).stdout


def test_a_failing_after_hook_is_recorded_and_the_job_keeps_its_status(fleet, tmp_path):
    fleet.start()
    marker = tmp_path / "marks"
    marker.mkdir()
    write(tmp_path, "fail.yml", FAIL, marker)
    job = submit(fleet, tmp_path, "fine", "echo fine", {"after": "fail.yml"})
    assert (job["state"], job["reason"]) == ("SUCCEEDED", "succeeded")
    assert "after hook fail.yml failed on localhost" in job["message"]


def test_a_missing_hook_file_is_an_error_naming_the_field(fleet, tmp_path):
    fleet.start()
    spec = tmp_path / "x.yaml"
    spec.write_text("name: x\nrun: 'true'\nhooks: {before: nope.yml}\n")
    out = fleet.cli("submit", str(spec), check=False)
    assert out.returncode == 2 and "hooks.before: nope.yml: no such playbook file" in out.stderr


# ---------------------------------------------------------------------- the catalog (DESIGN.md §7)

STEAL = """
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.fail:
        msg: "{{ lookup('file', '%s') }}"
"""
ECHO_VARS = """
- hosts: all
  gather_facts: false
  tasks:
    - name: write what the job passed
      ansible.builtin.copy:
        dest: "{{ out }}"
        content: "mode={{ power_mode }} note={{ note }} model={{ fleet_params.model }}\\n"
"""
ECHO_META = """
description: Set the power mode before a benchmark
vars:
  power_mode: {type: int, description: nvpmodel mode id, default: 0}
  note: {type: str, required: true}
  out: {type: str, required: true}
"""


def bob(fleet):
    from tests.conftest import add_user

    return add_user(fleet, "bob")


def test_a_user_cannot_send_a_playbook_so_no_user_code_runs_on_the_controller(fleet, tmp_path, shared_local):
    """The attack: a non-admin's before hook reads the admin token on the controller through
    lookup('file') and puts it in the job's message. Refused at submit, naming the field."""
    fleet.start(shared_local)
    token_file = fleet.settings.token_file
    write(tmp_path, "steal.yml", STEAL % token_file, tmp_path)
    spec = tmp_path / "steal.yaml"
    spec.write_text("name: steal\nrun: 'true'\nhooks: {before: steal.yml, after: steal.yml}\n")
    bob_token, client = bob(fleet)
    env = {"FLEET_TOKEN": bob_token, "FLEET_SERVER": fleet.info.url}
    import os
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "fleet", "submit", str(spec)], capture_output=True,
                         text=True, env={**os.environ, **env}, timeout=120)
    assert out.returncode == 2, out
    assert "hooks.before: only admins may send a playbook" in out.stderr
    assert "hooks.after: only admins may send a playbook" in out.stderr
    assert client.jobs().items == []  # nothing was queued
    # The same through the API with an already uploaded playbook (a crafted request).
    sha, size = client.upload(tmp_path / "steal.yml")
    ref = {"kind": "file", "filename": "steal.yml", "files": {"steal.yml": {"sha256": sha, "size": size}}}
    import pytest

    from fleet.errors import ApiError
    with pytest.raises(ApiError) as err:
        client.submit({"name": "steal", "run": "true", "hooks": {"before": ref}})
    assert err.value.status == 422 and "only admins may send a playbook" in str(err.value)
    client.close()


def test_catalog_hooks_run_by_name_with_their_declared_variables(fleet, tmp_path, shared_local):
    fleet.start(shared_local)
    hooks_dir = fleet.settings.hooks_dir
    hooks_dir.mkdir()
    (hooks_dir / "power.yml").write_text(ECHO_VARS)
    (hooks_dir / "power.meta.yml").write_text(ECHO_META)
    (hooks_dir / "plain.yaml").write_text(BEFORE)
    (hooks_dir / "broken.yml").write_text(BEFORE)
    (hooks_dir / "broken.meta.yml").write_text("vars: {ansible_connection: {type: str}}\n")
    listed = {h["name"]: h for h in fleet.cli_json("hooks")}
    assert set(listed) == {"power", "plain", "broken"}
    assert listed["power"]["description"] == "Set the power mode before a benchmark"
    assert listed["power"]["vars"]["note"] == {"type": "str", "description": "", "required": True, "default": None}
    assert listed["power"]["vars"]["power_mode"]["default"] == 0
    assert "ansible_" in listed["broken"]["error"]  # a var that would change the connection
    text = fleet.cli("hooks").stdout
    assert "power  Set the power mode before a benchmark" in text and "note (str required)" in text

    _, client = bob(fleet)
    out = tmp_path / "hook-out"
    # What a user passes is data, never a template: a lookup in a variable or in the job's
    # params stays text (it would otherwise run on the controller).
    evil = "{{ lookup('pipe', 'id -un') }}"
    job = client.submit({"name": "bench", "run": "true", "params": {"model": evil},
                         "hooks": {"before": {"hook": "power", "vars": {"note": evil, "out": str(out)}}}})
    detail = client.wait(job.id, timeout=120)
    while detail.state not in ("SUCCEEDED", "FAILED"):
        detail = client.wait(job.id, timeout=120)
    assert detail.state == "SUCCEEDED", detail
    assert out.read_text() == f"mode=0 note={evil} model={evil}\n"
    log = b"".join(client.logs(job.id)).decode()
    assert "[hook before power] ok: [localhost] write what the job passed (changed)" in log

    import pytest

    from fleet.errors import ApiError
    cases = [
        ({"before": "nosuch"}, "hooks.before.hook: no hook named 'nosuch' in the catalog (known: broken, plain, power)"),
        ({"before": {"hook": "power", "vars": {"out": "x", "note": "n", "ansible_connection": "local"}}},
         "hooks.before.vars.ansible_connection: hook power declares no such variable"),
        ({"before": {"hook": "power", "vars": {"out": "x"}}}, "hooks.before.vars.note: required by hook power"),
        ({"after": {"hook": "power", "vars": {"out": "x", "note": "n", "power_mode": "max"}}},
         "hooks.after.vars.power_mode: must be int, not str"),
        ({"before": {"hook": "plain", "vars": {"x": 1}}}, "hooks.before.vars.x: hook plain declares no such variable (it takes: none)"),
        ({"before": "broken"}, "hooks.before.hook: hook 'broken' cannot be used: broken.meta.yml: vars.ansible_connection"),
    ]
    for hooks, message in cases:
        with pytest.raises(ApiError) as err:
            client.submit({"name": "x", "run": "true", "hooks": hooks})
        assert err.value.status == 422 and message in str(err.value), (hooks, str(err.value))
    client.close()
