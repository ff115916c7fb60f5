"""Checks of the real-registry fixtures, with skopeo as the reference client.

If these fail, a failing test of docker_image_puller.py against the real
registry may be a harness bug rather than a puller bug.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import requests

from realregistry import (
    MANIFEST_ACCEPT,
    RegistryRequestError,
    SkopeoError,
    request_token,
    skopeo_copy,
    skopeo_inspect,
    skopeo_inspect_archive,
)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_oci_layout_blob(layout: Path, digest: str) -> dict:
    algorithm, hex_digest = digest.split(":")
    return json.loads((layout / "blobs" / algorithm / hex_digest).read_bytes())


@pytest.mark.parametrize("name", ["test/single:v1", "test/oci:v1"])
def test_skopeo_inspect_single_image(real_registry, skopeo, name):
    image = real_registry.images[name]

    raw_manifest = skopeo_inspect(image["reference"], raw=True)
    assert raw_manifest == image["manifest_bytes"]
    assert json.loads(raw_manifest)["mediaType"] == image["media_type"]

    raw_config = skopeo_inspect(image["reference"], raw=True, config=True)
    assert sha256_digest(raw_config) == image["config_digest"]

    info = skopeo_inspect(image["reference"])
    assert info["Digest"] == image["manifest_digest"]
    assert info["Layers"] == image["layer_digests"]
    assert info["Architecture"] == "amd64"
    assert info["Os"] == "linux"


def test_skopeo_inspect_index(real_registry, skopeo):
    index = real_registry.images["test/multi:v1"]

    raw_index = skopeo_inspect(index["reference"], raw=True)
    assert raw_index == index["index_bytes"]
    assert sha256_digest(raw_index) == index["index_digest"]

    entries = json.loads(raw_index)["manifests"]
    assert len(entries) == len(index["images"]) + 1
    attestation = entries[-1]
    assert attestation["digest"] == index["attestation_digest"]
    assert attestation["platform"] == {"architecture": "unknown", "os": "unknown"}
    assert attestation["annotations"]["vnd.docker.reference.type"] == "attestation-manifest"
    assert attestation["annotations"]["vnd.docker.reference.digest"] == index["platform_digests"]["linux/amd64"]

    for key, image in index["images"].items():
        by_digest = real_registry.reference("test/multi", image["manifest_digest"])
        assert skopeo_inspect(by_digest, raw=True) == image["manifest_bytes"], key
        assert sha256_digest(skopeo_inspect(by_digest, raw=True, config=True)) == image["config_digest"], key

        # Through the tag, skopeo picks the platform's entry from the index.
        info = skopeo_inspect(index["reference"], platform=image["platform"])
        assert info["Layers"] == image["layer_digests"], key
        assert info["Architecture"] == image["platform"][1], key


def test_skopeo_inspect_big_image(real_registry_big, skopeo):
    image = real_registry_big.images["test/big:v1"]

    info = skopeo_inspect(image["reference"])
    assert info["Digest"] == image["manifest_digest"]
    assert info["Layers"] == image["layer_digests"]

    manifest = json.loads(skopeo_inspect(image["reference"], raw=True))
    assert manifest["layers"][0]["size"] > 100 * 1024 * 1024


@pytest.mark.parametrize("credentials", [("alice", "secret"), None], ids=["alice", "anonymous"])
def test_skopeo_copy_from_token_registry(token_registry, skopeo, tmp_path, credentials):
    image = token_registry.images["test/single:v1"]
    layout = tmp_path / "layout"
    token_requests_before = token_registry.token_requests

    skopeo_copy(image["reference"], "oci:%s:v1" % layout, source_credentials=credentials)

    # skopeo 1.9 converts the Docker manifest and config to OCI ones, which
    # changes their digests, but it copies the gzip layer blobs unchanged.
    index = json.loads((layout / "index.json").read_text())
    assert len(index["manifests"]) == 1
    manifest = read_oci_layout_blob(layout, index["manifests"][0]["digest"])
    assert [layer["digest"] for layer in manifest["layers"]] == image["layer_digests"]
    config = read_oci_layout_blob(layout, manifest["config"]["digest"])
    assert config["rootfs"]["diff_ids"] == image["diff_ids"]
    assert token_registry.token_requests > token_requests_before
    assert token_registry.token_log[-1].user == (credentials[0] if credentials else None)


def test_token_server_rejects_wrong_password(token_registry):
    with pytest.raises(RegistryRequestError, match="HTTP 401"):
        request_token(token_registry, "repository:test/single:pull", credentials=("alice", "wrong"))


def test_private_registry_rejects_anonymous_pull(private_token_registry, skopeo):
    image = private_token_registry.images["test/single:v1"]

    with pytest.raises(SkopeoError, match="unauthorized|denied"):
        skopeo_inspect(image["reference"], raw=True)

    raw_manifest = skopeo_inspect(image["reference"], raw=True, credentials=("alice", "secret"))
    assert raw_manifest == image["manifest_bytes"]


def test_token_expires_after_ttl(token_registry):
    image = token_registry.images["test/single:v1"]
    token = request_token(token_registry, "repository:test/single:pull")["token"]
    url = "%s/v2/test/single/manifests/v1" % token_registry.url
    headers = {"Accept": MANIFEST_ACCEPT, "Authorization": "Bearer " + token}

    with requests.Session() as session:
        session.trust_env = False
        fresh = session.get(url, headers=headers, timeout=10)
        time.sleep(token_registry.token_ttl + 1)
        expired = session.get(url, headers=headers, timeout=10)

    assert fresh.status_code == 200
    assert fresh.content == image["manifest_bytes"]
    assert expired.status_code == 401
    assert expired.headers["WWW-Authenticate"].startswith("Bearer ")


def test_skopeo_inspect_archive_from_copy(real_registry, skopeo, tmp_path):
    image = real_registry.images["test/single:v1"]
    archive = tmp_path / "single.tar"

    skopeo_copy(image["reference"], "docker-archive:%s:test/single:v1" % archive)

    # A docker-archive stores uncompressed layers, so skopeo lists diff_ids.
    info = skopeo_inspect_archive(archive)
    assert info["Layers"] == image["diff_ids"]
    raw_config = skopeo_inspect_archive(archive, raw=True, config=True)
    assert sha256_digest(raw_config) == image["config_digest"]
    config = json.loads(raw_config)
    assert config["rootfs"]["diff_ids"] == image["diff_ids"]
    assert config["config"]["Cmd"] == ["/bin/sh"]
