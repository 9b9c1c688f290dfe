"""Developer sessions: ``nox`` runs lint, typecheck and the tests on Python 3.11.

``nox -s tests`` runs the tests on 3.11, 3.12 and 3.13; ``nox -db uv`` creates the
virtualenvs about five times faster. Arguments after ``--`` go to pytest (or to the
benchmarks): ``nox -s tests-3.12 -- -k s3 -x``.
"""

from __future__ import annotations

import glob
import os

import nox

# pyenv's global version is 3.11 only, so the python3.12/python3.13 shims exit 127:
# put every installed 3.11-3.13 on PATH, and never let nox or uv download a Python.
_PYENV_BINS = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[123].*/bin")))
os.environ["PATH"] = os.pathsep.join([*_PYENV_BINS, os.environ.get("PATH", "")])
os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")

nox.options.download_python = "never"
nox.options.sessions = ["lint", "typecheck", "tests-3.11"]

PYTHONS = ["3.11", "3.12", "3.13"]
DEV = ("-e", ".[dev]")


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite, with real PostgreSQL, moto S3 and Redis where installed."""
    session.install(*DEV)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the library."""
    session.install(*DEV)
    session.run("mypy", "--strict", "granite_storage")


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """Build the documentation site; warnings are errors."""
    session.install(*DEV)
    session.run("mkdocs", "build", "--strict")


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    """Run the quickstart example end to end."""
    session.install(*DEV)
    session.run("python", "examples/quickstart.py")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmarks (``python -m benchmarks``); pass options after ``--``."""
    session.install(*DEV)
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session(python="3.11")
def reliability(session: nox.Session) -> None:
    """Fault-injection and crash-safety tests in tests/reliability, in their full form
    (500-upload soaks, a long S3 fault campaign, more crash points and hypothesis
    examples), plus the object ledger's one-minute concurrency run.
    ``GRANITE_STORAGE_RELIABILITY=short nox -s reliability`` runs the short
    form every pytest run includes; ``GRANITE_STORAGE_RELIABILITY_SEED=N`` replays a run."""
    session.install(*DEV)
    mode = os.environ.get("GRANITE_STORAGE_RELIABILITY", "full")
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/reliability",
        # the object ledger's collector against 32 writers for a minute
        "tests/integrations/test_ledger_concurrency.py",
        *session.posargs,
        env={"GRANITE_STORAGE_RELIABILITY": mode},
    )
