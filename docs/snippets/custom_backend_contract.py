"""Run granite_storage's backend contract suite against ChunkStoreBackend.

In your project this is a test module (tests/test_chunkstore_contract.py); the
``__main__`` block only lets the documentation's tests run it as a script.
"""

# --8<-- [start:suite]
from collections.abc import AsyncIterator

import pytest
from custom_backend import ChunkStoreBackend  # your backend's module

from granite_storage.testing.contract import BackendContractTests


class TestChunkStoreBackend(BackendContractTests):
    @pytest.fixture
    async def backend(self) -> AsyncIterator[ChunkStoreBackend]:
        backend = ChunkStoreBackend()
        yield backend
        await backend.aclose()


# --8<-- [end:suite]

if __name__ == "__main__":
    import subprocess
    import sys

    command = [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider"]
    if subprocess.run(command, check=False).returncode != 0:
        sys.exit("the contract suite failed")
    print("custom backend contract: ok")
