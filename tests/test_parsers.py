"""Table tests for the parsers that do no I/O: references, challenges, platforms, ranges."""

import errno

import pytest
import requests

import docker_image_puller as dip

HEX = "a" * 64
DIGEST = "sha256:" + HEX


@pytest.mark.parametrize(
    "text, registry, repository, tag, digest",
    [
        ("nginx", "docker.io", "library/nginx", "latest", None),
        ("nginx:1.27", "docker.io", "library/nginx", "1.27", None),
        ("user/app", "docker.io", "user/app", "latest", None),
        ("docker.io/nginx", "docker.io", "library/nginx", "latest", None),
        ("index.docker.io/library/nginx:alpine", "docker.io", "library/nginx", "alpine", None),
        ("registry-1.docker.io/user/app:v2", "docker.io", "user/app", "v2", None),
        ("localhost/app", "localhost", "app", "latest", None),
        ("localhost:5000/app", "localhost:5000", "app", "latest", None),
        ("host:5000/app", "host:5000", "app", "latest", None),
        ("host:5000/team/app:v1", "host:5000", "team/app", "v1", None),
        ("registry.example.com/team/sub/app:v1.2-rc_3", "registry.example.com", "team/sub/app", "v1.2-rc_3", None),
        ("127.0.0.1:5000/a__b/c-d.e", "127.0.0.1:5000", "a__b/c-d.e", "latest", None),
        ("[::1]:5000/app:v1", "[::1]:5000", "app", "v1", None),
        ("Registry.Example.com/app", "Registry.Example.com", "app", "latest", None),
        ("nginx@" + DIGEST, "docker.io", "library/nginx", None, DIGEST),
        ("nginx:1.27@" + DIGEST, "docker.io", "library/nginx", "1.27", DIGEST),
        ("host:5000/app@" + DIGEST, "host:5000", "app", None, DIGEST),
    ],
)
def test_reference_parses(text, registry, repository, tag, digest):
    reference = dip.parse_reference(text)
    assert reference.registry == registry
    assert reference.repository == repository
    assert reference.tag == tag
    assert reference.digest == digest


@pytest.mark.parametrize(
    "text",
    [
        "",
        " nginx",
        "NGINX",
        "user/App",
        "nginx:",
        "nginx:-bad",
        "nginx:" + "t" * 129,
        "nginx@sha256:abc",
        "nginx@sha256:" + "A" * 64,
        "nginx@md5:" + "a" * 32,
        "host:5000/",
        "a//b",
        "-app",
        "app-",
        "a/b/",
        "docker.io/" + "a" * 250,
        "http://host/app",
    ],
)
def test_reference_rejects_invalid(text):
    with pytest.raises(dip.InvalidReferenceError) as caught:
        dip.parse_reference(text)
    assert repr(text)[:20].strip("'") in caught.value.render() or text == ""


def test_reference_default_registry_option():
    reference = dip.parse_reference("team/app:v1", default_registry="127.0.0.1:5000")
    assert reference.registry == "127.0.0.1:5000"
    assert reference.repository == "team/app"
    explicit = dip.parse_reference("ghcr.io/team/app", default_registry="127.0.0.1:5000")
    assert explicit.registry == "ghcr.io"


@pytest.mark.parametrize(
    "text, familiar, repo_tag, api_host, stem",
    [
        ("nginx", "nginx", "nginx:latest", "registry-1.docker.io", "library_nginx_latest"),
        ("user/app:v1", "user/app", "user/app:v1", "registry-1.docker.io", "user_app_v1"),
        ("library/sub/x:v1", "library/sub/x", "library/sub/x:v1", "registry-1.docker.io", "library_sub_x_v1"),
        ("registry.example.com/team/app:v1", "registry.example.com/team/app", "registry.example.com/team/app:v1", "registry.example.com", "team_app_v1"),
        ("host:5000/app@" + DIGEST, "host:5000/app", None, "host:5000", "app_sha256_" + HEX),
    ],
)
def test_reference_names(text, familiar, repo_tag, api_host, stem):
    reference = dip.parse_reference(text)
    assert reference.familiar_name == familiar
    assert reference.repo_tag == repo_tag
    assert reference.api_host == api_host
    assert reference.file_stem() == stem
    assert ":" not in reference.file_stem()


