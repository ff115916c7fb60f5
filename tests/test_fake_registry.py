"""Behaviour of the puller against the fake registry: auth, retries, resume, redirects, bad input.

Each test serves an image from tests/fakeregistry.py, injects one kind of fault, runs
the command line in-process and checks both the outcome and what went over the wire.
Layer contents are pseudo-random from a fixed seed, printed by the session fixture.
"""

import hashlib
import json
import random
import tarfile
import time
from pathlib import Path

import pytest

import docker_image_puller as dip
from fakeimages import gzip_bytes, make_layer, sha256_digest
from fakeregistry import FakeRegistry

SEED = 20261204
LAYER_SIZE = 256 * 1024


def random_layer(index: int, size: int = LAYER_SIZE) -> bytes:
    """An uncompressed tar whose gzip stays about ``size`` bytes (random data does not compress)."""
    data = random.Random(SEED * 100 + index).randbytes(size)
    return make_layer({"layer-%d.bin" % index: data})


@pytest.fixture(autouse=True)
def english_messages(monkeypatch):
    """Run the command line in English; conftest points outside traffic at a dead proxy."""
    for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "DOCKER_DEFAULT_PLATFORM",
                 "DOCKER_IMAGE_PULLER_USERNAME", "DOCKER_IMAGE_PULLER_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", "C.UTF-8")
    print("layer seed", SEED)


@pytest.fixture
def registry():
    with FakeRegistry() as fake:
        yield fake
    assert fake.errors == [], "\n".join(fake.errors)


@pytest.fixture
def bearer_registry():
    with FakeRegistry(auth="bearer", token_ttl=60) as fake:
        yield fake
    assert fake.errors == [], "\n".join(fake.errors)


class Pull:
    """The outcome of one in-process run of the command line."""

    def __init__(self, status: int, stdout: str, stderr: str, directory: Path) -> None:
        self.status = status
        self.stdout = stdout
        self.stderr = stderr
        self.directory = directory

    @property
    def log(self) -> str:
        path = self.directory / dip.LOG_FILE_NAME
        return path.read_text(encoding="utf-8") if path.exists() else ""


def pull(capsys, directory: Path, *arguments: str) -> Pull:
    capsys.readouterr()
    status = dip.main([*arguments, "-d", str(directory), "--retry-delay", "0.01", "--timeout", "5"])
    captured = capsys.readouterr()
    return Pull(status, captured.out, captured.err, directory)


def push_image(fake: FakeRegistry, repository: str = "team/app", tag: str = "v1", count: int = 3, **options) -> dict:
    layers = [random_layer(i) for i in range(count)]
    return fake.add_image(repository, tag, layers, **options)


def archive_blob_digests(archive: Path) -> dict:
    with tarfile.open(archive) as tar:
        return {
            m.name: sha256_digest(tar.extractfile(m).read())
            for m in tar.getmembers() if m.isfile() and m.name.startswith("blobs/")
        }


def assert_complete_archive(directory: Path, image: dict, name: str = "team_app_v1.tar") -> Path:
    archive = directory / name
    assert archive.is_file(), "no archive %s" % archive
    digests = archive_blob_digests(archive)
    for member, digest in digests.items():
        assert member.endswith(digest.split(":")[1]), "member %s holds other bytes" % member
    for digest in [image["config_digest"], image["manifest_digest"], *image["layer_digests"]]:
        assert "blobs/sha256/" + digest.split(":")[1] in digests
    assert not list(directory.rglob("*.part"))
    return archive


def blob_gets(fake: FakeRegistry, digest: str):
    return [r for r in fake.requests_to("/blobs/" + digest, server="registry") if r.method == "GET"]


# -- authentication ------------------------------------------------------------------


def test_anonymous_bearer_token_used(bearer_registry, tmp_path, capsys):
    image = push_image(bearer_registry)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % bearer_registry.host)
    assert result.status == 0, result.stderr
    assert_complete_archive(tmp_path, image)
    assert bearer_registry.token_requests == 1
    for record in bearer_registry.requests_to("/v2/team/app/"):
        assert (record.header("Authorization") or "").startswith("Bearer ")


