"""Property-based tests of the API of a real ``fleet serve``: job payloads (``/jobs``,
``/jobs/batch``) and, with schemathesis, every route of the published OpenAPI schema. Nothing
may answer 5xx or a traceback; bad input gets a 4xx whose JSON body names the problem.

Fuzzed specs that happen to be valid must never run anything: the server's only host is an
SSH address where nothing listens (127.0.0.1:9), and it is drained as well.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import Fleet
from tests.spec_strategies import EXAMPLES, FUZZ, json_values, near_valid_specs

HOST = "fuzzhost"
# One worker starts the server and loads the schema once (module fixtures): these go together.
pytestmark = pytest.mark.xdist_group("fuzz_api")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    home: Path = tmp_path_factory.mktemp("fuzz") / "fleet-home"
    home.mkdir()
    inventory = home.parent / "inventory.yaml"
    inventory.write_text(
        f"all:\n  hosts:\n    {HOST}:\n      ansible_host: 127.0.0.1\n      ansible_port: 9\n"
        "      fleet_arch: x86_64\n      fleet_accelerator: cpu\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLEET_HOME", str(home))
        for var in ("FLEET_SERVER", "FLEET_TOKEN", "FLEET_INVENTORY", "FLEET_DATABASE"):
            mp.delenv(var, raising=False)
        fleet = Fleet(home)
        client = fleet.start(inventory, {"connect_timeout": 1, "health_recheck_interval": 60})
        client.host_action(HOST, "drain")
        try:
            yield fleet
        finally:
            fleet.stop()
        log = fleet.server_log()
        assert "Traceback" not in log, log[-5000:]


@pytest.fixture(scope="module")
def known_job(server: Fleet) -> str:
    """A job that exists (and is over), so routes that take a job id see a real one."""
    assert server.client is not None
    job = server.client.submit({"name": "known", "run": "true"}).id
    server.client.cancel(job)
    return job


@pytest.fixture(scope="module")
def http(server: Fleet) -> Iterator[httpx.Client]:
    assert server.info is not None
    token = server.settings.token_file.read_text().strip()
    with httpx.Client(base_url=server.info.url, headers={"Authorization": f"Bearer {token}"},
                      timeout=60) as client:
        yield client


def post(http: httpx.Client, path: str, body: Any) -> httpx.Response:
    """POST ``body`` as JSON the way any client may write it: NaN, lone surrogates and all."""
    return http.post(path, content=json.dumps(body, ensure_ascii=True, allow_nan=True),
                     headers={"Content-Type": "application/json"})


def check_answer(resp: httpx.Response, batch: bool = False) -> Any:
    """A 201, or a 4xx with a JSON body that says what is wrong. Never 5xx, never a traceback."""
    assert resp.status_code < 500, (resp.status_code, resp.text[:2000])
    assert "Traceback" not in resp.text
    body = resp.json()
    if resp.status_code == 201:
        return body
    assert 400 <= resp.status_code < 500
    assert isinstance(body, dict) and isinstance(body.get("detail"), str) and body["detail"], body
    if resp.status_code == 422:
        errors = body.get("errors")
        assert errors, body
        for err in errors:
            assert err["problem"], body
            assert err["field"], body  # every problem names the field (or "body")
            if batch and err["field"].startswith("jobs["):
                assert err["field"].split("]")[0].removeprefix("jobs[").isdigit(), body
    return body


@FUZZ
@given(case=near_valid_specs())
def test_near_valid_specs_post_jobs(http: httpx.Client, case: tuple[dict[str, Any], list[str]]) -> None:
    spec, _touched = case
    resp = post(http, "/jobs", spec)
    check_answer(resp)
    event(f"status {resp.status_code}")


@FUZZ
@given(body=json_values)
@example(body=[])
@example(body="x")
@example(body=None)
def test_any_json_post_jobs(http: httpx.Client, body: Any) -> None:
    check_answer(post(http, "/jobs", body))


@FUZZ
@given(specs=st.lists(near_valid_specs().map(lambda c: c[0]) | json_values, min_size=0, max_size=4),
       wrap=st.booleans())
def test_batches(http: httpx.Client, specs: list[Any], wrap: bool) -> None:
    body = {"jobs": specs} if wrap else specs
    resp = post(http, "/jobs/batch", body)
    check_answer(resp, batch=True)
    event(f"status {resp.status_code}")
    if resp.status_code == 201:
        assert len(resp.json()) == len(specs)


RAW_BODIES = [
    b"", b"{", b"null", b"[]", b"{\"name\": NaN, \"run\": \"true\"}",
    b"{\"name\": \"x\", \"run\": \"true\", \"params\": {\"a\": NaN}}",
    b"{\"name\": \"x\", \"run\": \"true\", \"params\": {\"a\": Infinity}}",
    b"{\"name\": \"x\", \"run\": \"true\", \"timeout\": 1e999}",
    b"{\"name\": \"x\", \"run\": \"true\", \"envs\": {\"A\": \"\\ud800\"}}",
    b"{\"name\": \"x\", \"run\": \"true\", \"params\": {\"\\udfff\": 1}}",
    b"{\"name\": \"x\", \"run\": \"\\u0000\"}",
    b"\xff\xfe\x00", b"{\"name\": \"\xff\"}",
    b"{\"name\": \"x\", \"run\": \"true\", \"params\": " + b"[" * 5000 + b"]" * 5000 + b"}",
    b"{\"name\": \"x\", \"run\": \"true\", \"params\": {\"a\": " + b"[" * 200 + b"]" * 200 + b"}}",
    b"{\"jobs\": [{\"name\": \"x\", \"run\": \"true\", \"params\": {\"a\": NaN}}]}",
    b"{\"name\": \"x\", \"run\": \"true\", \"priority\": 1" + b"0" * 5000 + b"}",
]


@pytest.mark.parametrize("raw", RAW_BODIES, ids=range(len(RAW_BODIES)))
@pytest.mark.parametrize("path", ["/jobs", "/jobs/batch"])
def test_raw_bodies(http: httpx.Client, path: str, raw: bytes) -> None:
    if path == "/jobs/batch" and raw.startswith(b"{\"name\""):
        raw = b"{\"jobs\": [" + raw + b"]}"
    check_answer(http.post(path, content=raw, headers={"Content-Type": "application/json"}),
                 batch=path.endswith("batch"))


def test_accepted_specs_read_back_as_json(http: httpx.Client) -> None:
    """What the API accepts it can also show: a job's detail is plain JSON."""
    body = check_answer(post(http, "/jobs", {"name": "ok", "run": "true",
                                               "params": {"big": 2**70, "s": "é\u202e🙂"}}))
    detail = http.get(f"/jobs/{body['id']}")
    assert detail.status_code == 200
    assert json.loads(detail.text)["spec"]["params"] == {"big": 2**70, "s": "é\u202e🙂"}


