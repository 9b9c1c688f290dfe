"""granite-storage 0.1.0, fetched from PyPI into a cache directory and unpacked.

The old package has the same import name as the new one, so it is never
installed into the environment: its unpacked wheel is put first on the
``sys.path`` of the child processes that run its workloads (see
:mod:`benchmarks._child`). It declares Python 3.12 but runs on 3.11, so the
download asks for a 3.12 wheel explicitly.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

__all__ = ["LEGACY_VERSION", "LegacyUnavailableError", "legacy_package_dir"]

LEGACY_VERSION = "0.1.0"
_REQUIREMENT = f"granite-storage=={LEGACY_VERSION}"


class LegacyUnavailableError(RuntimeError):
    """granite-storage 0.1.0 could not be downloaded or found."""


def _is_package_dir(path: Path) -> bool:
    return (path / "granite_storage" / "__init__.py").is_file() and any(
        path.glob(f"granite_storage-{LEGACY_VERSION}.dist-info")
    )


def legacy_package_dir(cache_dir: Path, explicit: Path | None = None) -> Path:
    """The directory holding 0.1.0's ``granite_storage`` package.

    :param explicit: a directory given by the user (e.g. a site-packages where
        0.1.0 is installed); used as it is.
    :raises LegacyUnavailableError: if it is neither cached nor downloadable
        with pip or uv, or ``explicit`` does not hold it.
    """
    if explicit is not None:
        if not _is_package_dir(explicit):
            raise LegacyUnavailableError(
                f"{explicit} does not contain granite_storage {LEGACY_VERSION} "
                f"(expected granite_storage/ and granite_storage-{LEGACY_VERSION}.dist-info/)"
            )
        return explicit
    unpacked = cache_dir / f"granite_storage-{LEGACY_VERSION}"
    if _is_package_dir(unpacked):
        return unpacked
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="legacy-", dir=cache_dir))
    try:
        _fetch(staging)
        shutil.rmtree(unpacked, ignore_errors=True)
        staging.rename(unpacked)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not _is_package_dir(unpacked):
        raise LegacyUnavailableError(f"the download of {_REQUIREMENT} holds no package")
    return unpacked


def _fetch(into: Path) -> None:
    """Unpack the 0.1.0 wheel into ``into`` with pip, or with uv where pip is absent."""
    errors = []
    pip = [sys.executable, "-m", "pip"]
    if subprocess.run([*pip, "--version"], capture_output=True, check=False).returncode == 0:
        wheels = into / ".wheels"
        done = subprocess.run(
            [*pip, "download", _REQUIREMENT, "--no-deps", "--only-binary=:all:",
             "--python-version", "3.12", "--disable-pip-version-check", "-q", "-d", str(wheels)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        found = sorted(wheels.glob("*.whl"))
        if done.returncode == 0 and found:
            with zipfile.ZipFile(found[0]) as wheel:
                wheel.extractall(into)
            shutil.rmtree(wheels)
            return
        errors.append(f"pip download: {done.stderr.strip()[-500:]}")
    uv = shutil.which("uv")
    if uv is not None:
        done = subprocess.run(
            [uv, "pip", "install", _REQUIREMENT, "--no-deps", "--target", str(into),
             "--python-version", "3.12", "--python", sys.executable, "-q"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode == 0:
            return
        errors.append(f"uv pip install --target: {done.stderr.strip()[-500:]}")
    raise LegacyUnavailableError(
        f"could not fetch {_REQUIREMENT} ({'; '.join(errors) or 'neither pip nor uv found'}); "
        "pass --legacy-path DIR pointing at a directory that contains it, or --no-legacy"
    )
