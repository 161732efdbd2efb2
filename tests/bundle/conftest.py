import pytest

from agent.trust.store import Trust
from tests.bundle import factory


@pytest.fixture
def built(tmp_path):
    """A good bundle and the root that trusts it: (bundle_path, root_path)."""
    return factory.make_bundle(tmp_path)


@pytest.fixture
def trust_for():
    return lambda root_path: Trust(root_path)