@pytest.mark.parametrize(
    "header, expected",
    [
        (
            'Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull"',
            [("bearer", {"realm": "https://auth.example.com/token", "service": "registry.example.com", "scope": "repository:a/b:pull"})],
        ),
        ('bearer Realm="r", Service="s"', [("bearer", {"realm": "r", "service": "s"})]),
        ("BEARER realm=https://auth/token,service=reg", [("bearer", {"realm": "https://auth/token", "service": "reg"})]),
        ('Basic realm="Registry Realm"', [("basic", {"realm": "Registry Realm"})]),
        (
            'Basic realm="r1", Bearer realm="https://t", service="s", scope="repository:x:pull,push"',
            [("basic", {"realm": "r1"}), ("bearer", {"realm": "https://t", "service": "s", "scope": "repository:x:pull,push"})],
        ),
        ('Bearer realm="a \\"quoted\\" value, with comma"', [("bearer", {"realm": 'a "quoted" value, with comma'})]),
        ('Bearer  realm = "r" ,  service = "s"', [("bearer", {"realm": "r", "service": "s"})]),
        ("", []),
        ("Negotiate", [("negotiate", {})]),
        ("Negotiate abc123==, Basic realm=x", [("negotiate", {}), ("basic", {"realm": "x"})]),
    ],
)
def test_challenges_parse(header, expected):
    challenges = dip.parse_challenges(header)
    assert [(c.scheme, c.params) for c in challenges] == expected


def test_challenge_token68_kept():
    (challenge,) = dip.parse_challenges("Negotiate abc123==")
    assert challenge.token68 == "abc123=="


def test_challenge_selection_prefers_bearer():
    challenges = dip.parse_challenges('Basic realm="x", Bearer realm="y"')
    assert dip.select_challenge(challenges).scheme == "bearer"
    assert dip.select_challenge(dip.parse_challenges("Negotiate abc")) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("linux/amd64", dip.Platform("linux", "amd64")),
        ("Linux/AMD64", dip.Platform("linux", "amd64")),
        ("linux/arm64/v8", dip.Platform("linux", "arm64", "v8")),
        ("linux/x86_64", dip.Platform("linux", "amd64")),
        ("linux/aarch64", dip.Platform("linux", "arm64")),
        ("linux/armhf", dip.Platform("linux", "arm", "v7")),
        ("windows/amd64", dip.Platform("windows", "amd64")),
    ],
)
def test_platform_parses(text, expected):
    assert dip.parse_platform(text) == expected


@pytest.mark.parametrize("text", ["", "linux", "linux/", "/amd64", "linux/amd64/v8/x", "linux/amd 64"])
def test_platform_rejects_invalid(text):
    with pytest.raises(dip.UsageError):
        dip.parse_platform(text)


def _entry(os_name, architecture, variant=None, digest_char="1", attestation=False):
    platform = {"os": os_name, "architecture": architecture}
    if variant:
        platform["variant"] = variant
    entry = {"mediaType": dip.MEDIA_OCI_MANIFEST, "digest": "sha256:" + digest_char * 64, "size": 100, "platform": platform}
    if attestation:
        entry["annotations"] = {"vnd.docker.reference.type": "attestation-manifest"}
    return entry


INDEX = [
    _entry("unknown", "unknown", digest_char="0", attestation=True),
    _entry("linux", "amd64", digest_char="1"),
    _entry("linux", "arm", "v6", digest_char="2"),
    _entry("linux", "arm", "v7", digest_char="3"),
    _entry("linux", "arm64", "v8", digest_char="4"),
    _entry("linux", "ppc64le", digest_char="5"),
    _entry("linux", "amd64", "v3", digest_char="6"),
]


