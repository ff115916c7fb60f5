"""Run a real CNCF distribution registry on 127.0.0.1 and push test images to it.

The registry is `/usr/bin/docker-registry` (distribution 2.8.2 as packaged by
Debian). With auth="token" a token server runs in a thread of this process and
signs ES256 JWTs that the registry verifies against a self-signed certificate.
Images are pushed through the registry's HTTP API, so pushing needs neither
Docker nor podman. The skopeo helpers at the end run skopeo 1.9 against the
registry or against an archive file.

Every server started here listens on 127.0.0.1 only, and every request goes to
one of those servers.
"""

from __future__ import annotations

import atexit
import base64
import datetime
import gzip
import hashlib
import http.server
import io
import json
import logging
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.parse
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

LOG = logging.getLogger(__name__)

REGISTRY_BINARY = "/usr/bin/docker-registry"
LOOPBACK = "127.0.0.1"

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
IN_TOTO = "application/vnd.in-toto+json"

# Distribution returns 404 for OCI content unless the request accepts the OCI
# types, and rewrites Docker schema 2 manifests to schema 1 unless it accepts
# the Docker types, so every manifest GET here sends all four.
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST])

TOKEN_SERVICE = "test-registry"
TOKEN_ISSUER = "test-token-server"

# Distribution accepts a token until 60 s after its `exp` claim and from 60 s
# before its `nbf` claim (Leeway in registry/auth/token/token.go). Measured with
# 2.8.2: a token with exp = now + 3 was still accepted 4 s later.
DISTRIBUTION_LEEWAY_SECONDS = 60

# Fixed timestamp for image configs, so that the same layers give the same
# config digest in every run.
IMAGE_CREATED = "2024-01-01T00:00:00Z"

DEFAULT_PLATFORM = ("linux", "amd64", None)
DEFAULT_INDEX_PLATFORMS = (
    ("linux", "amd64", None),
    ("linux", "arm64", "v8"),
    ("linux", "arm", "v7"),
)

Platform = Tuple[str, str, Optional[str]]
Credentials = Tuple[str, str]


class RegistryStartError(RuntimeError):
    """The registry process exited or did not respond to GET /v2/ in time."""


class RegistryRequestError(RuntimeError):
    """A registry or token server request returned an unexpected status."""


class SkopeoError(RuntimeError):
    """A skopeo command exited with a non-zero status."""


# ---------------------------------------------------------------------------
# Token signing and the token server


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _format_rfc3339(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class TokenSigner:
    """EC P-256 key with a self-signed certificate that signs ES256 JWTs.

    The registry's `auth.token.rootcertbundle` is the certificate, and each
    JWT carries the same certificate (base64 DER) in its `x5c` header.
    """

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "docker-image-puller test token signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def sign(self, claims: Dict[str, Any]) -> str:
        """Return a compact JWS of `claims` signed with ES256."""
        certificate_der = self.certificate.public_bytes(serialization.Encoding.DER)
        header = {
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64.b64encode(certificate_der).decode("ascii")],
        }
        signing_input = (
            _base64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _base64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        der_signature = self._key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))

        # JWS wants the raw 64-byte r || s form, not the DER sequence that
        # cryptography returns.
        r, s = decode_dss_signature(der_signature)
        raw_signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return signing_input + "." + _base64url(raw_signature)


@dataclass
class TokenRequestRecord:
    """One request that reached the token server. The password is not stored."""

    user: Optional[str]
    requested_scopes: List[str]
    granted_access: List[Dict[str, Any]]
    status: int


def _parse_scope(scope: str) -> Optional[Tuple[str, str, List[str]]]:
    """Split "repository:NAME:pull,push" into its type, name and actions."""
    resource_type, separator, rest = scope.partition(":")
    name, separator2, actions = rest.rpartition(":")
    if not separator or not separator2 or not name:
        return None
    return resource_type, name, [action for action in actions.split(",") if action]


