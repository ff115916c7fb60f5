"""Mirrors, credentials kept by Docker and podman, and CA options."""

import base64
import json
import os
import stat

import pytest

import docker_image_puller as dip
from cli import run_puller
from fakeregistry import FakeRegistry
from test_fake_registry import random_layer


@pytest.fixture
def origin():
    with FakeRegistry() as fake:
        yield fake


@pytest.fixture
def mirror():
    with FakeRegistry() as fake:
        yield fake


def isolated(tmp_path, **extra):
    """Environment with empty Docker and podman credential locations, plus ``extra``."""
    environment = {
        "DOCKER_CONFIG": str(tmp_path / "docker-config"),
        "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json"),
        "XDG_RUNTIME_DIR": str(tmp_path / "runtime"),
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "home" / ".config"),
    }
    environment.update(extra)
    return environment


def archive_names(path):
    import tarfile

    with tarfile.open(path) as tar:
        return json.loads(tar.extractfile("manifest.json").read())[0]["RepoTags"]


def test_mirror_serves_before_registry(origin, mirror, tmp_path):
    mirror.add_image("team/app", "v1", [random_layer(61, 10_000)])
    reference = "%s/team/app:v1" % origin.host
    result = run_puller([reference, "--mirror", "%s=http://%s" % (origin.host, mirror.host), "-d", str(tmp_path), "-q"], env=isolated(tmp_path))
    assert result.returncode == 0, result.stderr
    assert archive_names(tmp_path / "team_app_v1.tar") == [reference]
    assert origin.requests_to("/manifests/") == []
    assert mirror.requests_to("/v2/team/app/manifests/v1")


def test_failed_mirror_falls_back(origin, mirror, tmp_path):
    origin.add_image("team/app", "v1", [random_layer(62, 10_000)])
    second = FakeRegistry()
    try:
        arguments = ["%s/team/app:v1" % origin.host, "-d", str(tmp_path), "--retry", "0",
                     "--mirror", "%s=http://%s" % (origin.host, mirror.host), "--mirror", "%s=http://%s" % (origin.host, second.host)]
        result = run_puller(arguments, env=isolated(tmp_path))
    finally:
        second.close()
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Trying the next source") == 2
    assert mirror.requests_to("/manifests/")
    assert second.requests_to("/manifests/")
    assert archive_names(tmp_path / "team_app_v1.tar") == ["%s/team/app:v1" % origin.host]


def test_prefix_mirror(origin, mirror, tmp_path):
    mirror.add_image("cache/team/app", "v1", [random_layer(63, 10_000)])
    result = run_puller(["%s/team/app:v1" % origin.host, "--mirror", "%s=http://%s/cache" % (origin.host, mirror.host), "-d", str(tmp_path), "-q"], env=isolated(tmp_path))
    assert result.returncode == 0, result.stderr
    assert mirror.requests_to("/v2/cache/team/app/manifests/v1")


def test_docker_hub_mirror_keeps_hub_name(mirror, tmp_path):
    mirror.add_image("library/busybox", "1.36", [random_layer(64, 10_000)])
    result = run_puller(["busybox:1.36", "--mirror", "http://%s" % mirror.host, "-d", str(tmp_path), "-q"], env=isolated(tmp_path))
    assert result.returncode == 0, result.stderr
    assert archive_names(tmp_path / "library_busybox_1.36.tar") == ["busybox:1.36"]


def test_mirrors_from_config_ini(origin, mirror, tmp_path):
    mirror.add_image("team/app", "v1", [random_layer(65, 10_000)])
    (tmp_path / "config.ini").write_text("[registry]\nmirrors = %s=http://%s\n" % (origin.host, mirror.host))
    result = run_puller(["%s/team/app:v1" % origin.host, "-d", str(tmp_path), "-q"], env=isolated(tmp_path))
    assert result.returncode == 0, result.stderr
    assert origin.requests_to("/manifests/") == []