@pytest.mark.parametrize("token_field", ["token", "access_token"])
def test_token_field_names_accepted(tmp_path, capsys, token_field):
    with FakeRegistry(auth="bearer", token_field=token_field) as fake:
        image = push_image(fake, count=1)
        result = pull(capsys, tmp_path, "%s/team/app:v1" % fake.host)
    assert result.status == 0, result.stderr
    assert_complete_archive(tmp_path, image)


@pytest.mark.parametrize(
    "challenge",
    [
        'bearer service="{service}", realm="{realm}", scope="{scope}"',
        "BEARER realm={realm},service={service}",
        'Basic realm="fallback", Bearer realm="{realm}",service="{service}"',
    ],
)
def test_challenge_forms_accepted(tmp_path, capsys, challenge):
    with FakeRegistry(auth="bearer", challenge=challenge) as fake:
        image = push_image(fake, count=1)
        result = pull(capsys, tmp_path, "%s/team/app:v1" % fake.host)
    assert result.status == 0, result.stderr
    assert_complete_archive(tmp_path, image)


def test_expired_token_renewed_mid_pull(tmp_path, capsys):
    """Tokens live 0.5 s; a stalled layer makes later requests need a new one."""
    with FakeRegistry(auth="bearer", token_ttl=0.5, expires_in=0.5) as fake:
        image = push_image(fake, count=3)
        fake.fault("stall", "/blobs/" + image["layer_digests"][0], seconds=1.2, after_bytes=1000)
        result = pull(capsys, tmp_path, "%s/team/app:v1" % fake.host, "-t", "1")
        assert result.status == 0, result.stderr
        assert fake.token_requests >= 2
    assert_complete_archive(tmp_path, image)


def test_unauthorized_mid_blob_reauthenticates_and_resumes(bearer_registry, tmp_path, capsys):
    image = push_image(bearer_registry, count=1)
    layer = image["layer_digests"][0]
    bearer_registry.fault("drop_after", "/blobs/" + layer, after_bytes=100_000)
    bearer_registry.fault("unauthorized", "/blobs/" + layer, revoke=True)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % bearer_registry.host)
    assert result.status == 0, result.stderr
    assert bearer_registry.token_requests == 2
    gets = blob_gets(bearer_registry, layer)
    assert gets[-1].status == 206
    assert gets[-1].header("Range").startswith("bytes=")
    assert int(gets[-1].header("Range")[6:-1]) > 0
    assert "authenticating again" in result.log
    assert_complete_archive(tmp_path, image)


def test_second_unauthorized_is_final(bearer_registry, tmp_path, capsys):
    image = push_image(bearer_registry, count=1)
    bearer_registry.fault("unauthorized", "/blobs/" + image["layer_digests"][0], times=None)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % bearer_registry.host)
    assert result.status == 1
    assert "401" in result.stderr
    assert "-u USER --password-stdin" in result.stderr
    assert bearer_registry.token_requests == 2, "re-authenticated more than once"


def test_concurrent_expiry_fetches_one_token(tmp_path, capsys):
    # The registry expires tokens after 1 s but claims they last 60 s, so the client cannot
    # renew early. The config download stalls past the expiry. Then eight threads send
    # the expired token, and each 401 is held back 0.3 s so that all of them are in
    # flight before the first comes back. The threads must share one new token.
    def slow_challenge(realm, service, scope, error):
        time.sleep(0.3)
        return 'Bearer realm="%s",service="%s",scope="%s"' % (realm, service, scope or "")

    with FakeRegistry(auth="bearer", token_ttl=1.0, expires_in=60, challenge=slow_challenge) as fake:
        image = push_image(fake, count=8)
        fake.fault("stall", "/blobs/" + image["config_digest"], seconds=1.5)
        result = pull(capsys, tmp_path, "%s/team/app:v1" % fake.host, "-t", "8")
        assert result.status == 0, result.stderr
        assert len([r for r in fake.requests_to("/blobs/") if r.status == 401]) >= 4
        assert fake.token_requests == 2


def test_basic_auth_with_password_stdin(tmp_path, capsys, monkeypatch):
    import io

    with FakeRegistry(auth="basic", users={"alice": "s3cret-pass"}) as fake:
        image = push_image(fake, count=1)
        monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-pass\n"))
        result = pull(capsys, tmp_path, "%s/team/app:v1" % fake.host, "-u", "alice", "--password-stdin", "-v")
        anonymous = pull(capsys, tmp_path / "anonymous", "%s/team/app:v1" % fake.host)
    assert result.status == 0, result.stderr
    assert_complete_archive(tmp_path, image)
    for text in (result.stderr, result.log, result.stdout):
        assert "s3cret-pass" not in text
        assert "Basic " not in text
    assert anonymous.status == 1
    assert "401" in anonymous.stderr


