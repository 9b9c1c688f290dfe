"""Every backend in conftest.py runs the exported contract suite."""

from granite_storage.testing.contract import BackendContractTests


class TestBackendContract(BackendContractTests):
    """The ``backend`` fixture comes from tests/contract/conftest.py."""