# ---------------------------------------------------------------------- schemathesis


def _paths() -> dict[str, Any]:
    """The routes of the API (from the app itself, so pytest can list them before a server
    runs); the test checks that the running server publishes the same ones. Built once: a
    document takes 0.4 s."""
    from fleet.api.server import create_app

    return create_app(None).openapi()["paths"]  # type: ignore[arg-type, no-any-return]


PATHS = _paths()


def _operations() -> list[tuple[str, str]]:
    return [(method.upper(), path) for path, ops in PATHS.items() for method in ops]


def _takes_input(method: str, path: str) -> bool:
    op = PATHS[path][method.lower()]
    return bool(op.get("parameters") or op.get("requestBody"))


OPERATIONS = _operations()
# Positive data for every route; negative data where there is input to make invalid.
CASES = [(m, p, mode) for m, p in OPERATIONS for mode in ("positive", "negative")
         if mode == "positive" or _takes_input(m, p)]


@pytest.fixture(scope="module")
def published(server: Fleet) -> Any:
    assert server.info is not None
    token = server.settings.token_file.read_text().strip()
    config = schemathesis.Config.from_dict(
        {"auth": {"openapi": {"HTTPBearer": {"bearer": token}}, "auto-signup": False}})
    schema = schemathesis.openapi.from_url(f"{server.info.url}/openapi.json", config=config)
    served = {(m.upper(), p) for p, ops in schema.raw_schema["paths"].items() for m in ops}
    assert served == set(OPERATIONS)
    return schema


# Where a request can fit the schema and still be wrong, for reasons a schema cannot state:
# a blob must hash to its name; a job spec must name a runner, pool and uploaded inputs that
# exist (tests above fuzz those bodies themselves).
SEMANTIC = {("PUT", "/blobs/{sha256}"), ("POST", "/jobs"), ("POST", "/jobs/batch"),
            ("POST", "/results/import"),  # the text must hold what the named tool prints
            ("POST", "/matrix/runs"), ("POST", "/matrix/schedules"),  # a matrix file's rules in a dict
            ("POST", "/hosts/probe"), ("POST", "/hosts/provision")}  # a pattern must match hosts
# Each request runs ansible-playbook (seconds): fewer examples.
SLOW = {("POST", "/hosts/probe"), ("POST", "/hosts/provision")}
# Examples per route and mode: EXAMPLES (derandomized: the same ones each run). Drawing them is
# the cost (~25 ms each, in schemathesis and hypothesis); FLEET_FUZZ_EXAMPLES=500 for a deep run.


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {o}" for m, p, o in CASES])
def test_openapi_schema(published: Any, known_job: str, method: str, path: str, mode: str) -> None:
    """schemathesis: data that fits the published schema and data that does not, with a valid
    token, on every route: no 5xx, every response (status, content type, body, headers)
    conforms to the schema, valid data is accepted and invalid data rejected."""
    operation = published[path][method]
    strategy = operation.as_strategy(generation_mode=GenerationMode(mode))
    if mode == "positive" and "{job_id}" in path:
        strategy |= operation.as_strategy(path_parameters={"job_id": known_job})
    if mode == "positive" and "{name}" in path:
        strategy |= operation.as_strategy(path_parameters={"name": HOST})
    if (method, path) == ("DELETE", "/tokens/{token_id}") and mode == "positive":
        # Never the token this test runs with (its id is 1): every later route would answer 401.
        strategy = operation.as_strategy(generation_mode=GenerationMode(mode),
                                         path_parameters={"token_id": 1_000_000})
    if path == "/events":  # a stream: one that ends soon (a negative case may be valid after all:
        # an invalid header value is not sent, say)
        strategy = operation.as_strategy(generation_mode=GenerationMode(mode), query={"timeout": 0.05})
    if mode == "negative":
        assert next(operation.iter_parameters(), None) is not None or operation.body
    excluded = [positive_data_acceptance] if (method, path) in SEMANTIC else []

    statuses: Counter[int] = Counter()

    @settings(FUZZ, max_examples=max(2, EXAMPLES // 10) if (method, path) in SLOW else EXAMPLES)
    @given(case=strategy)
    def run(case: Any) -> None:
        response = case.call_and_validate(excluded_checks=excluded, timeout=30)
        statuses[response.status_code] += 1

    run()
    print(method, path, mode, dict(statuses))
    if mode == "positive":  # the token was used: not everything bounced off authentication
        assert set(statuses) - {401}, statuses
