"""Runner images (images/, fleet.images, ``fleet images``): every Containerfile is hadolint
clean; the compatibility rules (L4T, HailoRT); the build commands per image and architecture;
and the CPU image built here, for real, on a base made of this machine's own Python (no
registry reachable), then run: the ONNX Runtime runner inside it gives the record it gives on
the host. GPU, Jetson and Hailo images are linted and their build commands checked only: their
bases (nvcr.io, docker.io) and HailoRT packages cannot be reached here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fleet import images as img
from tests.helpers import eventually, kill_server
from tests.lab.fixtures import requires_sshd

# One worker builds the CPU image once (a module fixture): the tests that use it go together.
pytestmark = pytest.mark.xdist_group("images")

REPO = Path(__file__).resolve().parent.parent
PODMAN = ["podman", "--runtime", "runc"]
RUN = [*PODMAN, "run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def test_every_containerfile_is_hadolint_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    files = sorted(REPO.glob("images/*/Containerfile"))
    assert {f.parent.name for f in files} == set(img.IMAGES)
    out = subprocess.run([hadolint, *map(str, files)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    for f in files:
        text = f.read_text()
        assert "USER 10001" in text, f"{f}: runs as root"
        assert "COPY runners/ /opt/fleet/lib/" in text, f"{f}: lacks fleet's runners and agent"
        assert "org.opencontainers.image.title" in text and "dev.fleet.runner" in text


@pytest.mark.parametrize(("host", "image", "ok"), [
    ("36.4.0", "36.4.0", True), ("36.4.3", "36.4.0", True), ("r36.4", "36.4.0", True),
    ("36.3.0", "36.4.0", False), ("36.4.0", "36.3.0", False),
    ("35.4.1", "35.1.0", True), ("35.1", "35.4.1", True),
    ("35.4.1", "36.4.0", False), ("36.4.0", "35.4.1", False), ("", "36.4.0", False),
])
def test_l4t_rule(host, image, ok):
    why = img.l4t_compatible(host, image)
    assert (why is None) is ok, why


def test_hailort_must_equal_the_driver():
    assert img.hailort_compatible("4.20.0", "4.20.0") is None
    assert "must be equal" in img.hailort_compatible("4.19.0", "4.20.0")
    assert "unknown" in img.hailort_compatible("", "4.20.0")


def test_build_commands_name_platform_tag_and_versions(tmp_path):
    cmd = img.build_command("cpu-ort", "aarch64", REPO, tool="podman", base="localhost/b:1", runtime="runc")
    assert cmd[:3] == ["podman", "build", "--platform"] and cmd[3] == "linux/arm64"
    assert "fleet-runner-cpu-ort:1.20.1-aarch64" in cmd and "--pull=never" in cmd
    assert "BASE=localhost/b:1" in cmd and cmd[-1] == str(REPO)
    notes = {cmd[i + 1] for i, word in enumerate(cmd) if word == "--annotation"}  # OCI manifest annotations
    assert {"dev.fleet.runner=onnxruntime", "dev.fleet.onnxruntime=1.20.1",
            "org.opencontainers.image.title=fleet-runner-cpu-ort"} <= notes, notes
    jetson = img.build_command("jetson-r36", "aarch64", REPO, tool="podman")
    assert {"dev.fleet.l4t=36.4.0", "dev.fleet.runner=tensorrt"} <= {
        jetson[i + 1] for i, word in enumerate(jetson) if word == "--annotation"}
    hailo = img.build_command("hailo", "x86_64", REPO, tool="/usr/bin/buildah", args={"HAILORT_VERSION": "4.19.0"})
    assert hailo[1] == "bud" and "fleet-runner-hailo:4.19.0-x86_64" in hailo
    with pytest.raises(img.FleetError, match="built for aarch64, not x86_64"):
        img.build_command("jetson-r36", "x86_64", REPO, tool="podman")
    with pytest.raises(img.FleetError, match="no image named"):
        img.build_command("nope", "x86_64", REPO, tool="podman")


def _have_podman() -> str | None:
    if not shutil.which("podman") or not shutil.which("runc") or not shutil.which("busybox"):
        return "podman, runc and busybox-static are not installed (.ci/run installs them)"
    probe = subprocess.run([*PODMAN, "info"], capture_output=True, text=True, check=False)
    return None if probe.returncode == 0 else f"podman cannot run here: {probe.stderr[-300:]}"


@pytest.fixture(scope="module")
def cpu_image():
    """The CPU runner image, built here for real on a base of this machine's own Python."""
    why = _have_podman()
    if why:
        pytest.skip(why)
    base = f"localhost/fleet-hostbase:test-{os.getpid()}"
    subprocess.run([sys.executable, str(REPO / "images" / "hostbase.py"), base], check=True, cwd=REPO,
                   capture_output=True)
    built = subprocess.run([sys.executable, "-m", "fleet", "images", "build", "cpu-ort", "--arch", "x86_64",
                            "--base", base, "--runtime", "runc", "--build-arg", f"ORT_VERSION=test{os.getpid()}"],
                           capture_output=True, text=True, check=False, cwd=REPO)
    assert built.returncode == 0, built.stdout + built.stderr
    image = built.stdout.strip().splitlines()[-1]
    yield image
    subprocess.run([*PODMAN, "rmi", "-f", image, base], capture_output=True, check=False)