class TokenServer:
    """Docker token server (GET realm?service=...&scope=...) in a daemon thread.

    Every known user gets pull and push. Requests without credentials get pull
    when `anonymous_pull` is true, and otherwise a token with no access, which
    the registry then rejects with 401. Wrong Basic credentials get 401 from
    the token server itself.
    """

    def __init__(
        self,
        signer: TokenSigner,
        ttl: int,
        users: Dict[str, str],
        anonymous_pull: bool,
        service: str = TOKEN_SERVICE,
        issuer: str = TOKEN_ISSUER,
    ) -> None:
        self.signer = signer
        self.ttl = ttl
        self.users = dict(users)
        self.anonymous_pull = anonymous_pull
        self.service = service
        self.issuer = issuer
        self.records: List[TokenRequestRecord] = []
        self._lock = threading.Lock()

        self._httpd = http.server.ThreadingHTTPServer((LOOPBACK, 0), _TokenRequestHandler)
        self._httpd.daemon_threads = True
        self._httpd.token_server = self  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        self.realm = "http://%s:%d/token" % (LOOPBACK, self.port)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="token-server-%d" % self.port, daemon=True
        )
        self._thread.start()
        LOG.info("token server listening on %s", self.realm)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)
        LOG.info("token server on port %d stopped", self.port)

    def _authenticate(self, authorization: Optional[str]) -> Tuple[bool, Optional[str]]:
        """Return (valid, user) for an Authorization header, or (True, None) without one."""
        if not authorization:
            return True, None
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            return False, None
        try:
            user, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return False, None
        if user in self.users and secrets.compare_digest(self.users[user], password):
            return True, user
        return False, user

    def _grant(self, user: Optional[str], scopes: List[str]) -> List[Dict[str, Any]]:
        allowed = set()
        if user is not None or self.anonymous_pull:
            allowed.add("pull")
        if user is not None:
            allowed.add("push")

        access = []
        for scope in scopes:
            parsed = _parse_scope(scope)
            if parsed is None or parsed[0] != "repository":
                continue
            resource_type, name, actions = parsed
            granted = [action for action in actions if action in allowed]
            access.append({"type": resource_type, "name": name, "actions": granted})
        return access

    def handle_token_request(self, query: str, authorization: Optional[str]) -> Tuple[int, Dict[str, Any]]:
        """Return the HTTP status and JSON body for one token request."""
        parameters = urllib.parse.parse_qs(query)
        scopes = []
        for value in parameters.get("scope", []):
            # The Docker token spec repeats the scope parameter and OAuth2 joins
            # scopes with spaces, so both forms are accepted.
            scopes.extend(value.split())

        valid, user = self._authenticate(authorization)
        if not valid:
            status, body = 401, {"errors": [{"code": "UNAUTHORIZED", "message": "invalid username or password"}]}
            access: List[Dict[str, Any]] = []
        elif parameters.get("service", [self.service]) != [self.service]:
            status, body = 400, {"errors": [{"code": "INVALID_REQUEST", "message": "unknown service"}]}
            access = []
        else:
            access = self._grant(user, scopes)
            now = int(time.time())

            # exp is shifted back by the registry's leeway so that the registry
            # rejects the token from issued_at + expires_in on. Because `now` is
            # rounded down to whole seconds, that is between ttl - 1 and ttl
            # seconds after the request. iat and nbf move with exp, which keeps
            # exp - iat equal to the ttl.
            issued = now - DISTRIBUTION_LEEWAY_SECONDS
            claims = {
                "iss": self.issuer,
                "sub": user or "",
                "aud": self.service,
                "exp": issued + self.ttl,
                "nbf": issued,
                "iat": issued,
                "jti": secrets.token_hex(16),
                "access": access,
            }
            token = self.signer.sign(claims)
            status = 200
            body = {
                "token": token,
                "access_token": token,
                "expires_in": self.ttl,
                "issued_at": _format_rfc3339(now),
            }

        with self._lock:
            self.records.append(TokenRequestRecord(user, scopes, access, status))
        if status == 200:
            LOG.debug("token issued: user=%s scopes=%s access=%s", user, scopes, access)
        else:
            LOG.warning("token request rejected with HTTP %d: user=%s scopes=%s", status, user, scopes)
        return status, body