def test_token_secret_never_logged(bearer_registry, tmp_path, capsys):
    push_image(bearer_registry, count=1)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % bearer_registry.host, "-v")
    assert result.status == 0
    tokens = {r.header("Authorization")[7:] for r in bearer_registry.requests_to("/v2/team/") if r.header("Authorization")}
    assert tokens
    for token in tokens:
        assert token not in result.stderr
        assert token not in result.log
        for meta in tmp_path.rglob("meta.json"):
            assert token not in meta.read_text()


# -- retries and resume ----------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_status_retried(registry, tmp_path, capsys, status):
    image = push_image(registry, count=1)
    registry.fault("status", "/blobs/" + image["layer_digests"][0], times=2, status=status)
    registry.fault("status", "/manifests/", times=1, status=status)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 0, result.stderr
    assert len(blob_gets(registry, image["layer_digests"][0])) == 3
    assert "Retry 1 of 5" in result.log
    assert_complete_archive(tmp_path, image)


def test_retry_after_honoured(registry, tmp_path, capsys):
    image = push_image(registry, count=1)
    registry.fault("status", "/blobs/" + image["layer_digests"][0], status=429, headers={"Retry-After": "1"})
    started = time.monotonic()
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 0, result.stderr
    assert time.monotonic() - started >= 1.0
    assert "in 1.0 s" in result.log


def test_retries_exhausted_reports_url_and_status(registry, tmp_path, capsys):
    image = push_image(registry, count=1)
    layer = image["layer_digests"][0]
    registry.fault("status", "/blobs/" + layer, times=None, status=503)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "--retry", "3")
    assert result.status == 1
    assert len(blob_gets(registry, layer)) == 4
    line = result.stderr.strip().splitlines()[-1]
    assert "503" in line
    assert layer in line
    assert registry.host in line
    assert "team/app" in line
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("blob")) or all(p.parent.name != layer.replace(":", "_") for p in tmp_path.rglob("blob"))


def test_missing_blob_not_retried(registry, tmp_path, capsys):
    image = push_image(registry, count=1)
    layer = image["layer_digests"][0]
    registry.fault("status", "/blobs/" + layer, times=None, status=404, code="BLOB_UNKNOWN")
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 1
    assert len(blob_gets(registry, layer)) == 1
    assert "BLOB_UNKNOWN" in result.stderr
    assert "lost a blob" in result.stderr


@pytest.mark.parametrize("reset", [False, True])
def test_dropped_connection_resumes_from_disk(registry, tmp_path, capsys, reset):
    image = push_image(registry, count=1)
    layer = image["layer_digests"][0]
    registry.fault("drop_after", "/blobs/" + layer, after_bytes=150_000, reset=reset)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 0, result.stderr
    first, second = blob_gets(registry, layer)
    assert first.header("Range") is None
    if reset:
        # After an RST the kernel may drop what had arrived but was not read yet.
        assert second.header("Range") is None or 0 < int(second.header("Range")[len("bytes="):-1]) <= 150_000
    else:
        assert second.header("Range") == "bytes=150000-"
        assert second.status == 206
    assert_complete_archive(tmp_path, image)


def test_ignored_range_restarts_from_zero(registry, tmp_path, capsys):
    image = push_image(registry, count=1)
    layer = image["layer_digests"][0]
    registry.fault("drop_after", "/blobs/" + layer, after_bytes=150_000)
    registry.fault("ignore_range", "/blobs/" + layer)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 0, result.stderr
    assert [r.status for r in blob_gets(registry, layer)] == [200, 200]
    assert "instead of byte" in result.log
    assert_complete_archive(tmp_path, image)


def test_wrong_content_range_rejected(registry, tmp_path, capsys):
    image = push_image(registry, count=1)
    layer = image["layer_digests"][0]
    registry.fault("drop_after", "/blobs/" + layer, after_bytes=150_000)
    registry.fault("wrong_range", "/blobs/" + layer, times=2)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 0, result.stderr
    gets = blob_gets(registry, layer)
    assert "Content-Range" in result.log
    # After the wrong ranges the blob is fetched whole, without Range.
    assert gets[-1].header("Range") is None
    assert_complete_archive(tmp_path, image)


