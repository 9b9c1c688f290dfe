"""Every runnable file in examples/ runs to completion, as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_every_example_is_covered() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py")}
    # direct_uploads.py runs in a real browser: tests/backends/test_direct_browser.py.
    assert scripts == {
        "quickstart.py",
        "fastapi_app.py",
        "arq_worker.py",
        "gc_factory.py",
        "direct_uploads.py",
    }
    assert (EXAMPLES / "alembic" / "env.py").exists()  # run by test_sqlalchemy_alembic.py


def test_quickstart(tmp_path: Path) -> None:
    out = run_example("quickstart.py", str(tmp_path))
    assert "gc dry run 2 orphans of 3 objects, deleted 0" in out
    assert "deleted            2" in out
    assert out.rstrip().endswith("done")
    stored = [p for p in (tmp_path / "storage" / "docs").rglob("*") if p.is_file()]
    assert len(stored) == 1  # only the committed, referenced object is left


def test_quickstart_in_a_temporary_directory() -> None:
    assert "done" in run_example("quickstart.py")


def test_gc_factory_demo() -> None:
    out = run_example("gc_factory.py")
    assert "deleted            2" in out


def test_fastapi_app_demo() -> None:
    out = run_example("fastapi_app.py")
    assert "bytes 1-3: 206 b'ell'" in out
    assert "after delete: []" in out


@pytest.mark.redis
def test_arq_worker_demo(redis_url: str) -> None:
    out = run_example("arq_worker.py", env={"REDIS_URL": redis_url})
    assert "deleted" in out.lower()