class _TokenRequestHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (name fixed by http.server)
        token_server: TokenServer = self.server.token_server  # type: ignore[attr-defined]
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/token":
            self._send_json(404, {"errors": [{"code": "NOT_FOUND", "message": "unknown path"}]})
            return
        status, body = token_server.handle_token_request(url.query, self.headers.get("Authorization"))
        extra_headers = {}
        if status == 401:
            extra_headers["WWW-Authenticate"] = 'Basic realm="%s"' % token_server.issuer
        self._send_json(status, body, extra_headers)

    def _send_json(self, status: int, body: Dict[str, Any], extra_headers: Optional[Dict[str, str]] = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (signature fixed by http.server)
        LOG.debug("token server: " + format, *args)


# ---------------------------------------------------------------------------
# The registry process


def _find_free_port() -> int:
    # The port is free when this returns but not reserved, so another process
    # can take it before the registry binds it. start_registry retries then.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def _new_session() -> requests.Session:
    session = requests.Session()
    # Ignore HTTP(S)_PROXY and .netrc: every request goes straight to 127.0.0.1.
    session.trust_env = False
    return session


def _require_loopback(url: str) -> None:
    host = urllib.parse.urlsplit(url).hostname
    if host != LOOPBACK:
        raise RegistryRequestError("not sending a request to %r because the test helpers only contact %s" % (url, LOOPBACK))


@dataclass
class RunningRegistry:
    """A distribution registry process and, with token auth, its token server.

    `images` maps "repository:tag" to the dict that push_image or push_index
    returned, for the images that the fixtures pushed.
    """

    host: str
    url: str
    workdir: Path
    log_path: Path
    process: subprocess.Popen
    token_server: Optional[TokenServer] = None
    users: Dict[str, str] = field(default_factory=dict)
    images: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    _log_file: Any = None
    _stopped: bool = False

    @property
    def auth(self) -> Optional[str]:
        return "token" if self.token_server else None

    @property
    def token_ttl(self) -> Optional[int]:
        """Seconds from issue until the registry rejects a token, None without token auth."""
        return self.token_server.ttl if self.token_server else None

    @property
    def token_requests(self) -> int:
        """Number of requests that reached the token server, 0 without token auth."""
        if self.token_server is None:
            return 0
        return len(self.token_server.records)

    @property
    def token_log(self) -> List[TokenRequestRecord]:
        if self.token_server is None:
            return []
        return list(self.token_server.records)

    @property
    def realm(self) -> Optional[str]:
        return self.token_server.realm if self.token_server else None

    @property
    def push_credentials(self) -> Optional[Credentials]:
        """Credentials of the first configured user, used for pushes with token auth."""
        if self.token_server is None or not self.users:
            return None
        user = next(iter(self.users))
        return user, self.users[user]

    def reference(self, repository: str, tag_or_digest: str) -> str:
        """Return "127.0.0.1:PORT/REPOSITORY:TAG" (or "@sha256:..." for a digest)."""
        separator = "@" if tag_or_digest.startswith("sha256:") else ":"
        return "%s/%s%s%s" % (self.host, repository, separator, tag_or_digest)

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Stop the registry process and the token server. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                LOG.warning("registry pid %d ignored SIGTERM for 10 s, sending SIGKILL", self.process.pid)
                self.process.kill()
                self.process.wait(timeout=10)
        LOG.info("registry %s (pid %d) stopped", self.host, self.process.pid)
        if self._log_file is not None:
            self._log_file.close()
        if self.token_server is not None:
            self.token_server.stop()


def _yaml_string(value: str) -> str:
    # A JSON string is also a valid YAML double-quoted scalar.
    return json.dumps(value)


def _write_registry_config(
    path: Path, storage: Path, port: int, token_server: Optional[TokenServer], certificate_path: Optional[Path]
) -> None:
    lines = [
        "version: 0.1",
        "log:",
        "  level: info",
        "  formatter: text",
        "storage:",
        "  filesystem:",
        "    rootdirectory: %s" % _yaml_string(str(storage)),
        "  delete:",
        "    enabled: true",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "http:",
        "  addr: %s" % _yaml_string("%s:%d" % (LOOPBACK, port)),
        "  secret: %s" % _yaml_string(secrets.token_hex(16)),
        "health:",
        "  storagedriver:",
        "    enabled: false",
    ]
    if token_server is not None:
        lines += [
            "auth:",
            "  token:",
            "    realm: %s" % _yaml_string(token_server.realm),
            "    service: %s" % _yaml_string(token_server.service),
            "    issuer: %s" % _yaml_string(token_server.issuer),
            "    rootcertbundle: %s" % _yaml_string(str(certificate_path)),
        ]
    path.write_text("\n".join(lines) + "\n")


def _registry_environment() -> Dict[str, str]:
    # Distribution reads REGISTRY_* variables as overrides of the config file,
    # for example REGISTRY_HTTP_ADDR, so none of them may leak in.
    return {name: value for name, value in os.environ.items() if not name.startswith("REGISTRY_")}


def _wait_until_ready(registry: RunningRegistry, timeout: float) -> Optional[str]:
    """Poll GET /v2/ until the registry responds. Return None when ready, else the reason it failed."""
    deadline = time.monotonic() + timeout
    session = _new_session()
    try:
        while time.monotonic() < deadline:
            if registry.process.poll() is not None:
                return "exited with status %d" % registry.process.returncode
            try:
                response = session.get(registry.url + "/v2/", timeout=1)
            except (requests.ConnectionError, requests.Timeout):
                time.sleep(0.05)
                continue

            # Another program may have taken the port, so the process must
            # still run and the response must come from a registry.
            if registry.process.poll() is not None:
                continue
            if response.headers.get("Docker-Distribution-Api-Version") != "registry/2.0":
                return "port is used by a program that is not the registry (GET /v2/ returned HTTP %d)" % (
                    response.status_code
                )
            if response.status_code in (200, 401):
                return None
            return "responded to GET /v2/ with HTTP %d" % response.status_code
        return "did not respond to GET /v2/ within %.0f s" % timeout
    finally:
        session.close()


def start_registry(
    workdir: Union[str, Path],
    auth: Optional[str] = None,
    token_ttl: int = 5,
    users: Optional[Dict[str, str]] = None,
    anonymous_pull: bool = True,
    startup_timeout: float = 30.0,
) -> RunningRegistry:
    """Start `docker-registry serve` on a free port of 127.0.0.1 and wait for /v2/.

    auth is None for an open registry or "token" for bearer token auth, where
    tokens expire `token_ttl` seconds after they are issued and `users` (default
    alice/secret) are the accounts with push access. Storage, config, the
    certificate and the registry log (`registry.log`) go under `workdir`.
    Raises RegistryStartError with the end of the registry log if the registry
    does not start. Call `.stop()` when done. An atexit hook also stops it.
    """
    if auth not in (None, "token"):
        raise ValueError("auth must be None or 'token', got %r" % (auth,))
    if not os.path.exists(REGISTRY_BINARY):
        raise RegistryStartError("%s not found: apt-get install docker-registry" % REGISTRY_BINARY)
    if users is None:
        users = {"alice": "secret"}

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    storage = workdir / "storage"
    storage.mkdir(exist_ok=True)

    token_server = None
    certificate_path = None
    if auth == "token":
        signer = TokenSigner()
        certificate_path = workdir / "token-signer.pem"
        certificate_path.write_bytes(signer.certificate_pem())
        token_server = TokenServer(signer, token_ttl, users, anonymous_pull)

    attempts = 3
    failure = ""
    for attempt in range(1, attempts + 1):
        port = _find_free_port()
        config_path = workdir / "config.yml"
        _write_registry_config(config_path, storage, port, token_server, certificate_path)
        log_path = workdir / "registry.log"
        log_file = open(log_path, "wb")
        process = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=_registry_environment(),
        )
        registry = RunningRegistry(
            host="%s:%d" % (LOOPBACK, port),
            url="http://%s:%d" % (LOOPBACK, port),
            workdir=workdir,
            log_path=log_path,
            process=process,
            token_server=token_server,
            users=dict(users),
            _log_file=log_file,
        )
        failure = _wait_until_ready(registry, startup_timeout)
        if failure is None:
            LOG.info("registry %s started, pid %d, auth=%s", registry.host, process.pid, auth)
            atexit.register(registry.stop)
            return registry

        # Stop only the process, because the next attempt reuses the token server.
        registry.token_server = None
        registry.stop()
        if "address already in use" in log_path.read_text(errors="replace") and attempt < attempts:
            LOG.warning("port %d was taken before the registry bound it, retrying with another port", port)
            continue
        break

    if token_server is not None:
        token_server.stop()
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
    raise RegistryStartError(
        "docker-registry on %s %s. Config: %s. Last lines of its log:\n%s" % (registry.host, failure, config_path, tail)
    )


