"""Concurrent runs, damaged working folders, full disks, hostile registries and secrets."""

import errno
import io
import json
import threading
from collections import namedtuple
from pathlib import Path

import pytest
import requests

import docker_image_puller as dip
from cli import run_puller, start_puller
from fakeregistry import FakeRegistry
from relay import ThrottlingRelay
from test_fake_registry import assert_complete_archive, blob_gets, pull, push_image, random_layer


@pytest.fixture(autouse=True)
def english_messages(monkeypatch):
    for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", "C.UTF-8")


@pytest.fixture
def registry():
    with FakeRegistry() as fake:
        yield fake
    assert fake.errors == [], "\n".join(fake.errors)


# -- two runs at once -----------------------------------------------------------------


def test_two_processes_same_image_share_downloads(registry, tmp_path):
    image = registry.add_image("team/app", "v1", [random_layer(31, 8_000_000), random_layer(32, 1000)], media="oci", compress=False)
    host, port = registry.host.split(":")
    relay = ThrottlingRelay((host, int(port)), rate=8e6)
    try:
        reference = "%s/team/app:v1" % relay.host
        first = start_puller([reference, "-d", str(tmp_path), "-t", "2"])
        second = start_puller([reference, "-d", str(tmp_path), "-t", "2"])
        outputs = [process.communicate(timeout=120) for process in (first, second)]
    finally:
        relay.close()
    assert first.returncode == 0, outputs[0][1]
    assert second.returncode == 0, outputs[1][1]
    log = (tmp_path / "docker_puller.log").read_text()
    assert "Waiting for the lock" in log
    for layer in image["layer_digests"]:
        assert len(blob_gets(registry, layer)) == 1, "a blob was downloaded by both processes"
    assert_complete_archive(tmp_path, image)


def test_two_processes_overlapping_images(registry, tmp_path):
    shared = random_layer(41, 4_000_000)
    first_image = registry.add_image("team/app", "one", [shared, random_layer(42, 500_000)], media="oci", compress=False)
    second_image = registry.add_image("team/app", "two", [shared, random_layer(43, 500_000)], media="oci", compress=False)
    host, port = registry.host.split(":")
    relay = ThrottlingRelay((host, int(port)), rate=6e6)
    try:
        first = start_puller(["%s/team/app:one" % relay.host, "-d", str(tmp_path)])
        second = start_puller(["%s/team/app:two" % relay.host, "-d", str(tmp_path)])
        outputs = [process.communicate(timeout=120) for process in (first, second)]
    finally:
        relay.close()
    assert first.returncode == 0, outputs
    assert second.returncode == 0, outputs
    assert len(blob_gets(registry, first_image["layer_digests"][0])) == 1
    assert_complete_archive(tmp_path, first_image, "team_app_one.tar")
    assert_complete_archive(tmp_path, second_image, "team_app_two.tar")


def test_file_lock_excludes_second_holder(tmp_path):
    path = str(tmp_path / "lock")
    first, second = dip.FileLock(path), dip.FileLock(path)
    assert first.try_acquire()
    assert not second.try_acquire()
    assert second.holder() == str(dip.os.getpid())
    first.release()
    assert second.try_acquire()
    second.release()


# -- a damaged working folder -----------------------------------------------------------


def test_invalid_meta_json_repaired(registry, tmp_path, capsys):
    image = push_image(registry, count=1)
    assert pull(capsys, tmp_path, "%s/team/app:v1" % registry.host).status == 0
    meta = tmp_path / "team_app_layers" / image["layer_digests"][0].replace(":", "_") / "meta.json"
    meta.write_text("{not json")
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 0, result.stderr
    assert "meta.json is damaged" in result.log
    assert json.loads(meta.read_text())["digest"] == image["layer_digests"][0]
    assert json.loads(meta.read_text())["state"] == "complete"


# -- full disks and unwritable folders --------------------------------------------------


def test_free_space_checked_before_download(registry, tmp_path, capsys, monkeypatch):
    push_image(registry, count=2)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(dip.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 4096, 4096))
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 1
    assert "Not enough free space" in result.stderr
    assert "4.0 KiB is free" in result.stderr
    assert registry.requests_to("/blobs/") == []


def test_disk_full_mid_blob_is_resumable(registry, tmp_path, capsys, monkeypatch):
    image = push_image(registry, count=1)
    layer = image["layer_digests"][0]
    real_append = dip.PartFile.append

    def append_until_full(part, chunk):
        room = 100_000 - part.offset
        if len(chunk) > room:
            # The disk takes what fits, then fills up.
            real_append(part, chunk[:room])
            raise dip.local_error(dip.Text("Writing"), part.path, OSError(errno.ENOSPC, "No space left on device"))
        real_append(part, chunk)

    monkeypatch.setattr(dip.PartFile, "append", append_until_full)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 1
    assert "No space left on device" in result.stderr
    assert "blob.part" in result.stderr
    part = tmp_path / "team_app_layers" / layer.replace(":", "_") / "blob.part"
    kept = part.stat().st_size
    assert kept == 100_000

    monkeypatch.setattr(dip.PartFile, "append", real_append)
    registry.clear_requests()
    assert pull(capsys, tmp_path, "%s/team/app:v1" % registry.host).status == 0
    (get,) = blob_gets(registry, layer)
    assert get.header("Range") == "bytes=%d-" % kept
    assert_complete_archive(tmp_path, image)


def test_missing_output_folder_fails_early(registry, tmp_path, capsys):
    push_image(registry, count=1)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "-o", str(tmp_path / "nowhere" / "x.tar"))
    assert result.status == 1
    assert "does not exist" in result.stderr
    assert registry.requests_to("/blobs/") == []