@pytest.mark.long
@pytest.mark.timeout(600)
def test_the_cpu_image_builds_here_and_runs_the_onnxruntime_runner_as_the_host_does(tmp_path, cpu_image):
    image = cpu_image
    meta = json.loads(subprocess.run([*PODMAN, "image", "inspect", image], capture_output=True, text=True,
                                     check=True).stdout)[0]
    labels = meta["Config"]["Labels"] if "Config" in meta else meta["Labels"]
    assert labels["dev.fleet.runner"] == "onnxruntime"
    assert labels["org.opencontainers.image.title"] == "fleet-runner-cpu-ort"
    assert meta["Config"]["User"] == "10001:10001"
    assert meta["Annotations"]["dev.fleet.runner"] == "onnxruntime"  # in the manifest too
    assert meta["Annotations"]["dev.fleet.onnxruntime"] == f"test{os.getpid()}"

    def run_here(where: Path, argv: list[str]) -> dict:
        where.mkdir(mode=0o777)
        os.chmod(where, 0o777)
        shutil.copy(REPO / "examples" / "models" / "tinycnn.onnx", where / "tinycnn.onnx")
        (where / "job.json").write_text(json.dumps({
            "schema": 1, "job_id": "j1", "attempt_id": "a1", "host": "h", "name": "ort", "kind": "benchmark",
            "runner": "onnxruntime", "device_class": "x86_64/cpu", "inputs": {"model": "tinycnn.onnx"},
            "params": {"warmup": 2, "iterations": 20, "threads": 1}, "outputs": []}))
        done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=where)
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads((where / "result.json").read_text())

    inside = run_here(tmp_path / "in", [*RUN, "-v", f"{tmp_path / 'in'}:/fleet/attempt", "-w", "/fleet/attempt",
                                        image, "python3", "/opt/fleet/lib/onnxruntime/run.py", "job.json"])
    host = run_here(tmp_path / "host", [sys.executable, str(REPO / "runners" / "onnxruntime" / "run.py"),
                                        "job.json"])
    # the same record: model, shapes, tool and its version, metrics present; only timings differ
    assert inside["model"] == host["model"]
    assert inside["tool"]["name"] == host["tool"]["name"] == "onnxruntime"
    assert inside["tool"]["version"] == host["tool"]["version"]
    assert set(inside["metrics"]) == set(host["metrics"])
    assert inside["metrics"]["latency_ms"]["median"] > 0


@pytest.mark.long
@pytest.mark.timeout(600)
def test_jobs_with_image_run_in_it_on_a_host_with_an_engine(fleet, cpu_image, tmp_path):
    """``image:`` on a host with ``fleet_container_engine``: the job runs in the container (the
    image's files, no network, the attempt directory mounted), a runner job's record carries the
    image digest; cancel and timeout stop the container, and nothing is left."""
    inv = tmp_path / "hosts.yml"
    inv.write_text(json.dumps({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "fleet_slots": 3, "fleet_container_engine": "podman",
        "fleet_container_runtime": "runc",
        "fleet_container_args": ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]}}}}))
    # a container a crash left (labelled by this fleet): the retention pass removes it; one that
    # is not this fleet's stays
    from fleet.config import load_settings
    workdir = str(load_settings().local_workdir)
    # names of this run's own (a parallel run of the suite shares the machine's containers)
    tag = uuid.uuid4().hex[:8]
    stray, foreign = f"fleet-a0stray{tag}", f"fleet-a0other{tag}"
    subprocess.run([*PODMAN, "create", "--name", stray, "--label", f"dev.fleet.workdir={workdir}",
                    cpu_image, "true"], capture_output=True, check=True)
    subprocess.run([*PODMAN, "create", "--name", foreign, cpu_image, "true"], capture_output=True, check=True)
    client = fleet.start(inv, config={"gc_interval": 1})
    shell = client.submit({"name": "inside", "image": cpu_image, "envs": {"GREETING": "hello"},
                           "setup": "echo prepared > prep.txt",
                           "run": 'grep -c "^fleet:x:10001" /etc/passwd; ls /sys/class/net; echo "$GREETING"; '
                                  'echo "digest=$FLEET_IMAGE_DIGEST"; cat prep.txt; pwd'}).id
    job = client.wait(shell, 120)
    log = b"".join(client.logs(shell)).decode()
    assert job.state == "SUCCEEDED", (job, log)
    lines = log.split()
    assert lines[:3] == ["1", "lo", "hello"], log  # the image's /etc/passwd; only loopback
    assert "digest=sha256:" in log and lines[-2:] == ["prepared", "/fleet/attempt"]  # setup ran inside
    missing = client.wait(client.submit({"name": "missing", "image": "localhost/no-such-image:1", "pull": "never",
                                         "run": "true"}).id, 60)
    assert (missing.state, missing.reason) == ("FAILED", "setup_failed"), missing
    assert "not on this host and the job's pull policy is never" in b"".join(client.logs(missing.id)).decode()

    sha, size = client.upload(REPO / "examples" / "models" / "tinycnn.onnx")
    inputs = {"model": {"kind": "file", "filename": "tinycnn.onnx",
                        "files": {"tinycnn.onnx": {"sha256": sha, "size": size}}}}
    bench = client.wait(client.submit({"name": "ort-in-image", "kind": "benchmark", "runner": "onnxruntime",
                                       "image": cpu_image, "inputs": inputs,
                                       "params": {"warmup": 2, "iterations": 20}}).id, 120)
    assert bench.state == "SUCCEEDED", bench
    assert bench.result["environment"]["image_digest"].startswith("sha256:")
    assert bench.result["model"]["sha256"] == sha
    other = tmp_path / "other.bin"  # another job's input, in the same host cache
    other.write_bytes(b"secret weights")
    other_sha, other_size = client.upload(other)
    seed = client.submit({"name": "seed", "inputs": {"w": {"kind": "file", "filename": "w.bin", "files": {
        "w.bin": {"sha256": other_sha, "size": other_size}}}}, "run": "true"}).id  # now in the host's cache
    assert client.wait(seed, 60).state == "SUCCEEDED"
    peek = client.wait(client.submit({
        "name": "peek", "image": cpu_image, "inputs": {"mine": {"kind": "file", "filename": "m.onnx", "files": {
            "m.onnx": {"sha256": sha, "size": size}}}},
        "run": f'ls "$(dirname "$(readlink inputs/m.onnx)")"; cat "$(dirname "$(readlink inputs/m.onnx)")/{other_sha}" '
               '|| echo not-visible'}).id, 120)
    seen = b"".join(client.logs(peek.id)).decode()
    assert peek.state == "SUCCEEDED" and "not-visible" in seen and "secret weights" not in seen, seen
    assert other_sha not in seen.split()

    nap = client.submit({"name": "nap", "image": cpu_image, "run": "sleep 60"}).id
    slow = client.submit({"name": "slow", "image": cpu_image, "timeout": 2, "run": "sleep 60"}).id
    attempt = eventually(lambda: (d := client.job(nap)).state == "RUNNING" and d.attempt_list[0].id, what="nap running")
    client.cancel(nap)
    cancelled = client.wait(nap, 60)
    assert cancelled.state == "CANCELLED"
    timed_out = client.wait(slow, 60)
    assert timed_out.state == "TIMED_OUT"
    # the TERM reached the job (an init is PID 1 and passes it on): 143, not a KILL's 137
    assert timed_out.attempt_list[0].exit_code == 143, timed_out.attempt_list

    def containers(*filters: str) -> list[str]:
        return subprocess.run([*PODMAN, "ps", "-a", *filters, "--format", "{{.Names}}"], capture_output=True,
                              text=True, check=False).stdout.split()

    assert attempt
    eventually(lambda: containers("--filter", f"label=dev.fleet.workdir={workdir}") == [], timeout=30,
               what="the stopped and the stray containers removed")
    assert foreign in containers()  # the other fleet's kept
    subprocess.run([*PODMAN, "rm", "-f", foreign], capture_output=True, check=False)