# ---------------------------------------------------------------------------
# Registry HTTP client with bearer token handling


_CHALLENGE_PARAMETER = re.compile(r'(\w+)="([^"]*)"')


def request_token(
    registry: RunningRegistry,
    scopes: Union[str, Sequence[str]],
    credentials: Optional[Credentials] = None,
) -> Dict[str, Any]:
    """Request a token from the registry's token server and return its JSON body.

    `scopes` is one scope such as "repository:test/single:pull" or a list of
    them. Raises RegistryRequestError unless the token server returns 200.
    """
    if registry.token_server is None:
        raise ValueError("registry %s has no token auth" % registry.host)
    if isinstance(scopes, str):
        scopes = [scopes]
    return _fetch_token(registry.token_server.realm, registry.token_server.service, scopes, credentials)


def _fetch_token(realm: str, service: str, scopes: Sequence[str], credentials: Optional[Credentials]) -> Dict[str, Any]:
    _require_loopback(realm)
    parameters = [("service", service)] + [("scope", scope) for scope in scopes]
    session = _new_session()
    try:
        response = session.get(realm, params=parameters, auth=credentials, timeout=30)
    finally:
        session.close()
    if response.status_code != 200:
        raise RegistryRequestError(
            "token request to %s for %s failed: HTTP %d %s" % (realm, scopes, response.status_code, response.text[:500])
        )
    return response.json()


