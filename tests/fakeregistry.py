"""Fake container registry for tests, built on the Python standard library only.

FakeRegistry serves the pull side of the registry HTTP API (Docker Registry HTTP API V2,
which the OCI distribution spec standardizes) on 127.0.0.1, and can misbehave on
request: expiring tokens, 429s, dropped connections, wrong ranges, bad bytes,
redirects to a second "storage" host that acts like S3 or a CDN.

    with FakeRegistry(auth="bearer", token_ttl=0.5) as registry:
        image = registry.add_image("library/demo", "latest", layers=[make_layer({"a": b"1"})])
        registry.fault("drop_after", r"/blobs/", after_bytes=100)
        ...  # point the client at registry.host
        assert registry.requests_to(r"/blobs/")[0].fault == "drop_after"

Faults are queued with FakeRegistry.fault() and consumed by matching requests in
queue order. FAULT_KINDS maps each kind to its handler and its allowed parameters.
Both servers bind to 127.0.0.1 only and never contact any other host.
"""

import base64
import json
import math
import re
import secrets
import socket
import socketserver
import struct
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Pattern, Sequence, Tuple, Union
from urllib.parse import parse_qs, urlsplit

from fakeimages import (
    ATTESTATION_ANNOTATION_DIGEST,
    ATTESTATION_ANNOTATION_TYPE,
    ATTESTATION_TYPE,
    Platform,
    build_attestation,
    build_image,
    build_index,
    make_layer,
    platform_dict,
    sha256_digest,
)

LOOPBACK = "127.0.0.1"
SERVICE = "fake-registry"
API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")
JSON_TYPE = "application/json; charset=utf-8"
CAPTIVE_PORTAL_HTML = (
    b"<html><head><title>Sign in</title></head>"
    b"<body><h1>Wi-Fi captive portal</h1><p>Accept the terms to continue.</p></body></html>"
)

# Distribution error codes used for the default body of a `status` fault.
DEFAULT_ERROR_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "DENIED",
    404: "NOT_FOUND",
    405: "UNSUPPORTED",
    408: "REQUEST_TIMEOUT",
    429: "TOOMANYREQUESTS",
    503: "UNAVAILABLE",
}

MANIFEST_PATH = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs)/(?P<reference>[^/]+)$")
STORAGE_BLOB_PATH = re.compile(r"^/blobs/(?P<digest>[^/]+)$")
LOOP_PATH = re.compile(r"^/loop/(?P<hop>\d+)$")
RANGE_HEADER = re.compile(r"^bytes=(?P<first>\d*)-(?P<last>\d*)$")

# Builds WWW-Authenticate values from (realm, service, scope, error). Returns one value or a list.
ChallengeFactory = Callable[[str, str, Optional[str], Optional[str]], Union[str, Sequence[str]]]


# ---------------------------------------------------------------------------
# Requests, responses and records
# ---------------------------------------------------------------------------


@dataclass
class RequestContext:
    """A parsed incoming request, as routes and fault handlers see it."""

    server: str  # "registry" or "storage"
    method: str
    path: str
    query: Dict[str, List[str]]
    query_string: str
    headers: Message
    body: bytes
    repository: Optional[str] = None  # set for /v2/<name>/manifests|blobs/... paths


@dataclass
class Response:
    """A response to send, plus the transport shaping that faults set on it."""

    status: int
    headers: List[Tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    # Content-Length header value. None means len(body).
    content_length: Optional[int] = None
    chunked: bool = False
    chunk_size: int = 1024
    # Send only this many body bytes, then close the socket without ending the body.
    send_limit: Optional[int] = None
    # Close with TCP RST (SO_LINGER 0) rather than FIN when send_limit cuts the body.
    reset: bool = False
    stall_before_headers: float = 0.0
    stall_after_bytes: Optional[int] = None
    stall_seconds: float = 0.0
    close_after_stall: bool = False
    # Close the connection after this response even though the client may keep it alive.
    close: bool = False
    # The whole entity before Range slicing, for faults that rebuild a ranged response.
    full_body: Optional[bytes] = None
    # First byte offset that the Range header requested, or None without a usable Range.
    range_start: Optional[int] = None
    # True for 401 responses from the authentication check, which never consume a fault.
    auth_rejected: bool = False

    def set_header(self, name: str, value: str) -> None:
        self.remove_header(name)
        self.headers.append((name, value))

    def remove_header(self, name: str) -> None:
        self.headers = [(key, value) for key, value in self.headers if key.lower() != name.lower()]


@dataclass
class RequestRecord:
    """One request as the fake saw it, and what it sent back.

    ``status`` and ``body_bytes`` are set before the first response byte is written, so
    they are already set when a client has read the response. ``body_bytes`` is
    lowered afterwards if the client disconnects before the body is sent.
    """

    server: str
    method: str
    path: str
    query: str
    headers: Dict[str, str]
    client_port: int
    # Counts accepted connections per server from 1. Requests with the same server and
    # connection_id came over one keep-alive connection. Use this rather than
    # client_port: Linux reuses a loopback client port right after a close.
    connection_id: int
    status: Optional[int] = None
    body_bytes: int = 0
    fault: Optional[str] = None
    received: float = field(default_factory=time.monotonic)  # when the request line arrived
    finished: Optional[float] = None  # when the whole body had been handed to the socket

    def header(self, name: str) -> Optional[str]:
        """Return a request header value, matching the name case-insensitively."""
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


def json_response(status: int, document: Any, headers: Sequence[Tuple[str, str]] = ()) -> Response:
    body = json.dumps(document).encode("utf-8")
    return Response(status, [("Content-Type", JSON_TYPE), *headers], body)


def error_response(status: int, code: str, message: str, detail: Any = None) -> Response:
    """Build a distribution-style error: {"errors": [{"code", "message", "detail"}]}."""
    error = {"code": code, "message": message, "detail": detail}
    return json_response(status, {"errors": [error]}, [API_VERSION_HEADER])


def s3_error_response(status: int, code: str, message: str) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    ).encode("utf-8")
    return Response(status, [("Content-Type", "application/xml")], body)


