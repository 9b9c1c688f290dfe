"""``mock_aws`` for the vendored 0.1.0 tests: moto's S3 *server* instead of moto's
in-process mock, which patches botocore's sync HTTP layer and never reaches
aiobotocore (granite_storage's S3 backend).

Inside ``mock_aws()`` (a decorator or a context manager, like moto's), boto3
and aioboto3 clients go to the moto server of the ``s3_endpoint_url`` fixture
(``AWS_ENDPOINT_URL_S3``), which starts empty, as a fresh ``mock_aws`` does.
conftest.py hands the endpoint over before each test of these files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from tests import services

#: Set by conftest.py for the tests that use ``mock_aws``.
endpoint_url: str | None = None


@contextlib.contextmanager
def _mock_aws() -> Iterator[None]:
    if endpoint_url is None:
        raise RuntimeError("tests/compat/conftest.py did not start moto's server for this test")
    services.reset_moto(endpoint_url)
    saved = os.environ.get("AWS_ENDPOINT_URL_S3")
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint_url
    try:
        yield
    finally:
        if saved is None:
            del os.environ["AWS_ENDPOINT_URL_S3"]
        else:
            os.environ["AWS_ENDPOINT_URL_S3"] = saved


class _MockAws(contextlib.ContextDecorator):
    def __enter__(self) -> None:
        self._context = _mock_aws()
        self._context.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        self._context.__exit__(None, None, None)


def mock_aws(func: object = None) -> object:
    """``@mock_aws``, ``@mock_aws()`` or ``with mock_aws():``."""
    return _MockAws()(func) if callable(func) else _MockAws()  # type: ignore[arg-type]