class RegistryClient:
    """HTTP client for one registry that fetches a bearer token on a 401.

    The client keeps the last token and sends it with every request. The push
    helpers pass the same scope (pull and push on one repository) to every
    request, so one token serves a whole push until it expires.
    """

    def __init__(self, registry: RunningRegistry, credentials: Optional[Credentials] = None) -> None:
        self.registry = registry
        self.credentials = credentials
        self.session = _new_session()
        self._token: Optional[str] = None

    def close(self) -> None:
        self.session.close()

    def request(self, method: str, url: str, scope: str, expected: Sequence[int], **kwargs: Any) -> requests.Response:
        """Send a request to a path (or absolute URL) of the registry.

        On 401 with a Bearer challenge it fetches a token for `scope` and sends
        the request once more. Raises RegistryRequestError unless the final
        status is in `expected`.
        """
        if url.startswith("/"):
            url = self.registry.url + url
        _require_loopback(url)
        headers = dict(kwargs.pop("headers", None) or {})
        kwargs.setdefault("timeout", 300)

        response = self._send(method, url, headers, kwargs)
        if response.status_code == 401 and response.headers.get("WWW-Authenticate", "").startswith("Bearer "):
            challenge = dict(_CHALLENGE_PARAMETER.findall(response.headers["WWW-Authenticate"]))
            body = _fetch_token(challenge["realm"], challenge.get("service", ""), [scope], self.credentials)
            self._token = body.get("token") or body.get("access_token")
            response = self._send(method, url, headers, kwargs)

        if response.status_code not in expected:
            raise RegistryRequestError(
                "%s %s returned HTTP %d, expected %s: %s"
                % (method, url, response.status_code, list(expected), response.text[:1000])
            )
        return response

    def _send(self, method: str, url: str, headers: Dict[str, str], kwargs: Dict[str, Any]) -> requests.Response:
        headers = dict(headers)
        if self._token:
            headers["Authorization"] = "Bearer " + self._token
        return self.session.request(method, url, headers=headers, allow_redirects=False, **kwargs)


def _sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(client: RegistryClient, repository: str, data: bytes) -> str:
    """Upload `data` as a blob in one monolithic upload and return its digest.

    Skips the upload when HEAD finds the blob already in the repository.
    """
    digest = _sha256_digest(data)
    scope = "repository:%s:pull,push" % repository
    head = client.request("HEAD", "/v2/%s/blobs/%s" % (repository, digest), scope, expected=(200, 404))
    if head.status_code == 200:
        return digest

    started = client.request("POST", "/v2/%s/blobs/uploads/" % repository, scope, expected=(202,))
    location = urllib.parse.urljoin(client.registry.url + "/", started.headers["Location"])
    separator = "&" if urllib.parse.urlsplit(location).query else "?"
    upload_url = location + separator + urllib.parse.urlencode({"digest": digest})
    client.request(
        "PUT",
        upload_url,
        scope,
        expected=(201,),
        data=data,
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
    )
    return digest


def push_manifest(client: RegistryClient, repository: str, reference: str, data: bytes, media_type: str) -> str:
    """PUT a manifest under a tag or its digest and return the digest the registry reports."""
    scope = "repository:%s:pull,push" % repository
    response = client.request(
        "PUT",
        "/v2/%s/manifests/%s" % (repository, reference),
        scope,
        expected=(201,),
        data=data,
        headers={"Content-Type": media_type},
    )
    digest = response.headers.get("Docker-Content-Digest", "")
    if digest != _sha256_digest(data):
        raise RegistryRequestError(
            "registry stored %s:%s as %r, but the manifest bytes hash to %s"
            % (repository, reference, digest, _sha256_digest(data))
        )
    return digest


# ---------------------------------------------------------------------------
# Layers, images and indexes


@dataclass(frozen=True)
class Layer:
    """A gzip-compressed tar layer that contains one regular file."""

    blob: bytes  # the compressed tar, as pushed
    digest: str  # sha256 of blob
    diff_id: str  # sha256 of the uncompressed tar
    file_name: str  # path of the file inside the tar
    file_sha256: str  # hex sha256 of the file's content
    file_size: int

    @property
    def size(self) -> int:
        return len(self.blob)


def make_layer(seed: int, size: int, file_name: Optional[str] = None) -> Layer:
    """Build a layer with one file of `size` bytes from random.Random(seed).

    The same seed and size give the same bytes and digests in every run:
    the tar entry has mtime 0 and owner 0:0, and gzip writes mtime 0. The file
    is named "layer-SEED.bin" unless `file_name` is given.
    """
    content = random.Random(seed).randbytes(size)
    name = file_name or "layer-%d.bin" % seed

    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(content))
    tar_bytes = buffer.getvalue()

    # Level 1 is the fastest gzip level. Random data does not compress, so a
    # higher level would only cost time.
    blob = gzip.compress(tar_bytes, compresslevel=1, mtime=0)
    return Layer(
        blob=blob,
        digest=_sha256_digest(blob),
        diff_id=_sha256_digest(tar_bytes),
        file_name=name,
        file_sha256=hashlib.sha256(content).hexdigest(),
        file_size=size,
    )


def _json_bytes(document: Dict[str, Any]) -> bytes:
    return json.dumps(document, indent=3).encode()


def _platform_key(platform: Platform) -> str:
    """Return "os/architecture[/variant]", for example "linux/arm64/v8"."""
    return "/".join(part for part in platform if part)


