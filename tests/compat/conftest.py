"""Run granite-storage 0.1.0's own tests against granite_storage.sync.

The test files are 0.1.0's, unchanged but for their import lines. Every test
passes, or is an expected failure (strict: it must fail) for one of the
reasons below, each a behaviour 0.2 changed on purpose (docs/migrating.md
lists them). The S3 tests run against moto's server (see moto_server.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from granite_storage.errors import ConfigurationError
from tests.compat import moto_server

_HERE = Path(__file__).parent


@dataclass(frozen=True)
class Expected:
    """Why a 0.1.0 test fails, and the exception it must fail with (a test that
    fails for another reason, a broken moto set-up say, is reported as a failure)."""

    reason: str
    raises: type[BaseException] | tuple[type[BaseException], ...]

    def but_also(self, other: Expected) -> Expected:
        return Expected(f"{self.reason}; past that: {other.reason}", self.raises)


_S3_FILES = {"test_s3_backend.py", "test_s3_storage.py"}

BACKENDS_ARE_ASYNC = Expected(
    "0.2 changed on purpose: backends are async (aput_stream, aopen, aget, adelete, "
    "aexists, aiter_locations) with no sync methods, and granite_storage.sync adds no sync "
    "twin of them; sync code calls granite_storage.sync.StorageManager",
    AttributeError,
)
PRIVATE_HELPER = Expected(
    "0.2 changed on purpose: a private helper of 0.1.0 is gone (locations are checked by "
    "granite_storage.locations, before any I/O, for every backend)",
    AttributeError,
)
S3_TAKES_AIOBOTO3 = Expected(
    "0.2 changed on purpose: S3StorageBackend runs on aioboto3 and takes session= and "
    "client_kwargs= (endpoint_url, region_name, ...), not a boto3 client",
    TypeError,
)
ERROR_MESSAGES = Expected(
    "0.2 changed on purpose: error messages name the configured keys and say what to do "
    "('unknown storage key ...; configured keys: [...]', not 'Unknown storage policy')",
    AssertionError,
)
FAIL_FAST = Expected(
    "0.2 changed on purpose: a policy naming an unknown backend is refused when the manager "
    "is built (ConfigurationError), not when the policy is first used",
    ConfigurationError,
)
DICTS_VALIDATED = Expected(
    "0.2 changed on purpose: a dict bound to a StoredObjectRefType column goes through "
    "StoredObjectRef (validated, text cleaned for JSONB), so a copy is bound, not the dict",
    AssertionError,
)
ASYNC_UPLOADFILE = Expected(
    "0.2 changed on purpose: the a prefix marks coroutines, so 0.1.0's coroutine "
    "set_content_from_uploadfile is aset_content_from_uploadfile (and the blocking "
    "get_content, called inside the test's event loop, raises SyncInEventLoopError)",
    AttributeError,
)

EXPECTED_FAILURES = {
    "test_gc.py::test_gc_detects_orphans": BACKENDS_ARE_ASYNC,
    **{
        f"test_local_backend.py::{name}": BACKENDS_ARE_ASYNC
        for name in (
            "test_put_bytes_with_content_type_and_extra",
            "test_put_stream_with_explicit_checksum_and_size",
            "test_open_returns_readable_stream",
            "test_open_raises_if_not_found",
            "test_get_raises_if_not_found",
            "test_delete_is_idempotent",
            "test_delete_removes_existing_file",
            "test_exists_false_for_missing_file",
            "test_iter_locations_no_prefix",
            "test_iter_locations_with_prefix",
            "test_iter_locations_empty_prefix_not_exists",
        )
    },
    "test_local_backend.py::test_resolve_path_traversal_raises": PRIVATE_HELPER,
    "test_manager.py::test_get_policy_unknown_raises": ERROR_MESSAGES,
    "test_manager.py::test_get_backend_for_policy_unknown_raises": FAIL_FAST,
    "test_mixin_extended.py::test_set_content_from_uploadfile": ASYNC_UPLOADFILE,
    "test_mixin_extended.py::test_clear_content_reference": PRIVATE_HELPER,
    "test_mixin_extended.py::test_require_storage_manager_raises_when_not_configured": (
        PRIVATE_HELPER
    ),
    **{
        f"test_s3_backend.py::{name}": S3_TAKES_AIOBOTO3.but_also(BACKENDS_ARE_ASYNC)
        for name in (
            "test_put_bytes_with_content_type",
            "test_put_bytes_without_content_type",
            "test_put_stream_with_content_type",
            "test_put_stream_explicit_size_and_checksum",
            "test_open_returns_bytes",
            "test_delete_removes_object",
            "test_exists_false_for_missing_key",
            "test_iter_locations_no_prefix",
            "test_iter_locations_with_prefix",
            "test_iter_locations_strips_prefix",
            "test_put_with_extra_put_kwargs",
        )
    },
    "test_s3_backend.py::test_strip_prefix_no_match": PRIVATE_HELPER,
    "test_s3_storage.py::test_s3_stream_roundtrip": S3_TAKES_AIOBOTO3,
    "test_types.py::test_process_bind_param_dict_passthrough": DICTS_VALIDATED,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent != _HERE:
            continue
        if item.path.name in _S3_FILES:
            item.add_marker(pytest.mark.s3)
        expected = EXPECTED_FAILURES.get(f"{item.path.name}::{item.name}")
        if expected is not None:
            item.add_marker(
                pytest.mark.xfail(reason=expected.reason, raises=expected.raises, strict=True)
            )


@pytest.fixture(autouse=True)
def _moto_server_for_mock_aws(request: pytest.FixtureRequest) -> Iterator[None]:
    """Start (once) and hand over moto's server to the tests that use ``mock_aws``."""
    if request.node.get_closest_marker("s3") is None:
        yield
        return
    moto_server.endpoint_url = request.getfixturevalue("s3_endpoint_url")
    try:
        yield
    finally:
        moto_server.endpoint_url = None