def parse_range(value: Optional[str], total: int) -> Optional[Tuple[int, int]]:
    """Parse a single-range ``Range`` header into (first, last) byte offsets.

    Returns None for a missing, malformed or multi-range header, which RFC 9110 lets a
    server ignore. ``first`` may be >= ``total``, and the caller then responds with 416.
    """
    if not value:
        return None
    match = RANGE_HEADER.match(value.strip())
    if not match or (not match.group("first") and not match.group("last")):
        return None
    if not match.group("first"):
        suffix = int(match.group("last"))
        if suffix == 0:
            return (total, total)
        return (max(0, total - suffix), total - 1)
    first = int(match.group("first"))
    if first >= total:
        return (first, first)
    last = int(match.group("last")) if match.group("last") else total - 1
    if last < first:
        return None
    return (first, min(last, total - 1))


def entity_response(ctx: RequestContext, data: bytes, headers: List[Tuple[str, str]]) -> Response:
    """Respond with ``data``, honouring a ``Range`` header with 206 or 416."""
    total = len(data)
    requested = parse_range(ctx.headers.get("Range"), total)
    if requested is None:
        return Response(200, headers, data, full_body=data)
    first, last = requested
    if first >= total:
        response = Response(416, headers, b"", full_body=data, range_start=first)
        response.set_header("Content-Range", f"bytes */{total}")
        return response
    response = Response(206, headers, data[first : last + 1], full_body=data, range_start=first)
    response.set_header("Content-Range", f"bytes {first}-{last}/{total}")
    return response