def _platform_json(platform: Platform) -> Dict[str, str]:
    os_name, architecture, variant = platform
    result = {"architecture": architecture, "os": os_name}
    if variant:
        result["variant"] = variant
    return result


def make_image_config(layers: Sequence[Layer], platform: Platform, label: str) -> bytes:
    """Return the JSON bytes of an image config for `layers` on `platform`.

    podman and skopeo check that rootfs.diff_ids match the layers and that
    there is one history entry per layer, so both are filled in.
    """
    config: Dict[str, Any] = {"created": IMAGE_CREATED}
    config.update(_platform_json(platform))
    config["config"] = {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Cmd": ["/bin/sh"],
        "WorkingDir": "/",
        "Labels": {"org.example.test-image": label},
    }
    config["rootfs"] = {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]}
    config["history"] = [
        {"created": IMAGE_CREATED, "created_by": "test layer %s" % layer.file_name} for layer in layers
    ]
    return _json_bytes(config)


def push_image(
    registry: RunningRegistry,
    repository: str,
    tag: Optional[str],
    layers: Sequence[Layer],
    platform: Platform = DEFAULT_PLATFORM,
    oci: bool = False,
    credentials: Optional[Credentials] = None,
) -> Dict[str, Any]:
    """Push the layers, an image config and a manifest, and return what was pushed.

    The manifest uses Docker schema 2 media types, or OCI types with oci=True.
    With tag=None the manifest is stored only under its digest. `credentials`
    default to registry.push_credentials. The result has the keys repository,
    tag, reference, platform, media_type, manifest_digest, manifest_bytes,
    config_digest, config_bytes, layer_digests, diff_ids and layers (the Layer
    objects).
    """
    if credentials is None:
        credentials = registry.push_credentials
    if oci:
        manifest_type, config_type, layer_type = OCI_MANIFEST, OCI_CONFIG, OCI_LAYER
    else:
        manifest_type, config_type, layer_type = DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER

    label = "%s:%s %s" % (repository, tag or "untagged", _platform_key(platform))
    config_bytes = make_image_config(layers, platform, label)
    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "size": len(config_bytes), "digest": _sha256_digest(config_bytes)},
        "layers": [{"mediaType": layer_type, "size": layer.size, "digest": layer.digest} for layer in layers],
    }
    manifest_bytes = _json_bytes(manifest)
    manifest_digest = _sha256_digest(manifest_bytes)

    client = RegistryClient(registry, credentials)
    try:
        for layer in layers:
            push_blob(client, repository, layer.blob)
        config_digest = push_blob(client, repository, config_bytes)
        push_manifest(client, repository, tag or manifest_digest, manifest_bytes, manifest_type)
    finally:
        client.close()

    return {
        "repository": repository,
        "tag": tag,
        "reference": registry.reference(repository, tag or manifest_digest),
        "platform": platform,
        "media_type": manifest_type,
        "manifest_digest": manifest_digest,
        "manifest_bytes": manifest_bytes,
        "config_digest": config_digest,
        "config_bytes": config_bytes,
        "layer_digests": [layer.digest for layer in layers],
        "diff_ids": [layer.diff_id for layer in layers],
        "layers": list(layers),
    }


def _push_attestation(client: RegistryClient, repository: str, subject_key: str) -> Tuple[str, bytes]:
    """Push a buildkit-style attestation manifest and return its digest and bytes.

    Like buildkit's, it is an OCI image manifest whose one layer is an in-toto
    statement, and its config has the platform unknown/unknown.
    """
    statement = _json_bytes(
        {
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://slsa.dev/provenance/v0.2",
            "subject": [{"name": subject_key}],
            "predicate": {"builder": {"id": "docker-image-puller tests"}},
        }
    )
    config_bytes = _json_bytes(
        {
            "architecture": "unknown",
            "os": "unknown",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [_sha256_digest(statement)]},
        }
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(config_bytes), "digest": _sha256_digest(config_bytes)},
        "layers": [
            {
                "mediaType": IN_TOTO,
                "size": len(statement),
                "digest": _sha256_digest(statement),
                "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"},
            }
        ],
    }
    manifest_bytes = _json_bytes(manifest)
    push_blob(client, repository, statement)
    push_blob(client, repository, config_bytes)
    digest = push_manifest(client, repository, _sha256_digest(manifest_bytes), manifest_bytes, OCI_MANIFEST)
    return digest, manifest_bytes


