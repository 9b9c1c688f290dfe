"""Find the local backend's temporary files (uploads in progress, leftovers)."""

from __future__ import annotations

from pathlib import Path

from granite_storage.backends.local import TEMP_PREFIX


def temp_files(root: Path) -> list[Path]:
    """Every temporary file under ``root``: next to its target, or in the
    shared temporary directory of earlier versions. Sorted."""
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and any(part.startswith(TEMP_PREFIX) for part in path.relative_to(root).parts)
    )
