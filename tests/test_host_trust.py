"""The controller trusts nothing a host reports (DESIGN.md §7): a job on a host with
``isolation: none`` runs as the agent's own account and can rewrite the agent, its bundle
and the input cache. Each test is an attack and shows it refused."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from fleet.backends import frames
from fleet.backends.agent import AgentChannel
from fleet.backends.base import HostLost
from fleet.backends.connection import LocalTransport
from tests.helpers import eventually

PATCH = '''
def collect_outputs(adir, globs, result, owner=None):  # planted by a job
    return [{"path": "x.txt", "size": %(size)d, "sha256": %(target)r}], None


'''


def wait_done(client, job_id):
    detail = client.wait(job_id, timeout=120)
    while detail.state not in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"):
        detail = client.wait(job_id, timeout=120)
    return detail


def agent_pids(home: Path) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"agent" in cmd and any(str(home).encode() in part and part.endswith(b"wrapper.py") for part in cmd):
            pids.append(int(entry))
    return pids


def test_a_rewritten_agent_cannot_make_the_controller_serve_its_files(fleet, tmp_path):
    """The attack: a job rewrites the agent so that an output's sha256 is the path of the
    admin token on the controller; once the agent restarts, the next job's artifact would be
    the token. The bundle is checked by content before the agent starts again: the honest
    agent runs, and the artifact is the job's own file."""
    client = fleet.start()
    token_path = fleet.settings.token_file
    rewrite = tmp_path / "rewrite.py"
    rewrite.write_text(
        "import glob, os, sys\n"
        "lib = glob.glob(os.path.join(os.environ['FLEET_ATTEMPT_DIR'], '..', '..', 'lib', '*', 'wrapper.py'))\n"
        "assert lib, 'no bundle found'\n"
        "for path in lib:\n"
        "    text = open(path).read()\n"
        f"    patch = {PATCH % {'size': token_path.stat().st_size, 'target': str(token_path)}!r}\n"
        "    open(path, 'w').write(text.replace('def main(argv):', patch + 'def main(argv):'))\n"
        "print('rewritten', len(lib))\n")
    first = client.submit({"name": "rewrite", "run": f"{sys.executable} {rewrite}"})
    assert wait_done(client, first.id).state == "SUCCEEDED"
    assert "rewritten 1" in b"".join(client.logs(first.id)).decode()
    for pid in agent_pids(fleet.home):  # the job could do this too: same account
        os.kill(pid, signal.SIGKILL)
    eventually(lambda: not agent_pids(fleet.home), what="the agent to exit")

    second = client.submit({"name": "out", "run": "printf mine > x.txt", "outputs": ["x.txt"]})
    detail = wait_done(client, second.id)
    assert detail.state == "SUCCEEDED", detail
    arts = client.artifacts(job=second.id).items
    assert [(a.name, a.size) for a in arts] == [("x.txt", 4)]
    out = tmp_path / "got"
    with out.open("wb") as fh:
        client.download_artifact(arts[0].id, fh)
    assert out.read_bytes() == b"mine"
    assert token_path.read_text().strip() not in out.read_text()


def test_a_job_that_writes_into_a_cached_input_does_not_change_the_next_jobs_input(fleet, tmp_path):
    """The attack: inputs are links into the host's content-addressed cache; a job writes
    through its link, and the next job with the same model would read the altered file. The
    agent hashes a cached file again when it changed, removes it, and the controller uploads
    the real one again."""
    fleet.start()
    model = tmp_path / "model.onnx"
    model.write_bytes(b"the real model\n")
    spec = tmp_path / "tamper.yaml"
    spec.write_text(f"name: tamper\ninputs: {{model: {model}}}\n"
                    "run: 'cat \"$FLEET_INPUT_MODEL\"; printf \"evil\\n\" > \"$FLEET_INPUT_MODEL\"'\n")
    first = json.loads(fleet.cli("submit", str(spec), "--wait", "--json").stdout)
    assert first["state"] == "SUCCEEDED"
    cache = fleet.settings.local_workdir / "cache"
    assert [p.read_bytes() for p in cache.iterdir() if not p.name.startswith(".")] == [b"evil\n"]
    spec.write_text(f"name: victim\ninputs: {{model: {model}}}\nrun: 'cat \"$FLEET_INPUT_MODEL\"'\n")
    second = json.loads(fleet.cli("submit", str(spec), "--wait", "--json").stdout)
    assert second["state"] == "SUCCEEDED", second
    assert fleet.cli("logs", second["id"]).stdout == "the real model\n"


# ---------------------------------------------------------------------- a lying agent, frame by frame

SHA = "ab" * 32


