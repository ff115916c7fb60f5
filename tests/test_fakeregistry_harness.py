"""Checks that FakeRegistry behaves as documented, driven with plain requests calls.

Every server and request here stays on 127.0.0.1.
"""

import gzip
import hashlib
import json
import socket
import threading
import time
from typing import Iterator

import pytest
import requests

from fakefixtures import fake_registry, loopback_session  # noqa: F401 (fixture)
from fakeimages import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    make_layer,
    sha256_digest,
)
from fakeregistry import FAULT_KINDS, FakeRegistry

BLOB = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable modulo 256
REPOSITORY = "library/demo"


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with loopback_session() as http:
        yield http


def read_until_error(response: requests.Response) -> bytearray:
    """Read a streamed body and return what arrived before the connection broke."""
    received = bytearray()
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for chunk in response.iter_content(256):
            received += chunk
    return received


def parse_challenge(value: str) -> dict:
    scheme, _, parameters = value.partition(" ")
    fields = {"scheme": scheme}
    for item in parameters.split(","):
        name, _, quoted = item.partition("=")
        fields[name.strip()] = quoted.strip().strip('"')
    return fields


def blob_url(registry: FakeRegistry, digest: str) -> str:
    return f"{registry.url}/v2/{REPOSITORY}/blobs/{digest}"


# -- content and plain endpoints ------------------------------------------------