def test_stalled_body_times_out_and_resumes(registry, tmp_path, capsys):
    image = push_image(registry, count=1)
    layer = image["layer_digests"][0]
    registry.fault("stall", "/blobs/" + layer, seconds=3, after_bytes=100_000, then="close")
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "--timeout", "0.5")
    assert result.status == 0, result.stderr
    assert len(blob_gets(registry, layer)) == 2
    assert_complete_archive(tmp_path, image)


@pytest.mark.parametrize("kind", ["short_body", "long_body", "chunked"])
def test_body_length_faults_survived(registry, tmp_path, capsys, kind):
    image = push_image(registry, count=1)
    registry.fault(kind, "/blobs/" + image["layer_digests"][0])
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 0, result.stderr
    assert_complete_archive(tmp_path, image)


def test_corrupt_blob_downloaded_once_more(registry, tmp_path, capsys):
    image = push_image(registry, count=1)
    layer = image["layer_digests"][0]
    registry.fault("corrupt", "/blobs/" + layer)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 0, result.stderr
    assert len(blob_gets(registry, layer)) == 2
    assert "failed verification" in result.log
    assert_complete_archive(tmp_path, image)


def test_corrupt_blob_twice_fails_clearly(registry, tmp_path, capsys):
    image = push_image(registry, count=1)
    layer = image["layer_digests"][0]
    registry.fault("corrupt", "/blobs/" + layer, times=None)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 1
    line = result.stderr.strip().splitlines()[-1]
    assert layer in line
    assert "got %d bytes with digest sha256:" % len(image["layer_blobs"][0]) in line
    folder = tmp_path / "team_app_layers" / layer.replace(":", "_")
    assert not (folder / "blob").exists()
    assert not (folder / "blob.part").exists()
    assert not list(tmp_path.glob("*.tar"))


# -- redirects ----------------------------------------------------------------------------


def test_redirect_to_storage_drops_authorization(bearer_registry, tmp_path, capsys):
    image = push_image(bearer_registry, count=2)
    bearer_registry.fault("redirect", "/blobs/", times=None)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % bearer_registry.host)
    assert result.status == 0, result.stderr
    storage = [r for r in bearer_registry.requests if r.server == "storage"]
    assert len(storage) == 3
    assert all(r.header("Authorization") is None for r in storage)
    assert all(r.status == 200 for r in storage)
    assert_complete_archive(tmp_path, image)


def test_resume_after_redirect_goes_back_to_registry(bearer_registry, tmp_path, capsys):
    image = push_image(bearer_registry, count=1)
    layer = image["layer_digests"][0]
    bearer_registry.fault("redirect", "/blobs/", times=None)
    bearer_registry.fault("drop_after", "/blobs/" + layer, server="storage", after_bytes=120_000)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % bearer_registry.host)
    assert result.status == 0, result.stderr
    storage_gets = [r for r in bearer_registry.requests if r.server == "storage" and layer in r.path]
    assert len(storage_gets) == 2
    assert storage_gets[1].header("Range").startswith("bytes=")
    assert len(blob_gets(bearer_registry, layer)) == 2
    assert_complete_archive(tmp_path, image)


def test_redirect_loop_fails(registry, tmp_path, capsys):
    image = push_image(registry, count=1)
    registry.fault("redirect_loop", "/blobs/" + image["layer_digests"][0], times=None)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 1
    assert "redirected more than 10 times" in result.stderr


# -- bad input from the registry ----------------------------------------------------------


def test_html_instead_of_manifest(registry, tmp_path, capsys):
    push_image(registry, count=1)
    registry.fault("html", "/manifests/", times=None)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 1
    assert "HTML" in result.stderr
    assert not (tmp_path / "team_app_layers").exists()