async def _lying_agent(tmp_path: Path, frames_out: list[bytes]) -> tuple[AgentChannel, asyncio.Future]:
    """A real process on a real channel that answers any request with ``frames_out``."""
    script = tmp_path / "liar.py"
    script.write_text(
        "import sys\n"
        "sys.stdin.buffer.readline()\n"
        f"for chunk in {frames_out!r}:\n"
        "    sys.stdout.buffer.write(chunk)\n"
        "    sys.stdout.buffer.flush()\n"
        "sys.stdin.buffer.read()\n")
    channel = await LocalTransport().open_channel(f"exec {sys.executable} {script}")
    agent = AgentChannel("liar", channel)

    class Sink:
        def started(self, pid: int, at: float) -> None:
            pass

        def log(self, data: bytes) -> None:
            pass

    return agent, asyncio.ensure_future(agent.run("a1", {"op": "launch"}, Sink()))


async def _close(agent: AgentChannel) -> None:
    agent.close()
    await agent.channel.wait()


def _exit(**fields) -> bytes:
    frame = {"a": "a1", "t": "exit", "status": {"exit_code": 0}, "outputs": []}
    frame.update(fields)
    return json.dumps(frame).encode() + b"\n"


@pytest.mark.parametrize("frame, problem", [
    (_exit(outputs=[{"path": "x", "size": 3, "sha256": "/root/.fleet/token"}]), "outputs[0].sha256 must be 64"),
    (_exit(outputs=[{"path": "../../token", "size": 3, "sha256": SHA}]), "outputs[0].path '../../token' is not a path inside"),
    (_exit(outputs=[{"path": "/etc/shadow", "size": 3, "sha256": SHA}]), "is not a path inside"),
    (_exit(outputs=[{"path": "x", "size": -1, "sha256": SHA}]), "outputs[0].size must be an integer"),
    (_exit(outputs=[{"path": "x", "size": True, "sha256": SHA}]), "outputs[0].size must be an integer"),
    (_exit(outputs="everything"), "outputs must be a list"),
    (_exit(status={"exit_code": "0; rm -rf"}), "status.exit_code must be an integer"),
    (_exit(status={"exit_code": 0, "phase": "../x"}), "status.phase must be one of"),
    (_exit(status={"exit_code": 0, "started_at": float("nan")}), "status.started_at must be a time"),
    (_exit(result=["not", "an", "object"]), "result must be an object"),
    (_exit(status="succeeded"), "status must be an object"),
])
async def test_a_lying_exit_frame_fails_the_attempt_naming_the_field(tmp_path, frame, problem):
    agent, run = await _lying_agent(tmp_path, [frame])
    with pytest.raises(frames.BadFrame) as err:
        await asyncio.wait_for(run, 10)
    assert problem in str(err.value) and "host liar: its agent sent an invalid exit frame" in str(err.value)
    await _close(agent)


@pytest.mark.parametrize("chunks, problem", [
    ([b"x" * (frames.MAX_HEADER + 70000)], "a frame header of over"),
    ([b'{"a": "a1", "t": "log", "n": 99999999999}\n'], "a log frame of 99999999999 bytes"),
    ([b'{"a": "a1", "t": "log", "n": -5}\n'], "a log frame of -5 bytes"),
    ([b"[1, 2]\n"], "not a JSON object"),
    ([b'{"a": "a1", "t": "shell"}\n'], "unknown type 'shell'"),
    ([b"\xff\xfe not json\n"], "not JSON"),
])
async def test_an_unreadable_stream_ends_the_channel(tmp_path, chunks, problem):
    agent, run = await _lying_agent(tmp_path, chunks)
    with pytest.raises(HostLost) as err:
        await asyncio.wait_for(run, 30)
    assert "agent broke the protocol" in str(err.value) and problem in str(err.value)
    assert not agent.alive
    await _close(agent)


async def test_frames_of_one_attempt_do_not_reach_another(tmp_path):
    """A frame naming another attempt id is not delivered to the one asking."""
    agent, run = await _lying_agent(tmp_path, [_exit(a="other"), _exit(status={"exit_code": 3})])
    outcome = await asyncio.wait_for(run, 10)
    assert outcome.exit_code == 3
    await _close(agent)


async def test_answers_to_renewals_from_a_lying_agent_end_nothing(tmp_path):
    """An agent answers each lease renewal with a pong for no attempt (agent.Renewer); a
    rewritten one may send thousands of them, or a pong naming an attempt it does not run,
    while renewals go out: the controller drops them, and the attempt it follows ends only by
    its own exit frame. (A pong naming the attempt itself would end it as an exit code 0
    would: the host reports how its jobs end either way.)"""
    from fleet.backends.agent import Renewer

    pong = b'{"a": null, "t": "pong"}\n'
    agent, run = await _lying_agent(tmp_path, [pong * 20000, b'{"a": "other", "t": "pong"}\n',
                                              _exit(status={"exit_code": 3})])
    renewer = Renewer(0.01)
    renewer.add(agent)
    try:
        outcome = await asyncio.wait_for(run, 30)
        assert outcome.exit_code == 3 and agent.alive
        assert set(renewer.agents) == {"liar"}  # still renewed: nothing it sent counts against it
    finally:
        renewer.close()
        await _close(agent)