# -- hostile registry input -------------------------------------------------------------


def test_index_with_thousands_of_entries_rejected(registry, tmp_path, capsys):
    entry = {"mediaType": dip.MEDIA_OCI_MANIFEST, "digest": "sha256:" + "d" * 64, "size": 10, "platform": {"os": "linux", "architecture": "s390x"}}
    body = json.dumps({"schemaVersion": 2, "mediaType": dip.MEDIA_OCI_INDEX, "manifests": [entry] * 5000}).encode()
    registry.add_manifest("team/app", "v1", body, dip.MEDIA_OCI_INDEX)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 1
    assert "5000 manifests" in result.stderr


def test_json_array_manifest_rejected(registry, tmp_path, capsys):
    registry.add_manifest("team/app", "v1", b"[1, 2, 3]", dip.MEDIA_OCI_MANIFEST)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "--retry", "1")
    assert result.status == 1
    assert "not a JSON object" in result.stderr


def test_oversized_token_rejected(tmp_path, capsys):
    with FakeRegistry(auth="bearer") as fake:
        push_image(fake, count=1)
        fake.fault("status", r"^/token", times=None, status=200, body="x" * (dip.MAX_TOKEN_BYTES + 10), headers={"Content-Type": "application/json"})
        result = pull(capsys, tmp_path, "%s/team/app:v1" % fake.host)
    assert result.status == 1
    assert "token response" in result.stderr
    assert "limit" in result.stderr


def test_huge_error_body_read_capped(registry, tmp_path, capsys):
    push_image(registry, count=1)
    registry.fault("status", "/manifests/", times=None, status=404, body="e" * (8 * 1024 * 1024))
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 1
    assert "404" in result.stderr
    assert len(result.stderr) < 2000


def test_unknown_config_media_type_rejected(registry, tmp_path, capsys):
    config = registry.add_blob(b'{"helm": true}')
    body = json.dumps({"schemaVersion": 2, "mediaType": dip.MEDIA_OCI_MANIFEST,
                       "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": config, "size": 14},
                       "layers": []}).encode()
    registry.add_manifest("team/chart", "v1", body, dip.MEDIA_OCI_MANIFEST)
    result = pull(capsys, tmp_path, "%s/team/chart:v1" % registry.host)
    assert result.status == 1
    assert "not a container image" in result.stderr


# -- credentials ---------------------------------------------------------------------------


class _StubClient:
    host = "registry.example.invalid"

    def __init__(self, insecure=frozenset()):
        self.options = dip.NetworkOptions(insecure_registries=insecure)

    def fetch_small(self, *args, **kwargs):
        raise AssertionError("no request may be sent")


def test_credentials_never_sent_over_plain_http():
    authenticator = dip.Authenticator(_StubClient(), dip.Credentials("alice", "secret"))
    authenticator.use_challenges('Bearer realm="http://auth.example.invalid/token",service="registry"')
    with pytest.raises(dip.AuthenticationError) as caught:
        authenticator.authorization("repository:team/app:pull")
    assert "plain HTTP" in caught.value.render("en")
    assert "secret" not in caught.value.render("en")


def _response(status, url, location=None):
    response = requests.Response()
    response.status_code = status
    response.url = url
    response.raw = io.BytesIO(b"")
    if location:
        response.headers["Location"] = location
    return response


@pytest.mark.parametrize(
    "location, keeps_authorization",
    [
        ("https://registry.example.invalid/v2/blob2", True),
        ("https://storage.example.invalid/blob?sig=1", False),
        ("http://registry.example.invalid/v2/blob2", False),
        ("https://registry.example.invalid:8443/v2/blob2", False),
    ],
)
def test_authorization_follows_only_same_origin(monkeypatch, location, keeps_authorization):
    client = dip.RegistryClient(dip.parse_reference("registry.example.invalid/team/app"), dip.NetworkOptions(), None, threading.Event())
    sent = []

    def request(method, url, headers=None, **kwargs):
        sent.append((url, dict(headers)))
        if len(sent) == 1:
            return _response(307, url, location)
        return _response(200, url)

    session = client.session()
    monkeypatch.setattr(session, "request", request)
    client._send_once("GET", "https://registry.example.invalid/v2/blob", {"Authorization": "Bearer t0ken"}, dip.Text("test"))
    assert sent[0][1]["Authorization"] == "Bearer t0ken"
    assert ("Authorization" in sent[1][1]) is keeps_authorization


# -- registry errors in plain words ---------------------------------------------------


@pytest.mark.parametrize(
    "status, code, words",
    [
        (401, "UNAUTHORIZED", "Log in with -u USER --password-stdin"),
        (403, "DENIED", "no pull access"),
        (404, "NAME_UNKNOWN", "Check the repository name"),
        (404, "MANIFEST_UNKNOWN", "Check the tag or digest"),
        (404, "BLOB_UNKNOWN", "lost a blob"),
        (429, "TOOMANYREQUESTS", "use a mirror"),
        (404, "", "Check the image name and tag"),
        (503, "", "wait and run the same command again"),
        (None, "", "Check the network"),
    ],
)
def test_error_codes_have_advice(status, code, words):
    assert words in dip.hint_for(status, [code] if code else []).render("en")


def test_registry_error_names_code_and_url(registry, tmp_path, capsys):
    push_image(registry, count=1)
    registry.fault("status", "/manifests/", times=None, status=429, code="TOOMANYREQUESTS", headers={"Retry-After": "0"})
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "--retry", "1")
    assert result.status == 1
    line = result.stderr.strip().splitlines()[-1]
    assert "HTTP 429 TOOMANYREQUESTS" in line
    assert "http://%s/v2/team/app/manifests/v1" % registry.host in line
    assert "use a mirror" in line