@pytest.mark.parametrize("text", ["ftp://mirror", "https://mirror.example.com/Upper", "https://mirror.example.com/?x=1", "docker.io=", "=https://mirror"])
def test_mirror_rejects_invalid(text):
    with pytest.raises(dip.UsageError):
        dip.parse_mirror(text)


def test_mirror_parses_forms():
    assert dip.parse_mirror("https://mirror.example.com") == dip.Mirror("docker.io", "mirror.example.com", "https", "")
    assert dip.parse_mirror("mirror.example.com:5000") == dip.Mirror("docker.io", "mirror.example.com:5000", None, "")
    assert dip.parse_mirror("quay.io=https://proxy.example.com/quay/") == dip.Mirror("quay.io", "proxy.example.com", "https", "quay")


# -- stored credentials ----------------------------------------------------------------


@pytest.fixture
def private():
    with FakeRegistry(auth="basic", users={"alice": "s3cret"}) as fake:
        fake.add_image("team/app", "v1", [random_layer(66, 5000)])
        yield fake


def test_docker_config_auths_used(private, tmp_path):
    config = tmp_path / "docker-config"
    config.mkdir()
    encoded = base64.b64encode(b"alice:s3cret").decode()
    (config / "config.json").write_text(json.dumps({"auths": {"http://%s" % private.host: {"auth": encoded}}}))
    result = run_puller(["%s/team/app:v1" % private.host, "-d", str(tmp_path / "work"), "-q"], env=isolated(tmp_path))
    assert result.returncode == 0, result.stderr


def test_podman_auth_file_used(private, tmp_path):
    (tmp_path / "auth.json").write_text(json.dumps({"auths": {private.host: {"auth": base64.b64encode(b"alice:s3cret").decode()}}}))
    result = run_puller(["%s/team/app:v1" % private.host, "-d", str(tmp_path / "work"), "-q"], env=isolated(tmp_path))
    assert result.returncode == 0, result.stderr


def write_helper(folder, name, username, secret):
    """A docker-credential-NAME program that records the server it is asked about."""
    folder.mkdir(exist_ok=True)
    helper = folder / ("docker-credential-" + name)
    helper.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        "assert sys.argv[1] == 'get'\n"
        "server = sys.stdin.read().strip()\n"
        "open(%r, 'a').write(server + '\\n')\n"
        "print(json.dumps({'ServerURL': server, 'Username': %r, 'Secret': %r}))\n" % (str(folder / "asked.txt"), username, secret)
    )
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    return folder / "asked.txt"


@pytest.mark.parametrize("key", ["credHelpers", "credsStore"])
def test_credential_helpers_used(private, tmp_path, key):
    bin_folder = tmp_path / "bin"
    asked = write_helper(bin_folder, "fake", "alice", "s3cret")
    config = tmp_path / "docker-config"
    config.mkdir()
    value = {private.host: "fake"} if key == "credHelpers" else "fake"
    (config / "config.json").write_text(json.dumps({key: value}))
    env = isolated(tmp_path, PATH=str(bin_folder) + os.pathsep + os.environ.get("PATH", ""))
    result = run_puller(["%s/team/app:v1" % private.host, "-d", str(tmp_path / "work"), "-v"], env=env)
    assert result.returncode == 0, result.stderr
    assert asked.read_text().split() == [private.host]
    assert "s3cret" not in result.stderr


def test_command_line_login_beats_stored(private, tmp_path):
    config = tmp_path / "docker-config"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"auths": {private.host: {"auth": base64.b64encode(b"alice:wrong").decode()}}}))
    result = run_puller(["%s/team/app:v1" % private.host, "-u", "alice", "--password-stdin", "-d", str(tmp_path / "work"), "-q"], stdin="s3cret\n", env=isolated(tmp_path))
    assert result.returncode == 0, result.stderr


# -- certificates ------------------------------------------------------------------------


