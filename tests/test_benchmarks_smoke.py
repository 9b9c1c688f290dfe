"""``python -m benchmarks migrate detect --quick`` runs end to end and writes
its rows with numbers (a smoke test of the scenarios; the figures themselves
are not judged here: speed belongs to the benchmark run)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.detect import payloads
from tests import services

PROJECT_ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.s3, pytest.mark.slow, pytest.mark.timeout(180)]


def _moto_server_installed() -> bool:
    return (
        Path(sys.executable).with_name("moto_server").exists()
        or shutil.which("moto_server") is not None
    )


def _run_quick(tmp_path: Path, *scenarios: str, legacy: bool = False) -> dict[str, Any]:
    """Run ``scenarios`` at ``--quick``; with ``legacy``, 0.1.0's jobs too (its
    sdist fetched from PyPI once, into the benchmarks' default cache)."""
    output = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", *scenarios, "--quick", "--runs", "1",
         *([] if legacy else ["--no-legacy"]), "--output", str(output),
         "--work-dir", str(tmp_path)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=170, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    document: dict[str, Any] = json.loads(output.read_text(encoding="utf-8"))
    return document


def _number(figure: dict[str, Any], *, positive: bool = True) -> float:
    assert figure["error"] is None, figure
    value = figure["value"]
    assert isinstance(value, float) and (value > 0 if positive else value >= 0), figure
    return value


def test_migrate_and_detect_scenarios_report_every_row(tmp_path: Path) -> None:
    if not _moto_server_installed():
        services.skip_or_fail("moto_server is not installed: pip install 'moto[server]'")
    document = _run_quick(tmp_path, "migrate", "detect")
    rows = document["rows"]
    migrate = [row for row in rows if row["scenario"].startswith("migrate ")]
    detect = [row for row in rows if row["scenario"].startswith("detect ")]
    assert len(migrate) + len(detect) == len(rows)

    assert [row["metric"] for row in migrate] == ["throughput", "CPU seconds", "peak RSS growth"]
    for row in migrate:
        positive = row["metric"] != "peak RSS growth"  # a small run may not raise the peak
        _number(row["granite_storage"], positive=positive)
        [raw] = row["baselines"]
        assert raw["label"].startswith("read + aioboto3 upload_fileobj")
        _number(raw, positive=positive)
    throughput = migrate[0]
    assert throughput["targets"][0]["target"] == ">= 0.9x raw loop"
    assert throughput["targets"][0]["met"] in (True, False)  # judged, whichever way

    formats = list(payloads())
    assert len(detect) == 2 * len(formats)
    for kind, (cpu, wall) in zip(formats, zip(detect[::2], detect[1::2], strict=True), strict=True):
        assert f" {kind} head" in cpu["scenario"]
        assert wall["scenario"] == cpu["scenario"]
        assert (cpu["metric"], wall["metric"]) == ("CPU per detection", "wall per detection")
        for row in (cpu, wall):
            _number(row["granite_storage"])
            [libmagic] = row["baselines"]
            assert libmagic["label"].startswith("libmagic alone")
            _number(libmagic)
        assert cpu["targets"][0]["met"] in (True, False)


def test_every_job_of_the_local_scenarios_runs_0_1_0_included(tmp_path: Path) -> None:
    # A job whose arguments no longer fit its function only shows as "failed"
    # in the table (0.1.0's stream job did, for a session): fail here instead.
    scenarios = ("stream", "concurrent", "small", "sync", "gc-local")
    document = _run_quick(tmp_path, *scenarios, legacy=True)
    rows = document["rows"]
    names = {row["scenario"].split(" (")[0] for row in rows}
    assert len(names) >= 10, names
    with_legacy = 0
    for row in rows:
        legacy = row["granite_storage_0_1_0"]
        with_legacy += legacy is not None
        for figure in [row["granite_storage"], *row["baselines"], *([legacy] if legacy else [])]:
            assert figure["error"] is None, (row["scenario"], row["metric"], figure)
    assert with_legacy >= 10  # the stream, concurrent, small, sync and gc rows that have one