@pytest.mark.parametrize(
    "requested, chosen_char",
    [
        ("linux/amd64", "1"),
        ("linux/arm64", "4"),
        ("linux/arm64/v8", "4"),
        ("linux/arm", "3"),
        ("linux/arm/v7", "3"),
        ("linux/arm/v6", "2"),
        ("linux/ppc64le", "5"),
        ("linux/amd64/v3", "6"),
    ],
)
def test_platform_choice_from_index(requested, chosen_char):
    chosen = dip.choose_manifest(INDEX, dip.parse_platform(requested))
    assert chosen["digest"] == "sha256:" + chosen_char * 64


def test_platform_choice_arm64_entry_without_variant():
    index = [_entry("linux", "arm64", digest_char="7")]
    assert dip.choose_manifest(index, dip.parse_platform("linux/arm64/v8"))["digest"] == "sha256:" + "7" * 64


def test_platform_choice_arm_v8_falls_back_to_v7():
    index = [_entry("linux", "arm", "v7", digest_char="3")]
    assert dip.choose_manifest(index, dip.parse_platform("linux/arm/v8"))["digest"] == "sha256:" + "3" * 64


def test_platform_missing_lists_available():
    with pytest.raises(dip.PlatformNotFoundError) as caught:
        dip.choose_manifest(INDEX, dip.parse_platform("linux/s390x"))
    message = caught.value.render("en")
    assert "linux/s390x" in message
    assert "linux/arm64/v8" in message
    assert "linux/ppc64le" in message
    assert "unknown/unknown" not in message


def test_platform_attestation_never_chosen():
    with pytest.raises(dip.PlatformNotFoundError):
        dip.choose_manifest([INDEX[0]], dip.parse_platform("unknown/unknown"))


@pytest.mark.parametrize(
    "value, expected",
    [
        ("bytes 0-99/100", (0, 99, 100)),
        ("bytes 100-199/*", (100, 199, None)),
        ("bytes  5-5/6", (5, 5, 6)),
        ("bytes 10-5/100", None),
        ("bytes 0-100/100", None),
        ("bytes */100", None),
        ("items 0-1/2", None),
        ("", None),
        (None, None),
        ("bytes -1-5/10", None),
    ],
)
def test_content_range_parses(value, expected):
    assert dip.parse_content_range(value) == expected


@pytest.mark.parametrize(
    "value, expected",
    [("5", 5.0), ("0", 0.0), ("", None), (None, None), ("soon", None), ("-3", None)],
)
def test_retry_after_seconds(value, expected):
    assert dip.parse_retry_after(value) == expected


def test_retry_after_http_date():
    assert dip.parse_retry_after("Thu, 01 Jan 2026 00:00:10 GMT", now=1767225600.0) == pytest.approx(10.0)


@pytest.mark.parametrize(
    "digest, valid",
    [
        (DIGEST, True),
        ("sha512:" + "b" * 128, True),
        ("sha256:" + "a" * 63, False),
        ("sha256:../../etc/passwd", False),
        ("sha256:" + "a" * 64 + "/..", False),
        ("../sha256:" + HEX, False),
        ("SHA256:" + HEX, False),
        (None, False),
        (42, False),
    ],
)
def test_digest_validation(digest, valid):
    if valid:
        assert dip.validate_digest(digest) == digest
    else:
        with pytest.raises(dip.ManifestError):
            dip.validate_digest(digest)


@pytest.mark.parametrize(
    "host, loopback",
    [("127.0.0.1", True), ("127.8.9.10", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("10.0.0.1", False), ("example.com", False), ("localhost.example.com", False)],
)
def test_loopback_detection(host, loopback):
    assert dip.is_loopback(host) is loopback


def test_read_timeout_described_without_double_stop():
    error = requests.exceptions.ReadTimeout("HTTPConnectionPool(host='127.0.0.1', port=1): Read timed out. (read timeout=3.0)")
    assert dip.short_error(error) == "Read timed out (read timeout=3.0)"


def test_broken_pipe_advice_names_the_reader():
    error = dip.local_error(dip.Text("Writing the archive"), "<stdout>", BrokenPipeError(errno.EPIPE, "Broken pipe"))
    assert "reading the output" in error.hint.render()
    assert "disk space" not in error.hint.render()
