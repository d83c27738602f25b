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
