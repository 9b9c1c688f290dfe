"""The documentation's code runs: every docs/snippets/*.py, and the site builds strictly.

Each snippet is a complete script. It runs in its own interpreter
(``sys.executable``) and must exit 0 and print ``<name>: ok`` (its file name with
spaces for underscores) as its last line. Snippets on local disk, memory and
SQLite run with blockbuster watching the event loop, so a snippet that blocks
the loop fails here just as a test would. Snippets named ``s3_*`` need an S3
server: they run against the moto server of the ``s3`` fixtures, given as
``S3_ENDPOINT_URL`` and ``S3_BUCKET``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SNIPPETS = sorted((DOCS / "snippets").glob("*.py"))
LOCAL_SNIPPETS = [path for path in SNIPPETS if not path.name.startswith("s3_")]
S3_SNIPPETS = [path for path in SNIPPETS if path.name.startswith("s3_")]

# Runs a snippet as __main__ (with its own folder on sys.path, as `python file.py`
# would) while blockbuster fails any blocking call made inside a running event loop.
# The one allowance: SQLAlchemy's SQLite dialect normalises the database path with
# os.path.abspath when an engine connects (string work for an absolute path).
_RUNNER = """
import os, runpy, sys
from blockbuster import blockbuster_ctx
path = sys.argv[1]
sys.argv = [path]
sys.path.insert(0, os.path.dirname(path))
with blockbuster_ctx() as bb:
    bb.functions["os.path.abspath"].can_block_in(
        "sqlalchemy/dialects/sqlite/pysqlite.py", {"create_connect_args"}
    )
    runpy.run_path(path, run_name="__main__")
"""

# pymdownx.snippets includes: the block form (which ruff's Markdown formatter leaves
# alone) and the one-line form; ":section" or ":start:end" may follow the path.
_BLOCK = re.compile(r"^[ \t]*--8<--[ \t]*\n(.*?)\n[ \t]*--8<--[ \t]*$", re.MULTILINE | re.DOTALL)
_LINE = re.compile(r"""^[ \t]*--8<--[ \t]+["']([^"']+)["']""", re.MULTILINE)


def _included_paths(text: str) -> set[str]:
    entries = _LINE.findall(text)
    for block in _BLOCK.findall(text):
        entries.extend(line.strip() for line in block.splitlines() if line.strip())
    return {entry.split(":", 1)[0] for entry in entries}


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_there_are_snippets() -> None:
    assert len(SNIPPETS) >= 5


def _check_output(snippet: Path, returncode: int, stdout: str, stderr: str) -> None:
    output = f"stdout:\n{stdout}\nstderr:\n{stderr}"
    assert returncode == 0, output
    lines = stdout.strip().splitlines()
    assert lines, output
    assert lines[-1] == f"{snippet.stem.replace('_', ' ')}: ok", output


@pytest.mark.parametrize("snippet", LOCAL_SNIPPETS, ids=[path.stem for path in LOCAL_SNIPPETS])
def test_snippet_runs(snippet: Path, tmp_path: Path) -> None:
    result = _run([sys.executable, "-c", _RUNNER, str(snippet)], cwd=tmp_path, timeout=90)
    _check_output(snippet, result.returncode, result.stdout, result.stderr)
    assert list(tmp_path.iterdir()) == [], "a snippet left files in its working directory"


@pytest.mark.s3
@pytest.mark.parametrize("snippet", S3_SNIPPETS, ids=[path.stem for path in S3_SNIPPETS])
async def test_s3_snippet_runs(
    snippet: Path, tmp_path: Path, s3_endpoint_url: str, s3_bucket: str
) -> None:
    # Without blockbuster: botocore loads its service models lazily from disk on the
    # first client; the S3 backend's own tests run under blockbuster with allowances.
    env = {**os.environ, "S3_ENDPOINT_URL": s3_endpoint_url, "S3_BUCKET": s3_bucket}
    with anyio.fail_after(120):
        result = await anyio.run_process(
            [sys.executable, str(snippet)], cwd=tmp_path, env=env, check=False
        )
    _check_output(snippet, result.returncode, result.stdout.decode(), result.stderr.decode())


def test_every_snippet_is_shown_in_the_docs() -> None:
    included: set[str] = set()
    for page in DOCS.rglob("*.md"):
        included.update(_included_paths(page.read_text(encoding="utf-8")))
    shown = {(ROOT / path).resolve() for path in included}
    missing = [path.name for path in SNIPPETS if path.resolve() not in shown]
    assert missing == [], f"snippets no page includes: {missing}"
    absent = sorted(path for path in included if not (ROOT / path).is_file())
    assert absent == [], f"pages include files that do not exist: {absent}"


@pytest.mark.slow
def test_site_builds_strictly(tmp_path: Path) -> None:
    """``mkdocs build --strict``: a warning (broken link, missing module, unknown
    snippet, bad docstring reference) fails the build."""
    result = _run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "reference" / "manager" / "index.html").is_file()