def test_each_class_gets_its_device_the_engines_way_and_only_engine_hosts_take_image_jobs():
    from fleet import containers
    from fleet.inventory import Host
    from fleet.models.spec import JobSpec
    from fleet.scheduler.placement import Demand, static_reason

    assert containers.devices("podman", "x86_64/nvidia-t4") == ["--device", "nvidia.com/gpu=all"]  # CDI
    assert containers.devices("docker", "x86_64/rtx5060") == ["--gpus", "all"]
    assert containers.devices("docker", "aarch64/jetson-orin-nano") == ["--runtime", "nvidia"]
    assert containers.devices("podman", "aarch64/jetson-orin-nano") == ["--device", "nvidia.com/gpu=all"]
    assert containers.devices("podman", "x86_64/hailo8") == ["--device", "/dev/hailo0"]
    assert containers.devices("docker", "x86_64/cpu") == []
    plain = Host(name="plain", pools=(), arch="x86_64", accelerator="cpu", slots=1)
    engine = Host(name="engine", pools=(), arch="x86_64", accelerator="cpu", slots=1, container_engine="docker")
    demand = Demand.of(JobSpec.model_validate({"name": "x", "image": "cpu-ort", "run": "true"}))
    assert demand.image == "cpu-ort" and demand.key.endswith("[cpu-ort]")
    assert static_reason(demand, plain, None) == "no container engine (the job has image:; set fleet_container_engine)"
    assert static_reason(demand, engine, None) is None
    assert containers.resolve("cpu-ort", engine) == "fleet-runner-cpu-ort:1.20.1-x86_64"
    assert containers.resolve("cpu-ort", engine, "reg.example/fleet") == "reg.example/fleet/fleet-runner-cpu-ort:1.20.1-x86_64"
    assert containers.resolve("docker.io/library/python:3.11", engine) == "docker.io/library/python:3.11"
    # before a job runs in a Jetson or Hailo image, the host's L4T / HailoRT must fit it
    jetson = Host(name="j", pools=(), arch="aarch64", accelerator="jetson-orin-nano", slots=1, container_engine="docker")
    r36 = Demand.of(JobSpec.model_validate({"name": "x", "image": "jetson-r36", "run": "true"}))
    assert static_reason(r36, jetson, None, {"l4t": "36.4.3"}) is None
    assert "from r36 on, images match the host's minor release" in static_reason(r36, jetson, None, {"l4t": "36.3.0"})
    assert "L4T release unknown" in static_reason(r36, jetson, None, {})
    assert static_reason(r36, engine, None) == "image jetson-r36 is built for aarch64"
    hailo = Demand.of(JobSpec.model_validate({"name": "x", "image": "hailo", "run": "true"}))
    assert static_reason(hailo, engine, None, {"hailort": "4.20.0"}) is None
    assert "they must be equal" in static_reason(hailo, engine, None, {"hailort": "4.19.0"})
    # isolation: container runs every job in a container: the spec's image or the host's (pool's) default
    plain_job = Demand.of(JobSpec.model_validate({"name": "x", "run": "true"}))
    boxed = Host(name="boxed", pools=(), arch="x86_64", accelerator="cpu", slots=1, container_engine="podman",
                 isolation="container")
    assert static_reason(plain_job, boxed, None) == (
        "isolation: container and the job names no image (set image:, or fleet_container_image)")
    assert static_reason(demand, boxed, None) is None
    from dataclasses import replace

    from fleet.scheduler import plans
    defaulted = replace(boxed, container_image="hailo")
    assert "hailo_pci driver version is unknown" in (static_reason(plain_job, defaulted, None, {}) or "")  # the default image's rules hold
    spec = JobSpec.model_validate({"name": "x", "run": "true"})
    assert plans.account_for(boxed, "alice", "root") == "fleet-alice"
    plan = plans.build("j1", spec, "a1", replace(boxed, container_image="cpu-ort"), env={}, secrets=[],
                       secret_failure=None, inputs=[], grace=5, run_as="fleet-alice")
    assert plan.image == "cpu-ort"
    script = containers.wrap(engine, "img:1", "a1", ["python3", "x.py"], network=False, grace=10)[2]
    assert "docker run --rm --name fleet-a1" in script and "--network none" in script and "--gpus" not in script
    assert '--init --user "$FLEET_CONTAINER_USER" --cap-drop all --security-opt no-new-privileges' in script
    assert containers.limits(engine, 1, None) == ("--pids-limit", "4096")  # never probed: processes only
    assert containers.limits(engine, 4, {"cores": 6, "memory_mb": 8000}) == (  # slots past the host's: all of it
        "--pids-limit", "4096", "--cpus", "6.00", "--memory", "8000m")
    sha = "ab" * 32
    mounts = containers.wrap(engine, "img:1", "a1", ["true"], network=False, grace=1, inputs=[sha])[2]
    assert f'-v "$cache/{sha}:$cache/{sha}:ro"' in mounts and '-v "$cache:' not in mounts  # its inputs only
    with pytest.raises(ValueError):
        containers.wrap(engine, "img:1", "a1", ["true"], network=False, grace=1, inputs=["x; rm -rf /"])


