"""``fleet results import``: a log captured by hand becomes a stored result record (validated
against the result schema), through the real CLI and server; text of the wrong kind is a clear
error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FIX = Path(__file__).parent / "fixtures" / "tools"


def _trtexec_log(tmp_path: Path) -> Path:
    path = tmp_path / "trtexec.log"
    path.write_text("".join((FIX / f).read_text() for f in (
        "trtexec-header-device.txt", "trtexec-10.x-summary.txt", "trtexec-10.x-warnings.txt",
        "trtexec-passed-footer.txt")))
    return path


def test_import_each_format_stores_a_record(fleet, tmp_path):
    fleet.start()
    rec = fleet.cli_json("results", "import", "--format", "trtexec", str(_trtexec_log(tmp_path)),
                         "--host", "rtx-7", "--device-class", "x86_64/rtx2080", "--json")
    m = rec["metrics"]
    assert m["throughput_per_s"] == pytest.approx(130.298)
    assert m["latency_ms"]["p99"] == pytest.approx(12.9675)
    assert m["gpu_compute_ms"]["median"] == pytest.approx(7.14139)
    assert rec["target"] == {"host": "rtx-7", "device_class": "x86_64/rtx2080",
                             **{k: v for k, v in rec["target"].items() if k not in ("host", "device_class")}}
    assert rec["status"] == "ok" and rec["schema_version"] == 1

    rec = fleet.cli_json("results", "import", "--format", "hailortcli",
                         str(FIX / "hailortcli-4.x-benchmark.txt"), "--json")
    assert rec["metrics"]["fps"]["hw_only"] == pytest.approx(217.973)
    assert rec["metrics"]["power_w"]["avg"] == pytest.approx(5.22191)

    rec = fleet.cli_json("results", "import", "--format", "tegrastats",
                         str(FIX / "tegrastats-orin-nano-jp6.txt"), "--json")
    assert rec["metrics"]["power_w"]["avg"] == pytest.approx(5.704)

    rec = fleet.cli_json("results", "import", "--format", "ort-perf",
                         str(FIX / "onnxruntime_perf_test-old.txt"), "--json")
    assert rec["metrics"]["latency_ms"]["mean"] == pytest.approx(144.871)

    listed = json.loads(fleet.cli("results", "--json").stdout)["items"]
    assert {r["runner"] for r in listed} == {"import:trtexec", "import:hailortcli", "import:tegrastats",
                                             "import:ort-perf"}
    plain = fleet.cli("results", "import", "--format", "trtexec", str(_trtexec_log(tmp_path))).stdout
    assert "throughput 130.30/s" in plain


def test_import_of_the_wrong_text_is_a_clear_error(fleet, tmp_path):
    fleet.start()
    junk = tmp_path / "notes.txt"
    junk.write_text("nothing to see here\n")
    out = fleet.cli("results", "import", "--format", "trtexec", str(junk), check=False)
    assert out.returncode != 0
    assert "notes.txt" in out.stderr and "trtexec" in out.stderr and "Traceback" not in out.stderr
    out = fleet.cli("results", "import", "--format", "nope", str(junk), check=False)
    assert out.returncode == 2 and "nope" in out.stderr
