"""Real, throwaway services for a test session: PostgreSQL 15, moto's S3 server, Redis.

Each ``*_server()`` function is a context manager that starts one service on a free
loopback port, yields its URL and stops it (and removes its files) on exit, also when
the body raises. When the service cannot be started it raises `ServiceUnavailable`
with a reason that says what to install or where the log is.

This module does not import pytest (``skip_or_fail`` imports it lazily), so benchmarks
and scripts can reuse it. The recipes follow shared/INFRA.md.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "PG_BIN_DIR",
    "REQUIRE_SERVICES_ENV",
    "ServiceUnavailable",
    "free_port",
    "moto_s3_server",
    "postgres_server",
    "redis_server",
    "reset_moto",
    "skip_or_fail",
]

#: Where Debian's postgresql-15 package puts its binaries; override with GRANITE_STORAGE_PG_BIN.
PG_BIN_DIR = os.environ.get("GRANITE_STORAGE_PG_BIN", "/usr/lib/postgresql/15/bin")

#: When this variable is "1" (CI sets it), a missing service fails the test instead of skipping.
REQUIRE_SERVICES_ENV = "GRANITE_STORAGE_REQUIRE_SERVICES"

_HOST = "127.0.0.1"
_AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}
# Talk to our own loopback servers directly, whatever *_proxy variables say.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServiceUnavailable(Exception):
    """A test service could not be started; ``reason`` says why and what to do."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the current test, or fail it when GRANITE_STORAGE_REQUIRE_SERVICES=1."""
    import pytest

    if os.environ.get(REQUIRE_SERVICES_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_SERVICES_ENV}=1, so this is a failure)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _stop_process(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """Terminate, then kill, and always reap (an unreaped Popen warns when collected)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


# --------------------------------------------------------------------------- PostgreSQL


def _pg_run_kwargs(base: Path) -> dict[str, Any]:
    """PostgreSQL refuses to run as root: switch to the ``postgres`` user (uid and gid)."""
    kwargs: dict[str, Any] = {"cwd": base}
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise ServiceUnavailable(
                "running as root, but there is no 'postgres' user to run PostgreSQL as; "
                "install it with: apt-get install -y postgresql-15"
            ) from None
        os.chown(base, pw.pw_uid, pw.pw_gid)
        kwargs.update(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
    return kwargs


def _pg_ctl(pg_ctl: Path, args: list[str], run_kwargs: dict[str, Any]) -> str | None:
    """Run pg_ctl; None on success, else its output."""
    try:
        done = subprocess.run(
            [str(pg_ctl), *args],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
            **run_kwargs,
        )
    except subprocess.TimeoutExpired as exc:
        return f"timed out after {exc.timeout} s"
    if done.returncode == 0:
        return None
    return (done.stdout + done.stderr).strip() or f"exit code {done.returncode}"


def _pg_force_stop(data: Path) -> None:
    """Last resort when ``pg_ctl stop`` failed: kill the postmaster named in its pid file."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, 9)


@contextlib.contextmanager
def postgres_server(bin_dir: str | os.PathLike[str] = PG_BIN_DIR) -> Iterator[str]:
    """Start a PostgreSQL cluster in a temp dir; yield ``postgresql+asyncpg://test@.../postgres``.

    The cluster trusts local connections, does not fsync, and is stopped with
    ``-m immediate`` (its data is thrown away anyway).
    """
    bin_path = Path(bin_dir)
    initdb, pg_ctl = bin_path / "initdb", bin_path / "pg_ctl"
    if not (initdb.exists() and pg_ctl.exists()):
        raise ServiceUnavailable(
            f"PostgreSQL 15 not found ({initdb} is missing); "
            "install it with: apt-get install -y postgresql-15"
        )
    base = Path(tempfile.mkdtemp(prefix="granite-pg-"))  # mode 0700
    data, log = base / "data", base / "postgres.log"
    started = False
    try:
        run_kwargs = _pg_run_kwargs(base)
        try:
            done = subprocess.run(
                [
                    *(str(initdb), "-D", str(data), "-U", "test", "--auth=trust"),
                    *("-E", "UTF8", "--locale=C.UTF-8", "--no-sync"),
                ],
                capture_output=True,
                text=True,
                timeout=120,
                stdin=subprocess.DEVNULL,
                check=False,
                **run_kwargs,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise ServiceUnavailable(f"initdb could not run: {exc}") from exc
        if done.returncode != 0:
            raise ServiceUnavailable(f"initdb failed:\n{(done.stdout + done.stderr).strip()}")

        error = "not tried"
        for _attempt in range(3):  # a port taken between free_port() and bind: try another
            port = free_port()
            options = (
                f"-p {port} -k {base} -c listen_addresses={_HOST}"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            # Without -l LOGFILE, `pg_ctl start` hangs when its output is captured.
            start_args = ["-D", str(data), "-l", str(log), "-w", "-t", "30", "-o", options]
            failure = _pg_ctl(pg_ctl, [*start_args, "start"], run_kwargs)
            if failure is None:
                started = True
                break
            error = f"{failure}\nserver log ({log}):\n{_tail(log)}"
            _pg_ctl(pg_ctl, ["-D", str(data), "-m", "immediate", "-w", "stop"], run_kwargs)
        if not started:
            raise ServiceUnavailable(f"PostgreSQL did not start: {error}")
        yield f"postgresql+asyncpg://test@{_HOST}:{port}/postgres"
    finally:
        if started:
            stop_args = ["-D", str(data), "-m", "immediate", "-w", "-t", "30", "stop"]
            if _pg_ctl(pg_ctl, stop_args, run_kwargs) is not None:
                _pg_force_stop(data)
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- S3 (moto)


def _moto_server_executable(executable: str | None) -> str:
    if executable is not None:
        found = shutil.which(executable)
    else:
        # The venv's moto_server sits next to the interpreter running the tests.
        beside = Path(sys.executable).with_name("moto_server")
        found = str(beside) if beside.exists() else shutil.which("moto_server")
    if found is None:
        raise ServiceUnavailable(
            f"{executable or 'moto_server'} not found next to {sys.executable} or on PATH; "
            "install it with: pip install 'moto[server]'"
        )
    return found


@contextlib.contextmanager
def moto_s3_server(executable: str | None = None) -> Iterator[str]:
    """Run ``moto_server`` in a subprocess; yield its endpoint URL ``http://127.0.0.1:PORT``.

    Sets dummy AWS credentials and region in ``os.environ`` (and hides any real AWS
    config) for the duration, so clients need only ``endpoint_url``.

    moto's responses carry two ``Server`` headers; aiohttp's C parser accepts that, its
    strict pure-Python parser (``python -X dev``, AIOHTTP_NO_EXTENSIONS=1) does not.
    """
    exe = _moto_server_executable(executable)
    saved = {name: os.environ.get(name) for name in _AWS_TEST_ENV}
    os.environ.update(_AWS_TEST_ENV)
    tmp = Path(tempfile.mkdtemp(prefix="granite-moto-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        port = free_port()
        endpoint = f"http://{_HOST}:{port}"
        log = tmp / "moto.log"
        with log.open("wb") as log_file:
            try:
                proc = subprocess.Popen(
                    [exe, "-H", _HOST, "-p", str(port)],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    cwd=tmp,
                )
            except OSError as exc:
                raise ServiceUnavailable(f"{exe} could not run: {exc}") from exc
        _wait_until(
            lambda: _http_ok(f"{endpoint}/moto-api/"),
            proc,
            timeout=30,
            what=f"moto_server on port {port}",
            log=log,
        )
        yield endpoint
    finally:
        if proc is not None:
            _stop_process(proc)
        shutil.rmtree(tmp, ignore_errors=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def reset_moto(endpoint_url: str) -> None:
    """Forget every bucket and object on a moto server (one POST to /moto-api/reset)."""
    request = urllib.request.Request(f"{endpoint_url}/moto-api/reset", data=b"", method="POST")
    with _NO_PROXY_OPENER.open(request, timeout=30) as response:
        response.read()


def _http_ok(url: str) -> bool:
    try:
        with _NO_PROXY_OPENER.open(url, timeout=1) as response:
            response.read()
            return bool(200 <= response.status < 300)
    except (urllib.error.URLError, OSError):
        return False


# --------------------------------------------------------------------------- Redis


@contextlib.contextmanager
def redis_server(executable: str = "redis-server") -> Iterator[str]:
    """Run ``redis-server`` without persistence; yield ``redis://127.0.0.1:PORT/0``."""
    exe = shutil.which(executable)
    if exe is None:
        raise ServiceUnavailable(
            f"{executable} not found on PATH; install it with: apt-get install -y redis-server"
        )
    tmp = Path(tempfile.mkdtemp(prefix="granite-redis-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        port = free_port()
        log = tmp / "redis.log"
        try:
            proc = subprocess.Popen(
                [
                    *(exe, "--port", str(port), "--bind", _HOST),
                    *("--save", "", "--appendonly", "no", "--daemonize", "no"),
                    *("--dir", str(tmp), "--logfile", str(log)),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=tmp,
            )
        except OSError as exc:
            raise ServiceUnavailable(f"{exe} could not run: {exc}") from exc
        _wait_until(
            lambda: _redis_pong(port),
            proc,
            timeout=15,
            what=f"redis-server on port {port}",
            log=log,
        )
        yield f"redis://{_HOST}:{port}/0"
    finally:
        if proc is not None:
            _stop_process(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def _redis_pong(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


# --------------------------------------------------------------------------- helpers


def _wait_until(
    ready: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    *,
    timeout: float,
    what: str,
    log: Path,
) -> None:
    """Poll ``ready()``; raise ServiceUnavailable if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while not ready():
        code = proc.poll()
        if code is not None:
            raise ServiceUnavailable(f"{what} exited with code {code}; its log:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"{what} not ready after {timeout} s; its log:\n{_tail(log)}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)