@pytest.mark.timeout(300)
def test_a_container_job_survives_a_controller_kill_9_and_runs_once(fleet, cpu_image, tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text(json.dumps({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "fleet_container_engine": "podman", "fleet_container_runtime": "runc",
        "fleet_container_args": ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]}}}}))
    client = fleet.start(inv)
    script = 'i=0; while [ $i -lt 40 ]; do echo "line $i"; i=$((i+1)); sleep 0.1; done'
    job = client.submit({"name": "long", "image": cpu_image, "run": script}).id
    eventually(lambda: client.job(job).state == "RUNNING", what="running in its container")
    kill_server(fleet)
    client = fleet.start(inv)
    done = client.wait(job, 120)
    assert done.state == "SUCCEEDED" and len(done.attempt_list) == 1, done
    assert b"".join(client.logs(job)).decode() == "".join(f"line {i}\n" for i in range(40))


def test_image_fields_are_checked_and_a_guest_never_gets_the_controllers_engine(fleet, tmp_path):
    """What a user sends about images is checked before anything runs: an image name that is
    not a reference (flags, shell words, too long), an unknown pull policy; and a non-admin's
    container job is refused on the controller's own machine (it would run as the server's
    account), saying why."""
    from fleet.errors import ApiError
    from tests.conftest import add_user

    inv = tmp_path / "hosts.yml"
    inv.write_text(json.dumps({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "fleet_container_engine": "podman"}}}}))
    fleet.start(inv)
    _, alice = add_user(fleet, "alice")
    for image in ["--privileged", "x; rm -rf /", "a" * 300, "img:1 --network=host", "$(id)"]:
        with pytest.raises(ApiError) as info:
            alice.submit({"name": "bad", "image": image, "run": "true"})
        assert info.value.status == 422 and "image" in str(info.value), (image, info.value)
    with pytest.raises(ApiError) as info:
        alice.submit({"name": "bad", "image": "cpu-ort", "pull": "sometimes", "run": "true"})
    assert info.value.status == 422 and "pull" in str(info.value)
    with pytest.raises(ApiError) as info:
        alice.submit({"name": "guest", "image": "cpu-ort", "run": "id"})
    assert "runs only the server owner's jobs" in str(info.value), info.value


SNOOP = r"""
echo "uid=$(id -u) gid=$(id -g)"
for p in /proc/[0-9]*; do
  tr '\0' '\n' < "$p/environ" 2>/dev/null | grep -q "^ALICE_SECRET=" && echo "SAW-ENV $p"
  tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -q "slee""p 60" && echo "SAW-PROC $p"
done
ls /proc | grep -c '^[0-9]' | sed 's/^/procs=/'
grep -r alice-was-here / --exclude-dir=proc --exclude-dir=sys 2>/dev/null | head -1 | sed 's/^/SAW-LOG /'
grep '^CapEff' /proc/self/status; grep '^NoNewPrivs' /proc/self/status
echo "net=$(ls /sys/class/net | tr '\n' ' ')"
echo "path=$PATH conf=$CONTAINERS_CONF"
echo made-by-bob > out.txt
"""