def push_index(
    registry: RunningRegistry,
    repository: str,
    tag: str,
    platforms: Sequence[Platform] = DEFAULT_INDEX_PLATFORMS,
    oci: bool = True,
    attestation: bool = True,
    credentials: Optional[Credentials] = None,
) -> Dict[str, Any]:
    """Push one small image per platform and an index over them under `tag`.

    The index is an OCI image index (OCI image manifests) or, with oci=False, a
    Docker manifest list (Docker manifests). With attestation=True it also
    lists an attestation manifest as buildkit writes it: platform
    unknown/unknown and annotations that point at the first platform's
    manifest (linux/amd64 by default). Each platform's image has one layer of
    2048 bytes whose file is named "PLATFORM-KEY.bin" with "/" replaced by "-".

    Returns a dict with repository, tag, reference, media_type, index_digest,
    index_bytes, images (platform key such as "linux/arm64/v8" -> push_image
    result), platform_digests (platform key -> manifest digest) and
    attestation_digest (None without attestation).
    """
    if credentials is None:
        credentials = registry.push_credentials
    if not platforms:
        raise ValueError("push_index needs at least one platform")

    images: Dict[str, Dict[str, Any]] = {}
    entries = []
    for platform in platforms:
        key = _platform_key(platform)
        seed = zlib.crc32(("%s %s" % (repository, key)).encode())
        layer = make_layer(seed, 2048, file_name=key.replace("/", "-") + ".bin")
        image = push_image(registry, repository, None, [layer], platform=platform, oci=oci, credentials=credentials)
        images[key] = image
        entries.append(
            {
                "mediaType": image["media_type"],
                "size": len(image["manifest_bytes"]),
                "digest": image["manifest_digest"],
                "platform": _platform_json(platform),
            }
        )

    attestation_digest = None
    if attestation:
        subject_key = _platform_key(platforms[0])
        client = RegistryClient(registry, credentials)
        try:
            attestation_digest, attestation_bytes = _push_attestation(client, repository, subject_key)
        finally:
            client.close()
        entries.append(
            {
                "mediaType": OCI_MANIFEST,
                "size": len(attestation_bytes),
                "digest": attestation_digest,
                "annotations": {
                    "vnd.docker.reference.digest": images[subject_key]["manifest_digest"],
                    "vnd.docker.reference.type": "attestation-manifest",
                },
                "platform": {"architecture": "unknown", "os": "unknown"},
            }
        )

    index_type = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
    index_bytes = _json_bytes({"schemaVersion": 2, "mediaType": index_type, "manifests": entries})
    client = RegistryClient(registry, credentials)
    try:
        index_digest = push_manifest(client, repository, tag, index_bytes, index_type)
    finally:
        client.close()

    return {
        "repository": repository,
        "tag": tag,
        "reference": registry.reference(repository, tag),
        "media_type": index_type,
        "index_digest": index_digest,
        "index_bytes": index_bytes,
        "images": images,
        "platform_digests": {key: image["manifest_digest"] for key, image in images.items()},
        "attestation_digest": attestation_digest,
    }


def fetch_manifest(
    registry: RunningRegistry,
    repository: str,
    reference: str,
    credentials: Optional[Credentials] = None,
    accept: str = MANIFEST_ACCEPT,
) -> requests.Response:
    """GET a manifest with all four manifest types accepted and return the 200 response."""
    client = RegistryClient(registry, credentials)
    try:
        return client.request(
            "GET",
            "/v2/%s/manifests/%s" % (repository, reference),
            "repository:%s:pull" % repository,
            expected=(200,),
            headers={"Accept": accept},
        )
    finally:
        client.close()


# ---------------------------------------------------------------------------
# Test images that the fixtures push

BIG_LAYER_SIZE = 100 * 1024 * 1024


def push_standard_images(registry: RunningRegistry) -> None:
    """Push test/single:v1, test/oci:v1 and test/multi:v1 and record them in registry.images.

    test/single has 3 Docker schema 2 layers, test/oci 2 OCI layers and
    test/multi is an OCI index for linux/amd64, linux/arm64/v8 and linux/arm/v7
    with an attestation manifest.
    """
    single_layers = [make_layer(101, 1024), make_layer(102, 64 * 1024), make_layer(103, 300 * 1024)]
    registry.images["test/single:v1"] = push_image(registry, "test/single", "v1", single_layers)

    oci_layers = [make_layer(201, 4096), make_layer(202, 128 * 1024)]
    registry.images["test/oci:v1"] = push_image(registry, "test/oci", "v1", oci_layers, oci=True)

    registry.images["test/multi:v1"] = push_index(registry, "test/multi", "v1")


def make_big_layers() -> List[Layer]:
    """Return the layers of test/big:v1: one of 100 MiB and one of 1000 bytes."""
    return [make_layer(301, BIG_LAYER_SIZE), make_layer(302, 1000)]


def push_big_image(registry: RunningRegistry, layers: Optional[Sequence[Layer]] = None) -> Dict[str, Any]:
    """Push test/big:v1 (see make_big_layers) unless it is already in registry.images."""
    if "test/big:v1" not in registry.images:
        registry.images["test/big:v1"] = push_image(registry, "test/big", "v1", layers or make_big_layers())
    return registry.images["test/big:v1"]


