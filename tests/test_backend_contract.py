"""The backend contract, in process: how the ssh backend classifies what goes wrong, and what a
backend that lacks a capability does (it says so; nothing is silently skipped)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from fleet.backends.base import (
    AttemptPlan,
    Backend,
    BackendContext,
    Capability,
    Outcome,
    OutputUnreadable,
    Unsupported,
)
from fleet.backends.ssh import SSHBackend
from fleet.blobs import BlobStore
from fleet.config import Settings
from fleet.inventory import Host, embedded_inventory
from fleet.models.enums import REASON_CLASS, FailureClass, Reason
from fleet.scheduler import artifacts


def _plan(host: Host, attempt_id: str = "a-contract") -> AttemptPlan:
    return AttemptPlan(attempt_id=attempt_id, job_id="j-contract", host=host, job={}, argv=None,
                       runner="shell", setup=None, env={}, timeout=None, grace=1.0)


@pytest.fixture
def local_ssh(tmp_path):
    hosts = embedded_inventory(tmp_path / "host")
    settings = Settings(home=tmp_path / "home")
    blobs = BlobStore(tmp_path / "blobs")
    backend = SSHBackend.create(None, BackendContext(name="ssh", settings=settings, inventory=hosts,
                                                     blob_path=blobs.path, state_dir=tmp_path / "state"))
    return backend, hosts[0], blobs


async def test_an_output_that_cannot_be_read_is_the_jobs_failure_not_the_hosts(local_ssh, tmp_path):
    """A job that leaves a link (or a changed file) where its output was reported: the fetch
    fails ``output_missing``, a job-class failure, so no job can quarantine a host this way."""
    backend, host, blobs = local_ssh
    try:
        attempt = Path(host.workdir) / "attempts" / "a-contract"
        attempt.mkdir(parents=True)
        secret = tmp_path / "controller-secret"
        secret.write_text("token\n")
        os.symlink(secret, attempt / "out.txt")
        (attempt / "real.txt").write_text("real\n")
        dest = tmp_path / "dest"
        with pytest.raises(OutputUnreadable) as info:
            await backend.fetch(_plan(host), "out.txt", dest, 6)
        assert info.value.reason is Reason.OUTPUT_MISSING
        assert REASON_CLASS[info.value.reason] is FailureClass.JOB
        assert "cannot read out.txt" in str(info.value)
        # A file that is not what the host reported (changed after the report):
        lied = Outcome(exit_code=0, outputs=[{"path": "real.txt", "size": 5,
                                              "sha256": hashlib.sha256(b"other").hexdigest()}])
        with pytest.raises(OutputUnreadable, match="not what its agent reported"):
            await artifacts.collect(backend, blobs, _plan(host), lied)
        # And one that is: collected under the hash computed here.
        good = Outcome(exit_code=0, outputs=[{"path": "real.txt", "size": 5,
                                              "sha256": hashlib.sha256(b"real\n").hexdigest()}])
        (got,) = await artifacts.collect(backend, blobs, _plan(host), good)
        assert blobs.path(got["sha256"]).read_bytes() == b"real\n"
    finally:
        await backend.close()


class Bare(Backend):
    """A backend that declares nothing beyond launch/cancel."""

    name = "bare"

    @classmethod
    def create(cls, settings, ctx):  # type: ignore[no-untyped-def]
        return cls()

    def offers(self) -> list[Host]:
        return []

    async def launch(self, plan, sink, log_offset=0):  # type: ignore[no-untyped-def]
        raise AssertionError("not called here")

    async def cancel(self, plan, grace):  # type: ignore[no-untyped-def]
        return None

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("capability", list(Capability))
async def test_what_a_backend_lacks_it_says_instead_of_doing_nothing(capability, tmp_path):
    backend = Bare()
    assert not backend.can(capability)
    host = Host(name="h", pools=("p",), arch="x86_64", accelerator="cpu", slots=1, backend="bare")
    calls = {
        Capability.CHECK: lambda: backend.check(host, 1.0),
        Capability.KILL_STALE: lambda: backend.kill_stale(host, ["a"], 1.0),
        Capability.FETCH: lambda: backend.fetch(_plan(host), "x", tmp_path / "x"),
        Capability.GC: lambda: backend.gc_attempts(host, 1.0, 1, [], 1.0),
    }
    with pytest.raises(Unsupported, match=f"backend bare cannot {capability.value.replace('_', ' ')}"):
        await calls[capability]()
    assert SSHBackend.capabilities == frozenset(Capability)
