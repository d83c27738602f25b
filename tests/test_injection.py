"""Shell metacharacters in what users submit never execute, and uploaded or collected paths
never leave the attempt directory (DESIGN.md §7): end to end through a real server on the
embedded host, and on the device side in the attempt wrapper itself."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "runners"))
import wrapper  # the device-side wrapper (stdlib only, not a package)

REPORT = """\
import json, os, sys
adir = os.environ["FLEET_ATTEMPT_DIR"]
files = {}
for root, _dirs, names in os.walk(os.path.join(adir, "inputs")):
    for name in names:
        path = os.path.join(root, name)
        with open(path, "rb") as fh:
            files[os.path.relpath(path, adir)] = [fh.read().decode(), os.path.realpath(path)]
report = {
    "env": {k: v for k, v in os.environ.items() if k.startswith(("EVIL_", "FLEET_INPUT_"))},
    "job": json.load(open(os.path.join(adir, "job.json"))),
    "files": files,
}
json.dump(report, open(sys.argv[1], "w"))
# The outputs, made with names as verbatim as the globs that collect them.
for glob in report["job"]["outputs"]:
    path = os.path.join(adir, glob.replace("*", "a"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(glob)
"""


def evil_values(tag: str, marker_dir: Path) -> list[str]:
    """Strings that run ``touch`` if any shell ever reads them as code."""
    m = marker_dir / tag
    return [
        f"$(touch {m}-dollar)", f"`touch {m}-backtick`", f"; touch {m}-semi", f"| touch {m}-pipe",
        f"&& touch {m}-and", f"\ntouch {m}-newline\n", f"' ; touch {m}-squote ; '",
        f'" ; touch {m}-dquote ; "', f"${{IFS}}touch${{IFS}}{m}-ifs", f"$(touch {m}-x)\\",
        "  spaces and * ? [a] ~ # % ! { } < > tabs\t ", "-rf", "--", "",
    ]


def assert_no_markers(marker_dir: Path, token: str, *trees: Path) -> None:
    """No marker file: none in ``marker_dir``; none named ``token`` (made by a relative
    ``touch``) under ``trees``, or where a shell's working directory could have been."""
    assert list(marker_dir.iterdir()) == [], "a metacharacter was executed"
    found = [p for t in trees for p in t.rglob(token)]
    found += [p / token for p in (REPO, Path.home(), Path.cwd()) if (p / token).exists()]
    assert not found, f"a metacharacter was executed: {found}"


def test_metacharacters_in_params_envs_inputs_and_outputs_arrive_verbatim(fleet, tmp_path: Path) -> None:
    fleet.start()
    markers = tmp_path / "markers"
    markers.mkdir()
    token = f"pwned{uuid.uuid4().hex[:8]}"  # relative markers: a file named so anywhere
    script = tmp_path / "report.py"
    script.write_text(REPORT)
    out = tmp_path / "report.json"

    # Inputs whose names are shell code: one file, one directory tree (no '/' in names).
    weird = f"$(touch {token}) `touch {token}`; touch {token} '\"\n&|<>*?~# x.onnx"
    model = tmp_path / "in" / weird
    model.parent.mkdir()
    model.write_text("model bytes")
    tree = tmp_path / "tree"
    (tree / f"sub $(touch {token})").mkdir(parents=True)
    (tree / f"sub $(touch {token})" / f"`touch {token}`;.txt").write_text("deep")
    (tree / f"-rf ;touch {token}").write_text("top")

    params = {f"p{i}": v for i, v in enumerate(evil_values("param", markers))}
    params[f"$(touch {markers}/key)"] = ["list", f"`touch {markers}/listed`", {"n": f";touch {markers}/n"}]
    envs = {f"EVIL_{i}": v for i, v in enumerate(evil_values("env", markers))}
    outputs = [f"$(touch {token})/*.txt", f"`touch {token}`", f"a;touch {token}"]
    spec = {
        "name": "meta-chars_1.0",
        "params": params,
        "envs": envs,
        "inputs": {"model": str(model), "tree": str(tree)},
        "outputs": outputs,
        "run": f'{sys.executable} {script} "{out}"',
    }
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(spec, allow_unicode=True))
    proc = fleet.cli("submit", str(spec_file), "--wait", "--json", check=False)
    detail = json.loads(proc.stdout)
    assert detail["state"] == "SUCCEEDED", (detail, fleet.cli("logs", detail["id"]).stdout)

    report = json.loads(out.read_text())
    assert {k: v for k, v in report["env"].items() if k.startswith("EVIL_")} == envs
    assert report["job"]["params"] == params
    assert report["job"]["outputs"] == outputs
    # ...and were collected as artifacts under those names (globs matched, nothing ran).
    names = {a["name"] for a in detail["artifacts"]}
    assert names == {f"$(touch {token})/a.txt", f"`touch {token}`", f"a;touch {token}"}
    assert report["job"]["name"] == "meta-chars_1.0"
    assert report["job"]["inputs"] == {"model": f"inputs/model/{weird}", "tree": "inputs/tree"}
    cache = fleet.settings.local_workdir / "cache"
    expected = {
        f"inputs/model/{weird}": "model bytes",
        f"inputs/tree/sub $(touch {token})/`touch {token}`;.txt": "deep",
        f"inputs/tree/-rf ;touch {token}": "top",
    }
    assert {k: v[0] for k, v in report["files"].items()} == expected
    for content, real in report["files"].values():  # links into the host's blob cache
        assert Path(real).parent == cache.resolve()
        assert Path(real).name == hashlib.sha256(content.encode()).hexdigest()
    assert report["env"]["FLEET_INPUT_MODEL"] == f"inputs/model/{weird}"
    assert_no_markers(markers, token, fleet.home, tmp_path)


def test_job_names_with_metacharacters_are_refused(fleet) -> None:
    client = fleet.start()
    token = client.http.headers["Authorization"]
    for name in ["$(id)", "a;b", "a b", "`x`", "-rf", "a\nb", "../x", "x" * 200]:
        resp = httpx.post(f"{fleet.info.url}/jobs", json={"name": name, "run": "true"},
                          headers={"Authorization": token})
        assert resp.status_code == 422, name
        assert [e["field"] for e in resp.json()["errors"]] == ["name"], resp.json()


SHA = "0" * 64
ESCAPES = [
    ({"inputs": {"m": {"kind": "file", "filename": "..", "files": {"..": {"sha256": SHA, "size": 1}}}}},
     "inputs.m.filename"),
    ({"inputs": {"m": {"kind": "file", "filename": "../../x", "files": {"x": {"sha256": SHA, "size": 1}}}}},
     "inputs.m.filename"),
    ({"inputs": {"m": {"kind": "file", "filename": "/etc/passwd", "files": {"p": {"sha256": SHA, "size": 1}}}}},
     "inputs.m.filename"),
    ({"inputs": {"m": {"kind": "dir", "filename": "d", "files": {"../../../x": {"sha256": SHA, "size": 1}}}}},
     "inputs.m.files"),
    ({"inputs": {"m": {"kind": "dir", "filename": "d", "files": {"/etc/cron.d/x": {"sha256": SHA, "size": 1}}}}},
     "inputs.m.files"),
    ({"inputs": {"m": {"kind": "dir", "filename": "d", "files": {"a/./../b": {"sha256": SHA, "size": 1}}}}},
     "inputs.m.files"),
    ({"inputs": {"../m": {"kind": "file", "filename": "x", "files": {"x": {"sha256": SHA, "size": 1}}}}},
     "inputs"),
    ({"outputs": ["../../etc/*"]}, "outputs"),
    ({"outputs": ["/etc/passwd"]}, "outputs"),
    ({"outputs": ["~/.ssh/id_rsa"]}, "outputs"),
    ({"outputs": ["results/../../x"]}, "outputs"),
]


def test_paths_leaving_the_attempt_directory_are_refused(fleet) -> None:
    client = fleet.start()
    for change, field in ESCAPES:
        resp = httpx.post(f"{fleet.info.url}/jobs", json={"name": "paths", "run": "true", **change},
                          headers={"Authorization": client.http.headers["Authorization"]})
        assert resp.status_code == 422, (change, resp.text)
        assert field in [e["field"] for e in resp.json()["errors"]], (change, resp.json())


def test_a_symlink_in_an_input_directory_uploads_content_not_a_link(fleet, tmp_path: Path) -> None:
    """The CLI uploads what a link points to; the host gets a file from its blob cache, never a
    link to the outside that the job could write through."""
    fleet.start()
    outside = tmp_path / "outside.txt"
    outside.write_text("outside")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "link").symlink_to(outside)
    out = tmp_path / "report.json"
    script = tmp_path / "report.py"
    script.write_text(REPORT)
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({"name": "links", "inputs": {"tree": str(tree)},
                                    "run": f'{sys.executable} {script} "{out}"'}))
    assert json.loads(fleet.cli("submit", str(spec), "--wait", "--json").stdout)["state"] == "SUCCEEDED"
    files = json.loads(out.read_text())["files"]
    content, real = files["inputs/tree/link"]
    assert content == "outside" and Path(real).parent == (fleet.settings.local_workdir / "cache").resolve()


