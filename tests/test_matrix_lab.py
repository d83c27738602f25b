"""A nightly matrix on the device lab (real fleet serve, real SSH, the lab's trtexec stand-in
replaying recorded real output): a compile -> benchmark chain per device class, four benchmark
samples a night, the matrix's own thresholds (alpha 0.01: four samples against eight can say
p = 0.002). From the third night on the RTX host's trtexec is 10% slower: the report flags
exactly that point, from that night, and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.lab import Lab

MODEL = Path(__file__).resolve().parent.parent / "examples" / "models" / "tinycnn.onnx"


@pytest.mark.long
def test_a_slower_device_tool_is_flagged_on_its_point_from_that_night(fleet, lab: Lab, tmp_path):
    rtx = lab.add_hosts("rtx5060", 1)[0]
    lab.add_hosts("jetson-orin-nano", 1)
    (fleet.home / "known_hosts").write_text(lab.known_hosts_text())
    fleet.start(lab.write_inventory(tmp_path / "inventory.ini"))
    matrix = {
        "name": "lab-nightly", "axes": {"pool": ["rtx", "jetson"]}, "repeat": 4,
        "thresholds": {"alpha": 0.01, "min_baseline": 4},
        # what the trtexec stand-in computes; its tegrastats power and memory depend on how the
        # lab's own timing overlaps the run (an artifact of the stand-in), so they are not judged
        "metrics": ["latency_ms", "gpu_compute_ms", "throughput_per_s"],
        "steps": [
            {"name": "compile", "kind": "compile", "runner": "tensorrt",
             "resources": {"pool": "${{ matrix.pool }}"}, "inputs": {"model": str(MODEL)},
             "params": {"precision": "fp16"}},
            {"name": "bench", "kind": "benchmark", "runner": "tensorrt",
             "resources": {"pool": "${{ matrix.pool }}"}, "inputs": {"engine": {"step": "compile"}},
             "params": {"duration_s": 0.3, "warmup_ms": 20}},
        ],
    }
    mfile = tmp_path / "lab-nightly.yml"
    mfile.write_text(yaml.safe_dump(matrix))
    runs, reports = [], []
    for night in range(3):
        if night == 2:
            lab.set_tools(rtx.name, latency_scale=1.1)
        proc = fleet.cli("matrix", "run", str(mfile), "--wait", "--json", check=False, timeout=300)
        report = json.loads(proc.stdout)
        runs.append(report["id"])
        reports.append(report)
        assert report["progress"]["done"] == 2, report["points"]
    last = {p["values"]["pool"]: p for p in reports[2]["points"]}
    flagged = [(pool, m) for pool, p in last.items() for m, d in p["metrics"].items()
               if d["status"] in ("regression", "improvement")]
    assert last["rtx"]["verdict"] == "regression", last["rtx"]["metrics"]
    assert last["jetson"]["verdict"] == "unchanged", [
        (m, d["reason"], d["samples"], d["baseline_runs"]) for m, d in last["jetson"]["metrics"].items()
        if d["status"] != "unchanged"]
    lat = last["rtx"]["metrics"]["latency_ms"]
    assert lat["status"] == "regression" and lat["first_run"] == runs[2] and 7 < lat["change_pct"] < 13
    assert all(pool == "rtx" for pool, _ in flagged), flagged
    assert last["jetson"]["metrics"]["power_w"]["status"] == "skipped"
    assert "not in the matrix's metrics" in last["jetson"]["metrics"]["power_w"]["reason"]
    # the night before was judged (four samples of baseline) and flagged nothing
    assert reports[1]["summary"]["unchanged"] == 2, [
        (p["values"], p["verdict"], p["notes"], {m: (d["status"], d.get("reason"), d.get("samples"))
                                                 for m, d in p["metrics"].items() if d["status"] != "skipped"})
        for p in reports[1]["points"]]
    assert [(r["point"], r["first_run"]) for r in fleet.cli_json("regressions")
            if r["metric"] == "latency_ms"] == [({"pool": "rtx"}, runs[2])]