def test_ping_without_auth(fake_registry, session):
    response = session.get(fake_registry.url + "/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert fake_registry.host.startswith("127.0.0.1:")
    assert fake_registry.storage_host.startswith("127.0.0.1:")
    assert fake_registry.host != fake_registry.storage_host


def test_manifest_by_tag_and_digest(fake_registry, session):
    body = b'{"schemaVersion": 2}'
    digest = fake_registry.add_manifest(REPOSITORY, "v1", body, DOCKER_MANIFEST)
    assert digest == sha256_digest(body)

    for reference in ("v1", digest):
        response = session.get(f"{fake_registry.url}/v2/{REPOSITORY}/manifests/{reference}")
        assert response.status_code == 200
        assert response.content == body
        assert response.headers["Content-Type"] == DOCKER_MANIFEST
        assert response.headers["Docker-Content-Digest"] == digest

    head = session.head(f"{fake_registry.url}/v2/{REPOSITORY}/manifests/v1")
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(len(body))
    assert head.content == b""


def test_unknown_manifest_and_blob(fake_registry, session):
    response = session.get(f"{fake_registry.url}/v2/{REPOSITORY}/manifests/missing")
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"

    response = session.get(blob_url(fake_registry, sha256_digest(b"missing")))
    assert response.status_code == 404
    assert response.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_blob_ranges(fake_registry, session):
    digest = fake_registry.add_blob(BLOB)
    url = blob_url(fake_registry, digest)

    full = session.get(url)
    assert full.status_code == 200
    assert full.content == BLOB
    assert full.headers["Docker-Content-Digest"] == digest

    tail = session.get(url, headers={"Range": "bytes=1000-"})
    assert tail.status_code == 206
    assert tail.headers["Content-Range"] == f"bytes 1000-{len(BLOB) - 1}/{len(BLOB)}"
    assert tail.content == BLOB[1000:]

    middle = session.get(url, headers={"Range": "bytes=10-19"})
    assert middle.status_code == 206
    assert middle.content == BLOB[10:20]

    beyond = session.get(url, headers={"Range": f"bytes={len(BLOB)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == f"bytes */{len(BLOB)}"

    malformed = session.get(url, headers={"Range": "bytes=abc"})
    assert malformed.status_code == 200
    assert malformed.content == BLOB


def test_keep_alive_reuses_connection(fake_registry, session):
    digest = fake_registry.add_blob(BLOB)
    for _ in range(3):
        assert session.get(blob_url(fake_registry, digest)).status_code == 200
    session.get(f"{fake_registry.url}/v2/{REPOSITORY}/manifests/missing")

    connections = {record.connection_id for record in fake_registry.requests}
    assert len(fake_registry.requests) == 4
    assert connections == {1}


def test_add_image_is_consistent(fake_registry, session):
    layers = [make_layer({"a.txt": b"first"}), make_layer({"b.txt": b"second"})]
    image = fake_registry.add_image(REPOSITORY, "latest", layers=layers, platform=("linux", "arm", "v7"), media="oci")

    response = session.get(f"{fake_registry.url}/v2/{REPOSITORY}/manifests/latest")
    assert response.headers["Content-Type"] == OCI_MANIFEST
    assert sha256_digest(response.content) == image["manifest_digest"]
    manifest = response.json()
    assert manifest["config"]["digest"] == image["config_digest"]

    config = session.get(blob_url(fake_registry, image["config_digest"])).json()
    assert (config["os"], config["architecture"], config["variant"]) == ("linux", "arm", "v7")
    assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"]) == 2

    for descriptor, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
        assert descriptor["mediaType"] == OCI_LAYER_GZIP
        blob = session.get(blob_url(fake_registry, descriptor["digest"])).content
        assert len(blob) == descriptor["size"]
        assert sha256_digest(blob) == descriptor["digest"]
        assert sha256_digest(gzip.decompress(blob)) == diff_id


def test_add_image_default_docker(fake_registry, session):
    image = fake_registry.add_image(REPOSITORY, "latest")
    response = session.get(f"{fake_registry.url}/v2/{REPOSITORY}/manifests/latest")
    assert response.headers["Content-Type"] == DOCKER_MANIFEST
    assert len(image["layer_digests"]) == 1
    config = json.loads(image["config_bytes"])
    assert (config["os"], config["architecture"]) == ("linux", "amd64")
    assert "variant" not in config


@pytest.mark.parametrize("media, media_type", [("oci", OCI_INDEX), ("docker", DOCKER_MANIFEST_LIST)])
def test_add_index_with_attestations(fake_registry, session, media, media_type):
    amd64 = fake_registry.add_image(REPOSITORY, None, platform=("linux", "amd64"))
    arm64 = fake_registry.add_image(REPOSITORY, None, platform=("linux", "arm64", "v8"))
    index = fake_registry.add_index(
        REPOSITORY,
        "multi",
        [(("linux", "amd64"), amd64["manifest_digest"]), (("linux", "arm64", "v8"), arm64["manifest_digest"])],
        media=media,
        attestations=True,
    )

    response = session.get(f"{fake_registry.url}/v2/{REPOSITORY}/manifests/multi")
    assert response.headers["Content-Type"] == media_type
    assert response.headers["Docker-Content-Digest"] == index["index_digest"]
    entries = response.json()["manifests"]
    assert len(entries) == 4
    assert entries[1]["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}

    attestation = entries[2]
    assert attestation["platform"] == {"architecture": "unknown", "os": "unknown"}
    assert attestation["annotations"]["vnd.docker.reference.type"] == "attestation-manifest"
    assert attestation["annotations"]["vnd.docker.reference.digest"] == amd64["manifest_digest"]
    fetched = session.get(f"{fake_registry.url}/v2/{REPOSITORY}/manifests/{attestation['digest']}")
    assert fetched.status_code == 200
    assert len(fetched.content) == attestation["size"]


def test_add_index_unknown_manifest(fake_registry):
    with pytest.raises(ValueError, match="not stored"):
        fake_registry.add_index(REPOSITORY, "multi", [(("linux", "amd64"), sha256_digest(b"x"))])


def test_strict_accept_rejects_unlisted_type(session):
    with FakeRegistry(strict_accept=True) as registry:
        registry.add_manifest(REPOSITORY, "latest", b"{}", OCI_INDEX)
        url = f"{registry.url}/v2/{REPOSITORY}/manifests/latest"

        rejected = session.get(url, headers={"Accept": DOCKER_MANIFEST})
        assert rejected.status_code == 404
        assert rejected.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"

        accepted = session.get(url, headers={"Accept": f"{DOCKER_MANIFEST}, {OCI_INDEX}"})
        assert accepted.status_code == 200
        assert registry.requests_to(r"/manifests/")[1].header("accept") == f"{DOCKER_MANIFEST}, {OCI_INDEX}"


# -- auth -------------------------------------------------------------------------


def fetch_token(session, registry, scope=None, auth=None) -> requests.Response:
    params = {"service": registry.service}
    if scope:
        params["scope"] = scope
    return session.get(registry.realm, params=params, auth=auth)


def test_bearer_flow_and_expiry(session):
    with FakeRegistry(auth="bearer", token_ttl=0.5) as registry:
        image = registry.add_image(REPOSITORY, "latest")
        manifest_url = f"{registry.url}/v2/{REPOSITORY}/manifests/latest"

        ping = session.get(registry.url + "/v2/")
        assert ping.status_code == 401
        challenge = parse_challenge(ping.headers["WWW-Authenticate"])
        assert challenge["scheme"] == "Bearer"
        assert challenge["realm"] == f"{registry.url}/token"
        assert challenge["service"] == "fake-registry"

        anonymous = session.get(manifest_url)
        assert anonymous.status_code == 401
        assert anonymous.json()["errors"][0]["code"] == "UNAUTHORIZED"
        assert parse_challenge(anonymous.headers["WWW-Authenticate"])["scope"] == f"repository:{REPOSITORY}:pull"

        token_response = fetch_token(session, registry, f"repository:{REPOSITORY}:pull")
        assert token_response.status_code == 200
        assert token_response.json()["expires_in"] == 1
        headers = {"Authorization": "Bearer " + token_response.json()["token"]}
        assert session.get(manifest_url, headers=headers).status_code == 200
        assert session.get(blob_url(registry, image["config_digest"]), headers=headers).status_code == 200
        assert registry.token_requests == 1

        time.sleep(0.6)
        expired = session.get(manifest_url, headers=headers)
        assert expired.status_code == 401
        challenge = parse_challenge(expired.headers["WWW-Authenticate"])
        assert challenge["scope"] == f"repository:{REPOSITORY}:pull"
        assert challenge["error"] == "invalid_token"


def test_bearer_token_needs_scope(session):
    with FakeRegistry(auth="bearer") as registry:
        registry.add_image(REPOSITORY, "latest")
        token = fetch_token(session, registry).json()["token"]
        headers = {"Authorization": "Bearer " + token}

        assert session.get(registry.url + "/v2/", headers=headers).status_code == 200
        response = session.get(f"{registry.url}/v2/{REPOSITORY}/manifests/latest", headers=headers)
        assert response.status_code == 401
        assert parse_challenge(response.headers["WWW-Authenticate"])["error"] == "insufficient_scope"


def test_bearer_users_and_access_token(session):
    with FakeRegistry(auth="bearer", users={"alice": "secret"}, token_field="access_token") as registry:
        scope = f"repository:{REPOSITORY}:pull"
        assert fetch_token(session, registry, scope).status_code == 401
        assert fetch_token(session, registry, scope, auth=("alice", "wrong")).status_code == 401

        granted = fetch_token(session, registry, scope, auth=("alice", "secret"))
        assert granted.status_code == 200
        assert "access_token" in granted.json()
        assert "token" not in granted.json()
        assert registry.token_requests == 3


def test_revoke_tokens(session):
    with FakeRegistry(auth="bearer") as registry:
        registry.add_image(REPOSITORY, "latest")
        token = fetch_token(session, registry, f"repository:{REPOSITORY}:pull").json()["token"]
        url = f"{registry.url}/v2/{REPOSITORY}/manifests/latest"
        headers = {"Authorization": "Bearer " + token}

        assert session.get(url, headers=headers).status_code == 200
        registry.revoke_tokens()
        assert session.get(url, headers=headers).status_code == 401


def test_basic_auth(session):
    with FakeRegistry(auth="basic", users={"alice": "secret"}) as registry:
        registry.add_image(REPOSITORY, "latest")
        url = f"{registry.url}/v2/{REPOSITORY}/manifests/latest"

        anonymous = session.get(url)
        assert anonymous.status_code == 401
        assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="fake-registry"'
        assert session.get(url, auth=("alice", "wrong")).status_code == 401
        assert session.get(url, auth=("alice", "secret")).status_code == 200


def test_custom_challenges(session):
    template = 'Bearer  service="{service}", realm="{realm}" , scope="{scope}"'
    with FakeRegistry(auth="bearer", challenge=template) as registry:
        value = session.get(f"{registry.url}/v2/{REPOSITORY}/manifests/x").headers["WWW-Authenticate"]
        assert value == f'Bearer  service="fake-registry", realm="{registry.realm}" , scope="repository:{REPOSITORY}:pull"'

    def two_challenges(realm, service, scope, error):
        return ['Basic realm="other"', f"bearer realm={realm},service={service}"]

    with FakeRegistry(auth="bearer", challenge=two_challenges) as registry:
        response = session.get(registry.url + "/v2/")
        values = [value for name, value in response.raw.headers.items() if name.lower() == "www-authenticate"]
        assert values == ['Basic realm="other"', f"bearer realm={registry.realm},service=fake-registry"]


def test_realm_on_storage_host(session):
    with FakeRegistry(auth="bearer", realm_server="storage") as registry:
        challenge = parse_challenge(session.get(registry.url + "/v2/").headers["WWW-Authenticate"])
        assert challenge["realm"] == f"{registry.storage_url}/token"
        assert fetch_token(session, registry).status_code == 200
        assert session.get(registry.url + "/token").status_code == 404


# -- faults ---------------------------------------------------------------------------


def test_fault_status_with_retry_after(fake_registry, session):
    digest = fake_registry.add_blob(BLOB)
    fake_registry.fault("status", r"/blobs/", times=2, status=429, headers={"Retry-After": "1"})

    for _ in range(2):
        limited = session.get(blob_url(fake_registry, digest))
        assert limited.status_code == 429
        assert limited.headers["Retry-After"] == "1"
        assert limited.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert session.get(blob_url(fake_registry, digest)).status_code == 200
    assert [record.fault for record in fake_registry.requests] == ["status", "status", None]


def test_fault_status_raw_body(fake_registry, session):
    fake_registry.fault("status", r"^/v2/$", status=503, body="upstream down")
    response = session.get(fake_registry.url + "/v2/")
    assert response.status_code == 503
    assert response.text == "upstream down"


def test_fault_drop_after(fake_registry, session):
    digest = fake_registry.add_blob(BLOB)
    fake_registry.fault("drop_after", r"/blobs/", after_bytes=3000)

    response = session.get(blob_url(fake_registry, digest), stream=True)
    assert response.headers["Content-Length"] == str(len(BLOB))
    received = read_until_error(response)
    assert len(received) <= 3000
    assert BLOB.startswith(bytes(received))
    assert fake_registry.requests[0].body_bytes == 3000


def test_fault_drop_after_reset(fake_registry, session):
    digest = fake_registry.add_blob(BLOB)
    fake_registry.fault("drop_after", r"/blobs/", after_bytes=100, reset=True)
    response = session.get(blob_url(fake_registry, digest), stream=True)
    assert len(read_until_error(response)) < len(BLOB)


def test_fault_stall_before_headers(fake_registry, session):
    digest = fake_registry.add_blob(BLOB)
    fake_registry.fault("stall", r"/blobs/", seconds=0.5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        session.get(blob_url(fake_registry, digest), timeout=(1, 0.1))


def test_fault_stall_after_bytes(fake_registry, session):
    digest = fake_registry.add_blob(BLOB)
    fake_registry.fault("stall", r"/blobs/", seconds=0.3, after_bytes=500)
    started = time.monotonic()
    response = session.get(blob_url(fake_registry, digest), timeout=5)
    assert response.content == BLOB
    assert time.monotonic() - started >= 0.3

    fake_registry.fault("stall", r"/blobs/", seconds=0.5, after_bytes=500)
    response = session.get(blob_url(fake_registry, digest), stream=True, timeout=(1, 0.1))
    with pytest.raises(requests.exceptions.ConnectionError):
        response.content


def test_fault_stall_then_close(fake_registry, session):
    digest = fake_registry.add_blob(BLOB)
    fake_registry.fault("stall", r"/blobs/", seconds=0.1, after_bytes=500, then="close")
    response = session.get(blob_url(fake_registry, digest), stream=True, timeout=5)
    assert len(read_until_error(response)) <= 500


def test_fault_ignore_range(fake_registry, session):
    digest = fake_registry.add_blob(BLOB)
    fake_registry.fault("ignore_range", r"/blobs/")
    response = session.get(blob_url(fake_registry, digest), headers={"Range": "bytes=1000-"})
    assert response.status_code == 200
    assert "Content-Range" not in response.headers
    assert response.content == BLOB


def test_fault_wrong_range(fake_registry, session):
    digest = fake_registry.add_blob(BLOB)
    fake_registry.fault("wrong_range", r"/blobs/")
    response = session.get(blob_url(fake_registry, digest), headers={"Range": "bytes=1000-"})
    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes 500-{len(BLOB) - 1}/{len(BLOB)}"
    assert response.content == BLOB[500:]

    fake_registry.fault("wrong_range", r"/blobs/", start=7)
    response = session.get(blob_url(fake_registry, digest), headers={"Range": "bytes=1000-"})
    assert response.content == BLOB[7:]


def test_fault_corrupt(fake_registry, session):
    digest = fake_registry.add_blob(BLOB)
    fake_registry.fault("corrupt", r"/blobs/")
    response = session.get(blob_url(fake_registry, digest))
    assert response.status_code == 200
    assert len(response.content) == len(BLOB)
    assert response.content != BLOB
    assert sha256_digest(response.content) != digest


def test_fault_redirect_to_storage(fake_registry, session):
    digest = fake_registry.add_blob(BLOB)
    fake_registry.fault("redirect", r"/blobs/", times=None)

    redirect = session.get(blob_url(fake_registry, digest), allow_redirects=False)
    assert redirect.status_code == 302
    location = redirect.headers["Location"]
    assert location.startswith(f"{fake_registry.storage_url}/blobs/{digest}?")

    followed = session.get(blob_url(fake_registry, digest), headers={"Range": "bytes=100-"})
    assert followed.status_code == 206
    assert followed.content == BLOB[100:]
    assert len(fake_registry.requests_to(r"/blobs/", server="storage")) == 1

    with_auth = session.get(location, headers={"Authorization": "Bearer abc"})
    assert with_auth.status_code == 400
    assert b"InvalidArgument" in with_auth.content

    unsigned = session.get(f"{fake_registry.storage_url}/blobs/{digest}")
    assert unsigned.status_code == 403


def test_fault_redirect_signature_expires(fake_registry, session):
    digest = fake_registry.add_blob(BLOB)
    fake_registry.fault("redirect", r"/blobs/", ttl=0.2)
    location = session.get(blob_url(fake_registry, digest), allow_redirects=False).headers["Location"]
    assert session.get(location).status_code == 200

    time.sleep(0.3)
    expired = session.get(location)
    assert expired.status_code == 403
    assert b"Request has expired" in expired.content


def test_fault_redirect_manifest_same_host(fake_registry, session):
    fake_registry.add_manifest(REPOSITORY, "latest", b"{}", DOCKER_MANIFEST)
    fake_registry.fault("redirect", r"/manifests/", status=307)
    response = session.get(f"{fake_registry.url}/v2/{REPOSITORY}/manifests/latest")
    assert response.status_code == 200
    assert [record.status for record in fake_registry.requests] == [307, 200]


def test_fault_redirect_loop(fake_registry, session):
    digest = fake_registry.add_blob(BLOB)
    fake_registry.fault("redirect_loop", r"/blobs/")
    session.max_redirects = 5
    with pytest.raises(requests.exceptions.TooManyRedirects):
        session.get(blob_url(fake_registry, digest))
    assert {record.server for record in fake_registry.requests_to(r"^/loop/")} == {"registry", "storage"}


def test_fault_html(fake_registry, session):
    fake_registry.add_manifest(REPOSITORY, "latest", b"{}", DOCKER_MANIFEST)
    fake_registry.fault("html", r"/manifests/")
    response = session.get(f"{fake_registry.url}/v2/{REPOSITORY}/manifests/latest")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert b"captive portal" in response.content


def test_fault_drop_after_closes_connection(fake_registry, session):
    digest = fake_registry.add_blob(BLOB)
    fake_registry.fault("drop_after", r"/blobs/", after_bytes=100)
    read_until_error(session.get(blob_url(fake_registry, digest), stream=True))
    assert session.get(blob_url(fake_registry, digest)).content == BLOB
    assert [record.connection_id for record in fake_registry.requests] == [1, 2]


def test_fault_short_body(fake_registry, session):
    digest = fake_registry.add_blob(BLOB)
    fake_registry.fault("short_body", r"/blobs/", delta=10)
    response = session.get(blob_url(fake_registry, digest), stream=True)
    assert response.headers["Content-Length"] == str(len(BLOB) + 10)
    assert len(read_until_error(response)) <= len(BLOB)


def test_fault_long_body(fake_registry, session):
    digest = fake_registry.add_blob(BLOB)
    fake_registry.fault("long_body", r"/blobs/", delta=10)
    response = session.get(blob_url(fake_registry, digest))
    assert response.status_code == 200
    assert response.content == BLOB[:-10]


def test_fault_chunked_keeps_connection(fake_registry, session):
    digest = fake_registry.add_blob(BLOB)
    fake_registry.fault("chunked", r"/blobs/", chunk_size=1000)
    response = session.get(blob_url(fake_registry, digest))
    assert response.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in response.headers
    assert response.content == BLOB

    assert session.get(blob_url(fake_registry, digest)).content == BLOB
    assert {record.connection_id for record in fake_registry.requests} == {1}


def test_fault_unauthorized(fake_registry, session):
    fake_registry.add_manifest(REPOSITORY, "latest", b"{}", DOCKER_MANIFEST)
    fake_registry.fault("unauthorized", r"/manifests/")
    url = f"{fake_registry.url}/v2/{REPOSITORY}/manifests/latest"

    rejected = session.get(url)
    assert rejected.status_code == 401
    challenge = parse_challenge(rejected.headers["WWW-Authenticate"])
    assert challenge["scope"] == f"repository:{REPOSITORY}:pull"
    assert session.get(url).status_code == 200


def test_fault_unauthorized_revoke(session):
    with FakeRegistry(auth="bearer") as registry:
        registry.add_image(REPOSITORY, "latest")
        token = fetch_token(session, registry, f"repository:{REPOSITORY}:pull").json()["token"]
        headers = {"Authorization": "Bearer " + token}
        registry.fault("unauthorized", r"/manifests/", revoke=True)
        url = f"{registry.url}/v2/{REPOSITORY}/manifests/latest"

        assert session.get(url, headers=headers).status_code == 401
        assert session.get(url, headers=headers).status_code == 401


def test_every_fault_kind_is_tested():
    tested = {name[len("test_fault_") :] for name in globals() if name.startswith("test_fault_")}
    for kind in FAULT_KINDS:
        assert any(name.startswith(kind) for name in tested), f"no test_fault_{kind}* test"


# -- fault matching -----------------------------------------------------------------


def test_fault_matching_rules(fake_registry, session):
    digest = fake_registry.add_blob(BLOB)
    fake_registry.add_manifest(REPOSITORY, "latest", b"{}", DOCKER_MANIFEST)
    head_only = fake_registry.fault("status", r"/blobs/", method="HEAD", status=500)
    storage_only = fake_registry.fault("status", r"/blobs/", server="storage", status=503)

    assert session.get(f"{fake_registry.url}/v2/{REPOSITORY}/manifests/latest").status_code == 200
    assert session.get(blob_url(fake_registry, digest)).status_code == 200
    assert session.head(blob_url(fake_registry, digest)).status_code == 500
    assert head_only.used == 1
    assert storage_only.used == 0
    assert fake_registry.pending_faults == [storage_only]

    fake_registry.clear_faults()
    assert fake_registry.pending_faults == []


def test_faults_skip_auth_rejections(session):
    with FakeRegistry(auth="bearer") as registry:
        after_auth = registry.fault("status", r"^/v2/$", status=500)
        assert session.get(registry.url + "/v2/").status_code == 401
        assert after_auth.used == 0

        registry.clear_faults()
        before_auth = registry.fault("status", r"^/v2/$", status=429, before_auth=True)
        assert session.get(registry.url + "/v2/").status_code == 429
        assert before_auth.used == 1


def test_fault_argument_checks(fake_registry):
    with pytest.raises(ValueError, match="unknown fault kind"):
        fake_registry.fault("explode")
    with pytest.raises(TypeError, match="unknown parameters"):
        fake_registry.fault("drop_after", after=10)
    with pytest.raises(TypeError, match="requires parameters"):
        fake_registry.fault("status")
    with pytest.raises(ValueError, match="then must be"):
        fake_registry.fault("stall", then="later")


# -- records and shutdown ---------------------------------------------------------


def test_requests_records(fake_registry, session):
    digest = fake_registry.add_blob(BLOB)
    session.get(blob_url(fake_registry, digest), params={"n": "1"}, headers={"X-Test": "yes"})
    session.head(blob_url(fake_registry, digest))

    records = fake_registry.requests_to(r"/blobs/sha256:")
    assert [record.method for record in records] == ["GET", "HEAD"]
    assert records[0].query == "n=1"
    assert records[0].header("x-test") == "yes"
    assert records[0].status == 200
    assert records[0].body_bytes == len(BLOB)
    assert records[1].body_bytes == 0
    assert fake_registry.requests_to(r"/blobs/", method="head") == [records[1]]

    fake_registry.clear_requests()
    assert fake_registry.requests == []


def test_close_with_open_and_stalled_connections(session):
    registry = FakeRegistry()
    digest = registry.add_blob(BLOB)
    registry.fault("stall", r"/blobs/", seconds=30, after_bytes=10)

    idle = socket.create_connection(("127.0.0.1", int(registry.host.split(":")[1])))
    response = session.get(blob_url(registry, digest), stream=True, timeout=5)
    assert response.status_code == 200
    assert len(registry.requests) == 1

    started = time.monotonic()
    registry.close()
    assert time.monotonic() - started < 2
    idle.close()
    response.close()
    assert registry.errors == []


def test_concurrent_requests(fake_registry):
    digest = fake_registry.add_blob(BLOB)
    results = []

    def fetch() -> None:
        with loopback_session() as http:
            results.append(hashlib.sha256(http.get(blob_url(fake_registry, digest)).content).hexdigest())

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert results == [digest.split(":", 1)[1]] * 8
    assert len(fake_registry.requests) == 8