def parse_basic_credentials(value: Optional[str]) -> Optional[Tuple[str, str]]:
    if not value or not value.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(value[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    user, separator, password = decoded.partition(":")
    if not separator:
        return None
    return user, password


def media_type_accepted(media_type: str, accept_values: List[str]) -> bool:
    """Check a media type against Accept headers, honouring */* and type/* wildcards."""
    main_type = media_type.split("/", 1)[0]
    for header in accept_values:
        for item in header.split(","):
            accepted = item.split(";", 1)[0].strip().lower()
            if accepted in (media_type.lower(), "*/*", f"{main_type}/*"):
                return True
    return False


# ---------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------


@dataclass
class Fault:
    """A queued fault. ``used`` counts the requests it has been applied to."""

    kind: str
    pattern: Optional[Pattern]
    times: Optional[int]  # None means every matching request, for ever
    params: Dict[str, Any]
    server: Optional[str]
    method: Optional[str]
    before_auth: bool
    used: int = 0

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.used >= self.times

    def matches(self, ctx: RequestContext, before_auth: bool) -> bool:
        if self.exhausted or self.before_auth != before_auth:
            return False
        if self.server is not None and self.server != ctx.server:
            return False
        if self.method is not None and self.method.upper() != ctx.method:
            return False
        if ctx.server not in FAULT_KINDS[self.kind].servers:
            return False
        return self.pattern is None or self.pattern.search(ctx.path) is not None


# A fault handler gets (registry, request context, normal response, fault parameters)
# and returns the response to send: the normal one changed in place, or a new one.
FaultHandler = Callable[["FakeRegistry", RequestContext, Response, Dict[str, Any]], Response]


@dataclass
class FaultKind:
    handler: FaultHandler
    params: FrozenSet[str]
    required: FrozenSet[str] = frozenset()
    # Servers whose requests this kind may match. Redirects and auth challenges only
    # make sense on the registry, and storage-host requests would otherwise loop.
    servers: FrozenSet[str] = frozenset({"registry", "storage"})
    # Raises ValueError for invalid parameter values when the fault is queued.
    check: Optional[Callable[[Dict[str, Any]], None]] = None


def fault_status(registry, ctx, response, params) -> Response:
    """Respond with ``status`` and extra ``headers``. The body is ``body`` (str or bytes)
    or else a distribution JSON error whose code is ``code`` or one that fits the status."""
    status = int(params["status"])
    body = params.get("body")
    if body is None:
        code = params.get("code") or DEFAULT_ERROR_CODES.get(status, "UNKNOWN")
        result = error_response(status, code, f"injected status {status}")
    else:
        payload = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        result = Response(status, [("Content-Type", "text/plain; charset=utf-8")], payload)
    for name, value in params.get("headers", {}).items():
        result.set_header(name, str(value))
    return result


def fault_drop_after(registry, ctx, response, params) -> Response:
    """Send the full Content-Length, then ``after_bytes`` body bytes (default: half),
    then close the socket, with RST instead of FIN when ``reset`` is true."""
    response.send_limit = int(params.get("after_bytes", len(response.body) // 2))
    response.reset = bool(params.get("reset", False))
    return response


def check_stall(params: Dict[str, Any]) -> None:
    then = params.get("then", "continue")
    if then not in ("continue", "close"):
        raise ValueError(f"stall: then must be 'continue' or 'close', got {then!r}")


def fault_stall(registry, ctx, response, params) -> Response:
    """Pause for ``seconds`` (default 1.0) before the headers, or after ``after_bytes``
    body bytes when that is given. Afterwards send the rest, or close the connection
    when ``then`` is "close". FakeRegistry.close() ends a pause early."""
    seconds = float(params.get("seconds", 1.0))
    after_bytes = params.get("after_bytes")
    if after_bytes is None:
        response.stall_before_headers = seconds
    else:
        response.stall_after_bytes = int(after_bytes)
        response.stall_seconds = seconds
    response.close_after_stall = params.get("then", "continue") == "close"
    return response


def fault_ignore_range(registry, ctx, response, params) -> Response:
    """Respond to a Range request with 200 and the whole entity."""
    if response.full_body is None or response.range_start is None:
        return response
    response.status = 200
    response.body = response.full_body
    response.remove_header("Content-Range")
    return response


def fault_wrong_range(registry, ctx, response, params) -> Response:
    """Respond with 206 and the bytes from offset ``start`` to the end and a matching
    Content-Range. The default start is half the requested offset, or 1 when the
    request had no Range or asked for offset 0."""
    data = response.full_body
    if data is None or len(data) < 2:
        return response
    requested = response.range_start or 0
    default_start = requested // 2 if requested > 0 else 1
    start = min(max(int(params.get("start", default_start)), 0), len(data) - 1)
    response.status = 206
    response.body = data[start:]
    response.set_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
    return response


def fault_corrupt(registry, ctx, response, params) -> Response:
    """Invert the body byte at ``offset`` (default: the middle). The length stays the same."""
    if not response.body:
        return response
    body = bytearray(response.body)
    offset = min(int(params.get("offset", len(body) // 2)), len(body) - 1)
    body[offset] ^= 0xFF
    response.body = bytes(body)
    return response


def fault_redirect(registry, ctx, response, params) -> Response:
    """Respond with ``status`` (default 302) and a Location header.

    A blob goes to a signed storage-host URL that expires after ``ttl`` seconds
    (default: never). Other paths go to the same URL on the registry, which serves it
    normally once the fault is used up. ``location`` overrides the target, and tests
    must keep it on 127.0.0.1.
    """
    match = MANIFEST_PATH.match(ctx.path)
    if "location" in params:
        location = params["location"]
    elif match and match.group("kind") == "blobs":
        location = registry.storage_blob_url(match.group("reference"), ttl=params.get("ttl"))
    else:
        location = registry.url + ctx.path
        if ctx.query_string:
            location += "?" + ctx.query_string
    return Response(int(params.get("status", 302)), [("Location", location)], b"")


def fault_redirect_loop(registry, ctx, response, params) -> Response:
    """Redirect to /loop/1 on the storage host. /loop/N on either server redirects to
    /loop/N+1 on the other one, for ever, whatever faults are queued."""
    location = f"{registry.storage_url}/loop/1"
    return Response(int(params.get("status", 302)), [("Location", location)], b"")


def fault_html(registry, ctx, response, params) -> Response:
    """Respond with ``status`` (default 200) and a captive-portal HTML page."""
    headers = [("Content-Type", "text/html; charset=utf-8")]
    return Response(int(params.get("status", 200)), headers, CAPTIVE_PORTAL_HTML)


def fault_short_body(registry, ctx, response, params) -> Response:
    """Send the whole body with a Content-Length ``delta`` bytes larger (default 16),
    then close the connection."""
    response.content_length = len(response.body) + int(params.get("delta", 16))
    response.close = True
    return response


def fault_long_body(registry, ctx, response, params) -> Response:
    """Send the whole body with a Content-Length ``delta`` bytes smaller (default 16).

    With ``close`` (default true) the connection closes after the body. With
    close=False the surplus bytes stay on the keep-alive connection. A client may read
    them as the start of its next response, but Python's http.client usually drops
    them with the previous response's read buffer (seen with CPython 3.11, urllib3 2.7).
    """
    response.content_length = max(0, len(response.body) - int(params.get("delta", 16)))
    response.close = bool(params.get("close", True))
    return response


def fault_chunked(registry, ctx, response, params) -> Response:
    """Send the body with Transfer-Encoding: chunked in chunks of ``chunk_size`` bytes
    (default 1024), without Content-Length."""
    response.chunked = True
    response.chunk_size = max(1, int(params.get("chunk_size", 1024)))
    return response


def fault_unauthorized(registry, ctx, response, params) -> Response:
    """Respond with 401 and a fresh challenge (error="invalid_token"), as for an expired token.

    The token stays valid unless ``revoke`` is true, which revokes every token.
    """
    if params.get("revoke", False):
        registry.revoke_tokens()
    return registry.challenge_response(ctx, error="invalid_token")


REGISTRY_ONLY = frozenset({"registry"})

FAULT_KINDS: Dict[str, FaultKind] = {
    "status": FaultKind(fault_status, frozenset({"status", "headers", "body", "code"}), frozenset({"status"})),
    "drop_after": FaultKind(fault_drop_after, frozenset({"after_bytes", "reset"})),
    "stall": FaultKind(fault_stall, frozenset({"seconds", "after_bytes", "then"}), check=check_stall),
    "ignore_range": FaultKind(fault_ignore_range, frozenset()),
    "wrong_range": FaultKind(fault_wrong_range, frozenset({"start"})),
    "corrupt": FaultKind(fault_corrupt, frozenset({"offset"})),
    "redirect": FaultKind(fault_redirect, frozenset({"status", "ttl", "location"}), servers=REGISTRY_ONLY),
    "redirect_loop": FaultKind(fault_redirect_loop, frozenset({"status"}), servers=REGISTRY_ONLY),
    "html": FaultKind(fault_html, frozenset({"status"})),
    "short_body": FaultKind(fault_short_body, frozenset({"delta"})),
    "long_body": FaultKind(fault_long_body, frozenset({"delta", "close"})),
    "chunked": FaultKind(fault_chunked, frozenset({"chunk_size"})),
    "unauthorized": FaultKind(fault_unauthorized, frozenset({"revoke"}), servers=REGISTRY_ONLY),
}


# ---------------------------------------------------------------------------
# HTTP transport
# ---------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    """Threaded HTTP server that tracks its connections so close() can end them."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, registry: "FakeRegistry", name: str) -> None:
        self.registry = registry
        self.name = name
        self.connections: set = set()
        self.connections_lock = threading.Lock()
        self.connection_count = 0
        super().__init__((LOOPBACK, 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name with getfqdn(). Skip that lookup.
        socketserver.TCPServer.server_bind(self)
        self.server_name = LOOPBACK
        self.server_port = self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Client disconnects are expected in fault tests. Keep other errors visible.
        if isinstance(sys.exc_info()[1], OSError):
            return
        self.registry.errors.append(traceback.format_exc())
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-registry/1.0"
    sys_version = ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes. Without TCP_NODELAY, Nagle's algorithm
        # and the client's delayed ACK (40 ms minimum on Linux) slow each keep-alive response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.connections.add(self.connection)
            self.server.connection_count += 1
            self.connection_id = self.server.connection_count

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:
            # The client went away (BrokenPipe, ConnectionReset) or close() shut the socket.
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.registry._serve(self)

    do_HEAD = do_GET
    do_POST = do_GET
    do_PUT = do_GET
    do_PATCH = do_GET
    do_DELETE = do_GET

    def send_fake_response(self, response: Response, record: RequestRecord) -> None:
        """Write ``response``, applying its transport shaping, and update ``record``."""
        closing = self.server.registry._closing
        head_only = self.command == "HEAD"
        payload = response.body if response.send_limit is None else response.body[: response.send_limit]
        record.body_bytes = 0 if head_only else len(payload)

        if response.stall_before_headers:
            closing.wait(response.stall_before_headers)

        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        if response.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            length = response.content_length if response.content_length is not None else len(response.body)
            self.send_header("Content-Length", str(length))
        self.end_headers()

        if head_only:
            if response.close or response.send_limit is not None:
                self.close_connection = True
            return

        sent = 0
        try:
            if response.stall_after_bytes is not None:
                first_part = payload[: response.stall_after_bytes]
                self._write_body(first_part, response)
                sent = len(first_part)
                closing.wait(response.stall_seconds)
                if response.close_after_stall:
                    record.body_bytes = sent
                    self._abort(reset=False)
                    return
                payload = payload[len(first_part) :]
            self._write_body(payload, response)
            sent += len(payload)
            if response.chunked and response.send_limit is None:
                self.wfile.write(b"0\r\n\r\n")
            record.finished = time.monotonic()
        except OSError:
            record.body_bytes = sent
            raise

        if response.send_limit is not None:
            self._abort(reset=response.reset)
        elif response.close:
            self.close_connection = True

    def _write_body(self, data: bytes, response: Response) -> None:
        if not response.chunked:
            self.wfile.write(data)
            return
        for offset in range(0, len(data), response.chunk_size):
            chunk = data[offset : offset + response.chunk_size]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))

    def _abort(self, reset: bool) -> None:
        """End the connection in the middle of a response."""
        self.close_connection = True
        if reset:
            # SO_LINGER with a zero timeout makes close() send RST. The socket closes for
            # real when finish() drops the last file object on it.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        else:
            self.connection.shutdown(socket.SHUT_WR)


# ---------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------


@dataclass
class _Token:
    expires_at: float  # time.monotonic() deadline
    scopes: FrozenSet[Tuple[str, str, str]]  # (type, name, action)


class FakeRegistry:
    """Registry and storage servers on 127.0.0.1 with content and fault injection.

    Both servers start in the constructor. Use it as a context manager or call close().
    Settings are read at request time, so a test may change ``token_ttl``,
    ``challenge`` or ``strict_accept`` between requests.

    auth: None, "bearer" (token endpoint at /token, realm on ``realm_server``) or
        "basic" (Basic credentials from ``users`` on every /v2/ request).
    users: {"user": "password"}. With bearer auth the token endpoint then requires
        one of them through Basic auth, otherwise it issues tokens to anyone.
    token_ttl: seconds a token stays valid on the server (float).
    token_field: "token", "access_token" or "both": the key of the token in the
        token endpoint's JSON.
    expires_in: the ``expires_in`` value to send. The default "ttl" sends token_ttl
        rounded up to whole seconds, None leaves the field out, a number is sent as is.
    challenge: None for the standard Bearer challenge, a format string with the fields
        {realm}, {service}, {scope} and {error}, or a callable
        (realm, service, scope, error) -> str or list of str. A list sends one
        WWW-Authenticate header per item. scope and error are None (or "" in a format
        string) when they do not apply.
    check_scope: reject a token whose scopes lack repository:<name>:pull.
    strict_accept: respond with 404 MANIFEST_UNKNOWN when the request's Accept header does
        not list the manifest's media type, as Docker Hub does for OCI indexes.
    realm_server: "registry" or "storage": which server hosts the token endpoint.
    """

    def __init__(
        self,
        auth: Optional[str] = None,
        users: Optional[Dict[str, str]] = None,
        token_ttl: float = 60.0,
        token_field: str = "token",
        expires_in: Any = "ttl",
        challenge: Union[None, str, ChallengeFactory] = None,
        check_scope: bool = True,
        strict_accept: bool = False,
        realm_server: str = "registry",
    ) -> None:
        if auth not in (None, "bearer", "basic"):
            raise ValueError(f"auth must be None, 'bearer' or 'basic', got {auth!r}")
        if auth == "basic" and not users:
            raise ValueError("auth='basic' requires users={'name': 'password'}")
        if token_field not in ("token", "access_token", "both"):
            raise ValueError(f"token_field must be 'token', 'access_token' or 'both', got {token_field!r}")
        if realm_server not in ("registry", "storage"):
            raise ValueError(f"realm_server must be 'registry' or 'storage', got {realm_server!r}")
        self.auth = auth
        self.users = users
        self.token_ttl = token_ttl
        self.token_field = token_field
        self.expires_in = expires_in
        self.challenge = challenge
        self.check_scope = check_scope
        self.strict_accept = strict_accept
        self.realm_server = realm_server
        self.service = SERVICE

        self.token_requests = 0
        # Tracebacks of unexpected exceptions in the fake itself. Tests should assert it is empty.
        self.errors: List[str] = []

        self._lock = threading.Lock()
        self._blobs: Dict[str, bytes] = {}
        self._manifests: Dict[Tuple[str, str], Tuple[bytes, str, str]] = {}
        self._tokens: Dict[str, _Token] = {}
        self._signatures: Dict[str, Tuple[str, Optional[float]]] = {}
        self._faults: List[Fault] = []
        self._records: List[RequestRecord] = []
        self._closing = threading.Event()
        self._closed = False

        self._registry_server = _Server(self, "registry")
        self._storage_server = _Server(self, "storage")
        self._threads = []
        for server in (self._registry_server, self._storage_server):
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.02},
                name=f"fake-{server.name}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    # -- lifecycle ----------------------------------------------------------

    def __enter__(self) -> "FakeRegistry":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop both servers and end open connections and stalled responses."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        # shutdown() waits up to one poll interval per server, so stop both at once.
        stoppers = [threading.Thread(target=server.shutdown) for server in (self._registry_server, self._storage_server)]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        for server in (self._registry_server, self._storage_server):
            server.server_close()
            server.close_connections()
        for thread in self._threads:
            thread.join(timeout=5)

    # -- addresses ----------------------------------------------------------

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT`` of the registry, as used in image references."""
        return f"{LOOPBACK}:{self._registry_server.server_port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def storage_host(self) -> str:
        return f"{LOOPBACK}:{self._storage_server.server_port}"

    @property
    def storage_url(self) -> str:
        return f"http://{self.storage_host}"

    @property
    def realm(self) -> str:
        base = self.url if self.realm_server == "registry" else self.storage_url
        return f"{base}/token"

    # -- content ------------------------------------------------------------

    def add_blob(self, data: bytes) -> str:
        """Store a blob, served under every repository name, and return its digest."""
        digest = sha256_digest(data)
        with self._lock:
            self._blobs[digest] = bytes(data)
        return digest

    def add_manifest(self, repository: str, reference: Optional[str], body: bytes, media_type: str) -> str:
        """Store a manifest under its digest and, if given, a tag. Return the digest."""
        digest = sha256_digest(body)
        entry = (bytes(body), media_type, digest)
        with self._lock:
            self._manifests[(repository, digest)] = entry
            if reference is not None:
                self._manifests[(repository, reference)] = entry
        return digest

    def add_image(
        self,
        repository: str,
        tag: Optional[str],
        layers: Optional[Sequence[bytes]] = None,
        platform: Platform = ("linux", "amd64", None),
        media: str = "docker",
        config_extra: Optional[Dict[str, Any]] = None,
        compress: bool = True,
    ) -> Dict[str, Any]:
        """Store a single-platform image and return its parts.

        ``layers`` are uncompressed tar archives (see fakeimages.make_layer). The default
        is one small layer. A tag of None stores the manifest by digest only, for use in
        an index. Returns the dict of fakeimages.build_image plus manifest_digest.
        """
        if layers is None:
            layers = [make_layer({"etc/fake-image": f"{repository}:{tag}\n".encode("utf-8")})]
        image = build_image(layers, platform=platform, media=media, config_extra=config_extra, compress=compress)
        self.add_blob(image["config_bytes"])
        for blob in image["layer_blobs"]:
            self.add_blob(blob)
        image["manifest_digest"] = self.add_manifest(repository, tag, image["manifest_bytes"], image["media_type"])
        return image

    def add_index(
        self,
        repository: str,
        tag: Optional[str],
        entries: Sequence[Tuple[Platform, str]],
        media: str = "oci",
        attestations: bool = False,
    ) -> Dict[str, Any]:
        """Store an OCI index or Docker manifest list over manifests already in ``repository``.

        ``entries`` are (platform, manifest_digest) pairs. With ``attestations`` an
        attestation manifest is stored for each entry and listed after all entries,
        with platform unknown/unknown as BuildKit does.
        Returns index_digest, index_bytes, media_type and attestation_digests.
        """
        descriptors = []
        attestation_descriptors = []
        for platform, manifest_digest in entries:
            with self._lock:
                stored = self._manifests.get((repository, manifest_digest))
            if stored is None:
                raise ValueError(f"manifest {manifest_digest} is not stored in repository {repository!r}")
            body, media_type, _ = stored
            descriptors.append(
                {"mediaType": media_type, "digest": manifest_digest, "size": len(body), "platform": platform_dict(platform)}
            )
            if attestations:
                attestation = build_attestation(manifest_digest)
                for blob in attestation["blobs"]:
                    self.add_blob(blob)
                digest = self.add_manifest(repository, None, attestation["manifest_bytes"], attestation["media_type"])
                attestation_descriptors.append(
                    {
                        "mediaType": attestation["media_type"],
                        "digest": digest,
                        "size": len(attestation["manifest_bytes"]),
                        "annotations": {
                            ATTESTATION_ANNOTATION_DIGEST: manifest_digest,
                            ATTESTATION_ANNOTATION_TYPE: ATTESTATION_TYPE,
                        },
                        "platform": {"architecture": "unknown", "os": "unknown"},
                    }
                )
        index_bytes, index_type = build_index(descriptors + attestation_descriptors, media=media)
        return {
            "index_digest": self.add_manifest(repository, tag, index_bytes, index_type),
            "index_bytes": index_bytes,
            "media_type": index_type,
            "attestation_digests": [descriptor["digest"] for descriptor in attestation_descriptors],
        }

    def storage_blob_url(self, digest: str, ttl: Optional[float] = None) -> str:
        """Return a signed storage-host URL for a blob, valid for ``ttl`` seconds (None: for ever)."""
        signature = secrets.token_hex(16)
        expires_at = time.monotonic() + ttl if ttl is not None else None
        with self._lock:
            self._signatures[signature] = (digest, expires_at)
        return f"{self.storage_url}/blobs/{digest}?X-Amz-Algorithm=AWS4-HMAC-SHA256&sig={signature}"

    # -- faults -------------------------------------------------------------

    def fault(
        self,
        kind: str,
        path_regex: Optional[str] = None,
        times: Optional[int] = 1,
        server: Optional[str] = None,
        method: Optional[str] = None,
        before_auth: bool = False,
        **params: Any,
    ) -> Fault:
        """Queue a fault for the next ``times`` matching requests and return it.

        A request matches when ``path_regex`` is found (re.search) in its path, without
        the query string, and ``server`` ("registry"/"storage") and ``method`` agree
        where given. ``times=None`` applies the fault to every matching request.
        Each request consumes at most one fault: the first matching one in queue order.
        By default a fault applies after authentication has passed, so requests that get
        a 401 from the auth check do not consume it. ``before_auth=True`` applies it
        before the auth check instead, as a front-end proxy or rate limiter would.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}, expected one of {sorted(FAULT_KINDS)}")
        spec = FAULT_KINDS[kind]
        unknown = set(params) - spec.params
        if unknown:
            raise TypeError(f"fault {kind!r} got unknown parameters {sorted(unknown)}, allowed: {sorted(spec.params)}")
        missing = spec.required - set(params)
        if missing:
            raise TypeError(f"fault {kind!r} requires parameters {sorted(missing)}")
        if spec.check is not None:
            spec.check(params)
        if server not in (None, "registry", "storage"):
            raise ValueError(f"server must be None, 'registry' or 'storage', got {server!r}")
        pattern = re.compile(path_regex) if path_regex is not None else None
        queued = Fault(kind, pattern, times, dict(params), server, method, before_auth)
        with self._lock:
            self._faults.append(queued)
        return queued

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> List[Fault]:
        with self._lock:
            return [queued for queued in self._faults if not queued.exhausted]

    def _take_fault(self, ctx: RequestContext, before_auth: bool) -> Optional[Fault]:
        with self._lock:
            for queued in self._faults:
                if queued.matches(ctx, before_auth):
                    queued.used += 1
                    return queued
        return None

    # -- records ------------------------------------------------------------

    @property
    def requests(self) -> List[RequestRecord]:
        """A snapshot of every request received so far, in arrival order."""
        with self._lock:
            return list(self._records)

    def requests_to(
        self, path_regex: str, server: Optional[str] = None, method: Optional[str] = None
    ) -> List[RequestRecord]:
        """Return the recorded requests whose path contains a match for ``path_regex``."""
        pattern = re.compile(path_regex)
        return [
            record
            for record in self.requests
            if pattern.search(record.path)
            and (server is None or record.server == server)
            and (method is None or record.method == method.upper())
        ]

    def clear_requests(self) -> None:
        with self._lock:
            self._records.clear()

    # -- auth ---------------------------------------------------------------

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far."""
        with self._lock:
            self._tokens.clear()

    def challenge_values(self, scope: Optional[str], error: Optional[str]) -> List[str]:
        """Return the WWW-Authenticate values for a 401 on ``scope``."""
        if self.auth == "basic":
            return [f'Basic realm="{self.service}"']
        if self.challenge is None:
            value = f'Bearer realm="{self.realm}",service="{self.service}"'
            if scope:
                value += f',scope="{scope}"'
            if error:
                value += f',error="{error}"'
            return [value]
        if isinstance(self.challenge, str):
            return [self.challenge.format(realm=self.realm, service=self.service, scope=scope or "", error=error or "")]
        produced = self.challenge(self.realm, self.service, scope, error)
        return [produced] if isinstance(produced, str) else list(produced)

    def challenge_response(self, ctx: RequestContext, error: Optional[str] = None) -> Response:
        scope = f"repository:{ctx.repository}:pull" if ctx.repository else None
        detail = [{"Type": "repository", "Class": "", "Name": ctx.repository, "Action": "pull"}] if ctx.repository else None
        response = error_response(401, "UNAUTHORIZED", "authentication required", detail)
        for value in self.challenge_values(scope, error):
            response.headers.append(("WWW-Authenticate", value))
        response.auth_rejected = True
        return response

    def _authorize(self, ctx: RequestContext) -> Optional[Response]:
        """Return a 401 response when the request may not proceed, else None."""
        if self.auth is None:
            return None
        authorization = ctx.headers.get("Authorization")
        if self.auth == "basic":
            credentials = parse_basic_credentials(authorization)
            if credentials and self.users and self.users.get(credentials[0]) == credentials[1]:
                return None
            return self.challenge_response(ctx)

        if not authorization or not authorization.lower().startswith("bearer "):
            return self.challenge_response(ctx)
        with self._lock:
            token = self._tokens.get(authorization[7:].strip())
        if token is None or token.expires_at <= time.monotonic():
            return self.challenge_response(ctx, error="invalid_token")
        if ctx.repository and self.check_scope:
            allowed = ("repository", ctx.repository, "pull") in token.scopes or (
                "repository",
                ctx.repository,
                "*",
            ) in token.scopes
            if not allowed:
                return self.challenge_response(ctx, error="insufficient_scope")
        return None

    def _issue_token(self, ctx: RequestContext) -> Response:
        with self._lock:
            self.token_requests += 1
        fields = dict(ctx.query)
        if ctx.method == "POST":
            for name, values in parse_qs(ctx.body.decode("utf-8", "replace")).items():
                fields.setdefault(name, []).extend(values)

        if self.users is not None:
            credentials = parse_basic_credentials(ctx.headers.get("Authorization"))
            if credentials is None and "username" in fields:
                credentials = (fields["username"][0], fields.get("password", [""])[0])
            if credentials is None or self.users.get(credentials[0]) != credentials[1]:
                response = json_response(
                    401,
                    {"details": "incorrect username or password"},
                    [("WWW-Authenticate", f'Basic realm="{self.service}"')],
                )
                response.auth_rejected = True
                return response

        scopes = set()
        for value in fields.get("scope", []):
            for scope in value.split():
                resource_type, _, rest = scope.partition(":")
                name, _, actions = rest.rpartition(":")
                for action in actions.split(","):
                    scopes.add((resource_type, name, action))

        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = _Token(time.monotonic() + float(self.token_ttl), frozenset(scopes))
        document: Dict[str, Any] = {"issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if self.token_field in ("token", "both"):
            document["token"] = token
        if self.token_field in ("access_token", "both"):
            document["access_token"] = token
        if self.expires_in == "ttl":
            document["expires_in"] = max(1, math.ceil(float(self.token_ttl)))
        elif self.expires_in is not None:
            document["expires_in"] = self.expires_in
        return json_response(200, document)

    # -- routes -------------------------------------------------------------

    def _serve(self, handler: _Handler) -> None:
        """Route one request, apply a fault if one matches, and send the response."""
        target = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length > 0 else b""
        ctx = RequestContext(
            server=handler.server.name,
            method=handler.command,
            path=target.path,
            query=parse_qs(target.query),
            query_string=target.query,
            headers=handler.headers,
            body=body,
        )
        manifest_match = MANIFEST_PATH.match(ctx.path) if ctx.server == "registry" else None
        if manifest_match:
            ctx.repository = manifest_match.group("name")
        record = RequestRecord(
            server=ctx.server,
            method=ctx.method,
            path=ctx.path,
            query=target.query,
            headers=dict(handler.headers.items()),
            client_port=handler.client_address[1],
            connection_id=handler.connection_id,
        )
        with self._lock:
            self._records.append(record)

        try:
            applied = self._take_fault(ctx, before_auth=True)
            response = self._route(ctx, check_auth=applied is None)
            if applied is None and not response.auth_rejected:
                applied = self._take_fault(ctx, before_auth=False)
            if applied is not None:
                response = FAULT_KINDS[applied.kind].handler(self, ctx, response, applied.params)
                record.fault = applied.kind
        except Exception:
            self.errors.append(traceback.format_exc())
            response = error_response(500, "UNKNOWN", "fake registry bug, see FakeRegistry.errors")
        if handler.headers.get("Transfer-Encoding"):
            # Request bodies are only read by Content-Length, so the connection is out of sync.
            response.close = True
        record.status = response.status
        handler.send_fake_response(response, record)

    def _route(self, ctx: RequestContext, check_auth: bool) -> Response:
        if ctx.path == "/token" and self.realm_server == ctx.server:
            return self._issue_token(ctx)
        loop_match = LOOP_PATH.match(ctx.path)
        if loop_match:
            other = self.url if ctx.server == "storage" else self.storage_url
            hop = int(loop_match.group("hop")) + 1
            return Response(302, [("Location", f"{other}/loop/{hop}")])
        if ctx.server == "storage":
            return self._route_storage(ctx)

        if ctx.path not in ("/v2", "/v2/") and not ctx.repository:
            return Response(404, [("Content-Type", "text/plain; charset=utf-8")], b"404 page not found\n")
        if check_auth:
            rejection = self._authorize(ctx)
            if rejection is not None:
                return rejection
        if ctx.method not in ("GET", "HEAD"):
            return error_response(405, "UNSUPPORTED", "the operation is unsupported")
        if not ctx.repository:
            return json_response(200, {}, [API_VERSION_HEADER])

        match = MANIFEST_PATH.match(ctx.path)
        reference = match.group("reference")
        if match.group("kind") == "manifests":
            return self._serve_manifest(ctx, reference)
        with self._lock:
            data = self._blobs.get(reference)
        if data is None:
            return error_response(404, "BLOB_UNKNOWN", "blob unknown to registry", reference)
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Docker-Content-Digest", reference),
            ("Accept-Ranges", "bytes"),
            API_VERSION_HEADER,
        ]
        return entity_response(ctx, data, headers)

    def _serve_manifest(self, ctx: RequestContext, reference: str) -> Response:
        with self._lock:
            stored = self._manifests.get((ctx.repository, reference))
        if stored is None:
            detail = {"Name": ctx.repository, "Revision" if reference.startswith("sha256:") else "Tag": reference}
            return error_response(404, "MANIFEST_UNKNOWN", "manifest unknown", detail)
        body, media_type, digest = stored
        if self.strict_accept and not media_type_accepted(media_type, ctx.headers.get_all("Accept") or []):
            return error_response(
                404,
                "MANIFEST_UNKNOWN",
                f"{media_type} found, but the Accept header does not list it",
                {"Name": ctx.repository, "Reference": reference},
            )
        headers = [("Content-Type", media_type), ("Docker-Content-Digest", digest), API_VERSION_HEADER]
        return Response(200, headers, body, full_body=body)

    def _route_storage(self, ctx: RequestContext) -> Response:
        match = STORAGE_BLOB_PATH.match(ctx.path)
        if not match or ctx.method not in ("GET", "HEAD"):
            return s3_error_response(404, "NoSuchKey", "The specified key does not exist.")
        if ctx.headers.get("Authorization"):
            return s3_error_response(
                400,
                "InvalidArgument",
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                "Signature query string parameter or the Authorization header should be specified",
            )
        digest = match.group("digest")
        signature = (ctx.query.get("sig") or [""])[0]
        with self._lock:
            signed = self._signatures.get(signature)
            data = self._blobs.get(digest)
        if signed is None or signed[0] != digest:
            return s3_error_response(403, "SignatureDoesNotMatch", "The request signature does not match.")
        if signed[1] is not None and signed[1] <= time.monotonic():
            return s3_error_response(403, "AccessDenied", "Request has expired")
        if data is None:
            return s3_error_response(404, "NoSuchKey", "The specified key does not exist.")
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("ETag", f'"{digest.split(":", 1)[1][:32]}"'),
            ("Accept-Ranges", "bytes"),
        ]
        return entity_response(ctx, data, headers)
