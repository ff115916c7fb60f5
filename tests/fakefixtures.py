"""Pytest fixtures and helpers around FakeRegistry.

Import the fixtures where they are needed, for example
``from fakefixtures import fake_registry``.
"""

from typing import Iterator

import pytest
import requests

from fakeregistry import FakeRegistry


def loopback_session() -> requests.Session:
    """Return a requests session that ignores proxy settings from the environment.

    With trust_env left on, an HTTP_PROXY variable would send requests for 127.0.0.1
    to the proxy instead of the fake registry.
    """
    session = requests.Session()
    session.trust_env = False
    return session


@pytest.fixture
def fake_registry() -> Iterator[FakeRegistry]:
    """Yield an unauthenticated FakeRegistry and fail the test if the fake itself raised."""
    with FakeRegistry() as registry:
        yield registry
    assert registry.errors == [], "FakeRegistry raised:\n" + "\n".join(registry.errors)