# ---------------------------------------------------------------------- device side


def test_wrapper_inside_refuses_escapes_and_symlinks_out(tmp_path: Path) -> None:
    base = tmp_path / "attempt"
    (base / "inputs").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (base / "inputs" / "evil").symlink_to(outside)
    ok = ["job.json", "inputs/m/model.onnx", "a/b/../c", "results/*.txt"]
    bad = ["", "/etc/passwd", "../x", "inputs/../../x", "~/x", "a\x00b", "inputs/evil/x",
           "inputs/evil/sub/x"]
    for rel in ok:
        assert wrapper._inside(str(base), rel), rel
    for rel in bad:
        assert not wrapper._inside(str(base), rel), rel


def _prepare(tmp_path: Path, inputs: list[list[str]], outputs: list[str] | None = None) -> Path:
    adir = tmp_path / "attempts" / "a1"
    adir.mkdir(parents=True, exist_ok=True)
    cache = tmp_path / "cache"
    cache.mkdir(exist_ok=True)
    (cache / SHA).write_text("blob")
    wrapper._prepare(str(adir), {"job": {"outputs": outputs or []}, "cache_dir": str(cache),
                                 "inputs": inputs})
    return adir


@pytest.mark.parametrize(
    ("inputs", "outputs", "words"),
    [
        ([["inputs/../../../outside", SHA]], None, "input path"),
        ([["/tmp/outside", SHA]], None, "input path"),
        ([["job.json", SHA]], None, "input path"),  # inputs go under inputs/ only
        ([["inputs/evil/x", SHA]], None, "input path"),  # through a link that leads out
        ([], ["../*"], "output path"),
        ([], ["/etc/*"], "output path"),
        ([], ["inputs/evil/*"], "output path"),
    ],
)
def test_wrapper_prepare_refuses_paths_out_of_the_attempt(tmp_path: Path, inputs, outputs, words) -> None:
    adir = tmp_path / "attempts" / "a1"
    (adir / "inputs").mkdir(parents=True)
    (adir / "inputs" / "evil").symlink_to(tmp_path / "outside", target_is_directory=True)
    (tmp_path / "outside").mkdir()
    with pytest.raises(ValueError, match=words):
        _prepare(tmp_path, inputs, outputs)
    assert list((tmp_path / "outside").iterdir()) == []
    assert not (tmp_path / "outside" / "x").exists() and not Path("/tmp/outside").exists()


