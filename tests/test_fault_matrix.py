"""Every fault in every phase of a pull: the pull completes, or fails clearly and resumably.

The matrix is generated from two tables, PHASES and FAULTS, so that a new phase or a new
fault adds its cases to the run. A transient fault (one occurrence) must not change the
result: the archive must equal a clean run's byte for byte. A permanent fault (every
matching request) must end with exit status 1 and a message that names the phase and the
registry, and a rerun after the fault is gone must produce the clean archive.
"""

import socket
import threading
from pathlib import Path

import pytest

import docker_image_puller as dip
from fakeregistry import FakeRegistry
from test_fake_registry import random_layer

# phase name -> (path regex of its requests, words the error message must contain)
PHASES = {
    "ping": (r"^/v2/$", "Contacting the registry"),
    "token": (r"^/token", "token"),
    "index": (r"/manifests/v1$", "manifest v1"),
    "manifest": (r"/manifests/sha256:", "manifest sha256:"),
    "config": (None, "Downloading blob"),  # path filled in from the pushed image
    "layer": (None, "Downloading blob"),
}


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


CLOSED_PORT = _closed_port()

# fault name -> (fault kind, parameters, permanent)
FAULTS = {
    "connection refused": ("redirect", {"location": "http://127.0.0.1:%d/refused" % CLOSED_PORT}, False),
    "reset mid-body": ("drop_after", {"after_bytes": 20, "reset": True}, False),
    "cut mid-body": ("drop_after", {"after_bytes": 20}, False),
    "stalled body": ("stall", {"seconds": 3, "after_bytes": 10, "then": "close"}, False),
    "stalled headers": ("stall", {"seconds": 3, "then": "close"}, False),
    "401 expired token": ("unauthorized", {}, False),
    "401 revoked token": ("unauthorized", {"revoke": True}, False),
    "403": ("status", {"status": 403}, True),
    "404": ("status", {"status": 404}, True),
    "408": ("status", {"status": 408}, False),
    "429": ("status", {"status": 429}, False),
    "429 Retry-After": ("status", {"status": 429, "headers": {"Retry-After": "1"}}, False),
    "500": ("status", {"status": 500}, False),
    "502": ("status", {"status": 502}, False),
    "503": ("status", {"status": 503}, False),
    "504": ("status", {"status": 504}, False),
    "short body": ("short_body", {}, False),
    "long body": ("long_body", {}, False),
    "chunked body": ("chunked", {}, False),
    "redirect loop": ("redirect_loop", {}, True),
    "redirect to ftp": ("redirect", {"location": "ftp://127.0.0.1/blob"}, True),
    "HTML page": ("html", {}, True),
}


def expected_to_succeed(phase: str, fault: str) -> bool:
    _, _, permanent = FAULTS[fault]
    if fault.startswith("401") and phase == "token":
        return False  # a 401 from the token service means the credentials are wrong
    if fault in ("HTML page", "401 expired token", "401 revoked token") and phase == "ping":
        return True  # the ping accepts any response that is not an error
    return not permanent


class Matrix:
    """One fake registry with a bearer-protected multi-platform image, shared by the matrix."""

    def __init__(self, root: Path) -> None:
        self.fake = FakeRegistry(auth="bearer")
        amd64 = self.fake.add_image("team/app", None, [random_layer(21, 200_000), random_layer(22, 150_000)], media="oci")
        arm64 = self.fake.add_image("team/app", None, [random_layer(23, 1000)], platform=("linux", "arm64", "v8"), media="oci")
        self.fake.add_index("team/app", "v1", [(("linux", "amd64", None), amd64["manifest_digest"]), (("linux", "arm64", "v8"), arm64["manifest_digest"])], attestations=True)
        self.paths = dict((name, regex) for name, (regex, _) in PHASES.items())
        self.paths["config"] = "/blobs/" + amd64["config_digest"]
        self.paths["layer"] = "/blobs/" + amd64["layer_digests"][0]
        self.reference = "%s/team/app:v1" % self.fake.host
        clean = root / "clean"
        assert self.pull(clean) == 0
        self.clean_archive = (clean / "team_app_v1.tar").read_bytes()

    def pull(self, directory: Path) -> int:
        return dip.main([self.reference, "-d", str(directory), "-q", "--retry-delay", "0.01", "--timeout", "0.5"])


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    built = Matrix(tmp_path_factory.mktemp("matrix"))
    yield built
    built.fake.close()
    assert built.fake.errors == [], "\n".join(built.fake.errors)


@pytest.fixture(autouse=True)
def english(monkeypatch):
    for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", "C.UTF-8")


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("phase", list(PHASES))
def test_fault_in_phase(matrix, tmp_path, capsys, phase, fault):
    kind, parameters, permanent = FAULTS[fault]
    fake = matrix.fake
    fake.clear_faults()
    fake.revoke_tokens()
    # The ping carries no token, so the registry's auth check would reject it before a fault applies.
    fake.fault(kind, matrix.paths[phase], times=None if permanent else 1, before_auth=phase == "ping", **parameters)
    capsys.readouterr()

    status = matrix.pull(tmp_path)
    stderr = capsys.readouterr().err
    fake.clear_faults()
    if expected_to_succeed(phase, fault):
        assert status == 0, stderr
    else:
        assert status == 1, stderr
        message = stderr.strip().splitlines()[-1]
        assert PHASES[phase][1] in message, message
        assert fake.host in message, message
        assert "Traceback" not in stderr
        assert not (tmp_path / "team_app_v1.tar").exists()
        assert matrix.pull(tmp_path) == 0, "the rerun after the fault did not complete"
    assert (tmp_path / "team_app_v1.tar").read_bytes() == matrix.clean_archive
    assert not list(tmp_path.rglob("*.part"))


@pytest.mark.parametrize("errno_name", ["ENOSPC", "EACCES"])
def test_archive_write_failure_is_resumable(matrix, tmp_path, capsys, monkeypatch, errno_name):
    import errno

    real_fsync = dip.os.fsync
    failures = []

    def failing_fsync(descriptor):
        # The archive is the only file whose fsync comes after the whole tar was written.
        if not failures and threading.current_thread() is threading.main_thread():
            failures.append(descriptor)
            raise OSError(getattr(errno, errno_name), "simulated " + errno_name)
        return real_fsync(descriptor)

    assert matrix.pull(tmp_path / "first") == 0  # all blobs on disk, so only the archive write is left
    (tmp_path / "first" / "team_app_v1.tar").unlink()
    monkeypatch.setattr(dip.os, "fsync", failing_fsync)
    capsys.readouterr()
    status = matrix.pull(tmp_path / "first")
    stderr = capsys.readouterr().err
    assert status == 1
    assert "Writing the archive" in stderr
    assert "team_app_v1.tar" in stderr
    assert not (tmp_path / "first" / "team_app_v1.tar").exists()
    assert not (tmp_path / "first" / "team_app_v1.tar.part").exists()
    monkeypatch.setattr(dip.os, "fsync", real_fsync)
    matrix.fake.clear_requests()
    assert matrix.pull(tmp_path / "first") == 0
    assert matrix.fake.requests_to("/blobs/") == []
    assert (tmp_path / "first" / "team_app_v1.tar").read_bytes() == matrix.clean_archive
