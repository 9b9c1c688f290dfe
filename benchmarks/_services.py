"""Servers the benchmarks talk to: moto's S3 server and uvicorn, each a subprocess."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

__all__ = ["AWS_TEST_ENV", "Server", "free_port", "moto_server", "uvicorn_server"]

#: Credentials and region moto accepts; set for the children, never real ones.
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """A running server subprocess and its base URL."""

    def __init__(self, process: subprocess.Popen[bytes], url: str) -> None:
        self.process = process
        self.url = url

    @property
    def pid(self) -> int:
        return self.process.pid


def _wait_until_up(process: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: {_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the server did not answer {url} within {timeout:.0f} s: {_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
    except OSError:
        return "(no log)"


@contextmanager
def _serve(
    command: list[str], url: str, probe: str, log: Path, env: Mapping[str, str], timeout: float
) -> Iterator[Server]:
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
    try:
        _wait_until_up(process, url + probe, log, timeout)
        yield Server(process, url)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def aws_test_env() -> Iterator[None]:
    """Moto's test credentials in ``os.environ`` (so children inherit them), restored after."""
    saved = {key: os.environ.get(key) for key in AWS_TEST_ENV}
    os.environ.update(AWS_TEST_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def moto_server(log_dir: Path) -> Iterator[Server]:
    """``moto_server`` on a free loopback port, with test credentials set.

    :raises RuntimeError: if moto's server is not installed or does not start.
    """
    beside = Path(sys.executable).with_name("moto_server")
    executable = str(beside) if beside.exists() else shutil.which("moto_server")
    if executable is None:
        raise RuntimeError("moto_server not found: install moto[server]")
    port = free_port()
    with (
        aws_test_env(),
        _serve(
            [executable, "-H", "127.0.0.1", "-p", str(port)],
            f"http://127.0.0.1:{port}",
            "/moto-api/",
            log_dir / "moto.log",
            {},
            timeout=60,
        ) as server,
    ):
        yield server


@contextmanager
def uvicorn_server(app: str, log_dir: Path, env: Mapping[str, str]) -> Iterator[Server]:
    """``python -m uvicorn APP`` on a free loopback port (one worker, no access log).

    :param env: extra environment for the server process (its configuration).
    """
    port = free_port()
    with _serve(
        [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
         "--no-access-log", "--log-level", "warning"],
        f"http://127.0.0.1:{port}",
        "/health",
        log_dir / "uvicorn.log",
        {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent.parent),
                                                     os.environ.get("PYTHONPATH")])),
         **env},
        timeout=60,
    ) as server:  # fmt: skip
        yield server