def test_ca_option_and_certs_folder(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    certs = tmp_path / "certs.d" / "registry.example.invalid:5000"
    certs.mkdir(parents=True)
    (certs / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    options = dip.NetworkOptions(certs_folders=(str(tmp_path / "certs.d"),))
    assert options.verify_tls("https://registry.example.invalid:5000/v2/") == str(certs / "ca.crt")
    assert options.verify_tls("https://other.example.invalid/v2/") is True
    assert options.verify_tls("https://127.0.0.1:5000/v2/") is False
    with_ca = dip.NetworkOptions(ca_file=str(ca), certs_folders=(str(tmp_path / "certs.d"),))
    assert with_ca.verify_tls("https://other.example.invalid/v2/") == str(ca)


def test_missing_ca_file_rejected(tmp_path):
    result = run_puller(["127.0.0.1:9/team/app", "--ca-cert", str(tmp_path / "none.pem"), "-d", str(tmp_path / "work")])
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_command_line_login_not_sent_to_mirror(mirror, tmp_path):
    with FakeRegistry(auth="basic", users={"alice": "s3cret"}) as origin_private:
        origin_private.add_image("team/app", "v1", [random_layer(67, 5000)])
        arguments = ["%s/team/app:v1" % origin_private.host, "-u", "alice", "--password-stdin", "--retry", "0",
                     "--mirror", "%s=http://%s" % (origin_private.host, mirror.host), "-d", str(tmp_path / "work"), "-q"]
        result = run_puller(arguments, stdin="s3cret\n", env=isolated(tmp_path))
    assert result.returncode == 0, result.stderr
    assert mirror.requests_to("/v2/")
    assert all(record.header("Authorization") is None for record in mirror.requests)


def test_mirror_failing_mid_layer_falls_back(origin, mirror, tmp_path):
    layers = [random_layer(68, 300_000), random_layer(69, 1000)]
    image = origin.add_image("team/app", "v1", layers)
    mirror.add_image("team/app", "v1", layers)
    mirror.fault("drop_after", "/blobs/" + image["layer_digests"][0], times=None, after_bytes=100_000)
    result = run_puller(["%s/team/app:v1" % origin.host, "--mirror", "%s=http://%s" % (origin.host, mirror.host), "-d", str(tmp_path), "--retry-delay", "0.01"], env=isolated(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "Trying the next source" in result.stderr
    assert origin.requests_to("/blobs/" + image["layer_digests"][0])
    assert archive_names(tmp_path / "team_app_v1.tar") == ["%s/team/app:v1" % origin.host]


def test_unreachable_mirror_skipped_for_later_images(origin, tmp_path):
    origin.add_image("team/one", "v1", [random_layer(70, 1000)])
    origin.add_image("team/two", "v1", [random_layer(71, 1000)])
    dead = "127.0.0.1:9"
    result = run_puller(["%s/team/one:v1" % origin.host, "%s/team/two:v1" % origin.host, "--mirror", "%s=http://%s" % (origin.host, dead), "-d", str(tmp_path), "--retry-delay", "0.01"], env=isolated(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Trying the next source") == 1


def test_list_platforms_through_mirror(tmp_path):
    with FakeRegistry() as mirror_only:
        mirror_only.add_image("team/app", "v1", [random_layer(72, 1000)], platform=("linux", "arm64", "v8"))
        result = run_puller(["127.0.0.1:9/team/app:v1", "--list-platforms", "--mirror", "127.0.0.1:9=http://%s" % mirror_only.host, "-d", str(tmp_path)], env=isolated(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "\tlinux/arm64/v8\t" in result.stdout


def test_json_with_stdout_archive_rejected(tmp_path):
    result = run_puller(["127.0.0.1:9/team/app:v1", "--json", "-o", "-", "-d", str(tmp_path / "work")])
    assert result.returncode == 2
    assert not (tmp_path / "work").exists()