def test_the_agent_reads_a_huge_request_in_linear_time_and_refuses_one_past_its_limit(tmp_path):
    """The agent read a request line by re-scanning everything it had (10 MiB: 1.9 s, 20 MiB:
    6 s). Now each chunk is searched once; a line over MAX_REQUEST is answered with an error
    and skipped, and the agent goes on serving."""
    import subprocess

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "runners"))
    import wrapper  # the real agent module
    sys.path.pop(0)
    wrapper_py = Path(wrapper.__file__)
    big = json.dumps({"op": "ping", "id": "p1", "pad": "x" * (48 << 20)}).encode() + b"\n"
    over = b'{"op": "ping", "id": "p2", "pad": "' + b"y" * (wrapper.MAX_REQUEST + 1) + b'"}\n'
    after = b'{"op": "ping", "id": "p3"}\n'
    proc = subprocess.run([sys.executable, str(wrapper_py), "agent"], input=big + over + after,
                          capture_output=True, timeout=120, check=False)
    frames_out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [f.get("a") for f in frames_out if f["t"] == "pong"] == ["p1", "p3"]
    errors = [f for f in frames_out if f["t"] == "error"]
    assert len(errors) == 1 and "request longer than" in errors[0]["message"]


def test_blob_store_names_are_always_hashes(tmp_path):
    from fleet.blobs import BlobStore

    blobs = BlobStore(tmp_path)
    for bad in ["/root/.fleet/token", "../token", "AB" * 32, "a" * 63, ""]:
        assert not blobs.has(bad)
        with pytest.raises(ValueError):
            blobs.path(bad)


def test_collect_outputs_never_follows_a_link_out_of_the_attempt(tmp_path):
    """On the host: an output swapped for a link (or a directory on its path) is refused."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "runners"))
    import wrapper
    sys.path.pop(0)
    adir = tmp_path / "a1"
    (adir / "out").mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    (adir / "out" / "ok.txt").write_text("fine")
    (adir / "link.txt").symlink_to(secret)
    (adir / "dirlink").symlink_to(tmp_path)
    os.mkfifo(adir / "fifo.txt")
    files, problem = wrapper.collect_outputs(str(adir), ["out/*.txt", "*.txt", "dirlink/secret"], None)
    assert [f["path"] for f in files] == ["out/ok.txt"]
    with pytest.raises(OSError):
        wrapper.open_regular(str(adir), "dirlink/secret")
    with pytest.raises(OSError):
        wrapper.open_regular(str(adir), "link.txt")
    with pytest.raises(ValueError):
        wrapper.open_regular(str(adir), "fifo.txt")
    with pytest.raises(ValueError):
        wrapper.open_regular(str(adir), "../secret")
    assert wrapper.cat(str(adir), "link.txt") == 1


async def test_a_bundle_changed_on_the_host_is_installed_again(tmp_path):
    """The bundle is checked by content, not by a marker file: a changed file, an added file
    (a planted __pycache__) or a link is found, and the bundle installed again."""
    from fleet.backends.connection import SSHOptions
    from fleet.backends.ssh import SSHBackend
    from fleet.inventory import Host
    from fleet.runners import bundle

    host = Host(name="local", pools=(), arch="x86_64", accelerator="cpu", slots=1,
                address="localhost", port=22, user=None, key_file=None, connection="local",
                workdir=str(tmp_path / "w"), python=sys.executable)
    backend = SSHBackend(SSHOptions(known_hosts_files=(), fleet_known_hosts=tmp_path / "kh"),
                         lambda name: host, lambda sha: tmp_path / sha)
    transport = await backend.pool.get(host)
    lib = Path(backend.lib_dir(host))
    await backend._install_lib(transport, host)
    original = (lib / "wrapper.py").read_bytes()
    for tamper in (
        lambda: (lib / "wrapper.py").write_bytes(original + b"\n# planted\n"),
        lambda: (lib / "__pycache__").mkdir() or (lib / "__pycache__" / "runnerlib.cpython-311.pyc").write_bytes(b"x"),
        lambda: (lib / "extra.py").symlink_to("/etc/passwd"),
    ):
        tamper()
        await backend._install_lib(transport, host)
        assert (lib / "wrapper.py").read_bytes() == original
        assert not (lib / "__pycache__").exists() and not (lib / "extra.py").is_symlink()
        assert sorted(p.name for p in lib.parent.iterdir()) == [bundle().digest]
    await backend.close()


async def test_the_runner_bundle_is_built_once_in_a_thread_for_callers_that_come_together(monkeypatch):
    """Building the bundle (tar and gzip of runners/) takes 0.3-0.4 s: not in a callback of the
    controller's event loop, and once for the many hosts a takeover reaches at the same time."""
    import threading

    from fleet import runners

    runners.bundle.cache_clear()
    built: list[bool] = []
    files = runners._bundle_files

    def counted() -> list[Path]:
        built.append(threading.current_thread() is threading.main_thread())
        return files()

    monkeypatch.setattr(runners, "_bundle_files", counted)
    first, *others = await asyncio.gather(*(runners.bundle_built() for _ in range(5)))
    assert built == [False], "built more than once, or on the event loop's thread"
    assert all(b is first for b in others) and first.digest == runners.bundle().digest
    assert await runners.bundle_built() is first and built == [False]