@requires_sshd
@pytest.mark.timeout(300)
def test_isolation_container_runs_each_users_job_in_a_container_of_its_own_as_their_account(
        fleet, lab, cpu_image, tmp_path):
    """``fleet_isolation: container``: every job runs in a container (the host's
    ``fleet_container_image`` when the spec names none) as its fleet user's own account, with
    no capabilities and no network; bob's job sees nothing of alice's (her processes, her
    secret, her log) and its variables never steer the engine, which runs as root (a
    CONTAINERS_CONF that would break podman reaches only the container)."""
    import tempfile

    from tests.conftest import add_user
    host = lab.add_hosts("rtx5060", 1, kind="openssh", slots=3)[0]
    (fleet.home / "known_hosts").write_text(lab.known_hosts_text())
    work = Path(tempfile.mkdtemp(prefix="fleet-ctr-"))
    work.chmod(0o711)
    try:
        inv = lab.write_inventory(tmp_path / "inv.ini", extra_host_vars={host.name: {
            "fleet_isolation": "container", "fleet_accelerator": "cpu", "fleet_workdir": str(work / host.name),
            "fleet_container_engine": "podman", "fleet_container_runtime": "runc", "fleet_container_image": cpu_image,
            "fleet_container_args": ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]}})
        fleet.start(inv)
        _, alice = add_user(fleet, "alice")
        _, bob = add_user(fleet, "bob")
        holder = alice.submit({"name": "holder", "envs": {"ALICE_SECRET": {"value": "s3cret-alice", "secret": True}},
                               "run": "echo alice-was-here; echo \"uid=$(id -u)\"; sleep 60"}).id
        eventually(lambda: "alice-was-here" in b"".join(alice.logs(holder)).decode(), timeout=120,
                   what="alice's job running")
        snoop = bob.submit({"name": "snoop", "run": SNOOP, "outputs": ["out.txt"],
                            "envs": {"PATH": "/evil/bin:/usr/bin:/bin", "CONTAINERS_CONF": "/nonexistent.conf"}}).id
        done = bob.wait(snoop, 120)
        seen = b"".join(bob.logs(snoop)).decode()
        assert done.state == "SUCCEEDED", (done, seen)
        alice.cancel(holder)
        assert alice.wait(holder, 60).state == "CANCELLED"
        # the accounts live in the host's /etc (the lab's sshd has an /etc of its own)
        bob_uid = int(seen.split("uid=")[1].split()[0])
        alice_uid = int(b"".join(alice.logs(holder)).decode().split("uid=")[1].split()[0])
        assert bob_uid != alice_uid and 0 not in (bob_uid, alice_uid) and bob_uid >= 100, seen
        for finding in ("SAW-ENV", "SAW-PROC", "SAW-LOG"):
            assert finding not in seen, seen
        assert "CapEff:\t0000000000000000" in seen and "NoNewPrivs:\t1" in seen, seen
        assert "net=lo " in seen and "path=/evil/bin:/usr/bin:/bin conf=/nonexistent.conf" in seen, seen
        assert int(seen.split("procs=")[1].split()[0]) <= 5, seen  # its own shell and children only
        import io

        page = bob.artifacts(job=snoop)  # what the job wrote as its account is collected
        out = [a for a in page.items if a.name.endswith("out.txt")]
        assert len(out) == 1, page
        buf = io.BytesIO()
        bob.download_artifact(out[0].id, buf)
        assert buf.getvalue() == b"made-by-bob\n"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _accepts(path: Path) -> bool:
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