def test_wrapper_agent_refuses_a_launch_with_an_escaping_input(tmp_path: Path) -> None:
    """Over the agent protocol, as the controller talks to a host: the attempt ends with a
    prepare error and nothing is written outside its directory."""
    cache = tmp_path / "cache"
    cache.mkdir()
    sha = hashlib.sha256(b"blob").hexdigest()  # the agent checks cached inputs by content
    (cache / sha).write_text("blob")
    marker = tmp_path / "ran"
    request = {"op": "launch", "id": "a1", "attempt_dir": str(tmp_path / "attempts" / "a1"),
               "cache_dir": str(cache), "job": {}, "env": {}, "timeout": None, "grace": 1,
               "inputs": [["inputs/m/../../../escaped", sha]], "argv": ["touch", str(marker)]}
    proc = subprocess.run([sys.executable, str(REPO / "runners" / "wrapper.py"), "agent"],
                          input=(json.dumps(request) + "\n").encode(), capture_output=True,
                          timeout=30, check=False)
    frames = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith(b"{")]
    exits = [f for f in frames if f.get("t") == "exit"]
    assert exits, frames
    assert "leaves the attempt directory" in exits[0]["status"]["error"]
    assert not marker.exists() and not (tmp_path / "escaped").exists()
    assert not os.path.exists(tmp_path / "attempts" / "escaped")