# ---------------------------------------------------------------------------
# skopeo


def _skopeo_binary() -> str:
    path = shutil.which("skopeo")
    if path is None:
        import pytest

        pytest.skip("skopeo not installed: apt-get install skopeo")
    return path


def _docker_reference(reference: str) -> str:
    if "://" in reference or reference.startswith(("oci:", "docker-archive:", "oci-archive:", "dir:")):
        return reference
    return "docker://" + reference


def _credential_arguments(prefix: str, reference: str, credentials: Optional[Credentials]) -> List[str]:
    """Return skopeo's TLS and credential options for one side of a command.

    `prefix` is "" for inspect or "--src-"/"--dest-" for copy. Options are only
    added for docker:// references, and an explicit anonymous option keeps
    skopeo from reading an auth file of the machine.
    """
    if not reference.startswith("docker://"):
        return []
    option = prefix or "--"
    arguments = [option + "tls-verify=false"]
    if credentials is None:
        arguments.append(option + "no-creds")
    else:
        arguments += [option + "creds", "%s:%s" % credentials]
    return arguments


def _platform_arguments(platform: Optional[Platform]) -> List[str]:
    """Return skopeo's global options that make it pick `platform` from an index."""
    if platform is None:
        return []
    os_name, architecture, variant = platform
    arguments = ["--override-os", os_name, "--override-arch", architecture]
    if variant:
        arguments += ["--override-variant", variant]
    return arguments


def _run_skopeo(arguments: List[str], timeout: float) -> subprocess.CompletedProcess:
    command = [_skopeo_binary()] + arguments
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    if result.returncode != 0:
        # Hide the USER:PASSWORD value that follows a credentials option.
        printable_parts = list(command)
        for index in range(1, len(printable_parts)):
            if command[index - 1] in ("--creds", "--src-creds", "--dest-creds"):
                printable_parts[index] = "***"
        printable_command = " ".join(printable_parts)
        raise SkopeoError(
            "%s exited with status %d: %s" % (printable_command, result.returncode, result.stderr.decode(errors="replace").strip())
        )
    return result


def skopeo_inspect(
    reference: str,
    raw: bool = False,
    config: bool = False,
    credentials: Optional[Credentials] = None,
    platform: Optional[Platform] = None,
    timeout: float = 120,
) -> Union[Dict[str, Any], bytes]:
    """Run `skopeo inspect` on a registry image and return its output.

    `reference` is "127.0.0.1:PORT/REPOSITORY:TAG" (or @DIGEST), with or
    without "docker://". Without raw the parsed JSON is returned, with raw the
    exact bytes of the manifest (or of the config with config=True). Unless
    raw=True, an index is resolved to the image for `platform`, by default
    the platform of this machine. Skips the test when skopeo is missing and
    raises SkopeoError on failure.
    """
    reference = _docker_reference(reference)
    arguments = _platform_arguments(platform) + ["inspect"] + _credential_arguments("", reference, credentials)
    if raw:
        arguments.append("--raw")
    if config:
        arguments.append("--config")
    result = _run_skopeo(arguments + [reference], timeout)
    return result.stdout if raw else json.loads(result.stdout)


def skopeo_inspect_archive(
    path: Union[str, Path], raw: bool = False, config: bool = False, timeout: float = 120
) -> Union[Dict[str, Any], bytes]:
    """Run `skopeo inspect docker-archive:PATH` and return the output like skopeo_inspect.

    With raw=True the manifest is the one skopeo builds from the archive's
    manifest.json, not a stored one.
    """
    arguments = ["inspect"]
    if raw:
        arguments.append("--raw")
    if config:
        arguments.append("--config")
    result = _run_skopeo(arguments + ["docker-archive:%s" % path], timeout)
    return result.stdout if raw else json.loads(result.stdout)


def skopeo_copy(
    source: str,
    destination: str,
    source_credentials: Optional[Credentials] = None,
    destination_credentials: Optional[Credentials] = None,
    extra_arguments: Sequence[str] = (),
    platform: Optional[Platform] = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run `skopeo copy SOURCE DESTINATION` and return the finished process.

    Registry references without a transport get "docker://". TLS verification
    is off, and a registry side without credentials is accessed anonymously.
    `platform` selects the image of an index (default: this machine's).
    `extra_arguments` go before the references, for example ["--all"].
    Skips the test when skopeo is missing and raises SkopeoError on failure.
    """
    source = _docker_reference(source)
    destination = _docker_reference(destination)
    arguments = _platform_arguments(platform) + ["copy"]
    arguments += _credential_arguments("--src-", source, source_credentials)
    arguments += _credential_arguments("--dest-", destination, destination_credentials)
    arguments += list(extra_arguments)
    return _run_skopeo(arguments + [source, destination], timeout)