@pytest.fixture
def podman_api(tmp_path):
    """podman's Docker-compatible API on a socket of its own, and the Docker SDK speaking to it."""
    docker = pytest.importorskip("docker")
    sock = tmp_path / "podman.sock"
    service = subprocess.Popen([*PODMAN, "system", "service", "--time=0", f"unix://{sock}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # The socket file appears before podman listens on it (CI once met 'Connection refused'
        # in DockerClient(), which asks the version at once): wait until a connect succeeds.
        eventually(lambda: _accepts(sock), timeout=30, what="podman's API socket accepting")
        client = docker.DockerClient(base_url=f"unix://{sock}")
        eventually(lambda: bool(client.ping()), timeout=30, what="podman's API answering")
        yield client
        client.close()
    finally:
        service.terminate()
        service.wait(10)


@pytest.fixture(scope="module")
def class_devices():
    """The device nodes the classes' flags name, where this machine has none: /dev/hailo0 (a
    character device like /dev/null) and a CDI spec for nvidia.com/gpu=all giving /dev/nvidia0
    (as the NVIDIA Container Toolkit's would). A machine with its own keeps them.

    Several test processes (xdist workers) may run these tests at once and share the stand-ins:
    each holds a shared lock while it uses them, and the last one out removes them (the first
    one out removed the CDI spec under another's running test once: podman then said
    'unresolvable CDI devices')."""
    import fcntl

    hailo, spec = Path("/dev/hailo0"), Path("/var/run/cdi/fleet-test-nvidia.json")
    lock = open("/run/fleet-test-devices.lock", "a")  # held until the module ends
    fcntl.flock(lock, fcntl.LOCK_EX)  # one process makes them at a time
    try:
        if not hailo.exists():
            os.mknod(hailo, 0o600 | 0o020000, os.makedev(1, 3))
            Path("/run/fleet-test-hailo0").touch()  # says the node is a stand-in of ours
        cdi = [p for d in ("/etc/cdi", "/var/run/cdi") if Path(d).is_dir() for p in Path(d).glob("*.json")
               if "nvidia.com/gpu" in p.read_text()]
        if not cdi:
            spec.parent.mkdir(parents=True, exist_ok=True)
            part = spec.with_suffix(".part")  # whole or absent for a podman reading the directory
            part.write_text(json.dumps({
                "cdiVersion": "0.5.0", "kind": "nvidia.com/gpu",
                "devices": [{"name": "all", "containerEdits": {"deviceNodes": [
                    {"path": "/dev/nvidia0", "hostPath": "/dev/null"}]}}],
                "containerEdits": {"env": ["NVIDIA_VISIBLE_DEVICES=all"]}}))
            part.rename(spec)
    finally:
        fcntl.flock(lock, fcntl.LOCK_SH)  # in use by this process until the module ends
    yield
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else uses them any more
    except BlockingIOError:
        lock.close()
        return
    spec.unlink(missing_ok=True)
    marker = Path("/run/fleet-test-hailo0")
    if marker.exists():
        hailo.unlink(missing_ok=True)
        marker.unlink()
    lock.close()


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("device_class", "node"), [
    ("x86_64/rtx5060", "/dev/nvidia0"), ("aarch64/jetson-orin-nano", "/dev/nvidia0"),
    ("x86_64/hailo8", "/dev/hailo0"), ("x86_64/cpu", None)])
def test_each_classs_device_is_in_the_engines_container_config(cpu_image, podman_api, class_devices, tmp_path,
                                                                device_class, node):
    """fleet's own container command for a host of each class, run by podman; then the engine's
    config of the running container, read through the Docker SDK from podman's Docker API (and
    the OCI spec podman generated, where CDI devices land): the class's device is there, and the
    job's user, no capabilities, no new privileges, no network. TERM (a cancel) stops the
    container and removes it. Docker's own flags (--gpus, --runtime nvidia) are checked as
    command lines only: there is no Docker engine here."""
    from fleet import containers
    from fleet.inventory import Host

    arch, _, accelerator = device_class.partition("/")
    host = Host(name="h", pools=(), arch=arch, accelerator=accelerator, slots=2, container_engine="podman",
                container_runtime="runc", container_args=("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"))
    attempt = f"a{os.getpid()}{accelerator.replace('-', '')}"
    # a one-slot job on a two-slot host the probe found 2 cores and 1 GiB on: half of each
    limits = containers.limits(host, 1, {"cores": 2, "memory_mb": 1024})
    script = containers.wrap(host, cpu_image, attempt, ["sh", "-c", "ls /dev; echo fleet-test-up; sleep 120"],
                             network=False, grace=3, limits=limits)
    adir = tmp_path / "attempt"
    adir.mkdir()
    env = {"PATH": os.environ["PATH"], "FLEET_CONTAINER_USER": "4242:4242", "FLEET_ENV_COUNT": "1",
           "FLEET_ENV_0": "GREETING=hi"}
    with open(adir / "log", "wb") as log:
        proc = subprocess.Popen(script, cwd=adir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    name = f"fleet-{attempt}"
    try:
        try:
            eventually(lambda: "fleet-test-up" in (adir / "log").read_text().split(), timeout=60,
                       what="the container running")
        except AssertionError as exc:  # say what podman said, and what CDI specs it had
            specs = {str(q): q.read_text()[:300] for d in ("/etc/cdi", "/var/run/cdi") if Path(d).is_dir()
                     for q in Path(d).iterdir()}
            raise AssertionError(f"{exc}; its log: {(adir / 'log').read_text()[-1500:]!r}; "
                                 f"CDI specs: {specs}") from None

        def seen() -> dict | None:  # podman's API service can lag a moment behind its CLI's writes
            import docker

            try:
                return podman_api.containers.get(name).attrs
            except docker.errors.NotFound:
                return None

        attrs = eventually(seen, timeout=30, what=f"podman's API to see {name} (log: {(adir / 'log').read_text()[-300:]!r})")
        host_config = attrs["HostConfig"]
        assert attrs["Config"]["User"] == "4242:4242"
        assert host_config["NetworkMode"] == "none"
        assert "no-new-privileges" in " ".join(host_config.get("SecurityOpt") or [])
        assert len(host_config.get("CapDrop") or []) >= 10 and not host_config.get("CapAdd")
        assert host_config["NanoCpus"] == 1_000_000_000 and host_config["Memory"] == 512 << 20
        assert host_config["PidsLimit"] == containers.PIDS_LIMIT
        oci = json.loads(Path(subprocess.run([*PODMAN, "inspect", "--format", "{{.OCIConfigPath}}", name],
                                             capture_output=True, text=True, check=True).stdout.strip()).read_text())
        in_spec = {d["path"] for d in oci["linux"].get("devices") or []}
        in_config = {d["PathInContainer"] for d in host_config.get("Devices") or []}
        listed = (adir / "log").read_text().split()
        if node is None:
            assert not in_spec & {"/dev/nvidia0", "/dev/hailo0"} and not in_config
            assert "nvidia0" not in listed and "hailo0" not in listed
        else:
            assert node in in_spec, oci["linux"].get("devices")
            assert node.rsplit("/", 1)[1] in listed  # and the job sees it
            if node == "/dev/hailo0":
                assert in_config == {"/dev/hailo0"}  # a plain --device: in the engine's HostConfig too
            else:
                assert "NVIDIA_VISIBLE_DEVICES=all" in oci["process"]["env"]  # the CDI spec's edits
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(60)
    # the plain listing: the SDK's list() inspects each container after listing them, and one
    # removed in between (this one, as it should be) answers 404
    eventually(lambda: name not in {n.lstrip("/") for c in podman_api.api.containers(all=True)
                                    for n in c.get("Names") or []}, timeout=60,
               what="the container stopped and removed after TERM")


@requires_sshd
@pytest.mark.timeout(600)
def test_an_image_the_host_lacks_is_shipped_from_the_controller_with_progress(fleet, lab, cpu_image, tmp_path):
    """A lab host whose engine has no copy of the job's image (its own storage root, as a
    Jetson keeping images on NVMe would) and no registry: the controller saves its copy and
    loads it there over the SSH connection, the job's log showing the progress; the job then
    runs in it. A controller kill -9 while it ships, and again while it runs, loses no line and
    repeats none: the host's log starts with the lines the controller holds. A second job finds the image there. An image of
    the controller's that is not a runner image is not shipped (a user names it)."""
    host = lab.add_hosts("rtx5060", 1, kind="openssh", slots=2)[0]
    (fleet.home / "known_hosts").write_text(lab.known_hosts_text())
    storage = tmp_path / "host-storage"
    inv = lab.write_inventory(tmp_path / "inv.ini", extra_host_vars={host.name: {
        "fleet_accelerator": "cpu", "fleet_container_engine": "podman", "fleet_container_runtime": "runc",
        "fleet_container_root": str(storage),
        "fleet_container_args": ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]}})
    from fleet.containers import runroot

    engine = [*PODMAN, "--root", str(storage), "--runroot", runroot(str(storage))]
    private = f"localhost/private-{os.getpid()}:1"
    try:
        client = fleet.start(inv)
        script = 'i=0; while [ $i -lt 30 ]; do echo "line $i"; i=$((i+1)); sleep 0.1; done'
        job = client.submit({"name": "shipped", "image": cpu_image, "run": script}).id
        # killed while shipping: the attempt was never started; the next controller ships again
        eventually(lambda: b"25%" in b"".join(client.logs(job)) or client.job(job).state == "FAILED", timeout=300,
                   what="a quarter shipped")
        assert client.job(job).state != "FAILED", (client.job(job).message, b"".join(client.logs(job)))
        kill_server(fleet)
        client = fleet.start(inv)
        state = eventually(lambda: (d := client.job(job)).state in ("RUNNING", "FAILED") and d.state,
                           timeout=300, what="the image shipped and the job running")
        assert state == "RUNNING", "\n".join(a.message or "" for a in client.job(job).attempt_list)
        kill_server(fleet)  # and killed while it runs
        client = fleet.start(inv)
        done = client.wait(job, 120)
        log = b"".join(client.logs(job)).decode()
        assert done.state == "SUCCEEDED" and len(done.attempt_list) == 1, (done, log)
        on_host = (host.home / ".fleet" / "attempts" / done.attempt_list[0].id / "log").read_text()
        assert log == on_host  # the controller's copy is the host's log, line for line
        lines = log.splitlines()
        assert lines[0].startswith(f"fleet: image {cpu_image} is not on host {host.name}: shipping it "
                                   "from the controller ("), log
        assert sum("is not on host" in ln for ln in lines) == 2, log  # shipped twice, said twice
        assert [ln for ln in lines if "shipping image" in ln][-1].split(": ")[2].startswith("75%"), log
        assert sum(f"loaded on host {host.name}" in ln for ln in lines) == 1, log
        assert [ln for ln in lines if not ln.startswith("fleet:")] == [f"line {i}" for i in range(30)], log
        there = subprocess.run([*engine, "image", "inspect", "--format", "{{.Id}}", cpu_image],
                               capture_output=True, text=True, check=False)
        here = subprocess.run([*PODMAN, "image", "inspect", "--format", "{{.Id}}", cpu_image],
                              capture_output=True, text=True, check=True)
        assert there.returncode == 0 and there.stdout == here.stdout  # the same image, by id
        again = client.wait(client.submit({"name": "again", "image": cpu_image, "run": "echo again"}).id, 120)
        assert again.state == "SUCCEEDED"
        assert b"".join(client.logs(again.id)).decode() == "again\n"  # nothing shipped this time
        # an image of the controller's that is no runner image (nor named by ship_images) stays there
        subprocess.run([*PODMAN, "tag", f"localhost/fleet-hostbase:test-{os.getpid()}", private], check=True)
        kept = client.wait(client.submit({"name": "private", "image": private, "run": "true"}).id, 120)
        said = b"".join(client.logs(kept.id)).decode()
        assert (kept.state, kept.reason) == ("FAILED", "setup_failed"), (kept, said)
        assert "the controller has it but ships only fleet's runner images and what ship_images names" in said
        assert subprocess.run([*engine, "image", "exists", private], check=False).returncode == 1
    finally:
        subprocess.run([*PODMAN, "rmi", private], capture_output=True, check=False)
        subprocess.run([*engine, "rmi", "-af"], capture_output=True, check=False)
        subprocess.run(["umount", "-R", str(storage / "overlay")], capture_output=True, check=False)
        shutil.rmtree(runroot(str(storage)), ignore_errors=True)


def test_every_runner_names_the_image_it_ran_in(tmp_path, monkeypatch):
    """The runners' common writer puts the image's digest in the record's environment (a part
    of the comparison key), for the TensorRT and Hailo runners as for ONNX Runtime's."""
    sys.path.insert(0, str(REPO / "runners"))
    try:
        import runnerlib
    finally:
        sys.path.remove(str(REPO / "runners"))
    monkeypatch.chdir(tmp_path)
    runnerlib.write_result({"metrics": {}})
    assert "environment" not in json.loads((tmp_path / "result.json").read_text())
    monkeypatch.setenv("FLEET_IMAGE_DIGEST", "sha256:" + "ab" * 32)
    runnerlib.write_result({"metrics": {}, "environment": {"tensorrt": "10.3"}})
    assert json.loads((tmp_path / "result.json").read_text())["environment"] == {
        "tensorrt": "10.3", "image_digest": "sha256:" + "ab" * 32}
    for runner in ("onnxruntime", "tensorrt", "hailo"):
        text = (REPO / "runners" / runner / "run.py").read_text()
        assert "write_result(result)" in text and 'write_json("result.json"' not in text, runner


def test_ship_images_is_a_list_of_patterns_from_the_file_or_the_environment(tmp_path, monkeypatch):
    from fleet.config import load_settings
    from fleet.errors import ConfigError

    monkeypatch.setenv("FLEET_HOME", str(tmp_path))
    monkeypatch.delenv("FLEET_SHIP_IMAGES", raising=False)
    (tmp_path / "config.yaml").write_text("ship_images: ['localhost/team-*', 'registry.lab/x:1']\n")
    assert load_settings().ship_images == ["localhost/team-*", "registry.lab/x:1"]
    monkeypatch.setenv("FLEET_SHIP_IMAGES", "a:1, b/*")
    assert load_settings().ship_images == ["a:1", "b/*"]
    monkeypatch.delenv("FLEET_SHIP_IMAGES")
    (tmp_path / "config.yaml").write_text("ship_images: {a: 1}\n")
    with pytest.raises(ConfigError, match="ship_images"):
        load_settings()


@pytest.mark.timeout(300)
def test_an_images_entrypoint_does_not_wrap_the_job_and_its_variables_arrive_whole(cpu_image, tmp_path):
    """An image with an ENTRYPOINT of its own (here one that fails) still runs the job's
    command, and the job's variables, odd values included, arrive in the container as they
    were given (through FLEET_ENV_<i>, never through the engine's environment)."""
    from fleet import containers
    from fleet.inventory import Host

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Containerfile").write_text(f"FROM {cpu_image}\nENTRYPOINT [\"/bin/false\"]\n")
    tag = f"localhost/fleet-entrypoint-{os.getpid()}:1"
    subprocess.run([*PODMAN, "build", "-q", "-t", tag, str(ctx)], capture_output=True, check=True)
    try:
        host = Host(name="h", pools=(), arch="x86_64", accelerator="cpu", slots=1, container_engine="podman",
                    container_runtime="runc", container_args=("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"))
        script = containers.wrap(host, tag, f"e{os.getpid()}", ["sh", "-c", 'printf "%s|" "$ODD" "$PATH"; echo ran'],
                                 network=False, grace=3)
        adir = tmp_path / "attempt"
        adir.mkdir()
        odd = "it's \"quoted\" $(id) `x`\nsecond line"
        env = {"PATH": os.environ["PATH"], "FLEET_CONTAINER_USER": f"{os.getuid()}:{os.getgid()}",
               "FLEET_ENV_COUNT": "2", "FLEET_ENV_0": f"ODD={odd}", "FLEET_ENV_1": "PATH=/usr/local/bin:/usr/bin:/bin"}
        done = subprocess.run(script, cwd=adir, env=env, capture_output=True, text=True, check=False, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout == f"{odd}|/usr/local/bin:/usr/bin:/bin|ran\n", done.stdout
    finally:
        subprocess.run([*PODMAN, "rmi", "-f", tag], capture_output=True, check=False)


def test_image_names_are_registry_references_never_engine_transports():
    """An engine transport would have the host's engine (root) read the host's files as an
    image (``docker-archive:inputs/evil.tar`` re-tags another user's image name); only registry
    references and runner names pass. And the controller ships a runner image by its name and
    label: an image built FROM one inherits the label, not the name."""
    from fleet.backends.shipping import LocalImage
    from fleet.errors import SpecError
    from fleet.models.spec import JobSpec

    for bad in ["docker-archive:inputs/evil.tar", "oci:foo", "dir:/etc", "oci-archive:x.tar", "docker://x",
                "containers-storage:x", "docker-daemon:x:1", "Upper/Case", "a//b", "/abs"]:
        with pytest.raises((SpecError, ValueError)):
            JobSpec.model_validate({"name": "x", "image": bad, "run": "true"})
    for good in ["cpu-ort", "localhost/fleet-runner-cpu-ort:t-x86_64", "reg.lab:5000/team/x:1",
                 "nvcr.io/nvidia/l4t-jetpack:r36.4.0", "x@sha256:" + "a" * 64]:
        assert JobSpec.model_validate({"name": "x", "image": good, "run": "true"}).image == good
    runner = LocalImage("localhost/fleet-runner-cpu-ort:1.20.1-x86_64", "podman", 1, labelled=True)
    derived = LocalImage("corp/private-model:1", "podman", 1, labelled=True)  # FROM a runner image
    unlabelled = LocalImage("fleet-runner-cpu-ort:1-x86_64", "podman", 1, labelled=False)
    assert runner.may_ship([]) and not derived.may_ship([]) and not unlabelled.may_ship([])
    assert derived.may_ship(["corp/*"]) and not derived.may_ship(["corp/other*"])


def test_the_probe_finds_a_container_engine_the_login_can_use():
    """``fleet hosts probe`` (plain commands or fleet's fact script) reports the engine whose
    ``info`` answered for the login; nothing else is taken for an engine."""
    from fleet import probe

    assert probe.parse({"tools": {"text": "\n@@@container_engine\npodman\n"}})["container_engine"] == "podman"
    assert probe.parse({"tools": {"source": "facts.d", "container_engine": "docker"}})["container_engine"] == "docker"
    assert "container_engine" not in probe.parse({"tools": {"source": "facts.d", "container_engine": "sh -c x"}})
    fact = (REPO / "playbooks" / "files" / "fleet.fact").read_text()
    assert 'out([path, "info"])' in fact and "container_engine" in (REPO / "playbooks" / "facts.yml").read_text()