def _manifest_with_layers(fake: FakeRegistry, layers: list, config_digest: str = None, config_size: int = 2) -> bytes:
    if config_digest is None:
        config_digest = fake.add_blob(b"{}")
    document = {
        "schemaVersion": 2,
        "mediaType": dip.MEDIA_DOCKER_MANIFEST,
        "config": {"mediaType": dip.MEDIA_DOCKER_CONFIG, "digest": config_digest, "size": config_size},
        "layers": layers,
    }
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    "layer",
    [
        {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": "sha256:../../../../tmp/escape", "size": 10},
        {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": "sha256:" + "a" * 63, "size": 10},
        {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": "sha256:" + "a" * 64, "size": -1},
        {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": "sha256:" + "a" * 64, "size": 1 << 50},
        {"mediaType": "text/html", "digest": "sha256:" + "a" * 64, "size": 10},
        "not an object",
    ],
)
def test_hostile_manifest_rejected(registry, tmp_path, capsys, layer):
    body = _manifest_with_layers(registry, [layer])
    registry.add_manifest("team/app", "v1", body, dip.MEDIA_DOCKER_MANIFEST)
    work = tmp_path / "work"
    result = pull(capsys, work, "%s/team/app:v1" % registry.host)
    assert result.status == 1
    assert "Invalid" in result.stderr or "unsupported" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (work / "team_app_layers").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_schema1_manifest_rejected(registry, tmp_path, capsys):
    body = json.dumps({"schemaVersion": 1, "name": "team/app", "tag": "v1", "fsLayers": []}).encode()
    registry.add_manifest("team/app", "v1", body, dip.MEDIA_DOCKER_SCHEMA1_SIGNED)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 1
    assert "schema 1" in result.stderr


def test_oversized_manifest_rejected(registry, tmp_path, capsys):
    body = b'{"schemaVersion": 2, "padding": "' + b"x" * dip.MAX_MANIFEST_BYTES + b'"}'
    registry.add_manifest("team/app", "v1", body, dip.MEDIA_OCI_MANIFEST)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 1
    assert "limit" in result.stderr


def test_diff_ids_count_mismatch_rejected(registry, tmp_path, capsys):
    push_image(registry, count=2, config_extra={"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "b" * 64]}})
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 1
    assert "diff IDs" in result.stderr
    assert not list(tmp_path.glob("*.tar"))


def test_manifest_by_digest_verified(registry, tmp_path, capsys):
    image = push_image(registry, count=1)
    wanted = "sha256:" + "c" * 64
    registry.add_manifest("team/app", wanted, image["manifest_bytes"], image["media_type"])
    result = pull(capsys, tmp_path, "%s/team/app@%s" % (registry.host, wanted))
    assert result.status == 1
    assert wanted in result.stderr
    assert image["manifest_digest"] in result.stderr


def test_manifest_bytes_archived_unchanged(registry, tmp_path, capsys):
    layers = [random_layer(7, 4096)]
    image = registry.add_image("team/app", "v1", layers)
    # The same JSON with other white space has another digest: it must not be re-serialised.
    spaced = json.dumps(json.loads(image["manifest_bytes"]), indent=7).encode()
    digest = registry.add_manifest("team/app", "spaced", spaced, image["media_type"])
    result = pull(capsys, tmp_path, "%s/team/app:spaced" % registry.host)
    assert result.status == 0, result.stderr
    with tarfile.open(tmp_path / "team_app_spaced.tar") as tar:
        assert tar.extractfile("blobs/sha256/" + digest.split(":")[1]).read() == spaced


# -- blobs and the working folder ---------------------------------------------------------


def test_duplicate_layer_fetched_once(registry, tmp_path, capsys):
    shared = random_layer(11, 8192)
    image = registry.add_image("team/app", "v1", [shared, random_layer(12, 8192), shared])
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 0, result.stderr
    assert len(blob_gets(registry, image["layer_digests"][0])) == 1
    with tarfile.open(tmp_path / "team_app_v1.tar") as tar:
        layers = json.loads(tar.extractfile("manifest.json").read())[0]["Layers"]
        names = [m.name for m in tar.getmembers()]
    assert layers[0] == layers[2]
    assert names.count(layers[0]) == 1


def test_rerun_reuses_verified_blobs(registry, tmp_path, capsys):
    image = push_image(registry, count=2)
    assert pull(capsys, tmp_path, "%s/team/app:v1" % registry.host).status == 0
    first = (tmp_path / "team_app_v1.tar").read_bytes()
    registry.clear_requests()
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 0, result.stderr
    assert registry.requests_to("/blobs/") == []
    assert (tmp_path / "team_app_v1.tar").read_bytes() == first


@pytest.mark.parametrize("damage", ["truncate", "edit", "delete"])
def test_damaged_blob_repaired_on_rerun(registry, tmp_path, capsys, damage):
    image = push_image(registry, count=2)
    assert pull(capsys, tmp_path, "%s/team/app:v1" % registry.host).status == 0
    clean = (tmp_path / "team_app_v1.tar").read_bytes()
    layer = image["layer_digests"][1]
    blob = tmp_path / "team_app_layers" / layer.replace(":", "_") / "blob"
    data = blob.read_bytes()
    if damage == "truncate":
        blob.write_bytes(data[:1000])
    elif damage == "edit":
        blob.write_bytes(data[:500] + bytes([data[500] ^ 0xFF]) + data[501:])
    else:
        blob.unlink()
    registry.clear_requests()
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 0, result.stderr
    assert [r.path.rsplit("/", 1)[1] for r in registry.requests_to("/blobs/")] == [layer]
    assert (tmp_path / "team_app_v1.tar").read_bytes() == clean


def test_part_file_resumed_on_rerun(registry, tmp_path, capsys):
    image = push_image(registry, count=1)
    layer = image["layer_digests"][0]
    blob_folder = tmp_path / "team_app_layers" / layer.replace(":", "_")
    blob_folder.mkdir(parents=True)
    (blob_folder / "blob.part").write_bytes(image["layer_blobs"][0][:70_000])
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 0, result.stderr
    (get,) = blob_gets(registry, layer)
    assert get.header("Range") == "bytes=70000-"
    assert "Resuming blob %s at byte 70000" % layer in result.log
    assert_complete_archive(tmp_path, image)


def test_part_file_longer_than_blob_restarted(registry, tmp_path, capsys):
    image = push_image(registry, count=1)
    layer = image["layer_digests"][0]
    blob_folder = tmp_path / "team_app_layers" / layer.replace(":", "_")
    blob_folder.mkdir(parents=True)
    (blob_folder / "blob.part").write_bytes(image["layer_blobs"][0] + b"extra")
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 0, result.stderr
    (get,) = blob_gets(registry, layer)
    assert get.header("Range") is None
    assert_complete_archive(tmp_path, image)


def test_wrong_bytes_in_part_file_caught(registry, tmp_path, capsys):
    image = push_image(registry, count=1)
    layer = image["layer_digests"][0]
    blob_folder = tmp_path / "team_app_layers" / layer.replace(":", "_")
    blob_folder.mkdir(parents=True)
    (blob_folder / "blob.part").write_bytes(b"\0" * 50_000)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 0, result.stderr
    assert len(blob_gets(registry, layer)) == 2
    assert "failed verification" in result.log
    assert_complete_archive(tmp_path, image)


# -- archive naming ---------------------------------------------------------------------


def test_archive_names_and_annotations(registry, tmp_path, capsys):
    push_image(registry, count=1)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert result.status == 0
    assert result.stdout.strip() == str(tmp_path / "team_app_v1.tar")
    with tarfile.open(tmp_path / "team_app_v1.tar") as tar:
        index = json.loads(tar.extractfile("index.json").read())
        legacy = json.loads(tar.extractfile("manifest.json").read())
        repositories = json.loads(tar.extractfile("repositories").read())
    annotations = index["manifests"][0]["annotations"]
    assert annotations["io.containerd.image.name"] == "%s/team/app:v1" % registry.host
    assert annotations["org.opencontainers.image.ref.name"] == "v1"
    assert legacy[0]["RepoTags"] == ["%s/team/app:v1" % registry.host]
    assert list(repositories) == ["%s/team/app" % registry.host]


def test_registry_option_for_short_names(registry, tmp_path, capsys):
    image = push_image(registry, repository="library/busybox", tag="1.36", count=1)
    result = pull(capsys, tmp_path, "library/busybox:1.36", "-r", registry.host)
    assert result.status == 0, result.stderr
    assert_complete_archive(tmp_path, image, "library_busybox_1.36.tar")


def test_output_option_and_no_temporary_left(registry, tmp_path, capsys):
    image = push_image(registry, count=1)
    output = tmp_path / "out" / "custom.tar"
    output.parent.mkdir()
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "-o", str(output))
    assert result.status == 0, result.stderr
    assert output.is_file()
    assert sorted(p.name for p in output.parent.iterdir()) == ["custom.tar"]
    assert archive_blob_digests(output)["blobs/sha256/" + image["config_digest"].split(":")[1]] == image["config_digest"]
