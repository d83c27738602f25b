"""fleet's client library: one set of routes (fleet.client.calls), sent by the sync and the
async face alike; spec files and their inputs the same way for both; connect() finds the
server the way the CLI does."""

from __future__ import annotations

import sys

from fleet.client import calls, connect
from fleet.client.aio import AsyncClient
from fleet.client.specs import aload_spec_file, load_spec_file


async def test_the_async_face_loads_uploads_submits_and_follows_a_job(fleet, tmp_path):
    sync = fleet.start()
    (tmp_path / "data.txt").write_text("payload\n")
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text("name: async-job\ninputs: {data: data.txt}\nrun: cat \"$FLEET_INPUT_DATA\"\n")
    async with AsyncClient(fleet.info.url, fleet.info.token) as client:
        assert (await client.whoami()).admin
        spec = await aload_spec_file(client, spec_file)
        assert spec["inputs"]["data"]["kind"] == "file"  # uploaded, now a blob ref
        job = await client.submit(spec)
        states = []
        async for event in client.events(jobs=[job.id], types=["job.state"], after=0):
            if event["type"] == "job.state":
                states.append(event["state"])
                if event["state"] == "SUCCEEDED":
                    break
        assert states[0] == "PENDING" and states[-1] == "SUCCEEDED"
        log = b"".join([chunk async for chunk in client.logs(job.id)])
        assert log == b"payload\n"
        detail = await client.job(job.id)
        assert detail == sync.job(job.id)  # the same route, read the same way by both faces
        assert await client.call(calls.job(job.id)) == detail
        assert [h.name for h in await client.hosts()] == [h.name for h in sync.hosts()]
    # The sync face with the same spec file: the upload is found by content, not sent again.
    again = load_spec_file(sync, spec_file)
    assert again["inputs"] == spec["inputs"]


def test_connect_finds_the_running_local_server(fleet):
    fleet.start()
    with connect() as client:
        assert client.url == fleet.info.url
        assert client.whoami().name == fleet.client.whoami().name


async def test_the_async_face_looks_for_no_module_per_request(fleet):
    """httpcore imports sniffio for every lock an async request makes; when it is not installed
    each import searches every sys.path entry again (0.2-0.3 ms a request). After the first
    requests, no request may make Python look for a module."""
    fleet.start()
    looked: list[str] = []

    class Spy:
        def find_spec(self, name: str, path: object = None, target: object = None) -> None:
            looked.append(name)

    async with AsyncClient(fleet.info.url, fleet.info.token) as client:
        for _ in range(5):  # what a first request imports, it imports now
            await client.whoami()
            await client.hosts()
        spy = Spy()
        sys.meta_path.insert(0, spy)
        try:
            for _ in range(10):
                await client.whoami()
                await client.hosts()
        finally:
            sys.meta_path.remove(spy)
    assert looked == []
