"""pytest fixtures that run a real distribution registry on 127.0.0.1.

The registry fixtures are session-scoped: each registry starts once, gets its
test images pushed once and is stopped at the end of the session. Tests must
not delete or overwrite the images listed below. A test that needs to change
a registry pushes to a repository of its own.

Images in real_registry and token_registry (registry.images has the digests,
see push_image and push_index in realregistry.py):
    test/single:v1  Docker schema 2, 3 small layers
    test/oci:v1     OCI manifest, 2 small layers
    test/multi:v1   OCI index for linux/amd64, linux/arm64/v8, linux/arm/v7
                    and a buildkit-style attestation manifest
    test/big:v1     Docker schema 2, a 100 MiB layer and a 1000-byte layer
                    (in real_registry only after real_registry_big is requested)
"""

from __future__ import annotations

import os
import shutil
from typing import Iterator, List

import pytest

from realregistry import (
    REGISTRY_BINARY,
    Layer,
    RunningRegistry,
    make_big_layers,
    push_big_image,
    push_standard_images,
    start_registry,
)

# Token lifetime of token_registry. Short so that a test can wait for a token
# to expire, long enough for one request after another on a slow machine.
TOKEN_TTL_SECONDS = 3
TOKEN_USERS = {"alice": "secret"}


def _require_registry() -> None:
    if not os.path.exists(REGISTRY_BINARY):
        pytest.skip("docker-registry not installed: apt-get install docker-registry")


@pytest.fixture(scope="session")
def big_layers() -> List[Layer]:
    """Layers of test/big:v1, built once per session (about 3.5 s on a 2-core VM, 100 MiB of memory)."""
    return make_big_layers()


@pytest.fixture(scope="session")
def real_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """Open registry (no auth) with test/single, test/oci and test/multi pushed."""
    _require_registry()
    registry = start_registry(tmp_path_factory.mktemp("real-registry"))
    try:
        push_standard_images(registry)
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def real_registry_big(real_registry: RunningRegistry, big_layers: List[Layer]) -> RunningRegistry:
    """The real_registry registry after test/big:v1 has been pushed to it."""
    push_big_image(real_registry, big_layers)
    return real_registry


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory, big_layers: List[Layer]) -> Iterator[RunningRegistry]:
    """Registry with token auth, tokens valid for TOKEN_TTL_SECONDS, user alice/secret.

    Anonymous clients get pull access and alice gets pull and push. All four
    test images, test/big:v1 included, are pushed.
    """
    _require_registry()
    registry = start_registry(
        tmp_path_factory.mktemp("token-registry"), auth="token", token_ttl=TOKEN_TTL_SECONDS, users=TOKEN_USERS
    )
    try:
        push_standard_images(registry)
        push_big_image(registry, big_layers)
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def private_token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """Registry with token auth where pulling needs credentials (alice/secret).

    Anonymous token requests get a token with no access, so the registry
    responds with 401 to requests that use it. Only the small
    test images are pushed. Tokens are valid for TOKEN_TTL_SECONDS.
    """
    _require_registry()
    registry = start_registry(
        tmp_path_factory.mktemp("private-token-registry"),
        auth="token",
        token_ttl=TOKEN_TTL_SECONDS,
        users=TOKEN_USERS,
        anonymous_pull=False,
    )
    try:
        push_standard_images(registry)
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def skopeo() -> str:
    """Path of the skopeo binary. Skips the test when skopeo is not installed."""
    path = shutil.which("skopeo")
    if path is None:
        pytest.skip("skopeo not installed: apt-get install skopeo")
    return path


@pytest.fixture(autouse=True)
def offline_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send any request of an in-process pull that is not for loopback to a dead loopback proxy."""
    from cli import OFFLINE_PROXIES

    monkeypatch.delenv("ALL_PROXY", raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    for name, value in OFFLINE_PROXIES.items():
        monkeypatch.setenv(name, value)
