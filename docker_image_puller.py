#!/usr/bin/env python3
"""Pull a container image from a registry into one archive, without a Docker daemon.

The image is fetched over the distribution HTTP API (the OCI distribution spec) and written
as the archive layout that ``docker save`` of Docker 25 and later writes: an OCI image
layout (``oci-layout``, ``index.json``, ``blobs/sha256/``) plus the legacy ``manifest.json``
and ``repositories``. ``docker load``, ``podman load`` and ``ctr images import`` read it.

    python docker_image_puller.py nginx:latest -t 12

Every blob is streamed to a ``.part`` file, hashed with sha256 while it arrives, and moved
to its final name only after its size and digest match the manifest. The archive is filled
in as the bytes are hashed, and it is renamed only when every blob matched. Interrupted downloads
resume from the bytes on disk, in the same run and when the same command is run again.

Deliberately out of scope, each with a clear error instead:
- Docker schema 1 manifests (deprecated since 2017, removed from Docker Hub).
- Writing more than one platform into one archive: ``--platform`` picks one.
- Foreign (non-distributable) layers that the registry does not serve itself.

Sections, in the order a pull flows: constants, messages (English and Simplified
Chinese), errors, references, platforms, authentication, the registry HTTP client,
manifests, blobs, the archive writer, progress and logging, the command line.
"""

import argparse
import base64
import concurrent.futures
import contextlib
import dataclasses
import datetime
import email.utils
import errno
import glob
import hashlib
import io
import ipaddress
import json
import logging
import os
import random
import re
import shutil
import signal
import sys
import tarfile
import threading
import time
import traceback
import urllib.parse
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

import requests
import urllib3
from tqdm import tqdm

__version__ = "1.0.0"

T = TypeVar("T")

# ---------------------------------------------------------------------------
# Constants: registries, media types, limits
# ---------------------------------------------------------------------------

DOCKER_HUB = "docker.io"  # the registry name users see and write in references
DOCKER_HUB_API_HOST = "registry-1.docker.io"  # the host that serves Docker Hub's API
DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io")
DOCKER_HUB_OFFICIAL_NAMESPACE = "library"
DEFAULT_TAG = "latest"

MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
MEDIA_DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"

IMAGE_MANIFEST_TYPES = (MEDIA_DOCKER_MANIFEST, MEDIA_OCI_MANIFEST)
INDEX_TYPES = (MEDIA_DOCKER_MANIFEST_LIST, MEDIA_OCI_INDEX)
SCHEMA1_TYPES = (MEDIA_DOCKER_SCHEMA1, MEDIA_DOCKER_SCHEMA1_SIGNED)
# Distribution 2.8 returns 404 for OCI content unless the OCI types are accepted, and
# rewrites Docker manifests to schema 1 unless the Docker types are.
MANIFEST_ACCEPT = ", ".join(
    [MEDIA_OCI_INDEX, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST_LIST, MEDIA_DOCKER_MANIFEST]
)
LAYER_MEDIA_TYPES = (
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
)

# Caps on every body read into memory. Distribution rejects manifests over 4 MiB.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_TOKEN_BYTES = 1024 * 1024
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_INDEX_ENTRIES = 1024
MAX_LAYERS = 1024  # far more than any runtime can stack; a longer list is treated as hostile
MAX_BLOB_SIZE = 1 << 40  # 1 TiB: any larger size in a manifest is treated as hostile

CHUNK_SIZE = 1024 * 1024  # maximum bytes read from the socket or a file at once
FALLBACK_CHUNK_SIZE = 128 * 1024  # read size for urllib3 before 2.2, which waits for full reads
ARCHIVE_BUFFER_SIZE = 4 * 1024 * 1024
# Bytes per write() call. On the benchmark machine (Linux 6.18 in a VM), writing 1 GiB
# in 1 MiB calls cost 2 to 6 s of kernel time, and in 64 KiB calls 0.2 s (BENCHMARKS.md).
# The likely cause is page-cache folios sized by the write, which need contiguous memory.
WRITE_SIZE = 64 * 1024

DEFAULT_THREADS = 5
MAX_THREADS = 20
DEFAULT_RETRIES = 5
DEFAULT_CONNECT_TIMEOUT = 15.0  # seconds
DEFAULT_READ_TIMEOUT = 60.0  # seconds without a byte before a read is given up
# Backoff before retry n (1-based) is uniform in [0, min(MAX_BACKOFF, base * 2**(n-1))]
# ("full jitter"): with the default base of 1 s the caps run 1, 2, 4, 8, 16, 30, 30 s.
DEFAULT_BACKOFF_BASE = 1.0
MAX_BACKOFF = 30.0
MAX_RETRY_AFTER = 60.0  # a registry's Retry-After is honoured up to this many seconds
MAX_REDIRECTS = 10
DEFAULT_TOKEN_TTL = 60  # seconds, the token spec's default when expires_in is missing
# A token is renewed this early before its expiry (a tenth of its lifetime, at most 10 s),
# so that a request does not leave with a token that expires on the way.
TOKEN_RENEW_FRACTION = 0.1
TOKEN_RENEW_MAX_SECONDS = 10.0

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

LOG_FILE_NAME = "docker_puller.log"
LOGGER = logging.getLogger("docker_image_puller")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# ---------------------------------------------------------------------------
# Messages: every text shown to users, in English and Simplified Chinese
# ---------------------------------------------------------------------------

LANGUAGES = ("en", "zh")
_language = "en"


def detect_language(environ: Optional[Dict[str, str]] = None) -> str:
    """Return "zh" when the POSIX locale variables ask for Chinese, else "en".

    LANGUAGE, LC_ALL, LC_MESSAGES and LANG are read in the order gettext reads them;
    the first one that is set decides.
    """
    environ = os.environ if environ is None else environ
    for variable in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        value = environ.get(variable, "")
        if value:
            return "zh" if value.lower().startswith("zh") else "en"
    return "en"


def set_language(language: str) -> None:
    global _language
    _language = language if language in LANGUAGES else "en"


def tr(template: str, language: Optional[str] = None) -> str:
    """Translate an English message template into the current (or given) language."""
    if (language or _language) == "zh":
        return ZH_MESSAGES.get(template, template)
    return template


class Text:
    """A user-facing message: an English template and its parameters.

    It is rendered late, so the log file gets English while the terminal gets the
    language the user chose. Parameters that are Text themselves are rendered in the
    same language.
    """

    def __init__(self, template: str, **params: object) -> None:
        self.template = template
        self.params = params

    def render(self, language: Optional[str] = None) -> str:
        values = {
            key: value.render(language) if isinstance(value, Text) else value
            for key, value in self.params.items()
        }
        return tr(self.template, language).format(**values)

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        return "Text(%r)" % self.render("en")


# ---------------------------------------------------------------------------
# Errors: one root, a subclass per kind of failure, retry decisions from tables
# ---------------------------------------------------------------------------


class PullerError(Exception):
    """A failure reported to the user as one line, with what to try next."""

    exit_code = EXIT_FAILURE
    retryable = False  # whether a new attempt may succeed; RetryBudget reads it
    retry_after: Optional[float] = None

    def __init__(self, message: Text, hint: Optional[Text] = None) -> None:
        super().__init__(message.render("en"))
        self.message = message
        self.hint = hint

    def render(self, language: Optional[str] = None) -> str:
        text = self.message.render(language)
        if self.hint is not None:
            separator = "" if (language or _language) == "zh" else " "
            text += separator + self.hint.render(language)
        return text


class UsageError(PullerError):
    """Invalid command-line input; exit status 2."""

    exit_code = EXIT_USAGE


class InvalidReferenceError(UsageError):
    """An image reference that does not follow Docker's reference grammar."""


class AuthenticationError(PullerError):
    """The registry or its token service rejected our credentials or token."""


class RegistryError(PullerError):
    """A request failed: an HTTP status, or no response at all (status None)."""

    def __init__(
        self,
        message: Text,
        hint: Optional[Text] = None,
        status: Optional[int] = None,
        codes: Sequence[str] = (),
        url: str = "",
        retry_after: Optional[float] = None,
        retryable: Optional[bool] = None,
    ) -> None:
        super().__init__(message, hint)
        self.status = status
        self.codes = tuple(codes)
        self.url = url
        self.retry_after = retry_after
        if retryable is None:
            retryable = status is None or status in RETRY_STATUSES
        self.retryable = retryable


class ManifestError(PullerError):
    """A manifest, index or config that is invalid, hostile or of an unsupported kind."""


class DigestMismatchError(PullerError):
    """Downloaded bytes whose digest or size differ from what the manifest promised."""

    def __init__(self, message: Text, expected: str, actual: str, size: int) -> None:
        super().__init__(message, Text("The registry or a proxy served corrupted data; run the same command again, or try another mirror."))
        self.expected = expected
        self.actual = actual
        self.size = size


class PlatformNotFoundError(PullerError):
    """The image offers no manifest for the requested platform."""


class LocalFileError(PullerError):
    """The working folder or the archive could not be written."""


class Cancelled(Exception):
    """Raised inside workers once the user interrupted the pull; never shown as an error."""


# Distribution error codes (distribution spec, "Error Codes") and what the user can do.
ERROR_CODE_HINTS = {
    "UNAUTHORIZED": Text("Log in with -u USER --password-stdin, or check the credentials."),
    "DENIED": Text("The account has no pull access to this repository; check the name and the credentials."),
    "NAME_UNKNOWN": Text("Check the repository name; private repositories also need -u USER --password-stdin."),
    "NAME_INVALID": Text("Check the repository name."),
    "MANIFEST_UNKNOWN": Text("Check the tag or digest; the image may have been deleted or never pushed."),
    "MANIFEST_INVALID": Text("The registry rejected the manifest request; check the reference."),
    "BLOB_UNKNOWN": Text("The registry has lost a blob the manifest names; ask its operator, or try another mirror."),
    "TOOMANYREQUESTS": Text("The registry limits the pull rate: wait and run the same command again, log in, or use a mirror."),
    "UNSUPPORTED": Text("The registry does not support this request."),
}
STATUS_HINTS = {
    401: ERROR_CODE_HINTS["UNAUTHORIZED"],
    403: ERROR_CODE_HINTS["DENIED"],
    404: Text("Check the image name and tag, and the registry."),
    429: ERROR_CODE_HINTS["TOOMANYREQUESTS"],
}
SERVER_ERROR_HINT = Text("The registry failed; wait and run the same command again, or use a mirror.")
NETWORK_HINT = Text("Check the network, the proxy settings and the registry address, then run the same command again; finished downloads are kept.")


def hint_for(status: Optional[int], codes: Sequence[str]) -> Text:
    for code in codes:
        if code in ERROR_CODE_HINTS:
            return ERROR_CODE_HINTS[code]
    if status in STATUS_HINTS:
        return STATUS_HINTS[status]
    if status is not None and status >= 500:
        return SERVER_ERROR_HINT
    return NETWORK_HINT



# ---------------------------------------------------------------------------
# References: Docker's grammar, [HOST[:PORT]/]PATH[:TAG][@ALGORITHM:HEX]
# ---------------------------------------------------------------------------

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(r"%s(?:/%s)*" % (_PATH_COMPONENT, _PATH_COMPONENT))
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    r"(?:%s(?:\.%s)*|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?" % (_DOMAIN_COMPONENT, _DOMAIN_COMPONENT)
)
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
# The algorithms hashlib computes for us, and the length of their lowercase hex digests.
DIGEST_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"(sha256|sha512):([0-9a-f]+)")
MAX_NAME_LENGTH = 255


def validate_digest(digest: object, what: str = "digest") -> str:
    """Return the digest when it is "sha256:" or "sha512:" and lowercase hex of the right length.

    Every digest that later becomes part of a path passes here first, so it can hold
    nothing but hex digits and cannot name a file outside the working folder.
    """
    if not isinstance(digest, str):
        raise ManifestError(Text("Invalid {what}: expected a string like sha256:<64 hex digits>, got {value}.", what=what, value=repr(digest)[:100]))
    match = _DIGEST_RE.fullmatch(digest)
    if match is None or len(match.group(2)) != DIGEST_HEX_LENGTHS[match.group(1)]:
        raise ManifestError(Text("Invalid {what} {value!r}: expected sha256:<64 hex digits> or sha512:<128 hex digits>.", what=what, value=digest[:200]))
    return digest


def is_docker_hub(registry: str) -> bool:
    return registry.lower() in DOCKER_HUB_ALIASES


@dataclass(frozen=True)
class Reference:
    """A parsed image reference; ``registry`` is the name users write, e.g. docker.io."""

    registry: str
    repository: str
    tag: Optional[str] = None
    digest: Optional[str] = None

    @property
    def api_host(self) -> str:
        """The host and port that serve the registry API."""
        return DOCKER_HUB_API_HOST if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        return "%s/%s" % (self.registry, self.repository)

    @property
    def manifest_reference(self) -> str:
        """The tag or digest that goes into the manifest URL; the digest wins."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def familiar_name(self) -> str:
        """The short name ``docker images`` shows: nginx, user/app, host:5000/team/app."""
        if self.registry == DOCKER_HUB:
            prefix = DOCKER_HUB_OFFICIAL_NAMESPACE + "/"
            if self.repository.startswith(prefix) and "/" not in self.repository[len(prefix):]:
                return self.repository[len(prefix):]
            return self.repository
        return self.name

    @property
    def repo_tag(self) -> Optional[str]:
        """The name for manifest.json's RepoTags, or None for a digest-only reference."""
        return "%s:%s" % (self.familiar_name, self.tag) if self.tag else None

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += ":" + self.tag
        if self.digest:
            text += "@" + self.digest
        return text

    def file_stem(self) -> str:
        """Return a file name stem without "/" or ":", e.g. library_nginx_latest or team_app_sha256_<hex>."""
        stem = self.repository.replace("/", "_")
        if self.tag:
            return "%s_%s" % (stem, self.tag)
        return "%s_%s" % (stem, (self.digest or "").replace(":", "_"))


def parse_registry(text: str) -> str:
    """Validate a HOST[:PORT] registry name and normalise Docker Hub's aliases to docker.io."""
    if not _DOMAIN_RE.fullmatch(text or ""):
        raise InvalidReferenceError(Text("Invalid registry {value!r}: expected HOST or HOST:PORT, without a scheme or path.", value=text))
    return DOCKER_HUB if is_docker_hub(text) else text


def parse_reference(text: str, default_registry: str = DOCKER_HUB) -> Reference:
    """Parse an image reference as ``docker pull`` does.

    ``nginx`` means docker.io/library/nginx:latest. A first component that contains "."
    or ":", has upper case, or is "localhost" names the registry. Otherwise the image is
    on ``default_registry``. A reference with a tag and a digest pulls the digest and
    keeps the tag as the name.
    """
    original = text
    if not text or text != text.strip():
        raise InvalidReferenceError(Text("Invalid image reference {value!r}: it is empty or has surrounding spaces.", value=original))

    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not _DIGEST_RE.fullmatch(digest) or len(digest.split(":", 1)[1]) != DIGEST_HEX_LENGTHS[digest.split(":", 1)[0]]:
            raise InvalidReferenceError(Text("Invalid image reference {value!r}: the digest must be sha256:<64 lowercase hex digits> or sha512:<128>.", value=original))

    tag = None
    colon, slash = text.rfind(":"), text.rfind("/")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1:]
        if not _TAG_RE.fullmatch(tag):
            raise InvalidReferenceError(Text("Invalid image reference {value!r}: the tag {tag!r} must be 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'.", value=original, tag=tag))

    first, _, rest = text.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost" or first.lower() != first):
        if not _DOMAIN_RE.fullmatch(first):
            raise InvalidReferenceError(Text("Invalid image reference {value!r}: {registry!r} is not a valid registry HOST[:PORT]; write references without a scheme such as https://.", value=original, registry=first))
        registry = parse_registry(first)
        path = rest
    else:
        registry = parse_registry(default_registry)
        path = text
    if not path:
        raise InvalidReferenceError(Text("Invalid image reference {value!r}: the repository name is empty.", value=original))
    if path.lower() != path:
        raise InvalidReferenceError(Text("Invalid image reference {value!r}: repository names must be lowercase.", value=original))
    if not _PATH_RE.fullmatch(path):
        raise InvalidReferenceError(Text("Invalid image reference {value!r}: each part of the repository name must be lowercase letters and digits, separated by '.', '_', '__' or '-', and parts are separated by '/'.", value=original))
    if registry == DOCKER_HUB and "/" not in path:
        path = DOCKER_HUB_OFFICIAL_NAMESPACE + "/" + path
    if len(registry) + 1 + len(path) > MAX_NAME_LENGTH:
        raise InvalidReferenceError(Text("Invalid image reference {value!r}: the name is longer than {limit} characters.", value=original, limit=MAX_NAME_LENGTH))
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry, path, tag, digest)


# ---------------------------------------------------------------------------
# Platforms: OS/ARCH[/VARIANT], and choosing one manifest from an index
# ---------------------------------------------------------------------------

DEFAULT_PLATFORM = "linux/amd64"
# Names that `uname -m` and distributions use, mapped to the OCI (GOARCH) names.
ARCH_ALIASES = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "aarch64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
}
# Variants assumed when an index entry or a request gives none (containerd's defaults).
DEFAULT_VARIANTS = {"arm64": "v8", "arm": "v7"}
ATTESTATION_REFERENCE_TYPE = "attestation-manifest"


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: Optional[str] = None

    def __str__(self) -> str:
        text = "%s/%s" % (self.os, self.architecture)
        return text + "/" + self.variant if self.variant else text

    def normalized_variant(self) -> Optional[str]:
        return self.variant or DEFAULT_VARIANTS.get(self.architecture)


def parse_platform(text: str) -> Platform:
    """Parse OS/ARCH[/VARIANT] (case-insensitive) and map aliases such as x86_64 to amd64."""
    parts = (text or "").strip().lower().split("/")
    if len(parts) not in (2, 3) or not all(re.fullmatch(r"[a-z0-9_.-]+", part) for part in parts):
        raise UsageError(Text("Invalid platform {value!r}: expected OS/ARCH or OS/ARCH/VARIANT, for example linux/amd64 or linux/arm64/v8.", value=text))
    os_name, architecture = parts[0], parts[1]
    variant = parts[2] if len(parts) == 3 else None
    if architecture in ARCH_ALIASES:
        architecture, alias_variant = ARCH_ALIASES[architecture]
        variant = variant or alias_variant
    return Platform(os_name, architecture, variant)


def platform_from_descriptor(descriptor: dict) -> Optional[Platform]:
    platform = descriptor.get("platform")
    if not isinstance(platform, dict):
        return None
    os_name, architecture = platform.get("os"), platform.get("architecture")
    if not isinstance(os_name, str) or not isinstance(architecture, str):
        return None
    variant = platform.get("variant")
    return Platform(os_name.lower(), architecture.lower(), variant.lower() if isinstance(variant, str) and variant else None)


def is_attestation(descriptor: dict) -> bool:
    """Tell BuildKit's provenance and SBOM entries (platform unknown/unknown) from images."""
    annotations = descriptor.get("annotations")
    if isinstance(annotations, dict) and annotations.get("vnd.docker.reference.type") == ATTESTATION_REFERENCE_TYPE:
        return True
    platform = platform_from_descriptor(descriptor)
    return platform is not None and platform.os == "unknown" and platform.architecture == "unknown"


def _variant_number(variant: Optional[str]) -> int:
    match = re.fullmatch(r"v(\d+)", variant or "")
    return int(match.group(1)) if match else -1


def platform_match_rank(requested: Platform, offered: Platform) -> Optional[int]:
    """Rank how well an offered platform serves the requested one; None when it cannot.

    0 is an exact match (after default variants: arm64 means arm64/v8). For arm, an older
    variant also runs (arm/v7 runs v6 and v5 code), ranked by how much older it is.
    """
    if requested.os != offered.os or requested.architecture != offered.architecture:
        return None
    wanted, offered_variant = requested.normalized_variant(), offered.normalized_variant()
    if wanted == offered_variant:
        return 0
    if wanted is None:
        return 1  # amd64 asked without a variant also takes amd64/v2, after plain amd64
    if requested.architecture == "arm":
        wanted_number, offered_number = _variant_number(wanted), _variant_number(offered_variant)
        if 0 <= offered_number < wanted_number:
            return wanted_number - offered_number
    return None


def choose_manifest(descriptors: List[dict], requested: Platform) -> dict:
    """Pick the index entry for the requested platform, skipping attestations.

    Raises PlatformNotFoundError listing what the index offers.
    """
    best: Optional[Tuple[int, int]] = None
    for position, descriptor in enumerate(descriptors):
        if is_attestation(descriptor):
            continue
        offered = platform_from_descriptor(descriptor)
        if offered is None:
            continue
        rank = platform_match_rank(requested, offered)
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, position)
    if best is None:
        available = sorted({str(p) for p in map(platform_from_descriptor, descriptors) if p is not None and not (p.os == "unknown" and p.architecture == "unknown")})
        raise PlatformNotFoundError(
            Text("No manifest for platform {platform}; the image offers: {available}.", platform=requested, available=", ".join(available) or "-"),
            Text("Choose one with --platform OS/ARCH[/VARIANT]."),
        )
    return descriptors[best[1]]


# ---------------------------------------------------------------------------
# Authentication: WWW-Authenticate challenges (RFC 7235), Basic, bearer tokens
# ---------------------------------------------------------------------------

_TOKEN_CHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_SCHEME_RE = re.compile(_TOKEN_CHARS)
# An auth-param: a token, "=", then a quoted string or (leniently, since some registries
# do not quote URLs) any run of characters up to the next comma or blank.
_AUTH_PARAM_RE = re.compile(
    r"(%s)[ \t]*=[ \t]*(?:\"((?:[^\"\\]|\\.)*)\"|([^ \t,\"=][^ \t,\"]*))" % _TOKEN_CHARS
)
_TOKEN68_RE = re.compile(r"[A-Za-z0-9._~+/-]+=*(?=[ \t]*(?:,|$))")
_SEPARATORS_RE = re.compile(r"[ \t,]*")
_QUOTED_PAIR_RE = re.compile(r"\\(.)")


@dataclass
class Challenge:
    scheme: str  # lower case: "bearer", "basic"
    params: Dict[str, str] = field(default_factory=dict)  # names in lower case
    token68: Optional[str] = None


def parse_challenges(header: str) -> List[Challenge]:
    """Parse a WWW-Authenticate value that may hold several challenges, in any order.

    Scheme and parameter names are case-insensitive; values may be quoted or not. Text
    that fits no rule is skipped, so a malformed header yields fewer challenges, not an
    exception.
    """
    challenges: List[Challenge] = []
    current: Optional[Challenge] = None
    position, length = 0, len(header or "")
    while position < length:
        position = _SEPARATORS_RE.match(header, position).end()
        if position >= length:
            break
        if current is not None:
            param = _AUTH_PARAM_RE.match(header, position)
            if param:
                quoted, bare = param.group(2), param.group(3)
                value = _QUOTED_PAIR_RE.sub(r"\1", quoted) if quoted is not None else bare
                current.params.setdefault(param.group(1).lower(), value)
                position = param.end()
                continue
        scheme = _SCHEME_RE.match(header, position)
        if scheme is None:
            position += 1
            continue
        current = Challenge(scheme.group(0).lower())
        challenges.append(current)
        position = scheme.end()
        blank = re.match(r"[ \t]+", header[position:])
        if blank:
            after = position + blank.end()
            token68 = _TOKEN68_RE.match(header, after)
            if token68 and not _AUTH_PARAM_RE.match(header, after):
                current.token68 = token68.group(0)
                position = token68.end()
    return challenges


def select_challenge(challenges: Sequence[Challenge]) -> Optional[Challenge]:
    """Prefer Bearer over Basic, as Docker does; other schemes are not supported."""
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return None


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def basic_header(self) -> str:
        raw = ("%s:%s" % (self.username, self.password)).encode("utf-8")
        return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass
class Token:
    value: str = field(repr=False)
    renew_at: float  # time.monotonic() after which a new token is fetched


def repository_scope(repository: str) -> str:
    return "repository:%s:pull" % repository


class Authenticator:
    """Authorization headers for one registry, with bearer tokens cached per scope.

    One lock serialises token fetches: when several threads find a token expired at the
    same moment, the first fetches a new one and the others use it.
    """

    def __init__(self, client: "RegistryClient", credentials: Optional[Credentials]) -> None:
        self.client = client
        self.credentials = credentials
        self._lock = threading.Lock()
        self._challenge: Optional[Challenge] = None
        self._tokens: Dict[str, Token] = {}

    def use_challenges(self, header: str) -> None:
        challenge = select_challenge(parse_challenges(header))
        with self._lock:
            self._challenge = challenge

    def authorization(self, scope: str) -> Optional[str]:
        """Return the Authorization value for a request in this scope, fetching a token if needed."""
        with self._lock:
            challenge = self._challenge
            if challenge is None:
                return None
            if challenge.scheme == "basic":
                return self.credentials.basic_header() if self.credentials else None
            token = self._tokens.get(scope)
            if token is None or time.monotonic() >= token.renew_at:
                token = self._fetch_token(challenge, scope)
                self._tokens[scope] = token
            return "Bearer " + token.value

    def handle_unauthorized(self, header: str, scope: str, sent: Optional[str]) -> None:
        """Take a 401's challenge so that the next authorization() authenticates anew.

        ``sent`` is the Authorization value the rejected request carried. When another
        thread has already replaced that token, its newer token is kept.
        """
        challenge = select_challenge(parse_challenges(header))
        if challenge is None:
            raise AuthenticationError(
                Text("The registry {registry} answered 401 with no Bearer or Basic challenge (WWW-Authenticate: {header!r}).", registry=self.client.host, header=(header or "")[:200]),
                ERROR_CODE_HINTS["UNAUTHORIZED"],
            )
        with self._lock:
            self._challenge = challenge
            token = self._tokens.get(scope)
            if token is not None and sent is not None and sent != "Bearer " + token.value:
                return
            self._tokens.pop(scope, None)
            if challenge.scheme == "bearer":
                LOGGER.info(Text("Token for {scope} rejected or expired; authenticating again.", scope=scope))

    def _fetch_token(self, challenge: Challenge, scope: str) -> Token:
        realm = challenge.params.get("realm", "")
        parsed = urllib.parse.urlsplit(realm)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise AuthenticationError(Text("The registry {registry} named an invalid token realm {realm!r}.", registry=self.client.host, realm=realm[:200]), ERROR_CODE_HINTS["UNAUTHORIZED"])
        if parsed.scheme == "http" and self.credentials and not self.client.options.allows_plain_http(parsed.netloc):
            raise AuthenticationError(
                Text("Refusing to send credentials to the token service {realm} over plain HTTP.", realm=realm),
                Text("Use an HTTPS registry, or name the registry with --insecure if you trust the network."),
            )
        scopes = [scope]
        if challenge.params.get("scope") and challenge.params["scope"] != scope:
            scopes.append(challenge.params["scope"])
        query: List[Tuple[str, str]] = [("scope", s) for s in scopes]
        if challenge.params.get("service"):
            query.insert(0, ("service", challenge.params["service"]))
        headers = {"Accept": "application/json"}
        if self.credentials:
            query.append(("account", self.credentials.username))
            headers["Authorization"] = self.credentials.basic_header()
        separator = "&" if parsed.query else "?"
        url = realm + separator + urllib.parse.urlencode(query)

        what = Text("token response")
        try:
            body = self.client.fetch_small(
                url, headers=headers, limit=MAX_TOKEN_BYTES, what=what,
                phase=Text("Token request to {realm}", realm=redact_url(realm)), registry_auth=False,
                parse=lambda response, raw: parse_json_object(raw, response, what),
            )
        except RegistryError as error:
            if error.status in (401, 403):
                who = self.credentials.username if self.credentials else tr("anonymous")
                raise AuthenticationError(
                    Text("The token service {realm} rejected the request for {scope} as {user} (HTTP {status}).", realm=redact_url(realm), scope=scope, user=who, status=error.status),
                    ERROR_CODE_HINTS["UNAUTHORIZED"],
                ) from error
            raise
        value = body.get("token") or body.get("access_token")
        if not isinstance(value, str) or not value:
            raise AuthenticationError(Text("The token service {realm} returned no token.", realm=realm), ERROR_CODE_HINTS["UNAUTHORIZED"])
        expires_in = body.get("expires_in")
        if not isinstance(expires_in, (int, float)) or isinstance(expires_in, bool) or expires_in <= 0:
            expires_in = DEFAULT_TOKEN_TTL
        margin = min(TOKEN_RENEW_MAX_SECONDS, expires_in * TOKEN_RENEW_FRACTION)
        LOGGER.debug("Token for %s received, valid for %s s", scope, expires_in)
        return Token(value, time.monotonic() + expires_in - margin)


# -- credentials that Docker and podman keep ----------------------------------

DOCKER_HUB_AUTH_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io", "https://registry-1.docker.io")
CREDENTIAL_HELPER_TIMEOUT = 30  # seconds for a docker-credential-* program to respond


def auth_keys(registry: str) -> List[str]:
    """Return the keys under which Docker and podman files may store a registry's login."""
    if registry == DOCKER_HUB:
        return list(DOCKER_HUB_AUTH_KEYS)
    return [registry, "https://" + registry, "http://" + registry, "https://%s/v1/" % registry, "https://%s/v2/" % registry]


def auth_files() -> List[str]:
    """Docker's config.json, then podman's auth.json, in the places the two tools look."""
    docker = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    files = [os.path.join(docker, "config.json")]
    if os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(os.environ["REGISTRY_AUTH_FILE"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        files.append(os.path.join(os.environ["XDG_RUNTIME_DIR"], "containers", "auth.json"))
    files.append(os.path.join(os.path.expanduser("~"), ".config", "containers", "auth.json"))
    return files


def run_credential_helper(helper: str, server: str) -> Optional[Credentials]:
    """Ask docker-credential-<helper> for a server's login (the Docker credential helper protocol)."""
    import subprocess

    program = "docker-credential-" + helper
    if shutil.which(program) is None:
        LOGGER.warning(Text("The credential helper {program} named in the Docker configuration is not installed.", program=program))
        return None
    try:
        answer = subprocess.run([program, "get"], input=server.encode("utf-8"), capture_output=True, timeout=CREDENTIAL_HELPER_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as error:
        LOGGER.warning(Text("The credential helper {program} failed: {error}", program=program, error=error))
        return None
    if answer.returncode != 0:
        LOGGER.debug("%s has no credentials for %s", program, server)
        return None
    try:
        found = json.loads(answer.stdout.decode("utf-8"))
        username, secret = found["Username"], found["Secret"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        LOGGER.warning(Text("The credential helper {program} returned something that is not its JSON answer.", program=program))
        return None
    return Credentials(username, secret) if isinstance(username, str) and isinstance(secret, str) and secret else None


def decode_auth_entry(entry: object) -> Optional[Credentials]:
    if not isinstance(entry, dict):
        return None
    if isinstance(entry.get("auth"), str) and entry["auth"]:
        try:
            username, _, password = base64.b64decode(entry["auth"]).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return Credentials(username, password) if username and password else None
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str) and entry["password"]:
        return Credentials(entry["username"], entry["password"])
    return None


def stored_credentials(registry: str) -> Optional[Credentials]:
    """Find a login for the registry as docker pull would: credHelpers, auths, then credsStore."""
    for path in auth_files():
        try:
            with open(path, "rb") as handle:
                config = json.loads(handle.read(MAX_MANIFEST_BYTES).decode("utf-8"))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, UnicodeDecodeError) as error:
            LOGGER.warning(Text("Skipping the credentials file {path}: {error}", path=path, error=error))
            continue
        if not isinstance(config, dict):
            continue
        keys = auth_keys(registry)
        helpers = config.get("credHelpers") if isinstance(config.get("credHelpers"), dict) else {}
        for key in keys:
            if isinstance(helpers.get(key), str):
                return run_credential_helper(helpers[key], keys[0])
        auths = config.get("auths") if isinstance(config.get("auths"), dict) else {}
        for key in keys:
            found = decode_auth_entry(auths.get(key))
            if found is not None:
                LOGGER.debug("Using the login for %s stored in %s", registry, path)
                return found
        if isinstance(config.get("credsStore"), str):
            found = run_credential_helper(config["credsStore"], keys[0])
            if found is not None:
                return found
    return None


class CredentialSource:
    """Logins per registry: the command line and environment first, then Docker's and podman's files.

    A login from the command line or the environment goes only to the registries that the
    image references name, never to a mirror.
    """

    def __init__(self, given: Optional[Credentials], registries: Sequence[str] = ()) -> None:
        self.given = given
        self.registries = frozenset(registries)
        self._cache: Dict[str, Optional[Credentials]] = {}
        self._lock = threading.Lock()

    def for_registry(self, registry: str) -> Optional[Credentials]:
        if self.given is not None and registry in self.registries:
            return self.given
        with self._lock:
            if registry not in self._cache:
                self._cache[registry] = stored_credentials(registry)
            return self._cache[registry]


# ---------------------------------------------------------------------------
# Registry HTTP client: transport, redirects, retries, re-authentication
# ---------------------------------------------------------------------------

# Errors of the transport that a new attempt may cure. SSLError is a ConnectionError
# subclass but is excluded: a certificate does not get better by retrying.
TRANSIENT_ERRORS: Tuple[type, ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    TimeoutError,
)
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


def is_loopback(host: str) -> bool:
    """Tell whether a host (without port) is localhost or in 127.0.0.0/8 or ::1."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host(netloc: str) -> str:
    """Return the host part of HOST[:PORT] or [IPV6][:PORT]."""
    if netloc.startswith("["):
        return netloc[1:].split("]", 1)[0]
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def redact_url(url: str) -> str:
    """Drop user info and the query, because the query of a storage redirect contains a signature."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "…" if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Parse Retry-After as seconds or an HTTP date; None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


@dataclass
class NetworkOptions:
    retries: int = DEFAULT_RETRIES
    backoff_base: float = DEFAULT_BACKOFF_BASE
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    insecure_registries: frozenset = frozenset()  # HOST[:PORT] names given with --insecure
    ca_file: Optional[str] = None  # --ca-cert: a PEM bundle that replaces the system's CAs
    proxy: Optional[str] = None  # [network] proxy in config.ini; else HTTPS_PROXY and the like apply
    certs_folders: Tuple[str, ...] = ("/etc/docker/certs.d",)  # Docker's <host>/ca.crt convention

    def is_insecure(self, netloc: str) -> bool:
        return netloc in self.insecure_registries or split_host(netloc) in self.insecure_registries

    def allows_plain_http(self, netloc: str) -> bool:
        return is_loopback(split_host(netloc)) or self.is_insecure(netloc)

    def verify_tls(self, url: str):
        """Return requests' verify value: False, True or the path of a CA bundle.

        Certificates are not verified for --insecure and loopback registries: Docker
        counts 127.0.0.0/8 among its insecure registries by default. Otherwise a CA from
        --ca-cert, or from Docker's certs.d/<host>/ca.crt, replaces the system's.
        """
        netloc = urllib.parse.urlsplit(url).netloc
        if self.is_insecure(netloc) or is_loopback(split_host(netloc)):
            return False
        if self.ca_file:
            return self.ca_file
        for folder in self.certs_folders:
            candidate = os.path.join(folder, netloc.replace(":", "_") if os.name == "nt" else netloc, "ca.crt")
            if os.path.isfile(candidate):
                return candidate
        return True


class RetryBudget:
    """The retries left for one operation, shared by all its requests and resumes."""

    def __init__(self, options: NetworkOptions, cancel: threading.Event) -> None:
        self.options = options
        self.cancel = cancel
        self.used = 0

    def delay(self, retry_after: Optional[float]) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER)
        ceiling = min(MAX_BACKOFF, self.options.backoff_base * (2 ** (self.used - 1)))
        return random.uniform(0, ceiling)

    def wait_or_raise(self, error: PullerError) -> None:
        """Sleep before the next attempt, or raise the error when it is final."""
        if not error.retryable or self.used >= self.options.retries:
            raise error
        self.used += 1
        delay = self.delay(error.retry_after)
        LOGGER.warning(Text("{error} Retry {attempt} of {retries} in {delay:.1f} s.", error=error.message, attempt=self.used, retries=self.options.retries, delay=delay))
        if self.cancel.wait(delay):
            raise Cancelled()


def read_limited(response: requests.Response, limit: int, what: Text) -> bytes:
    """Read a whole (content-decoded) body, failing once it grows past ``limit`` bytes."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        response.close()
        raise ManifestError(Text("The {what} is {size} bytes, more than the limit of {limit}.", what=what, size=int(declared), limit=limit))
    chunks, total = [], 0
    try:
        for chunk in response.iter_content(64 * 1024):
            total += len(chunk)
            if total > limit:
                raise ManifestError(Text("The {what} is larger than the limit of {limit} bytes.", what=what, limit=limit))
            chunks.append(chunk)
    except TRANSIENT_ERRORS as error:
        raise RegistryError(Text("Reading the {what} from {url} failed: {error}.", what=what, url=redact_url(response.url), error=error), NETWORK_HINT, url=response.url) from error
    finally:
        response.close()
    return b"".join(chunks)


def looks_like_html(body: bytes, content_type: str) -> bool:
    head = body[:512].lstrip().lower()
    return "html" in content_type.lower() or head.startswith((b"<!doctype", b"<html", b"<?xml"))


def parse_json_object(body: bytes, response: requests.Response, what: Text) -> dict:
    """Decode a JSON object, with a clear error for HTML from a proxy or captive portal."""
    content_type = response.headers.get("Content-Type", "")
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        value = None
    if not isinstance(value, dict):
        html = looks_like_html(body, content_type)
        if html:
            detail = Text("an HTML page (a proxy, captive portal or wrong address?)")
        else:
            detail = Text("not a JSON object")
        error = ManifestError(
            Text("The {what} from {url} is {detail}: {sample!r}", what=what, url=redact_url(response.url), detail=detail, sample=body[:80]),
            Text("Check the registry address and the proxy settings."),
        )
        # A body cut short by a proxy may be whole next time; a portal page will not change.
        error.retryable = not html
        raise error
    return value


def parse_error_body(body: bytes) -> Tuple[List[str], str]:
    """Return the error codes and the first message of a distribution error body."""
    try:
        errors = json.loads(body.decode("utf-8")).get("errors")
    except (UnicodeDecodeError, ValueError, AttributeError):
        return [], ""
    if not isinstance(errors, list):
        return [], ""
    codes = [str(e.get("code")) for e in errors if isinstance(e, dict) and e.get("code")]
    messages = [str(e.get("message")) for e in errors if isinstance(e, dict) and e.get("message")]
    return codes, (messages[0][:300] if messages else "")


class RegistryClient:
    """HTTP access to one registry for one repository.

    Requests go through ``send_with_retries``, which keeps three recoveries apart.
    Redirects are followed by hand, and the Authorization header never leaves the host
    it was meant for. A 401 gets one re-authentication from that 401's own challenge.
    Connection errors and the statuses in RETRY_STATUSES are retried with backoff.
    """

    def __init__(self, reference: Reference, options: NetworkOptions, credentials: Optional[Credentials], cancel: threading.Event, limiter: Optional["RateLimiter"] = None, scheme: Optional[str] = None) -> None:
        self.reference = reference
        self.host = reference.api_host
        self.scheme = scheme  # "http" or "https" when a mirror URL names it, else found by ping()
        if scheme == "http":
            options = dataclasses.replace(options, insecure_registries=options.insecure_registries | {self.host})
        self.options = options
        self.cancel = cancel
        self.scope = repository_scope(reference.repository)
        self.base_url = "https://" + self.host
        self.auth = Authenticator(self, credentials)
        self.limiter = limiter or RateLimiter(None)
        self.ranges_ignored = False  # set once a ranged request got the whole blob
        self._local = threading.local()
        self._sessions: List[requests.Session] = []
        self._sessions_lock = threading.Lock()

    # -- transport ---------------------------------------------------------

    def session(self) -> requests.Session:
        """Return this thread's session: requests.Session is not safe to share across threads."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = "docker-image-puller/%s" % __version__
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def close_thread_session(self) -> None:
        """Close this thread's connections; a helper thread calls it before it ends."""
        session = getattr(self._local, "session", None)
        if session is None:
            return
        self._local.session = None
        with self._sessions_lock:
            if session in self._sessions:
                self._sessions.remove(session)
        session.close()

    def new_retry_budget(self) -> RetryBudget:
        return RetryBudget(self.options, self.cancel)

    def _send_once(self, method: str, url: str, headers: Dict[str, str], phase: Text) -> requests.Response:
        """Send one request, following redirects by hand.

        Authorization goes only to the scheme and host of the first URL. Storage services
        that a registry redirects blob requests to (S3, CDNs) carry their own signature in
        the URL and reject a second credential, and a redirect from HTTPS to plain HTTP
        must not expose it.
        """
        origin = urllib.parse.urlsplit(url)
        for _hop in range(MAX_REDIRECTS + 1):
            target = urllib.parse.urlsplit(url)
            send_headers = dict(headers)
            if target.netloc != origin.netloc or target.scheme != origin.scheme:
                send_headers.pop("Authorization", None)
            started = time.monotonic()
            response = self.session().request(
                method, url, headers=send_headers, stream=True, allow_redirects=False,
                proxies={"http": self.options.proxy, "https": self.options.proxy} if self.options.proxy else None,
                timeout=(self.options.connect_timeout, self.options.read_timeout),
                # verify is passed per request because REQUESTS_CA_BUNDLE, when set,
                # overrides Session.verify.
                verify=self.options.verify_tls(url),
            )
            LOGGER.debug("%s %s -> %s in %.2f s", method, redact_url(url), response.status_code, time.monotonic() - started)
            if response.status_code not in REDIRECT_STATUSES or "Location" not in response.headers:
                return response
            location = urllib.parse.urljoin(url, response.headers["Location"])
            response.close()
            if urllib.parse.urlsplit(location).scheme not in ("http", "https"):
                raise RegistryError(
                    Text("{phase} failed: {method} {url} redirected to an unsupported URL {location}.", phase=phase, method=method, url=redact_url(url), location=redact_url(location)[:200]),
                    Text("The registry or a proxy is misconfigured; try another registry or mirror."),
                    url=url, retryable=False,
                )
            if response.status_code == 303 and method != "HEAD":
                method = "GET"
            url = location
        raise RegistryError(
            Text("{phase} failed: {method} {url} was redirected more than {limit} times.", phase=phase, method=method, url=redact_url(url), limit=MAX_REDIRECTS),
            Text("The registry or a proxy is misconfigured; try another registry or mirror."),
            url=url, retryable=False,
        )

    def send_with_retries(
        self,
        method: str,
        url: str,
        *,
        headers: Optional[Dict[str, str]] = None,
        phase: Text,
        registry_auth: bool = True,
        retry: Optional[RetryBudget] = None,
        accept_statuses: Sequence[int] = (),
    ) -> requests.Response:
        """Send a request until it succeeds, and return the streaming response (2xx or accepted).

        ``registry_auth`` adds the registry's Authorization and handles a 401 from the
        registry with one re-authentication. A second 401 in a row is final.
        """
        retry = retry or self.new_retry_budget()
        reauthenticated = False
        while True:
            if self.cancel.is_set():
                raise Cancelled()
            send_headers = dict(headers or {})
            authorization = self.auth.authorization(self.scope) if registry_auth else None
            if authorization:
                send_headers["Authorization"] = authorization
            try:
                response = self._send_once(method, url, send_headers, phase)
            except requests.exceptions.SSLError as error:
                failure = RegistryError(
                    Text("{phase} failed: TLS error from {url}: {error}.", phase=phase, url=redact_url(url), error=error),
                    Text("Check the registry's certificate; for a registry you trust on your own network, add --insecure."),
                    url=url, retryable=False,
                )
                failure.tls_failure = True
                raise failure from error
            except TRANSIENT_ERRORS as error:
                retry.wait_or_raise(RegistryError(
                    Text("{phase} failed: {method} {url}: {error}.", phase=phase, method=method, url=redact_url(url), error=short_error(error)),
                    NETWORK_HINT, url=url,
                ))
                continue

            status = response.status_code
            final_host = urllib.parse.urlsplit(response.url).netloc
            if status == 401 and registry_auth and final_host == urllib.parse.urlsplit(url).netloc:
                challenge_header = response.headers.get("WWW-Authenticate", "")
                response.close()
                if reauthenticated:
                    raise AuthenticationError(
                        Text("{phase} failed: the registry {registry} rejected the request again after authenticating anew {who} (HTTP 401 from {url}).", phase=phase, registry=self.host, url=redact_url(url),
                             who=Text("as {user}", user=self.auth.credentials.username) if self.auth.credentials else Text("without a login")),
                        ERROR_CODE_HINTS["UNAUTHORIZED"],
                    )
                self.auth.handle_unauthorized(challenge_header, self.scope, authorization)
                reauthenticated = True
                continue
            reauthenticated = False
            if 200 <= status < 300 or status in accept_statuses:
                return response
            error = self.error_from_response(response, phase, method)
            retry.wait_or_raise(error)

    def error_from_response(self, response: requests.Response, phase: Text, method: str) -> RegistryError:
        try:
            body = read_limited(response, MAX_ERROR_BODY_BYTES, Text("error body"))
        except PullerError:
            body = b""
        status = response.status_code
        codes, message = parse_error_body(body)
        detail = message
        if not codes and looks_like_html(body, response.headers.get("Content-Type", "")):
            detail = Text("the body is an HTML page (a proxy, captive portal or wrong address?)")
        code_text = ", ".join(codes)
        text = Text(
            "{phase} failed: {method} {url} returned HTTP {status}{codes}{detail}.",
            phase=phase, method=method, url=redact_url(response.url), status=status,
            codes=" " + code_text if code_text else "", detail=": " + detail if detail else "",
        )
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return RegistryError(text, hint_for(status, codes), status=status, codes=codes, url=response.url, retry_after=retry_after)

    def fetch_small(self, url: str, *, headers: Dict[str, str], limit: int, what: Text, phase: Text, parse: Callable[[requests.Response, bytes], T], registry_auth: bool = True) -> T:
        """GET a body that is read into memory (manifest, token), capped at ``limit`` bytes.

        ``parse`` turns the response and its body into the result. A connection cut while
        the body arrives, and a parse error marked retryable (a body cut short, a digest
        mismatch), are retried like a failed request.
        """
        retry = self.new_retry_budget()
        while True:
            response = self.send_with_retries("GET", url, headers=headers, phase=phase, registry_auth=registry_auth, retry=retry)
            try:
                return parse(response, read_limited(response, limit, what))
            except PullerError as error:
                retry.wait_or_raise(error)

    # -- registry API ------------------------------------------------------

    def ping(self) -> None:
        """Find the scheme the registry speaks and its authentication challenge (GET /v2/).

        HTTPS is tried first, and plain HTTP follows only for registries named with
        --insecure, as Docker does. Loopback registries try plain HTTP first.
        """
        if self.scheme:
            schemes = [self.scheme]
        elif is_loopback(split_host(self.host)):
            # A registry on this machine (docker run registry:2, a local mirror) nearly
            # always speaks plain HTTP, so HTTP goes first and saves a failing TLS probe.
            # An HTTPS-only one returns 400 to it, and HTTPS follows.
            schemes = ["http", "https"]
        elif self.options.allows_plain_http(self.host):
            schemes = ["https", "http"]
        else:
            schemes = ["https"]
        first_error: Optional[RegistryError] = None
        for position, scheme in enumerate(schemes):
            last = position == len(schemes) - 1
            url = "%s://%s/v2/" % (scheme, self.host)
            # The first scheme gets the whole retry budget. The next one gets it too when
            # the first failed with a TLS error or HTTP 400, the signs of a server that
            # speaks the other scheme. Otherwise it is only probed, and the first error is
            # the one reported.
            mismatch = first_error is not None and is_scheme_mismatch(first_error)
            if position == 0 or mismatch:
                budget = self.new_retry_budget()
            else:
                budget = RetryBudget(dataclasses.replace(self.options, retries=0), self.cancel)
            try:
                response = self.send_with_retries(
                    "GET", url, phase=Text("Contacting the registry {registry}", registry=self.host),
                    registry_auth=False, retry=budget, accept_statuses=(401,),
                )
            except RegistryError as error:
                if first_error is None:
                    first_error = error
                if last:
                    raise error if mismatch else first_error
                LOGGER.debug("%s is not answering over %s (%s); trying the next scheme", self.host, scheme, error)
                continue
            self.base_url = "%s://%s" % (scheme, self.host)
            if response.status_code == 401:
                self.auth.use_challenges(response.headers.get("WWW-Authenticate", ""))
            response.close()
            LOGGER.debug("Registry %s speaks %s", self.host, scheme)
            return

    def manifest_url(self, reference: str) -> str:
        return "%s/v2/%s/manifests/%s" % (self.base_url, self.reference.repository, reference)

    def blob_url(self, digest: str) -> str:
        return "%s/v2/%s/blobs/%s" % (self.base_url, self.reference.repository, digest)


def is_scheme_mismatch(error: RegistryError) -> bool:
    """Tell whether a ping failed as it does when client and server speak different schemes."""
    return error.status == 400 or getattr(error, "tls_failure", False)


def short_error(error: BaseException) -> str:
    """Describe a transport exception in one line, without urllib3's nested reprs."""
    text = str(error)
    numbered = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if numbered:
        return numbered.group(1).strip()
    for phrase in ("Read timed out", "Connection broken", "IncompleteRead", "Connection aborted"):
        if phrase in text:
            found = re.search(re.escape(phrase) + r"[^'\"]*", text)
            # "Read timed out. (read timeout=3.0)" loses its inner full stop, because the
            # messages that quote it end with one.
            return found.group(0).replace(". (", " (").rstrip(" .,:(") if found else phrase
    return text[:300] or type(error).__name__


# ---------------------------------------------------------------------------
# Manifests: fetch, verify, branch on media type, pick a platform, check the config
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    @property
    def algorithm(self) -> str:
        return self.digest.split(":", 1)[0]

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


def parse_descriptor(value: object, what: str) -> Descriptor:
    """Validate a descriptor from a manifest: digest format, a sane size, a media type."""
    if not isinstance(value, dict):
        raise ManifestError(Text("Invalid {what} in the manifest: expected an object, got {value}.", what=what, value=repr(value)[:100]))
    digest = validate_digest(value.get("digest"), what + " digest")
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > MAX_BLOB_SIZE:
        raise ManifestError(Text("Invalid {what} {digest}: size {size!r} is not a whole number from 0 to {limit}.", what=what, digest=digest, size=size, limit=MAX_BLOB_SIZE))
    media_type = value.get("mediaType", "")
    if not isinstance(media_type, str):
        raise ManifestError(Text("Invalid {what} {digest}: the media type is not a string.", what=what, digest=digest))
    return Descriptor(media_type, digest, size)


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    return "%s:%s" % (algorithm, hashlib.new(algorithm, data).hexdigest())


@dataclass
class FetchedManifest:
    raw: bytes  # exactly as received: it is hashed and archived, never re-serialised
    digest: str
    media_type: str
    document: dict


@dataclass
class ImageManifest:
    manifest: FetchedManifest
    config: Descriptor
    layers: List[Descriptor]
    platform: Optional[Platform] = None  # as the index named it, when there was an index


def manifest_media_type(document: dict, content_type: str) -> str:
    """Return the manifest's media type: its own mediaType field, else the Content-Type.

    OCI manifests may omit mediaType, so a document with neither is classified by its
    fields. Schema 1 manifests are rejected here.
    """
    declared = document.get("mediaType")
    media_type = declared if isinstance(declared, str) and declared else content_type
    if document.get("schemaVersion") == 1 or media_type in SCHEMA1_TYPES:
        raise ManifestError(
            Text("The registry returned a Docker schema 1 manifest, which this tool does not support."),
            Text("Schema 1 is deprecated since 2017; push the image again with a current Docker or buildah, or pull it with an older client."),
        )
    if media_type in IMAGE_MANIFEST_TYPES or media_type in INDEX_TYPES:
        return media_type
    if isinstance(document.get("manifests"), list):
        return MEDIA_OCI_INDEX
    if isinstance(document.get("config"), dict) and isinstance(document.get("layers"), list):
        return MEDIA_OCI_MANIFEST
    raise ManifestError(
        Text("Unsupported manifest media type {media_type!r}.", media_type=media_type[:100]),
        Text("This tool pulls container images (Docker schema 2 and OCI); other artifacts need a tool such as oras."),
    )


def fetch_manifest(client: RegistryClient, reference: str, expected_digest: Optional[str]) -> FetchedManifest:
    """GET a manifest or index by tag or digest and hash its raw bytes.

    When ``expected_digest`` is given the bytes must hash to it, so a manifest pulled
    by digest is trusted only after this check.
    """
    image = client.reference
    url = client.manifest_url(reference)
    what = Text("manifest {reference} of {image}", reference=reference, image=image.name)
    algorithm = expected_digest.split(":", 1)[0] if expected_digest else "sha256"

    def parse(response: requests.Response, raw: bytes) -> FetchedManifest:
        document = parse_json_object(raw, response, what)
        digest = compute_digest(raw, algorithm)
        if expected_digest and digest != expected_digest:
            mismatch = DigestMismatchError(
                Text("The manifest {reference} of {image} from {url} has digest {actual} ({size} bytes).", reference=reference, image=image.name, url=redact_url(url), actual=digest, size=len(raw)),
                expected_digest, digest, len(raw),
            )
            mismatch.retryable = True
            raise mismatch
        header_digest = response.headers.get("Docker-Content-Digest", "")
        if header_digest.startswith(algorithm + ":") and header_digest != digest:
            LOGGER.warning(Text("The registry labels the manifest of {image} as {header}, but its bytes hash to {digest}; the computed digest is used.", image=image.name, header=header_digest, digest=digest))
        content_type = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
        return FetchedManifest(raw, digest, manifest_media_type(document, content_type), document)

    return client.fetch_small(
        url, headers={"Accept": MANIFEST_ACCEPT}, limit=MAX_MANIFEST_BYTES, what=what,
        phase=Text("Fetching the manifest {reference} of {image}", reference=reference, image=image.name),
        parse=parse,
    )


def index_entries(index: FetchedManifest) -> List[dict]:
    """Validate an index's entries: each is a descriptor; at most MAX_INDEX_ENTRIES of them."""
    entries = index.document.get("manifests")
    if not isinstance(entries, list) or not entries:
        raise ManifestError(Text("The index {digest} lists no manifests.", digest=index.digest))
    if len(entries) > MAX_INDEX_ENTRIES:
        raise ManifestError(Text("The index {digest} lists {count} manifests, more than the limit of {limit}.", digest=index.digest, count=len(entries), limit=MAX_INDEX_ENTRIES))
    for entry in entries:
        parse_descriptor(entry, "index entry")
    return entries


def parse_image_manifest(manifest: FetchedManifest, platform: Optional[Platform] = None) -> ImageManifest:
    document = manifest.document
    config = parse_descriptor(document.get("config"), "config")
    if config.media_type not in (MEDIA_DOCKER_CONFIG, MEDIA_OCI_CONFIG):
        raise ManifestError(
            Text("The manifest {digest} is not a container image: its config has media type {media_type!r}.", digest=manifest.digest, media_type=config.media_type[:100]),
            Text("This tool pulls container images (Docker schema 2 and OCI); other artifacts need a tool such as oras."),
        )
    raw_layers = document.get("layers")
    if not isinstance(raw_layers, list):
        raise ManifestError(Text("The manifest {digest} has no list of layers.", digest=manifest.digest))
    if len(raw_layers) > MAX_LAYERS:
        raise ManifestError(Text("The manifest {digest} lists {count} layers, more than the limit of {limit}.", digest=manifest.digest, count=len(raw_layers), limit=MAX_LAYERS))
    layers = [parse_descriptor(layer, "layer") for layer in raw_layers]
    for layer in layers:
        if layer.media_type not in LAYER_MEDIA_TYPES:
            raise ManifestError(Text("The layer {digest} has an unsupported media type {media_type!r}.", digest=layer.digest, media_type=layer.media_type[:100]))
    return ImageManifest(manifest, config, layers, platform)


def resolve_image(client: RegistryClient, platform: Platform) -> ImageManifest:
    """Fetch the manifest the reference names and, for an index, the platform's manifest."""
    reference = client.reference
    top = fetch_manifest(client, reference.manifest_reference, reference.digest)
    LOGGER.info(Text("Resolved {reference} to {digest} ({media_type}).", reference=reference, digest=top.digest, media_type=top.media_type))
    if top.media_type not in INDEX_TYPES:
        return parse_image_manifest(top)

    chosen = choose_manifest(index_entries(top), platform)
    chosen_platform = platform_from_descriptor(chosen)
    LOGGER.info(Text("Chose platform {platform}: manifest {digest}.", platform=chosen_platform, digest=chosen["digest"]))
    manifest = fetch_manifest(client, chosen["digest"], chosen["digest"])
    if manifest.media_type in INDEX_TYPES:
        raise ManifestError(Text("The index {index} points to another index {digest}; nested indexes are not supported.", index=top.digest, digest=manifest.digest))
    return parse_image_manifest(manifest, chosen_platform)


def check_config(config: dict, image: ImageManifest, requested: Optional[Platform]) -> Platform:
    """Check the image config against the manifest; return the image's platform.

    ``requested`` is the platform the user asked for explicitly. A single-platform image
    built for another platform is then an error, not a surprise at run time.
    """
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise ManifestError(Text("The config {digest} has no rootfs.diff_ids list.", digest=image.config.digest))
    if len(diff_ids) != len(image.layers):
        raise ManifestError(Text("The config {digest} lists {diff_ids} layer diff IDs but the manifest lists {layers} layers.", digest=image.config.digest, diff_ids=len(diff_ids), layers=len(image.layers)))
    os_name, architecture, variant = config.get("os"), config.get("architecture"), config.get("variant")
    if not isinstance(os_name, str) or not isinstance(architecture, str):
        return image.platform or Platform("unknown", "unknown")
    actual = Platform(os_name.lower(), architecture.lower(), variant.lower() if isinstance(variant, str) and variant else None)
    if requested is None and image.platform is None and platform_match_rank(parse_platform(DEFAULT_PLATFORM), actual) is None:
        LOGGER.warning(Text("The image {image} is built for {actual} only; it is pulled as it is. Add --platform to require a platform.", image=image.manifest.digest, actual=actual))
    if requested is not None and image.platform is None and platform_match_rank(requested, actual) is None:
        raise PlatformNotFoundError(
            Text("The image {image} is built for {actual} only, not for the requested {platform}.", image=image.manifest.digest, actual=actual, platform=requested),
            Text("Pull it with --platform {actual}, or pick another image.", actual=actual),
        )
    return actual


# ---------------------------------------------------------------------------
# Blobs: the working folder, resumable streaming downloads, verification
# ---------------------------------------------------------------------------

BLOB_FILE = "blob"
PART_SUFFIX = ".part"
META_FILE = "meta.json"
SEGMENTS_FILE = "segments.json"  # progress of each byte range of a segmented blob.part
_CONTENT_RANGE_RE = re.compile(r"bytes[ \t]+(\d+)-(\d+)/(\d+|\*)")
# A 206 whose Content-Range starts elsewhere than asked is retried with Range this many
# times before the blob is fetched whole, without Range.
MAX_WRONG_RANGES = 1


def parse_content_range(value: Optional[str]) -> Optional[Tuple[int, int, Optional[int]]]:
    """Parse "bytes START-END/TOTAL" (TOTAL may be "*"); None when invalid or inconsistent."""
    match = _CONTENT_RANGE_RE.fullmatch((value or "").strip())
    if match is None:
        return None
    start, end = int(match.group(1)), int(match.group(2))
    total = None if match.group(3) == "*" else int(match.group(3))
    if end < start or (total is not None and end >= total):
        return None
    return start, end, total


def write_json_atomically(path: str, value: object) -> None:
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(temporary, path)


def hash_file(path: str, algorithm: str) -> Tuple["hashlib._Hash", int]:
    """Hash a file in chunks; return the hasher and the byte count."""
    hasher = hashlib.new(algorithm)
    count = 0
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(CHUNK_SIZE)
            if not chunk:
                break
            hasher.update(chunk)
            count += len(chunk)
    return hasher, count


def write_fully(handle, data) -> None:
    """Write all of data to handle, at most WRITE_SIZE bytes per call."""
    view = memoryview(data)
    while view:
        view = view[handle.write(view[:WRITE_SIZE]):]


def local_error(action: Text, path: str, error: OSError) -> LocalFileError:
    if error.errno == errno.EPIPE:
        hint = Text("The program reading the output stopped early; check it, then run the same command again; verified downloads are kept.")
    else:
        hint = Text("Free disk space or fix the folder's permissions, then run the same command again; verified downloads are kept.")
    return LocalFileError(Text("{action} {path} failed: {error}.", action=action, path=path, error=error.strerror or error), hint)


LOCK_POLL_SECONDS = 0.2
LOCK_FILE = "lock"


class FileLock:
    """An exclusive advisory lock on a file, held while one process works on a blob or archive.

    flock() on POSIX and msvcrt.locking() on Windows: the operating system releases the
    lock when the process ends, even by kill -9, so a crash never leaves a stale lock.
    The lock file itself stays on disk, because deleting it would let a waiting process
    and a new one both hold a lock on different files.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._handle = None

    def try_acquire(self) -> bool:
        handle = open(self.path, "a+b")
        try:
            if os.name == "nt":
                import msvcrt

                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()).encode("ascii"))
        handle.flush()
        self._handle = handle
        return True

    def holder(self) -> str:
        try:
            with open(self.path, "rb") as handle:
                return handle.read(32).decode("ascii", "replace").strip() or "?"
        except OSError:
            return "?"

    def acquire(self, cancel: threading.Event) -> None:
        """Wait until the lock is ours, logging once that another process holds it."""
        if self.try_acquire():
            return
        LOGGER.warning(Text("Waiting for the lock {path}, held by process {pid}: another docker_image_puller is working on the same file.", path=self.path, pid=self.holder()))
        while not self.try_acquire():
            if cancel.wait(LOCK_POLL_SECONDS):
                raise Cancelled()
        LOGGER.info(Text("Got the lock {path}.", path=self.path))

    def release(self) -> None:
        if self._handle is None:
            return
        try:
            if os.name == "nt":
                import msvcrt

                self._handle.seek(0)
                msvcrt.locking(self._handle.fileno(), msvcrt.LK_UNLCK, 1)
            else:
                import fcntl

                fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        finally:
            self._handle.close()
            self._handle = None


@contextlib.contextmanager
def locked(path: str, cancel: threading.Event) -> Iterator[None]:
    lock = FileLock(path)
    lock.acquire(cancel)
    try:
        yield
    finally:
        lock.release()


class BlobStore:
    """The working folder of one repository.

    DIR/<repository with / as _>_layers/<algorithm>_<hex>/ contains ``blob`` once it is
    verified, ``blob.part`` while it downloads, and ``meta.json``.
    """

    def __init__(self, root: str, reference: Reference) -> None:
        self.root = root
        self.folder = os.path.join(root, reference.repository.replace("/", "_") + "_layers")
        self.source = str(reference)

    def blob_folder(self, digest: str) -> str:
        validate_digest(digest)
        return os.path.join(self.folder, digest.replace(":", "_"))

    def blob_path(self, digest: str) -> str:
        return os.path.join(self.blob_folder(digest), BLOB_FILE)

    def part_path(self, digest: str) -> str:
        return self.blob_path(digest) + PART_SUFFIX

    def segments_path(self, digest: str) -> str:
        return os.path.join(self.blob_folder(digest), SEGMENTS_FILE)

    def write_meta(self, descriptor: Descriptor, state: str) -> None:
        meta = {
            "digest": descriptor.digest,
            "size": descriptor.size,
            "mediaType": descriptor.media_type,
            "source": self.source,
            "state": state,
        }
        write_json_atomically(os.path.join(self.blob_folder(descriptor.digest), META_FILE), meta)

    def remove_blobs(self, blobs: Sequence[Descriptor]) -> None:
        """Delete these blobs' folders after the archive is written (--remove-blobs).

        A blob whose lock another process holds is left alone, since that process is
        using it.
        """
        removed = 0
        for descriptor in blobs:
            folder = self.blob_folder(descriptor.digest)
            lock = FileLock(os.path.join(folder, LOCK_FILE))
            if not os.path.isdir(folder) or not lock.try_acquire():
                continue
            try:
                for name in (BLOB_FILE, BLOB_FILE + PART_SUFFIX, META_FILE, SEGMENTS_FILE):
                    remove_if_present(os.path.join(folder, name))
            finally:
                lock.release()
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, LOCK_FILE))
                os.rmdir(folder)
            removed += 1
        for name in os.listdir(self.folder) if os.path.isdir(self.folder) else []:
            if name.startswith("archive-") and name.endswith(".lock"):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.folder, name))
        with contextlib.suppress(OSError):
            os.rmdir(self.folder)
        LOGGER.info(Text("Removed {count} downloaded blobs from {folder}.", count=removed, folder=self.folder))

    def reuse_from_other_repository(self, descriptor: Descriptor) -> Optional[str]:
        """Take a verified copy of the blob from another repository's folder in DIR, if any.

        Images of different repositories often share base layers. The copy is a hard link
        where the file system allows one, so it costs no space.
        """
        own = os.path.normcase(os.path.abspath(self.blob_folder(descriptor.digest)))
        pattern = os.path.join(glob.escape(self.root), "*_layers", descriptor.digest.replace(":", "_"), BLOB_FILE)
        for candidate in sorted(glob.glob(pattern)):
            if os.path.normcase(os.path.abspath(os.path.dirname(candidate))) == own:
                continue
            try:
                if os.path.getsize(candidate) != descriptor.size:
                    continue
                hasher, _ = hash_file(candidate, descriptor.algorithm)
                if "%s:%s" % (descriptor.algorithm, hasher.hexdigest()) != descriptor.digest:
                    continue
                part = self.part_path(descriptor.digest)
                remove_if_present(part)
                try:
                    os.link(candidate, part)
                except OSError:
                    shutil.copyfile(candidate, part)
                os.replace(part, self.blob_path(descriptor.digest))
                self.write_meta(descriptor, "complete")
            except OSError as error:
                LOGGER.debug("Could not reuse %s: %s", candidate, error)
                continue
            LOGGER.info(Text("Blob {digest} reused from {path}.", digest=descriptor.digest, path=candidate))
            return self.blob_path(descriptor.digest)
        return None

    def check_meta(self, descriptor: Descriptor) -> bool:
        """Return False, with a warning, for a meta.json that is not valid JSON or names another blob.

        The caller writes it again; the blob itself is judged by its digest only.
        """
        path = os.path.join(self.blob_folder(descriptor.digest), META_FILE)
        if not os.path.exists(path):
            return True
        try:
            with open(path, "rb") as handle:
                meta = json.loads(handle.read(MAX_ERROR_BODY_BYTES).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            meta = None
        if not isinstance(meta, dict) or meta.get("digest") != descriptor.digest:
            LOGGER.warning(Text("{path} is damaged; it is written again and the blob is checked by its digest.", path=path))
            return False
        return True

    def verified_blob(self, descriptor: Descriptor) -> Optional[str]:
        """Return the finished blob's path if its size and digest still match, else remove it."""
        path = self.blob_path(descriptor.digest)
        if not os.path.isfile(path):
            return None
        hasher, size = hash_file(path, descriptor.algorithm)
        actual = "%s:%s" % (descriptor.algorithm, hasher.hexdigest())
        if size == descriptor.size and actual == descriptor.digest:
            return path
        LOGGER.warning(Text("The finished blob {path} is damaged ({size} bytes, digest {actual}); downloading it again.", path=path, size=size, actual=actual))
        os.remove(path)
        return None


class BlobDownloader:
    """Download blobs into a BlobStore, resuming from the bytes on disk.

    Each blob is written to ``blob.part`` and hashed as it arrives; it becomes ``blob``
    only when its size and digest match the descriptor. A mismatch earns one download
    from zero before it is reported.
    """

    def __init__(self, client: RegistryClient, store: BlobStore, progress: "Progress", budget: Optional["ConnectionBudget"] = None) -> None:
        self.client = client
        self.store = store
        self.progress = progress
        self.budget = budget or ConnectionBudget(1)
        self.sink: Optional["ArchiveSink"] = None  # the archive being written while blobs arrive
        self.range_counts: Dict[str, int] = {}  # digest -> byte ranges for that blob (see share_ranges)
        self.prefetch = RangePrefetch(client, self.budget)  # range requests sent before the config was checked

    def fetch(self, descriptor: Descriptor) -> str:
        """Return the path of the verified blob, downloading what is missing."""
        if self.client.cancel.is_set():
            raise Cancelled()
        folder = self.store.blob_folder(descriptor.digest)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as error:
            raise local_error(Text("Preparing"), folder, error) from error
        # Another process pulling an image with this blob into the same folder waits
        # here, and then finds the blob finished and verified.
        try:
            with locked(os.path.join(folder, LOCK_FILE), self.client.cancel):
                return self._fetch_locked(descriptor, folder)
        finally:
            self.prefetch.drop(descriptor.digest)

    def fetch_with_connection(self, descriptor: Descriptor) -> str:
        """Fetch a blob while holding one connection of the -t budget."""
        self.budget.acquire(self.client.cancel)
        try:
            return self.fetch(descriptor)
        finally:
            self.budget.release()

    def _fetch_locked(self, descriptor: Descriptor, folder: str) -> str:
        try:
            meta_valid = self.store.check_meta(descriptor)
            finished = self.store.verified_blob(descriptor)
            if finished is not None:
                if not meta_valid:
                    self.store.write_meta(descriptor, "complete")
                LOGGER.info(Text("Blob {digest} is already downloaded and verified.", digest=descriptor.digest), extra=FILE_ONLY)
                self.progress.blob_cached(descriptor)
                return finished
            reused = self.store.reuse_from_other_repository(descriptor)
            if reused is not None:
                self.progress.blob_cached(descriptor)
                return reused
            self.store.write_meta(descriptor, "downloading")
        except OSError as error:
            raise local_error(Text("Preparing"), folder, error) from error

        part = self.store.part_path(descriptor.digest)
        for attempt in (1, 2):
            actual, size = self._download(descriptor, part)
            if size == descriptor.size and actual == descriptor.digest:
                break
            os.remove(part)
            remove_if_present(self.store.segments_path(descriptor.digest))
            mismatch = DigestMismatchError(
                Text("Blob {digest} of {image} from {url} failed verification: got {size} bytes with digest {actual}, expected {expected_size} bytes.", digest=descriptor.digest, image=self.client.reference.name, url=redact_url(self.client.blob_url(descriptor.digest)), size=size, actual=actual, expected_size=descriptor.size),
                descriptor.digest, actual, size,
            )
            if attempt == 2:
                raise mismatch
            LOGGER.warning(Text("{error} Downloading it once more from the start.", error=mismatch.message))

        final = self.store.blob_path(descriptor.digest)
        try:
            os.replace(part, final)
            self.store.write_meta(descriptor, "complete")
        except OSError as error:
            raise local_error(Text("Finishing"), final, error) from error
        LOGGER.info(Text("Blob {digest} downloaded and verified ({size} bytes).", digest=descriptor.digest, size=descriptor.size), extra=FILE_ONLY)
        return final

    def _download(self, descriptor: Descriptor, path: str) -> Tuple[str, int]:
        """Complete the .part file; return its digest and size.

        A blob of SEGMENT_THRESHOLD bytes or more is fetched as several byte ranges at
        once, unless the registry has shown that it ignores Range or the blob's share of
        ranges is one. A blob with ranges saved by an earlier run always resumes them.
        """
        count = self.range_counts.get(descriptor.digest, 2 * self.budget.threads)
        segmented = count > 1 or os.path.exists(self.store.segments_path(descriptor.digest))
        if descriptor.size >= SEGMENT_THRESHOLD and segmented and not self.client.ranges_ignored:
            try:
                return SegmentedDownload(self, descriptor, path, count).run()
            except RangeIgnored:
                self.client.ranges_ignored = True
                LOGGER.warning(Text("The registry {registry} ignores Range requests; blob {digest} is downloaded over one connection.", registry=self.client.host, digest=descriptor.digest))
        self.prefetch.drop(descriptor.digest)
        try:
            part = PartFile.open(path, descriptor)
            part.sink, part.blob_digest = self.sink, descriptor.digest
        except OSError as error:
            raise local_error(Text("Opening"), path, error) from error
        with part, self.progress.blob_bar(descriptor, part.offset) as bar:
            self._transfer(descriptor, part, bar)
            part.sync()
        return part.digest(), part.offset

    def _transfer(self, descriptor: Descriptor, part: "PartFile", bar: "BlobBar") -> None:
        """Request the blob from the part's offset until it is complete, resuming after each failure."""
        client = self.client
        url = client.blob_url(descriptor.digest)
        phase = Text("Downloading blob {digest} of {image}", digest=descriptor.digest, image=client.reference.name)
        retry = client.new_retry_budget()
        wrong_ranges = 0
        while part.offset < descriptor.size:
            use_range = part.offset > 0 and wrong_ranges <= MAX_WRONG_RANGES
            headers = {"Accept-Encoding": "identity"}
            if use_range:
                headers["Range"] = "bytes=%d-" % part.offset
            try:
                response = client.send_with_retries("GET", url, headers=headers, phase=phase, retry=retry, accept_statuses=(416,))
                with contextlib.closing(response):
                    reject_html_blob(response, phase)
                    start = body_start(response, part.offset if use_range else None, phase)
                    if start != part.offset:
                        LOGGER.warning(Text("{url} sent blob {digest} from byte 0 instead of byte {offset}; starting it over.", url=redact_url(response.url), digest=descriptor.digest, offset=part.offset))
                        part.restart()
                        bar.restart()
                    self._copy_body(response, part, descriptor, bar, phase)
            except WrongRangeError as error:
                wrong_ranges += 1
                if error.status == 416:
                    part.restart()
                    bar.restart()
                retry.wait_or_raise(error)
            except RegistryError as error:
                retry.wait_or_raise(error)

    def _copy_body(self, response: requests.Response, part: "PartFile", descriptor: Descriptor, bar: "BlobBar", phase: Text) -> None:
        """Stream the body to disk, hashing each chunk; stop at the blob's size.

        The offset counts bytes written to disk, not bytes requested: urllib3 2 drops what
        it had read when a connection breaks inside a read.
        """
        cancel = self.client.cancel
        try:
            for chunk in iter_raw_body(response):
                if cancel.is_set():
                    raise Cancelled()
                self.client.limiter.consume(len(chunk), cancel)
                room = descriptor.size - part.offset
                if len(chunk) > room:
                    chunk = chunk[:room]
                part.append(chunk)
                bar.update(len(chunk))
                if part.offset >= descriptor.size:
                    return
        except TRANSIENT_ERRORS as error:
            raise RegistryError(
                Text("{phase} failed at byte {offset} of {size}: {error}.", phase=phase, offset=part.offset, size=descriptor.size, error=short_error(error)),
                NETWORK_HINT, url=response.url,
            ) from error
        if part.offset < descriptor.size:
            raise RegistryError(
                Text("{phase} failed: the connection closed at byte {offset} of {size}.", phase=phase, offset=part.offset, size=descriptor.size),
                NETWORK_HINT, url=response.url,
            )


def iter_raw_body(response: requests.Response) -> Iterator[bytes]:
    """Yield the body as received, without undoing a Content-Encoding.

    urllib3 2.2 and later offer read1(), which returns what has arrived instead of
    waiting for a full chunk. urllib3 drops the bytes of a read that fails, so a broken
    connection then loses almost nothing. Older urllib3 versions get smaller reads.
    """
    raw = response.raw
    if hasattr(raw, "read1"):
        while True:
            chunk = raw.read1(CHUNK_SIZE, decode_content=False)
            if not chunk:
                return
            yield chunk
    else:
        yield from raw.stream(FALLBACK_CHUNK_SIZE, decode_content=False)


def reject_html_blob(response: requests.Response, phase: Text) -> None:
    """Fail at once on an HTML page where a blob was expected: a proxy or captive portal."""
    if response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower() == "text/html":
        raise RegistryError(
            Text("{phase} failed: {url} returned an HTML page instead of the blob (a proxy, captive portal or wrong address?).", phase=phase, url=redact_url(response.url)),
            Text("Check the registry address and the proxy settings."),
            status=response.status_code, url=response.url, retryable=False,
        )


class WrongRangeError(RegistryError):
    """A 206 whose Content-Range does not start where the request's Range asked."""


def body_start(response: requests.Response, requested_offset: Optional[int], phase: Text) -> int:
    """Return the blob offset at which the response body starts.

    A 200 starts at 0. A 206 is accepted only when its Content-Range starts exactly at the
    requested offset. A 416 means the blob is shorter than the bytes on disk; the caller
    then starts over.
    """
    status = response.status_code
    if status == 206 and requested_offset is not None:
        content_range = parse_content_range(response.headers.get("Content-Range"))
        if content_range is not None and content_range[0] == requested_offset:
            return requested_offset
        raise WrongRangeError(
            Text("{phase} failed: asked for bytes from {offset} but got Content-Range {content_range!r}.", phase=phase, offset=requested_offset, content_range=response.headers.get("Content-Range", "")[:100]),
            NETWORK_HINT, url=response.url, retryable=True,
        )
    if status == 416:
        raise WrongRangeError(
            Text("{phase} failed: the registry answered 416 to a request for bytes from {offset}.", phase=phase, offset=requested_offset),
            NETWORK_HINT, status=416, url=response.url, retryable=True,
        )
    if status == 206:
        raise RegistryError(Text("{phase} failed: HTTP 206 to a request without Range.", phase=phase), NETWORK_HINT, url=response.url, retryable=True)
    return 0


class PartFile:
    """A blob's .part file, its running hash, and the count of bytes written to it."""

    def __init__(self, path: str, handle, algorithm: str, hasher, offset: int) -> None:
        self.path = path
        self.handle = handle
        self.algorithm = algorithm
        self.hasher = hasher
        self.offset = offset
        self.sink: Optional["ArchiveSink"] = None  # receives the bytes as they are hashed
        self.blob_digest = ""

    @classmethod
    def open(cls, path: str, descriptor: Descriptor) -> "PartFile":
        """Open the .part file, hashing what an earlier attempt or run left there."""
        algorithm = descriptor.algorithm
        if os.path.exists(path) and os.path.getsize(path) > descriptor.size:
            LOGGER.warning(Text("{path} is longer ({length} bytes) than the blob ({size} bytes); starting it over.", path=path, length=os.path.getsize(path), size=descriptor.size))
            os.remove(path)
        if os.path.exists(path):
            hasher, offset = hash_file(path, algorithm)
            if offset:
                LOGGER.info(Text("Resuming blob {digest} at byte {offset} of {size}.", digest=descriptor.digest, offset=offset, size=descriptor.size))
            handle = open(path, "r+b")
        else:
            hasher, offset = hashlib.new(algorithm), 0
            handle = open(path, "w+b")
        handle.seek(offset)
        handle.truncate()
        return cls(path, handle, algorithm, hasher, offset)

    def append(self, chunk: bytes) -> None:
        try:
            write_fully(self.handle, chunk)
        except OSError as error:
            raise local_error(Text("Writing"), self.path, error) from error
        self.hasher.update(chunk)
        if self.sink is not None:
            self.sink.feed(self.blob_digest, self.offset, chunk)
        self.offset += len(chunk)

    def restart(self) -> None:
        self.handle.seek(0)
        self.handle.truncate()
        self.hasher = hashlib.new(self.algorithm)
        self.offset = 0

    def sync(self) -> None:
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
        except OSError as error:
            raise local_error(Text("Writing"), self.path, error) from error

    def digest(self) -> str:
        return "%s:%s" % (self.algorithm, self.hasher.hexdigest())

    def __enter__(self) -> "PartFile":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.handle.close()


# -- segmented downloads --------------------------------------------------------------

SEGMENT_THRESHOLD = 16 * 1024 * 1024  # blobs from this size up are fetched as byte ranges
MIN_SEGMENT_SIZE = 8 * 1024 * 1024
# A range in progress is split for an idle connection when each half gets MIN_SPLIT_SIZE
# or more and, at the rate of its connection so far, it would take SPLIT_AFTER_SECONDS or
# more to finish. A split closes the slow connection at the new end, which throws away
# what is in flight on it, so ranges that end soon are left alone.
MIN_SPLIT_SIZE = 2 * 1024 * 1024
SPLIT_AFTER_SECONDS = 1.0
SPLIT_MIN_AGE = 0.5  # seconds a request must have run before its rate is trusted
SPLIT_CHECK_INTERVAL = 0.25  # seconds between looks for a range to split
SEGMENT_STATE_INTERVAL = 1.0  # seconds between saves of segments.json


def remove_if_present(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


class ConnectionBudget:
    """The -t budget: how many connections all downloads of a run may hold at once."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._semaphore = threading.Semaphore(threads)
        self._lock = threading.Lock()
        self.waiting = 0  # downloads blocked in acquire()
        self._ranged: List["SegmentedDownload"] = []  # blobs in ranges that may take more connections

    def try_acquire(self) -> bool:
        return self._semaphore.acquire(blocking=False)

    def acquire(self, cancel: threading.Event) -> None:
        if self._semaphore.acquire(blocking=False):
            return
        with self._lock:
            self.waiting += 1
        try:
            while not self._semaphore.acquire(timeout=LOCK_POLL_SECONDS):
                if cancel.is_set():
                    raise Cancelled()
        finally:
            with self._lock:
                self.waiting -= 1

    def release(self) -> None:
        """Return a connection: to a blob waiting to start, else to a blob with ranges waiting."""
        with self._lock:
            ranged = [] if self.waiting else list(self._ranged)
        for download in ranged:
            if download.take_connection():
                return
        self._semaphore.release()

    def add_ranged(self, download: "SegmentedDownload") -> None:
        with self._lock:
            self._ranged.append(download)

    def remove_ranged(self, download: "SegmentedDownload") -> None:
        with self._lock:
            self._ranged = [other for other in self._ranged if other is not download]

    def ranges_waiting(self, besides: "SegmentedDownload") -> bool:
        """Tell whether another blob has ranges that wait for a connection."""
        with self._lock:
            ranged = [download for download in self._ranged if download is not besides]
        return any(download.has_pending() for download in ranged)


class RateLimiter:
    """A token bucket shared by every connection of a run; None means no limit."""

    BURST_SECONDS = 0.25  # credit that an idle connection may spend at once

    def __init__(self, bytes_per_second: Optional[float]) -> None:
        self.rate = bytes_per_second
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def consume(self, count: int, cancel: threading.Event) -> None:
        """Sleep as long as the bytes just received put the run ahead of its rate."""
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            self._next = max(self._next, now - self.BURST_SECONDS) + count / self.rate
            delay = self._next - now
        if delay > 0 and cancel.wait(delay):
            raise Cancelled()


class RangeIgnored(Exception):
    """A ranged request got the whole blob (HTTP 200): the registry does not serve ranges."""


@dataclass
class Segment:
    start: int
    end: int  # exclusive
    done: int = 0  # bytes of this range written to the .part file
    reserved: int = 0  # the end of the chunk being written now: a split never moves ``end`` below it
    fetch_started: float = 0.0  # time.monotonic() when the current request's body began
    fetched: int = 0  # body bytes of the current request

    @property
    def position(self) -> int:
        return self.start + self.done

    @property
    def complete(self) -> bool:
        return self.start + self.done >= self.end


def plan_segments(size: int, count: int, prefix: int = 0) -> List[Segment]:
    """Split a blob into at most ``count`` ranges of MIN_SEGMENT_SIZE or more.

    ``prefix`` bytes from the start are already on disk (a .part file written over one
    connection) and count as done.
    """
    count = max(1, min(count, size // MIN_SEGMENT_SIZE))
    length = -(-size // count)
    segments = []
    for start in range(0, size, length):
        end = min(size, start + length)
        segments.append(Segment(start, end, max(0, min(end, prefix) - start)))
    return segments


def load_segments(path: str, size: int) -> Optional[List[Segment]]:
    """Read segments.json; None when it is missing, damaged or made for another size."""
    try:
        with open(path, "rb") as handle:
            state = json.loads(handle.read(MAX_MANIFEST_BYTES).decode("utf-8"))
        segments = [Segment(int(start), int(end), int(done)) for start, end, done in state["segments"]]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        LOGGER.warning(Text("{path} is damaged; the segments of this blob start over.", path=path))
        return None
    expected_start = 0
    for segment in segments:
        if segment.start != expected_start or not 0 <= segment.done <= segment.end - segment.start:
            return None
        expected_start = segment.end
    return segments if state.get("size") == size and expected_start == size else None


class RangePrefetch:
    """The first range requests of a pull, sent while the image config is fetched and checked.

    The config must be checked before any layer is written, and fetching it takes a round
    trip. Sending the first ranges' requests meanwhile hides that round trip and the setup
    of their connections. Nothing is read from the responses or written to disk until a
    download takes them with take(), after the check.

    Each request takes one connection from the -t budget. The blob's download passes
    that connection on to a helper thread with give_connection(), and drop() returns the
    ones the blob did not use, for example when the config is rejected or the registry
    ignores Range.
    """

    def __init__(self, client: RegistryClient, budget: "ConnectionBudget") -> None:
        self.client = client
        self.budget = budget
        self._lock = threading.Lock()
        self._requests: Dict[Tuple[str, int, int], threading.Thread] = {}
        self._responses: Dict[Tuple[str, int, int], requests.Response] = {}
        self._connections: Dict[str, int] = {}  # digest -> budget connections taken for it
        self._dropped: set = set()  # digests whose responses are no longer wanted

    def start(self, digest: str, start: int, end: int) -> bool:
        """Request bytes start to end - 1 of a blob in a thread of its own, if the budget allows."""
        if not self.budget.try_acquire():
            return False
        key = (digest, start, end)
        with self._lock:
            self._connections[digest] = self._connections.get(digest, 0) + 1
            thread = threading.Thread(target=self._request, args=(key,), name="blob-prefetch", daemon=True)
            self._requests[key] = thread
        thread.start()
        return True

    def _request(self, key: Tuple[str, int, int]) -> None:
        digest, start, end = key
        # The connection ends with this response: the thread that takes it fetches its next
        # ranges over its own connection, and an idle one here would exceed -t.
        headers = {"Accept-Encoding": "identity", "Range": "bytes=%d-%d" % (start, end - 1), "Connection": "close"}
        phase = Text("Downloading blob {digest} of {image}", digest=digest, image=self.client.reference.name)
        no_retries = RetryBudget(dataclasses.replace(self.client.options, retries=0), self.client.cancel)
        try:
            response = self.client.send_with_retries("GET", self.client.blob_url(digest), headers=headers, phase=phase, retry=no_retries)
        except (PullerError, Cancelled) as error:  # the download sends its own request later
            LOGGER.debug("Requesting bytes %d-%d of %s early failed: %s", start, end - 1, digest, error)
            return
        with self._lock:
            if digest not in self._dropped:
                self._responses[key] = response
                return
        response.close()

    def take(self, digest: str, start: int, end: int) -> Optional[requests.Response]:
        """Return the response for exactly this range once it has arrived, or None."""
        with self._lock:
            thread = self._requests.pop((digest, start, end), None)
        if thread is None:
            return None
        thread.join()
        with self._lock:
            return self._responses.pop((digest, start, end), None)

    def give_connection(self, digest: str) -> bool:
        """Pass one budget connection taken for this blob to the caller, who releases it later."""
        with self._lock:
            if not self._connections.get(digest):
                return False
            self._connections[digest] -= 1
            return True

    def drop(self, digest: str) -> None:
        """Close the responses of this blob that no download took, and return its connections to the budget."""
        with self._lock:
            self._dropped.add(digest)
            unused = self._connections.pop(digest, 0)
            keys = [key for key in self._responses if key[0] == digest]
            responses = [self._responses.pop(key) for key in keys]
        for response in responses:
            response.close()
        for _ in range(unused):
            self.budget.release()

    def close(self) -> None:
        with self._lock:
            digests = set(self._connections) | {key[0] for key in self._responses}
        for digest in digests:
            self.drop(digest)


def prefetch_first_ranges(downloader: "BlobDownloader", layers: Sequence[Descriptor], threads: int) -> RangePrefetch:
    """Send the requests for the first ranges that download_blobs() will fetch.

    The ranges come from downloader.range_counts, the plan that SegmentedDownload
    follows. Only blobs with nothing on disk yet are requested here, because a .part file
    changes the plan. At most threads - 1 requests are sent, so that the first blob's
    download still finds a connection in the budget.
    """
    prefetch = RangePrefetch(downloader.client, downloader.budget)
    if downloader.client.ranges_ignored:
        return prefetch
    counts = downloader.range_counts
    fresh = [layer for layer in missing_blobs(downloader.store, layers) if not os.path.exists(downloader.store.part_path(layer.digest))]
    planned = [
        (layer.digest, segment)
        for layer in fresh if counts.get(layer.digest, 1) > 1
        for segment in plan_segments(layer.size, counts[layer.digest])
    ]
    for digest, segment in planned[:threads - 1]:
        if not prefetch.start(digest, segment.start, segment.end):
            break
    return prefetch


class SegmentedDownload:
    """One blob fetched as several byte ranges at once, all within the run's -t budget.

    Each range is written at its place in a .part file of the blob's full size, and its
    progress is saved in segments.json, so that it resumes on its own in this run and
    the next. A hashing thread reads the file in order as soon as the bytes before its
    position are complete, so the sha256 check overlaps the download.
    """

    def __init__(self, downloader: BlobDownloader, descriptor: Descriptor, path: str, count: int) -> None:
        self.downloader = downloader
        self.count = count  # ranges to plan when no saved plan exists
        self.client = downloader.client
        self.descriptor = descriptor
        self.path = path
        self.state_path = downloader.store.segments_path(descriptor.digest)
        lock = threading.RLock()
        self.condition = threading.Condition(lock)  # notified when bytes are written
        self.idle = threading.Condition(lock)  # notified when a range ends or the download fails
        self.failure: Optional[BaseException] = None
        self.stop = threading.Event()
        self.segments: List[Segment] = []
        self.pending: List[Segment] = []
        self.active: List[Segment] = []  # ranges a connection is fetching now
        self.helpers: List[threading.Thread] = []  # threads fetching ranges besides the blob's own
        self.accepting_helpers = True  # False once run() waits for the helpers to end
        self.hashed = 0  # bytes from the start of the blob that went through the hasher
        self.save_lock = threading.Lock()
        self.saved_at = 0.0

    # -- setup and state ---------------------------------------------------

    def _prepare(self) -> None:
        size = self.descriptor.size
        segments = load_segments(self.state_path, size) if os.path.exists(self.path) else None
        if segments is None:
            prefix = os.path.getsize(self.path) if os.path.exists(self.path) else 0
            segments = plan_segments(size, self.count, prefix if prefix <= size else 0)
        with open(self.path, "r+b" if os.path.exists(self.path) else "w+b") as handle:
            handle.truncate(size)
        self.segments = segments
        self.pending = [segment for segment in segments if not segment.complete]
        if self.downloader.sink is not None:
            self.downloader.sink.flush_also(self.path, lambda: self.hashed)
        done = sum(segment.done for segment in segments)
        if done:
            LOGGER.info(Text("Resuming blob {digest} at {done} of {size} bytes in {count} ranges.", digest=self.descriptor.digest, done=done, size=size, count=len(self.pending)))
        self._save_state()

    def _save_state(self) -> None:
        with self.save_lock:
            with self.condition:
                state = {"size": self.descriptor.size, "segments": [[s.start, s.end, s.done] for s in self.segments]}
            write_json_atomically(self.state_path, state)
            self.saved_at = time.monotonic()

    def _maybe_save_state(self) -> None:
        """Save progress at most every SEGMENT_STATE_INTERVAL seconds, from whichever thread comes by."""
        if time.monotonic() - self.saved_at > SEGMENT_STATE_INTERVAL:
            try:
                self._save_state()
            except OSError as error:
                raise local_error(Text("Writing"), self.state_path, error) from error

    def _available(self, position: int) -> int:
        """Return how far the bytes from ``position`` on are on disk without a gap."""
        for segment in self.segments:
            if segment.start <= position < segment.end:
                return segment.position if segment.position > position else position
        return position

    # -- the download --------------------------------------------------------

    def run(self) -> Tuple[str, int]:
        """Complete the .part file; return its digest and the number of bytes hashed."""
        try:
            self._prepare()
        except OSError as error:
            raise local_error(Text("Opening"), self.path, error) from error
        hasher = hashlib.new(self.descriptor.algorithm)
        hashing = threading.Thread(target=self._hash, args=(hasher,), name="blob-hash", daemon=True)
        budget = self.downloader.budget
        with self.downloader.progress.blob_bar(self.descriptor, sum(s.done for s in self.segments)) as bar:
            self.bar = bar
            hashing.start()
            budget.add_ranged(self)
            try:
                self._work()
            except BaseException as error:  # Ctrl-C in this thread: stop the helpers too
                self._fail(error)
            finally:
                budget.remove_ranged(self)
                with self.condition:
                    self.accepting_helpers = False
                    helpers = list(self.helpers)
            for helper in helpers:
                helper.join()
            if self.failure is not None:
                self.stop.set()
            hashing.join()
        self._save_state()
        if self.failure is not None:
            if isinstance(self.failure, RangeIgnored):
                self._keep_prefix_only()
            raise self.failure
        remove_if_present(self.state_path)
        return "%s:%s" % (self.descriptor.algorithm, hasher.hexdigest()), self.hashed

    def _next_segment(self) -> Optional[Segment]:
        """Take a range to fetch: the next pending one, or else half of the slowest in progress.

        Splitting keeps connections busy to the end, instead of leaving one slow
        connection to finish its range alone. A stalled connection keeps the first half
        until it resumes or its read times out. An idle connection waits for a range worth
        splitting while others are running, unless another blob waits for a connection or
        has ranges waiting for one: then this connection ends and its budget goes there.
        """
        with self.condition:
            while True:
                if self.failure is not None or self.client.cancel.is_set():
                    return None
                budget = self.downloader.budget
                if self.pending:
                    segment = self.pending.pop(0)
                elif not self.active or budget.waiting or budget.ranges_waiting(self):
                    # Another blob's ranges that have not started go before a split here.
                    return None
                else:
                    segment = self._split_slowest()
                if segment is not None:
                    self.active.append(segment)
                    return segment
                self.idle.wait(SPLIT_CHECK_INTERVAL)

    def _split_slowest(self) -> Optional[Segment]:
        """Cut the active range that would take longest to finish in two; return the second half."""
        now = time.monotonic()
        slowest, slowest_eta, slowest_left = None, SPLIT_AFTER_SECONDS, 0
        for segment in self.active:
            left = segment.end - max(segment.position, segment.reserved)
            elapsed = now - segment.fetch_started
            if left < 2 * MIN_SPLIT_SIZE or not segment.fetch_started or elapsed < SPLIT_MIN_AGE:
                continue
            rate = segment.fetched / elapsed
            eta = left / rate if rate > 0 else float("inf")
            if eta >= slowest_eta:
                slowest, slowest_eta, slowest_left = segment, eta, left
        if slowest is None:
            return None
        middle = slowest.end - slowest_left // 2
        second = Segment(middle, slowest.end)
        slowest.end = middle
        index = next(i for i, segment in enumerate(self.segments) if segment is slowest)
        self.segments.insert(index + 1, second)
        LOGGER.debug("Split the range %d-%d of %s at %d for an idle connection", slowest.start, second.end - 1, self.descriptor.digest, middle)
        return second

    def _finished(self, segment: Segment) -> None:
        with self.condition:
            self.active = [other for other in self.active if other is not segment]
            self.idle.notify_all()

    def has_pending(self) -> bool:
        # Read without the condition, because callers own another download's condition.
        # A stale result only delays the hand-over of a connection.
        return bool(self.pending) and self.failure is None

    def take_connection(self) -> bool:
        """Start a helper with a connection that another download gave up, if a range waits for one.

        The helper releases the connection when it ends.
        """
        with self.condition:
            # After a cancel, a new helper would end at once and pass the connection on again.
            if not self.accepting_helpers or not self.pending or self.failure is not None or self.client.cancel.is_set():
                return False
            self._start_helper()
            return True

    def _start_helper(self) -> None:
        """Start a helper thread, for which the caller has acquired the condition and a connection."""
        helper = threading.Thread(target=self._help, name="blob-range", daemon=True)
        self.helpers.append(helper)
        helper.start()

    def _work(self) -> None:
        """Download ranges in this thread, and start helpers while the budget has room."""
        while True:
            segment = self._next_segment()
            if segment is None:
                return
            with self.condition:
                spare = len(self.pending)
            prefetch = self.downloader.prefetch
            while spare > 0 and (prefetch.give_connection(self.descriptor.digest) or self.downloader.budget.try_acquire()):
                with self.condition:
                    self._start_helper()
                spare -= 1
            self._fetch_guarded(segment)

    def _help(self) -> None:
        try:
            while True:
                segment = self._next_segment()
                if segment is None:
                    return
                self._fetch_guarded(segment)
        finally:
            self.client.close_thread_session()
            self.downloader.budget.release()

    def _fetch_guarded(self, segment: Segment) -> None:
        try:
            self._fetch(segment)
        except BaseException as error:  # handed to run(), which raises it in the blob's task
            self._fail(error)
        finally:
            self._finished(segment)

    def _fail(self, error: BaseException) -> None:
        with self.condition:
            if self.failure is None or isinstance(self.failure, Cancelled):
                self.failure = error
            self.condition.notify_all()
            self.idle.notify_all()

    def _fetch(self, segment: Segment) -> None:
        client = self.client
        url = client.blob_url(self.descriptor.digest)
        phase = Text("Downloading blob {digest} of {image}", digest=self.descriptor.digest, image=client.reference.name)
        retry = client.new_retry_budget()
        with open(self.path, "r+b", buffering=0) as handle:
            while not segment.complete:
                if self.failure is not None:
                    return
                headers = {"Accept-Encoding": "identity", "Range": "bytes=%d-%d" % (segment.position, segment.end - 1)}
                try:
                    response = self.downloader.prefetch.take(self.descriptor.digest, segment.position, segment.end)
                    if response is None:
                        response = client.send_with_retries("GET", url, headers=headers, phase=phase, retry=retry, accept_statuses=(416,))
                    with contextlib.closing(response):
                        reject_html_blob(response, phase)
                        if response.status_code == 200:
                            raise RangeIgnored()
                        body_start(response, segment.position, phase)
                        self._copy(response, handle, segment, phase)
                except RegistryError as error:
                    retry.wait_or_raise(error)

    def _copy(self, response: requests.Response, handle, segment: Segment, phase: Text) -> None:
        cancel = self.client.cancel
        handle.seek(segment.position)
        with self.condition:
            segment.fetch_started, segment.fetched = time.monotonic(), 0
        try:
            for chunk in iter_raw_body(response):
                if cancel.is_set() or self.failure is not None:
                    raise Cancelled()
                self.client.limiter.consume(len(chunk), cancel)
                with self.condition:  # the end moves when another connection takes half the range
                    segment.fetched += len(chunk)
                    chunk = chunk[:segment.end - segment.position]
                    segment.reserved = segment.position + len(chunk)
                try:
                    write_fully(handle, chunk)
                except OSError as error:
                    raise local_error(Text("Writing"), self.path, error) from error
                with self.condition:
                    segment.done += len(chunk)
                    self.condition.notify_all()
                self.bar.update(len(chunk))
                self._maybe_save_state()
                if segment.complete:
                    return
        except TRANSIENT_ERRORS as error:
            raise RegistryError(
                Text("{phase} failed at byte {offset} of {size}: {error}.", phase=phase, offset=segment.position, size=self.descriptor.size, error=short_error(error)),
                NETWORK_HINT, url=response.url,
            ) from error
        raise RegistryError(
            Text("{phase} failed: the connection closed at byte {offset} of {size}.", phase=phase, offset=segment.position, size=self.descriptor.size),
            NETWORK_HINT, url=response.url,
        )

    def _hash(self, hasher) -> None:
        """Hash the file in order, waiting for each byte to be written."""
        size = self.descriptor.size
        position = 0
        # Unbuffered: a buffered reader would serve read-ahead bytes that were still zeros.
        with open(self.path, "rb", buffering=0) as handle:
            while position < size:
                with self.condition:
                    while self._available(position) <= position:
                        if self.stop.is_set():
                            return
                        self.condition.wait(0.5)
                    limit = self._available(position)
                handle.seek(position)
                data = handle.read(min(CHUNK_SIZE, limit - position))
                hasher.update(data)
                if self.downloader.sink is not None:
                    self.downloader.sink.feed(self.descriptor.digest, position, data)
                position += len(data)
                self.hashed = position

    def _keep_prefix_only(self) -> None:
        """Cut the .part file to its gap-free prefix and drop segments.json, for one connection."""
        prefix = self._available(0)
        with open(self.path, "r+b") as handle:
            handle.truncate(prefix)
        remove_if_present(self.state_path)


def share_ranges(descriptors: Sequence[Descriptor], threads: int) -> Dict[str, int]:
    """Split 2 x ``threads`` byte ranges among the blobs of SEGMENT_THRESHOLD or more, by size.

    Twice as many ranges as connections lets a connection that finishes early take
    another range instead of waiting for the slowest one. The ranges are shared among
    the large blobs so that they stay large when an image has several large layers.
    Every range costs a request. A blob in several ranges is also read back from disk to
    be hashed, while a blob in one range is hashed as it arrives.
    """
    large = [descriptor for descriptor in descriptors if descriptor.size >= SEGMENT_THRESHOLD]
    total = sum(descriptor.size for descriptor in large)
    return {
        descriptor.digest: max(1, round(2 * threads * descriptor.size / total))
        for descriptor in large
    }


def missing_blobs(store: BlobStore, descriptors: Sequence[Descriptor]) -> List[Descriptor]:
    """Return each distinct blob that the store does not have finished."""
    unique = {descriptor.digest: descriptor for descriptor in descriptors}
    return [descriptor for descriptor in unique.values() if not os.path.exists(store.blob_path(descriptor.digest))]


def download_blobs(downloader: BlobDownloader, descriptors: Sequence[Descriptor], threads: int) -> Dict[str, str]:
    """Fetch each distinct blob once, ``threads`` at a time; return digest -> path.

    The first failure cancels the other downloads, which stop at their next chunk and
    keep their .part files for the next run.
    """
    unique: Dict[str, Descriptor] = {}
    for descriptor in descriptors:
        unique.setdefault(descriptor.digest, descriptor)
    cancel = downloader.client.cancel
    paths: Dict[str, str] = {}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="blob")
    futures = {pool.submit(downloader.fetch_with_connection, descriptor): digest for digest, descriptor in unique.items()}
    failure: Optional[BaseException] = None
    try:
        pending = set(futures)
        while pending and failure is None:
            done, pending = concurrent.futures.wait(pending, timeout=0.2, return_when=concurrent.futures.FIRST_EXCEPTION)
            for future in done:
                error = future.exception()
                if error is None:
                    paths[futures[future]] = future.result()
                elif not isinstance(error, Cancelled) and failure is None:
                    failure = error
        if failure is not None:
            raise failure
    finally:
        if len(paths) < len(unique):
            cancel.set()
        pool.shutdown(wait=False, cancel_futures=True)
        # Workers notice the cancellation at their next chunk. A worker blocked in a
        # stalled read notices only at its read timeout, so this waits at most 5 s and
        # run() then exits without joining it.
        concurrent.futures.wait(list(futures), timeout=5)
    return paths


# ---------------------------------------------------------------------------
# Archive: the layout `docker save` writes since Docker 25 (OCI layout + manifest.json)
# ---------------------------------------------------------------------------

OCI_LAYOUT_VERSION = "1.0.0"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"  # what `ctr images import` names the image
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"


class HashingReader:
    """A file wrapper that hashes what tarfile reads, to re-verify blobs while archiving."""

    def __init__(self, handle, algorithm: str) -> None:
        self.handle = handle
        self.hasher = hashlib.new(algorithm)
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.hasher.update(data)
        self.count += len(data)
        return data


def blob_member(digest: str) -> str:
    algorithm, hex_digest = digest.split(":", 1)
    return "blobs/%s/%s" % (algorithm, hex_digest)


def _tar_info(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    """Build a TarInfo with fixed owner, mode and time, so the same image gives the same bytes."""
    info = tarfile.TarInfo(name)
    info.size = 0 if directory else size
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def archive_metadata(entries: Sequence[Tuple[Reference, ImageManifest]]) -> Dict[str, bytes]:
    """Return index.json, manifest.json, oci-layout and repositories for the archive's images."""
    descriptors, legacy, repositories = [], [], {}  # type: List[dict], List[dict], Dict[str, Dict[str, str]]
    for reference, image in entries:
        manifest = image.manifest
        annotations = {}
        if reference.tag:
            annotations[ANNOTATION_IMAGE_NAME] = "%s:%s" % (reference.name, reference.tag)
            annotations[ANNOTATION_REF_NAME] = reference.tag
        else:
            annotations[ANNOTATION_IMAGE_NAME] = "%s@%s" % (reference.name, reference.digest)
        descriptors.append({
            "mediaType": manifest.media_type,
            "digest": manifest.digest,
            "size": len(manifest.raw),
            "annotations": annotations,
        })
        legacy.append({
            "Config": blob_member(image.config.digest),
            "RepoTags": [reference.repo_tag] if reference.repo_tag else None,
            "Layers": [blob_member(layer.digest) for layer in image.layers],
        })
        if reference.repo_tag and image.layers:
            repositories.setdefault(reference.familiar_name, {})[reference.tag] = image.layers[-1].hex
    index = {"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": descriptors}

    def encode(value: object) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode("utf-8")

    return {
        "index.json": encode(index),
        "manifest.json": encode(legacy),
        "oci-layout": encode({"imageLayoutVersion": OCI_LAYOUT_VERSION}),
        "repositories": encode(repositories),
    }


STDOUT_ARCHIVE = "-"  # -o - streams the archive to standard output


def write_archive(path: str, entries: Sequence[Tuple[Reference, ImageManifest]], blob_paths: Dict[str, str], cancel: threading.Event) -> None:
    """Write an archive of one or more images under a temporary name; rename it when complete.

    Blobs are copied unchanged (layers stay compressed) and hashed again on the way, so
    the archive holds only verified bytes even if a blob changed on disk since. With
    path "-" the archive streams to standard output instead, with no file on disk.
    """
    if path == STDOUT_ARCHIVE:
        try:
            with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT, bufsize=ARCHIVE_BUFFER_SIZE) as tar:
                _write_members(tar, entries, blob_paths, cancel)
            sys.stdout.buffer.flush()
        except OSError as error:
            raise local_error(Text("Writing the archive"), "<stdout>", error) from error
        return

    temporary = path + PART_SUFFIX
    try:
        with open(temporary, "wb") as output:
            with tarfile.open(fileobj=output, mode="w", format=tarfile.PAX_FORMAT, copybufsize=WRITE_SIZE) as tar:
                _write_members(tar, entries, blob_paths, cancel)
            output.flush()
            os.fsync(output.fileno())
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise local_error(Text("Writing the archive"), path, error) from error
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def archive_contents(entries: Sequence[Tuple[Reference, ImageManifest]]) -> Tuple[List[str], Dict[str, int], Dict[str, bytes]]:
    """Return the archive's directories, its blobs (digest -> size) and its manifests (digest -> bytes).

    Each blob and manifest appears once, in the order the images name them.
    """
    blobs: Dict[str, int] = {}
    manifests: Dict[str, bytes] = {}
    for _, image in entries:
        for descriptor in [image.config] + image.layers:
            blobs.setdefault(descriptor.digest, descriptor.size)
        manifests.setdefault(image.manifest.digest, image.manifest.raw)
    algorithms = {digest.split(":")[0] for digest in list(blobs) + list(manifests)}
    directories = sorted({"blobs"} | {"blobs/" + algorithm for algorithm in algorithms})
    return directories, blobs, manifests


def _write_members(tar: tarfile.TarFile, entries: Sequence[Tuple[Reference, ImageManifest]], blob_paths: Dict[str, str], cancel: threading.Event) -> None:
    directories, blobs, manifests = archive_contents(entries)
    for directory in directories:
        tar.addfile(_tar_info(directory, directory=True))
    for digest, size in blobs.items():
        if cancel.is_set():
            raise Cancelled()
        _add_verified_blob(tar, digest, size, blob_paths[digest])
    for digest, raw in manifests.items():
        if digest not in blobs:
            tar.addfile(_tar_info(blob_member(digest), len(raw)), io.BytesIO(raw))
    for name, data in archive_metadata(entries).items():
        tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))


def _add_verified_blob(tar: tarfile.TarFile, digest: str, size: int, path: str) -> None:
    with open(path, "rb") as handle:
        reader = HashingReader(handle, digest.split(":", 1)[0])
        tar.addfile(_tar_info(blob_member(digest), size), reader)
    actual = "%s:%s" % (digest.split(":", 1)[0], reader.hasher.hexdigest())
    if actual != digest or reader.count != size:
        raise DigestMismatchError(
            Text("Blob {path} changed on disk after it was verified: got {count} bytes with digest {actual}, expected {digest}.", path=path, count=reader.count, actual=actual, digest=digest),
            digest, actual, reader.count,
        )


ARCHIVE_FLUSH_INTERVAL = 0.5  # seconds between background fsyncs of the files an archive is fed from
ARCHIVE_WRITEBACK_INTERVAL = 0.1  # seconds between starts of write-back, where the OS offers it
ARCHIVE_FLUSH_BYTES = 8 * 1024 * 1024  # flush only when at least this much is new


class ArchiveSink:
    """An archive file written while its blobs download, so no blob is copied afterwards.

    Every member's header and place are known once the manifests are: the layout is the
    one write_archive() produces, byte for byte. Bytes reach a blob's place as they are
    hashed, in order from the blob's first byte. A blob that did not arrive that way (it
    was on disk already, or resumed in the middle) is copied in by finish(), which hashes
    it again. The file keeps its temporary name until finish() has every blob verified.
    """

    def __init__(self, path: str, entries: Sequence[Tuple[Reference, ImageManifest]]) -> None:
        self.path = path
        self.temporary = path + PART_SUFFIX
        self._lock = threading.Lock()
        directories, self.blobs, manifests = archive_contents(entries)
        self.offsets: Dict[str, int] = {}  # digest -> where the blob's data starts
        self.expected: Dict[str, int] = {digest: 0 for digest in self.blobs}  # next byte that keeps the blob in order
        self.broken: Dict[str, bool] = {digest: False for digest in self.blobs}
        pieces: List[Tuple[int, bytes]] = []
        position = 0

        def add(header: bytes, data: bytes = b"", size: int = 0) -> int:
            nonlocal position
            pieces.append((position, header + data))
            start = position + len(header)
            length = len(data) or size
            position = start + length + (-length % tarfile.BLOCKSIZE)
            return start

        for directory in directories:
            add(self._header(_tar_info(directory, directory=True)))
        for digest, size in self.blobs.items():
            self.offsets[digest] = add(self._header(_tar_info(blob_member(digest), size)), size=size)
        for digest, raw in manifests.items():
            if digest not in self.blobs:
                add(self._header(_tar_info(blob_member(digest), len(raw))), raw)
        for name, data in archive_metadata(entries).items():
            add(self._header(_tar_info(name, len(data))), data)
        position += 2 * tarfile.BLOCKSIZE  # the end-of-archive marker, two zero blocks
        position += -position % tarfile.RECORDSIZE
        self.size = position
        self.unsynced = 0  # bytes written since the last flush to disk
        self.stopped = threading.Event()
        self.companions: List[Tuple[BinaryIO, Callable[[], int]]] = []  # other files flushed with the archive (see flush_also)
        try:
            self.handle = open(self.temporary, "w+b", buffering=0)
            self.handle.truncate(self.size)  # unwritten parts read as the zeros tar needs
            for offset, data in pieces:
                self._write_at(offset, data)
        except OSError as error:
            self.abort()
            raise local_error(Text("Writing the archive"), path, error) from error
        # Flushing to disk while the download runs leaves little for the final fsync,
        # which would otherwise write the whole archive out after the last byte arrived.
        self.flusher = threading.Thread(target=self._flush_in_background, name="blob-flush", daemon=True)
        self.flusher.start()

    def flush_also(self, path: str, written: Callable[[], int]) -> None:
        """Flush this file too while the download runs: a blob.part the archive is fed from.

        ``written`` returns how many bytes from the start of the file were already fed to
        the archive, so nothing reads them again. On ext4 the archive's final fsync would
        otherwise also wait for the .part file's data, because a journal commit writes out
        the data of every file in it.
        """
        try:
            handle = open(path, "r+b", buffering=0)
        except OSError:
            return
        with self._lock:
            self.companions.append((handle, written))

    def _flush_in_background(self) -> None:
        """Send the data written so far on its way to disk, so the final fsync has little left.

        On Linux, POSIX_FADV_DONTNEED starts write-back of the dirty pages in a range and
        drops the clean pages, which nothing reads again. A pull of many GB then does not
        fill the page cache either. The .part files are also fsynced every
        ARCHIVE_FLUSH_INTERVAL, and on systems without posix_fadvise the archive too.
        """
        kick = hasattr(os, "posix_fadvise")
        synced_at = time.monotonic()
        while not self.stopped.wait(ARCHIVE_WRITEBACK_INTERVAL if kick else ARCHIVE_FLUSH_INTERVAL):
            if self.unsynced < ARCHIVE_FLUSH_BYTES:
                continue
            sync = not kick or time.monotonic() - synced_at >= ARCHIVE_FLUSH_INTERVAL
            if sync:
                self.unsynced, synced_at = 0, time.monotonic()
            with self._lock:
                companions = list(self.companions)
            # The archive gets write-back over its whole length, and an fsync only where
            # write-back cannot be started. A .part file gets it over the bytes already copied.
            files = [(self.handle, None, sync and not kick)] + [(handle, written(), sync) for handle, written in companions]
            for handle, length, fsync in files:
                if self.stopped.is_set():  # finish() waits for this loop, then fsyncs the archive itself
                    break
                self._flush_file(handle, length, kick, fsync)

    @staticmethod
    def _flush_file(handle: BinaryIO, length: Optional[int], kick: bool, fsync: bool) -> None:
        """Start write-back of the first ``length`` bytes (None: all), then fsync when ``fsync`` is true."""
        try:
            if kick and length != 0:
                os.posix_fadvise(handle.fileno(), 0, length or 0, os.POSIX_FADV_DONTNEED)  # 0: to the end
            if fsync:
                os.fsync(handle.fileno())
        except (OSError, ValueError):  # closed or failing: finish() reports real errors
            pass

    def _close_companions(self) -> None:
        with self._lock:
            companions, self.companions = self.companions, []
        for handle, _ in companions:
            with contextlib.suppress(OSError):
                handle.close()

    @staticmethod
    def _header(info: tarfile.TarInfo) -> bytes:
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

    def _write_at(self, offset: int, data: bytes) -> None:
        self.handle.seek(offset)
        write_fully(self.handle, data)

    def feed(self, digest: str, offset: int, data: bytes) -> None:
        """Place bytes of a blob that were just hashed, from its first byte on, in order."""
        if digest not in self.offsets:
            return
        with self._lock:
            if offset == 0:
                self.expected[digest], self.broken[digest] = 0, False
            if offset != self.expected[digest] or self.broken[digest]:
                self.broken[digest] = True
                return
            try:
                self._write_at(self.offsets[digest] + offset, data)
            except OSError as error:
                raise local_error(Text("Writing the archive"), self.path, error) from error
            self.expected[digest] = offset + len(data)
            self.unsynced += len(data)

    def finish(self, blob_paths: Dict[str, str], cancel: threading.Event) -> None:
        """Copy in the blobs that did not stream, then flush and give the archive its name."""
        try:
            for digest, size in self.blobs.items():
                if not self.broken[digest] and self.expected[digest] == size:
                    continue
                if cancel.is_set():
                    raise Cancelled()
                self._copy_verified(digest, size, blob_paths[digest])
            self.stopped.set()
            self.flusher.join()
            self._close_companions()
            os.fsync(self.handle.fileno())
            self.handle.close()
            os.replace(self.temporary, self.path)
        except OSError as error:
            self.abort()
            raise local_error(Text("Writing the archive"), self.path, error) from error
        except BaseException:
            self.abort()
            raise

    def _copy_verified(self, digest: str, size: int, path: str) -> None:
        with open(path, "rb") as handle:
            reader = HashingReader(handle, digest.split(":", 1)[0])
            position = self.offsets[digest]
            while True:
                data = reader.read(ARCHIVE_BUFFER_SIZE)
                if not data:
                    break
                self._write_at(position, data)
                position += len(data)
        actual = "%s:%s" % (digest.split(":", 1)[0], reader.hasher.hexdigest())
        if actual != digest or reader.count != size:
            raise DigestMismatchError(
                Text("Blob {path} changed on disk after it was verified: got {count} bytes with digest {actual}, expected {digest}.", path=path, count=reader.count, actual=actual, digest=digest),
                digest, actual, reader.count,
            )

    def abort(self) -> None:
        with contextlib.suppress(AttributeError):
            self.stopped.set()
            self.flusher.join()
        with contextlib.suppress(AttributeError):
            self._close_companions()
        with contextlib.suppress(OSError, AttributeError):
            self.handle.close()
        with contextlib.suppress(OSError):
            os.remove(self.temporary)


# ---------------------------------------------------------------------------
# Progress and logging: tqdm bars on a terminal, the log file in the working folder
# ---------------------------------------------------------------------------


PROGRESS_LOG_INTERVAL = 5.0  # seconds between progress lines when stderr is not a terminal


class Progress:
    """One bar for the whole image and one per downloading blob on a terminal.

    Elsewhere (a CI log, a batch script's output) it logs one line every few seconds
    instead, unless ``log_lines`` is off (-q).
    """

    def __init__(self, enabled: bool, total: int, description: str, log_lines: bool = False) -> None:
        self.enabled = enabled
        self.description = description
        self.total = total
        self.log_lines = log_lines and not enabled
        self.done = 0
        self.transferred = 0
        self.started = time.monotonic()
        self.logged_at = self.started
        self._lock = threading.Lock()
        self.overall = tqdm(
            total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024,
            disable=not enabled, leave=True, dynamic_ncols=True,
        )

    def blob_bar(self, descriptor: Descriptor, initial: int) -> "BlobBar":
        return BlobBar(self, descriptor, initial)

    def blob_cached(self, descriptor: Descriptor) -> None:
        self.overall.update(descriptor.size)
        if self.enabled:
            tqdm.write(Text("{digest}: already downloaded", digest=descriptor.hex[:12]).render(), file=sys.stderr)
        self.advance(descriptor.size, fresh=False)

    def advance(self, count: int, fresh: bool = True) -> None:
        """Count bytes done (``fresh`` ones came over the network); log a line now and then."""
        with self._lock:
            self.done += count
            if fresh:
                self.transferred += count
            now = time.monotonic()
            if not self.log_lines or now - self.logged_at < PROGRESS_LOG_INTERVAL:
                return
            self.logged_at = now
            done, transferred, elapsed = self.done, self.transferred, now - self.started
        LOGGER.info(Text(
            "{image}: {done} of {total} ({percent:.0f}%), {rate}/s",
            image=self.description, done=format_size(done), total=format_size(self.total),
            percent=100.0 * done / self.total if self.total else 100.0, rate=format_size(transferred / elapsed if elapsed else 0),
        ))

    def close(self) -> None:
        self.overall.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BlobBar:
    def __init__(self, progress: Progress, descriptor: Descriptor, initial: int) -> None:
        self.progress = progress
        label = descriptor.hex[:12]
        if initial:
            label += " " + tr("(resumed)")
        self.bar = tqdm(
            total=descriptor.size, initial=initial, desc=label, unit="B", unit_scale=True,
            unit_divisor=1024, disable=not progress.enabled, leave=False, dynamic_ncols=True,
        )
        progress.overall.update(initial)
        progress.advance(initial, fresh=False)

    def update(self, count: int) -> None:
        self.bar.update(count)
        self.progress.overall.update(count)
        self.progress.advance(count)

    def restart(self) -> None:
        self.progress.overall.update(-self.bar.n)
        self.progress.advance(-self.bar.n, fresh=False)
        self.bar.reset(total=self.bar.total)

    def __enter__(self) -> "BlobBar":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bar.close()


class LocalizedFormatter(logging.Formatter):
    """Render Text messages in one language: English for the log file, the user's on screen."""

    def __init__(self, fmt: str, language: Optional[str]) -> None:
        super().__init__(fmt)
        self.language = language

    def format(self, record: logging.LogRecord) -> str:
        if isinstance(record.msg, Text):
            record = logging.makeLogRecord(record.__dict__)
            record.msg = record.msg.render(self.language)
        return super().format(record)


FILE_ONLY = {"file_only": True}  # extra= for records that go to the log file only


class TqdmStreamHandler(logging.StreamHandler):
    """Write records with tqdm.write, so progress bars are redrawn below them intact.

    tqdm's own logging_redirect_tqdm is not used: it replaces the handler and loses
    its level and filters.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging.Handler.emit reports its own failures through handleError
            self.handleError(record)


def setup_logging(directory: str, verbose: bool, quiet: bool) -> List[logging.Handler]:
    """Log to DIR/docker_puller.log (in English) and to stderr (in the chosen language)."""
    LOGGER.setLevel(logging.DEBUG)
    LOGGER.propagate = False
    file_handler = logging.FileHandler(os.path.join(directory, LOG_FILE_NAME), encoding="utf-8", delay=True)
    file_handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    file_handler.setFormatter(LocalizedFormatter("%(asctime)s %(levelname)s [%(threadName)s] %(message)s", "en"))
    console = TqdmStreamHandler(sys.stderr)
    if verbose:
        console.setLevel(logging.DEBUG)
    elif quiet:
        console.setLevel(logging.ERROR)
    else:
        console.setLevel(logging.INFO)
    console.setFormatter(LocalizedFormatter("%(message)s", None))
    console.addFilter(lambda record: not getattr(record, "file_only", False))
    handlers: List[logging.Handler] = [file_handler, console]
    for handler in handlers:
        LOGGER.addHandler(handler)
    return handlers


def remove_logging(handlers: Sequence[logging.Handler]) -> None:
    for handler in handlers:
        LOGGER.removeHandler(handler)
        handler.close()


# ---------------------------------------------------------------------------
# Pull: one image from reference to archive
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Mirror:
    """A registry that serves another registry's repositories, possibly under a path prefix."""

    registry: str  # the registry it mirrors, docker.io unless given as REGISTRY=URL
    host: str
    scheme: Optional[str]  # None: found as for a registry
    prefix: str = ""  # a proxy that serves several registries puts each under a path

    def source_for(self, reference: Reference) -> Reference:
        repository = "%s/%s" % (self.prefix, reference.repository) if self.prefix else reference.repository
        return Reference(self.host, repository, reference.tag, reference.digest)


def parse_mirror(text: str) -> Mirror:
    """Parse [REGISTRY=]URL, e.g. https://mirror.example.com or quay.io=https://proxy.example.com/quay."""
    registry = DOCKER_HUB
    value = text.strip()
    if "=" in value.split("://", 1)[0]:
        registry_text, value = value.split("=", 1)
        registry = parse_registry(registry_text.strip())
    explicit_scheme = "://" in value
    parts = urllib.parse.urlsplit(value if explicit_scheme else "https://" + value)
    prefix = parts.path.strip("/")
    if parts.scheme not in ("http", "https") or not _DOMAIN_RE.fullmatch(parts.netloc or "") or parts.query or parts.fragment or (prefix and not _PATH_RE.fullmatch(prefix)):
        raise UsageError(Text("Invalid mirror {value!r}: expected [REGISTRY=]https://HOST[:PORT][/PATH].", value=text))
    # Without a scheme the mirror is contacted as a registry is: HTTPS, then plain HTTP
    # for loopback and --insecure hosts.
    return Mirror(registry, parts.netloc, parts.scheme if explicit_scheme else None, prefix)


@dataclass
class PullSettings:
    directory: str
    output: Optional[str]
    platform: Platform
    platform_explicit: bool  # asked with --platform or $DOCKER_DEFAULT_PLATFORM
    threads: int
    network: NetworkOptions
    credentials: CredentialSource
    show_progress: bool
    mirrors: Tuple[Mirror, ...] = ()
    dead_mirrors: set = field(default_factory=set)  # mirrors that could not be reached in this run
    log_progress: bool = False  # a progress line every few seconds when there are no bars
    remove_blobs: bool = False
    config_path: Optional[str] = None  # the config.ini that was read, if any
    limiter: RateLimiter = field(default_factory=lambda: RateLimiter(None))  # shared by every image of the run


@dataclass
class PullResult:
    reference: Reference
    digest: str  # of the image manifest that went into the archive
    platform: Platform
    archive: str
    size: int  # bytes of config and layers


def load_config_blob(path: str, descriptor: Descriptor) -> dict:
    with open(path, "rb") as handle:
        raw = handle.read(MAX_CONFIG_BYTES + 1)
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        value = None
    if not isinstance(value, dict):
        raise ManifestError(Text("The config {digest} is not a JSON object.", digest=descriptor.digest))
    return value


ARCHIVE_OVERHEAD_BYTES = 64 * 1024  # tar headers and the small JSON members, an estimate with room to spare


def format_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return "%.0f %s" % (size, unit) if unit == "B" else "%.1f %s" % (size, unit)
        size /= 1024
    return "%.1f GiB" % size


def missing_bytes(store: BlobStore, descriptor: Descriptor) -> int:
    """Estimate the bytes still to download for a blob, from the sizes of its files alone."""
    final = store.blob_path(descriptor.digest)
    if os.path.isfile(final) and os.path.getsize(final) == descriptor.size:
        return 0
    part = store.part_path(descriptor.digest)
    if not os.path.isfile(part):
        return descriptor.size
    # A .part fetched in ranges has its full size from the start (a sparse file), so its
    # progress comes from segments.json.
    segments = load_segments(store.segments_path(descriptor.digest), descriptor.size)
    have = sum(s.done for s in segments) if segments is not None else os.path.getsize(part)
    return descriptor.size - have if have <= descriptor.size else descriptor.size


def check_free_space(store: BlobStore, blobs: Sequence[Descriptor], archive: Optional[str], manifest_size: int) -> None:
    """Fail before downloading when the blobs still missing and the archive cannot fit.

    ``archive`` is None when the archive goes to standard output and needs no space.
    """
    downloads = sum(missing_bytes(store, descriptor) for descriptor in blobs)
    needs = {store.root: downloads}
    if archive is not None:
        archive_folder = os.path.dirname(os.path.abspath(archive))
        if not os.path.isdir(archive_folder):
            raise LocalFileError(Text("The folder {path} for the archive does not exist.", path=archive_folder), Text("Create it, or choose another path with -o."))
        archive_size = sum(descriptor.size for descriptor in blobs) + manifest_size + ARCHIVE_OVERHEAD_BYTES
        if os.stat(store.root).st_dev == os.stat(archive_folder).st_dev:
            needs[store.root] += archive_size
        else:
            needs[archive_folder] = archive_size
    for folder, needed in needs.items():
        free = shutil.disk_usage(folder).free
        if free < needed:
            raise LocalFileError(
                Text("Not enough free space in {folder}: the pull needs {needed} more, but only {free} is free.", folder=folder, needed=format_size(needed), free=format_size(free)),
                Text("Free some space, or choose other folders with -d and -o; downloads so far are kept."),
            )


@dataclass
class FetchedImage:
    """An image whose manifest, config and layers are all verified in the working folder."""

    reference: Reference
    image: ImageManifest
    platform: Platform
    paths: Dict[str, str]  # digest -> verified blob file
    store: BlobStore
    size: int
    sink: Optional["ArchiveSink"] = None  # the archive written during the download, to finish
    lock: Optional["FileLock"] = None  # held on the archive until the sink is finished


MIRROR_RETRIES = 1  # a mirror gets one retry per request before the next source is tried


def child_cancel_event(parent: threading.Event) -> threading.Event:
    """Return an event for one attempt: a failed attempt sets it without cancelling the image."""
    event = threading.Event()
    CANCEL_EVENTS.append(event)
    if parent.is_set():
        event.set()
    return event


def mirror_sources(reference: Reference, settings: PullSettings) -> List[Mirror]:
    return [m for m in settings.mirrors if m.registry == reference.registry and m.host not in settings.dead_mirrors]


def from_sources(reference: Reference, settings: PullSettings, cancel: threading.Event, attempt: Callable[[Reference, Optional[str], PullSettings, threading.Event], T]) -> T:
    """Run ``attempt`` against the reference's mirrors in order, then its own registry, as Docker does.

    ``attempt`` gets the source reference, its scheme (None: find it), the settings and
    a cancel event of its own. A mirror that fails for any reason but a local one (disk,
    folder) hands over to the next source, and one that cannot be reached is skipped for
    the rest of the run.
    """
    for mirror in mirror_sources(reference, settings):
        event = child_cancel_event(cancel)
        mirror_settings = dataclasses.replace(settings, network=dataclasses.replace(settings.network, retries=min(settings.network.retries, MIRROR_RETRIES)))
        try:
            return attempt(mirror.source_for(reference), mirror.scheme, mirror_settings, event)
        except (LocalFileError, UsageError):
            raise
        except PullerError as error:
            event.set()
            if isinstance(error, RegistryError) and error.status is None:
                settings.dead_mirrors.add(mirror.host)
            LOGGER.warning(Text("The mirror {mirror} failed for {reference}: {error} Trying the next source.", mirror=mirror.host, reference=reference, error=error.message))
        if cancel.is_set():
            raise Cancelled()
    return attempt(reference, None, settings, child_cancel_event(cancel))


def fetch_image(reference: Reference, settings: PullSettings, cancel: threading.Event, archive: Optional[str], stream: bool = False) -> FetchedImage:
    """Fetch the image from its mirrors or its registry; the working folder and archive keep the original name."""
    return from_sources(
        reference, settings, cancel,
        lambda source, scheme, source_settings, event: fetch_from(reference, source, scheme, source_settings, event, archive, stream),
    )


def archive_lock_path(store: BlobStore, archive: str) -> str:
    """Return the lock file that one process holds while it writes this archive."""
    return os.path.join(store.folder, "archive-%s.lock" % hashlib.sha256(os.path.abspath(archive).encode("utf-8")).hexdigest()[:16])


def fetch_from(reference: Reference, source: Reference, scheme: Optional[str], settings: PullSettings, cancel: threading.Event, archive: Optional[str], stream: bool = False) -> FetchedImage:
    """Resolve the image at ``source`` and download every blob; ``archive`` joins the space check.

    With ``stream`` the archive file is written while the blobs arrive (see ArchiveSink).
    The caller then finishes it with the returned sink and releases its lock.
    """
    LOGGER.info(Text("Pulling {reference} from {host} into {directory}.", reference=reference, host=source.api_host, directory=os.path.abspath(settings.directory)))
    client = RegistryClient(source, settings.network, settings.credentials.for_registry(source.registry), cancel, settings.limiter, scheme)
    sink: Optional[ArchiveSink] = None
    lock: Optional[FileLock] = None
    try:
        client.ping()
        image = resolve_image(client, settings.platform)
        if image.config.size > MAX_CONFIG_BYTES:
            raise ManifestError(Text("The config {digest} is {size} bytes, more than the limit of {limit}.", digest=image.config.digest, size=image.config.size, limit=MAX_CONFIG_BYTES))
        store = BlobStore(settings.directory, reference)
        distinct = {d.digest: d for d in [image.config] + image.layers}
        total = sum(d.size for d in distinct.values())
        check_free_space(store, list(distinct.values()), None if archive == STDOUT_ARCHIVE else archive, len(image.manifest.raw))
        if stream and archive is not None:
            os.makedirs(store.folder, exist_ok=True)
            lock = FileLock(archive_lock_path(store, archive))
            lock.acquire(cancel)
            sink = ArchiveSink(archive, [(reference, image)])

        with Progress(settings.show_progress, total, reference.familiar_name, log_lines=settings.log_progress) as progress:
            downloader = BlobDownloader(client, store, progress, ConnectionBudget(settings.threads))
            downloader.sink = sink
            downloader.range_counts = share_ranges(missing_blobs(store, image.layers), settings.threads)
            downloader.prefetch = prefetch_first_ranges(downloader, image.layers, settings.threads)
            try:
                config_path = downloader.fetch(image.config)
                platform = check_config(load_config_blob(config_path, image.config), image, settings.platform if settings.platform_explicit else None)
                paths = download_blobs(downloader, image.layers, settings.threads)
            finally:
                downloader.prefetch.close()
        paths[image.config.digest] = config_path
        return FetchedImage(reference, image, platform, paths, store, total, sink, lock)
    except BaseException:
        if sink is not None:
            sink.abort()
        if lock is not None:
            lock.release()
        raise
    finally:
        client.close()


def archive_images(archive: str, fetched: Sequence[FetchedImage], settings: PullSettings, cancel: threading.Event) -> None:
    """Write one archive holding the fetched images, then remove their blobs if asked."""
    entries = [(item.reference, item.image) for item in fetched]
    paths: Dict[str, str] = {}
    for item in fetched:
        paths.update(item.paths)
    if archive == STDOUT_ARCHIVE:
        write_archive(archive, entries, paths, cancel)
    elif len(fetched) == 1 and fetched[0].sink is not None:
        try:
            fetched[0].sink.finish(paths, cancel)
        finally:
            fetched[0].lock.release()
    else:
        with locked(archive_lock_path(fetched[0].store, archive), cancel):
            write_archive(archive, entries, paths, cancel)
    for item in fetched:
        LOGGER.info(Text("Wrote {archive}: {reference} {digest} ({platform}, {size} bytes).", archive=archive, reference=item.reference, digest=item.image.manifest.digest, platform=item.platform, size=item.size))
        if settings.remove_blobs:
            item.store.remove_blobs([item.image.config] + item.image.layers)


def default_archive(settings: PullSettings, reference: Reference) -> str:
    return settings.output or os.path.join(settings.directory, reference.file_stem() + ".tar")


def pull_image(reference: Reference, settings: PullSettings, cancel: threading.Event) -> PullResult:
    """Pull one image into its own archive; every failure raises a PullerError or Cancelled."""
    archive = default_archive(settings, reference)
    fetched = fetch_image(reference, settings, cancel, archive, stream=archive != STDOUT_ARCHIVE)
    archive_images(archive, [fetched], settings, cancel)
    return PullResult(reference, fetched.image.manifest.digest, fetched.platform, archive, fetched.size)


# ---------------------------------------------------------------------------
# Simplified Chinese catalogue: English template -> Chinese template
# ---------------------------------------------------------------------------
# Keys are the exact English templates passed to Text() and tr(); a test checks that
# every one of them has an entry with the same {placeholders}. Field terms (registry,
# manifest, digest, token, blob) stay in English, as Chinese engineers write them.

ZH_MESSAGES = {
    # argparse's own texts (Python 3.9 to 3.13)
    "usage: ": "用法：",
    "positional arguments": "位置参数",
    "options": "选项",
    "optional arguments": "选项",
    "show this help message and exit": "显示本帮助并退出",
    "show program's version number and exit": "显示版本号并退出",
    "the following arguments are required: %s": "缺少必需的参数：%s",
    "unrecognized arguments: %s": "无法识别的参数：%s",
    "%(prog)s: error: %(message)s\n": "%(prog)s: 错误：%(message)s\n",
    "invalid %(type)s value: %(value)r": "无效的 %(type)s 值：%(value)r",
    "argument %(argument_name)s: %(message)s": "参数 %(argument_name)s：%(message)s",
    "expected one argument": "需要一个参数值",
    "invalid choice: %(value)r (choose from %(choices)s)": "无效的选项：%(value)r（可选：%(choices)s）",
    "not allowed with argument %s": "不能与参数 %s 同时使用",
    "ambiguous option: %(option)s could match %(matches)s": "有歧义的选项：%(option)s 可能是 %(matches)s",
    # hints
    "The registry failed; wait and run the same command again, or use a mirror.": "registry 出错；请稍后重新运行同一命令，或改用镜像加速器（mirror）。",
    "Check the network, the proxy settings and the registry address, then run the same command again; finished downloads are kept.": "请检查网络、代理设置和 registry 地址，然后重新运行同一命令；已完成的下载会保留。",
    "Log in with -u USER --password-stdin, or check the credentials.": "请用 -u 用户名 --password-stdin 登录，或检查凭据。",
    "The account has no pull access to this repository; check the name and the credentials.": "该账号没有此仓库的拉取权限；请检查镜像名和凭据。",
    "Check the repository name; private repositories also need -u USER --password-stdin.": "请检查仓库名；私有仓库还需要 -u 用户名 --password-stdin。",
    "Check the repository name.": "请检查仓库名。",
    "Check the tag or digest; the image may have been deleted or never pushed.": "请检查标签或 digest；该镜像可能已被删除或从未推送。",
    "The registry rejected the manifest request; check the reference.": "registry 拒绝了 manifest 请求；请检查镜像引用。",
    "The registry has lost a blob the manifest names; ask its operator, or try another mirror.": "registry 缺少 manifest 中列出的 blob；请联系其管理员，或换一个镜像加速器。",
    "The registry limits the pull rate: wait and run the same command again, log in, or use a mirror.": "registry 限制了拉取频率：请稍后重新运行同一命令、登录，或改用镜像加速器。",
    "The registry does not support this request.": "registry 不支持此请求。",
    "Check the image name and tag, and the registry.": "请检查镜像名、标签和 registry。",
    "The registry or a proxy served corrupted data; run the same command again, or try another mirror.": "registry 或代理返回了损坏的数据；请重新运行同一命令，或换一个镜像加速器。",
    "The program reading the output stopped early; check it, then run the same command again; verified downloads are kept.": "读取输出的程序提前退出了；请检查该程序，然后重新运行同一命令；已校验的下载内容会保留。",
    "Free disk space or fix the folder's permissions, then run the same command again; verified downloads are kept.": "请释放磁盘空间或修正目录权限，然后重新运行同一命令；已校验的下载会保留。",
    "This tool pulls container images (Docker schema 2 and OCI); other artifacts need a tool such as oras.": "本工具只拉取容器镜像（Docker schema 2 和 OCI）；其他制品请用 oras 等工具。",
    "Choose one with --platform OS/ARCH[/VARIANT].": "请用 --platform OS/ARCH[/VARIANT] 选择一个。",
    "Check the registry address and the proxy settings.": "请检查 registry 地址和代理设置。",
    "The registry or a proxy is misconfigured; try another registry or mirror.": "registry 或代理配置有误；请换一个 registry 或镜像加速器。",
    "Schema 1 is deprecated since 2017; push the image again with a current Docker or buildah, or pull it with an older client.": "schema 1 自 2017 年起已弃用；请用新版 Docker 或 buildah 重新推送该镜像，或用旧版客户端拉取。",
    "Pull it with --platform {actual}, or pick another image.": "请用 --platform {actual} 拉取，或换一个镜像。",
    "Use an HTTPS registry, or name the registry with --insecure if you trust the network.": "请使用 HTTPS 的 registry；如果信任当前网络，可加 --insecure。",
    "Check the registry's certificate; for a registry you trust on your own network, add --insecure.": "请检查 registry 的证书；若是你信任的内网 registry，可加 --insecure。",
    "Run with -v for the traceback, and report it with the log {log}.": "请加 -v 运行以查看 traceback，并附上日志 {log} 报告此问题。",
    # fragments used inside other messages
    "manifest {reference} of {image}": "{image} 的 manifest {reference}",
    "token response": "token 响应",
    "an HTML page (a proxy, captive portal or wrong address?)": "一个 HTML 页面（代理、认证门户，或地址有误？）",
    "the body is an HTML page (a proxy, captive portal or wrong address?)": "响应体是 HTML 页面（代理、认证门户，或地址有误？）",
    "not a JSON object": "不是 JSON 对象",
    "error body": "错误响应体",
    "Downloading blob {digest} of {image}": "下载 {image} 的 blob {digest}",
    "Fetching the manifest {reference} of {image}": "获取 {image} 的 manifest {reference}",
    "Token request to {realm}": "向 {realm} 请求 token",
    "Contacting the registry {registry}": "连接 registry {registry}",
    "Writing the archive": "写入归档",
    "Preparing": "准备",
    "Finishing": "完成",
    "Opening": "打开",
    "Writing": "写入",
    "Creating the working folder": "创建工作目录",
    "anonymous": "匿名用户",
    "(resumed)": "（续传）",
    "error: {message}": "错误：{message}",
    # errors and log lines
    "{phase} failed: {method} {url} returned HTTP {status}{codes}{detail}.": "{phase} 失败：{method} {url} 返回 HTTP {status}{codes}{detail}。",
    "Unsupported manifest media type {media_type!r}.": "不支持的 manifest 媒体类型 {media_type!r}。",
    "Resolved {reference} to {digest} ({media_type}).": "{reference} 解析为 {digest}（{media_type}）。",
    "Chose platform {platform}: manifest {digest}.": "选择平台 {platform}：manifest {digest}。",
    "{action} {path} failed: {error}.": "{action} {path} 失败：{error}。",
    "Pulling {reference} from {host} into {directory}.": "正在从 {host} 拉取 {reference} 到 {directory}。",
    "docker-image-puller {version} started.": "docker-image-puller {version} 已启动。",
    "Invalid {what}: expected a string like sha256:<64 hex digits>, got {value}.": "无效的 {what}：应为 sha256:<64 位十六进制> 形式的字符串，实际为 {value}。",
    "Invalid {what} {value!r}: expected sha256:<64 hex digits> or sha512:<128 hex digits>.": "无效的 {what} {value!r}：应为 sha256:<64 位十六进制> 或 sha512:<128 位十六进制>。",
    "Invalid registry {value!r}: expected HOST or HOST:PORT, without a scheme or path.": "无效的 registry {value!r}：应为 主机 或 主机:端口，不带协议和路径。",
    "Invalid image reference {value!r}: it is empty or has surrounding spaces.": "无效的镜像引用 {value!r}：为空或首尾有空格。",
    "Invalid image reference {value!r}: {registry!r} is not a valid registry HOST[:PORT]; write references without a scheme such as https://.": "无效的镜像引用 {value!r}：{registry!r} 不是有效的 registry 主机[:端口]；镜像引用不要带 https:// 之类的协议前缀。",
    "Invalid image reference {value!r}: the repository name is empty.": "无效的镜像引用 {value!r}：仓库名为空。",
    "Invalid image reference {value!r}: repository names must be lowercase.": "无效的镜像引用 {value!r}：仓库名必须是小写。",
    "Invalid image reference {value!r}: each part of the repository name must be lowercase letters and digits, separated by '.', '_', '__' or '-', and parts are separated by '/'.": "无效的镜像引用 {value!r}：仓库名的每一段只能由小写字母和数字组成，可用 '.'、'_'、'__' 或 '-' 连接，段与段之间用 '/' 分隔。",
    "Invalid image reference {value!r}: the name is longer than {limit} characters.": "无效的镜像引用 {value!r}：名称超过 {limit} 个字符。",
    "Invalid image reference {value!r}: the digest must be sha256:<64 lowercase hex digits> or sha512:<128>.": "无效的镜像引用 {value!r}：digest 必须是 sha256:<64 位小写十六进制> 或 sha512:<128 位>。",
    "Invalid image reference {value!r}: the tag {tag!r} must be 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'.": "无效的镜像引用 {value!r}：标签 {tag!r} 必须是 1 到 128 个字母、数字、'_'、'.' 或 '-'，且不能以 '.' 或 '-' 开头。",
    "Invalid platform {value!r}: expected OS/ARCH or OS/ARCH/VARIANT, for example linux/amd64 or linux/arm64/v8.": "无效的平台 {value!r}：应为 OS/ARCH 或 OS/ARCH/VARIANT，例如 linux/amd64 或 linux/arm64/v8。",
    "No manifest for platform {platform}; the image offers: {available}.": "没有平台 {platform} 的 manifest；该镜像提供：{available}。",
    "{error} Retry {attempt} of {retries} in {delay:.1f} s.": "{error} {delay:.1f} 秒后第 {attempt}/{retries} 次重试。",
    "The {what} is {size} bytes, more than the limit of {limit}.": "{what}有 {size} 字节，超过上限 {limit}。",
    "The {what} is larger than the limit of {limit} bytes.": "{what}超过上限 {limit} 字节。",
    "The {what} from {url} is {detail}: {sample!r}": "来自 {url} 的{what}是{detail}：{sample!r}",
    "Reading the {what} from {url} failed: {error}.": "从 {url} 读取{what}失败：{error}。",
    "{phase} failed: {method} {url} was redirected more than {limit} times.": "{phase} 失败：{method} {url} 重定向超过 {limit} 次。",
    "{phase} failed: {method} {url} redirected to an unsupported URL {location}.": "{phase} 失败：{method} {url} 重定向到不支持的 URL {location}。",
    "Invalid {what} in the manifest: expected an object, got {value}.": "manifest 中的 {what} 无效：应为对象，实际为 {value}。",
    "Invalid {what} {digest}: size {size!r} is not a whole number from 0 to {limit}.": "无效的 {what} {digest}：大小 {size!r} 不是 0 到 {limit} 之间的整数。",
    "Invalid {what} {digest}: the media type is not a string.": "无效的 {what} {digest}：媒体类型不是字符串。",
    "The registry returned a Docker schema 1 manifest, which this tool does not support.": "registry 返回了 Docker schema 1 manifest，本工具不支持。",
    "The manifest {reference} of {image} from {url} has digest {actual} ({size} bytes).": "来自 {url} 的 {image} manifest {reference} 的 digest 实际是 {actual}（{size} 字节）。",
    "The registry labels the manifest of {image} as {header}, but its bytes hash to {digest}; the computed digest is used.": "registry 标注 {image} 的 manifest 为 {header}，但其内容的哈希是 {digest}；采用计算出的 digest。",
    "The index {digest} lists no manifests.": "index {digest} 没有列出任何 manifest。",
    "The index {digest} lists {count} manifests, more than the limit of {limit}.": "index {digest} 列出了 {count} 个 manifest，超过上限 {limit}。",
    "The manifest {digest} is not a container image: its config has media type {media_type!r}.": "manifest {digest} 不是容器镜像：其 config 的媒体类型是 {media_type!r}。",
    "The manifest {digest} has no list of layers.": "manifest {digest} 没有层列表。",
    "The manifest {digest} lists {count} layers, more than the limit of {limit}.": "manifest {digest} 列出了 {count} 层，超过上限 {limit}。",
    "The layer {digest} has an unsupported media type {media_type!r}.": "层 {digest} 的媒体类型 {media_type!r} 不受支持。",
    "The index {index} points to another index {digest}; nested indexes are not supported.": "index {index} 指向另一个 index {digest}；不支持嵌套 index。",
    "The config {digest} has no rootfs.diff_ids list.": "config {digest} 没有 rootfs.diff_ids 列表。",
    "The config {digest} lists {diff_ids} layer diff IDs but the manifest lists {layers} layers.": "config {digest} 列出了 {diff_ids} 个层 diff ID，而 manifest 列出了 {layers} 层。",
    "The config {digest} is not a JSON object.": "config {digest} 不是 JSON 对象。",
    "The config {digest} is {size} bytes, more than the limit of {limit}.": "config {digest} 有 {size} 字节，超过上限 {limit}。",
    "The image {image} is built for {actual} only, not for the requested {platform}.": "镜像 {image} 只为 {actual} 构建，不是所请求的 {platform}。",
    "The finished blob {path} is damaged ({size} bytes, digest {actual}); downloading it again.": "已完成的 blob {path} 已损坏（{size} 字节，digest {actual}）；重新下载。",
    "Blob {digest} is already downloaded and verified.": "blob {digest} 已下载并校验通过。",
    "Blob {digest} downloaded and verified ({size} bytes).": "blob {digest} 已下载并校验通过（{size} 字节）。",
    "Blob {digest} of {image} from {url} failed verification: got {size} bytes with digest {actual}, expected {expected_size} bytes.": "来自 {url} 的 {image} 的 blob {digest} 校验失败：收到 {size} 字节，digest 为 {actual}，应为 {expected_size} 字节。",
    "{error} Downloading it once more from the start.": "{error} 从头再下载一次。",
    "Resuming blob {digest} at byte {offset} of {size}.": "blob {digest} 从第 {offset} 字节续传（共 {size} 字节）。",
    "{path} is longer ({length} bytes) than the blob ({size} bytes); starting it over.": "{path} 比 blob 更长（{length} 字节，blob 为 {size} 字节）；从头开始。",
    "{phase} failed: asked for bytes from {offset} but got Content-Range {content_range!r}.": "{phase} 失败：请求从第 {offset} 字节开始，却收到 Content-Range {content_range!r}。",
    "{phase} failed: the registry answered 416 to a request for bytes from {offset}.": "{phase} 失败：请求从第 {offset} 字节开始时 registry 返回 416。",
    "{phase} failed: HTTP 206 to a request without Range.": "{phase} 失败：未带 Range 的请求收到 HTTP 206。",
    "{phase} failed: the connection closed at byte {offset} of {size}.": "{phase} 失败：连接在第 {offset} 字节处关闭（共 {size} 字节）。",
    "{phase} failed at byte {offset} of {size}: {error}.": "{phase} 在第 {offset} 字节处失败（共 {size} 字节）：{error}。",
    "{url} sent blob {digest} from byte 0 instead of byte {offset}; starting it over.": "{url} 从第 0 字节而不是第 {offset} 字节发送 blob {digest}；从头开始。",
    "Blob {path} changed on disk after it was verified: got {count} bytes with digest {actual}, expected {digest}.": "blob {path} 在校验后被改动：读到 {count} 字节，digest 为 {actual}，应为 {digest}。",
    "Wrote {archive}: {reference} {digest} ({platform}, {size} bytes).": "已写入 {archive}：{reference} {digest}（{platform}，{size} 字节）。",
    "The registry {registry} answered 401 with no Bearer or Basic challenge (WWW-Authenticate: {header!r}).": "registry {registry} 返回 401，但没有 Bearer 或 Basic 认证质询（WWW-Authenticate: {header!r}）。",
    "The registry {registry} named an invalid token realm {realm!r}.": "registry {registry} 给出的 token realm {realm!r} 无效。",
    "Refusing to send credentials to the token service {realm} over plain HTTP.": "拒绝通过明文 HTTP 向 token 服务 {realm} 发送凭据。",
    "The token service {realm} returned no token.": "token 服务 {realm} 的响应中没有 token。",
    "The token service {realm} rejected the request for {scope} as {user} (HTTP {status}).": "token 服务 {realm} 拒绝了 {user} 对 {scope} 的请求（HTTP {status}）。",
    "Token for {scope} rejected or expired; authenticating again.": "{scope} 的 token 被拒绝或已过期；重新认证。",
    "{phase} failed: TLS error from {url}: {error}.": "{phase} 失败：{url} 的 TLS 错误：{error}。",
    "{phase} failed: the registry {registry} rejected the request again after authenticating anew {who} (HTTP 401 from {url}).": "{phase} 失败：{who}重新认证后，registry {registry} 仍然拒绝该请求（{url} 返回 HTTP 401）。",
    "as {user}": "以用户 {user} ",
    "without a login": "未使用登录凭据",
    "{phase} failed: {method} {url}: {error}.": "{phase} 失败：{method} {url}：{error}。",
    "Interrupted; downloads so far are kept. Run the same command again to resume.": "已中断；已下载的内容会保留。重新运行同一命令即可续传。",
    "Unexpected error: {error!r}.": "意外错误：{error!r}。",
    "Waiting for the lock {path}, held by process {pid}: another docker_image_puller is working on the same file.": "正在等待锁 {path}，它被进程 {pid} 持有：另一个 docker_image_puller 正在处理同一个文件。",
    "Got the lock {path}.": "已获得锁 {path}。",
    "{path} is damaged; it is written again and the blob is checked by its digest.": "{path} 已损坏；将重新写入，并按 digest 校验该 blob。",
    "{phase} failed: {url} returned an HTML page instead of the blob (a proxy, captive portal or wrong address?).": "{phase} 失败：{url} 返回的是 HTML 页面而不是 blob（代理、认证门户，或地址有误？）。",
    "The folder {path} for the archive does not exist.": "归档所在的目录 {path} 不存在。",
    "Create it, or choose another path with -o.": "请先创建该目录，或用 -o 换一个路径。",
    "Not enough free space in {folder}: the pull needs {needed} more, but only {free} is free.": "{folder} 的空闲空间不足：本次拉取还需要 {needed}，但只剩 {free}。",
    "Free some space, or choose other folders with -d and -o; downloads so far are kept.": "请释放一些空间，或用 -d 和 -o 换其他目录；已下载的内容会保留。",
    "The password read from standard input is empty.": "从标准输入读到的密码为空。",
    "{first} and {second} would both be written to {path}; pull them in separate runs with different -d or -o.": "{first} 和 {second} 会写入同一个文件 {path}；请分两次运行，并使用不同的 -d 或 -o。",
    "The image {image} is built for {actual} only; it is pulled as it is. Add --platform to require a platform.": "镜像 {image} 只为 {actual} 构建；按原样拉取。如需限定平台，请加 --platform。",
    "The registry {registry} ignores Range requests; blob {digest} is downloaded over one connection.": "registry {registry} 不支持 Range 请求；blob {digest} 改为单连接下载。",
    "{path} is damaged; the segments of this blob start over.": "{path} 已损坏；该 blob 的分段从头下载。",
    "Resuming blob {digest} at {done} of {size} bytes in {count} ranges.": "blob {digest} 续传：已有 {done}/{size} 字节，剩余 {count} 个分段。",
    "Removed {count} downloaded blobs from {folder}.": "已从 {folder} 删除 {count} 个下载的 blob。",
    "Invalid {source} {value!r}: expected bytes per second such as 500K, 50M or 1G.": "无效的 {source} {value!r}：应为每秒字节数，例如 500K、50M 或 1G。",
    "The configuration file {path} does not exist.": "配置文件 {path} 不存在。",
    "The configuration file {path} could not be read: {error}": "无法读取配置文件 {path}：{error}",
    "Invalid value {value!r} for {key} in {path}.": "{path} 中 {key} 的值 {value!r} 无效。",
    "Refusing to write a binary archive to a terminal; redirect standard output to a file or pipe it into docker load.": "拒绝把二进制归档写到终端；请把标准输出重定向到文件，或通过管道交给 docker load。",
    "parallel connections, 1 to 20, shared by all blobs; a large blob is fetched as several ranges (default: 5)": "并发连接数，1 到 20，由所有 blob 共用；大的 blob 会分成多个区间并行下载（默认：5）",
    "archive path, or - for standard output (default: DIR/<repository with / as _>_<tag>.tar)": "归档路径，- 表示标准输出（默认：DIR/<仓库名，/ 换成 _>_<标签>.tar）",
    "delete the downloaded blobs from DIR once the archive is written": "写完归档后，从 DIR 删除已下载的 blob",
    "cap the total download rate in bytes per second, e.g. 500K, 50M, 1G (default: no cap)": "限制总下载速率，单位为每秒字节数，例如 500K、50M、1G（默认：不限速）",
    "configuration file (default: DIR/config.ini, else config.ini in the user's configuration folder); command-line options override it": "配置文件（默认：DIR/config.ini，其次是用户配置目录中的 config.ini）；命令行选项优先于它",
    "The image list {path} could not be read: {error}": "无法读取镜像列表 {path}：{error}",
    "--compose needs PyYAML: pip install pyyaml": "--compose 需要 PyYAML：pip install pyyaml",
    "The Compose file {path} could not be read: {error}": "无法读取 Compose 文件 {path}：{error}",
    "The Compose file {path} has no services.": "Compose 文件 {path} 中没有 services。",
    "No service in the Compose file {path} names an image:.": "Compose 文件 {path} 中没有任何服务写了 image:。",
    "-f - and --password-stdin both read standard input; use one of them.": "-f - 和 --password-stdin 都要读取标准输入；只能用其中一个。",
    "No image given: name one or more images, or use -f LIST or --compose FILE.": "没有指定镜像：请写出一个或多个镜像，或使用 -f LIST 或 --compose FILE。",
    "The archive {path} was not written because {count} of {total} images could not be pulled.": "有 {count}/{total} 个镜像拉取失败，因此没有写入归档 {path}。",
    "config": "config",
    "pulled": "已拉取",
    "failed": "失败",
    "skipped": "已跳过",
    "IMAGE": "镜像",
    "PLATFORM": "平台",
    "DIGEST": "DIGEST",
    "SIZE": "大小",
    "ARCHIVE": "归档",
    "STATUS": "状态",
    "read image references from a file, one per line; blank lines and # comments are skipped; - reads standard input": "从文件读取镜像引用，每行一个；跳过空行和 # 注释；- 表示读取标准输入",
    "pull every image: of a Compose file (needs PyYAML)": "拉取 Compose 文件中所有的 image:（需要 PyYAML）",
    "stop at the first image that fails (default: pull the others and report at the end)": "遇到第一个失败的镜像就停止（默认：继续拉取其余镜像，最后汇总报告）",
    "print one JSON object per image on standard output, for scripts": "每个镜像在标准输出打印一个 JSON 对象，供脚本使用",
    "print the platforms each image offers, without downloading layers": "打印每个镜像提供的平台，不下载层",
    "Blob {digest} reused from {path}.": "blob {digest} 复用自 {path}。",
    "The credential helper {program} named in the Docker configuration is not installed.": "Docker 配置中指定的凭据助手 {program} 没有安装。",
    "The credential helper {program} failed: {error}": "凭据助手 {program} 运行失败：{error}",
    "The credential helper {program} returned something that is not its JSON answer.": "凭据助手 {program} 的输出不是它应有的 JSON 应答。",
    "Skipping the credentials file {path}: {error}": "跳过凭据文件 {path}：{error}",
    "Invalid mirror {value!r}: expected [REGISTRY=]https://HOST[:PORT][/PATH].": "无效的镜像加速器 {value!r}：应为 [REGISTRY=]https://主机[:端口][/路径]。",
    "The mirror {mirror} failed for {reference}: {error} Trying the next source.": "镜像加速器 {mirror} 拉取 {reference} 失败：{error} 改用下一个来源。",
    "Unknown key {key} in [{section}] of {path}; it is ignored.": "{path} 的 [{section}] 中有未知的键 {key}，已忽略。",
    "The CA certificate file {path} does not exist.": "CA 证书文件 {path} 不存在。",
    "fetch the registry's images from this mirror first, falling back to the next mirror and then the registry; repeatable; REGISTRY defaults to docker.io": "先从这个镜像加速器拉取该 registry 的镜像，失败时依次改用下一个加速器，最后用 registry 本身；可重复指定；REGISTRY 默认为 docker.io",
    "CA certificates (PEM) to verify registries with, instead of the system's": "用于校验 registry 的 CA 证书（PEM），代替系统自带的证书",
    "{digest}: already downloaded": "{digest}：已下载",
    "{image}: {done} of {total} ({percent:.0f}%), {rate}/s": "{image}：{done}/{total}（{percent:.0f}%），{rate}/s",
    "Finished: {pulled} pulled, {failed} failed, {skipped} skipped.": "完成：已拉取 {pulled} 个，失败 {failed} 个，跳过 {skipped} 个。",
    "Invalid proxy {value!r} in {path}: expected http://HOST:PORT.": "{path} 中的代理 {value!r} 无效：应为 http://主机:端口。",
    # command line
    "Pull container images from a registry into archives that docker load, podman load and ctr images import accept, without a Docker daemon.": "无需 Docker 守护进程，从 registry 拉取容器镜像，生成 docker load、podman load 和 ctr images import 都能导入的归档。",
    "examples:\n  python docker_image_puller.py nginx:latest -t 12\n  python docker_image_puller.py registry.example.com:5000/team/app:v1 --platform linux/arm64 -d images\n  echo \"$TOKEN\" | python docker_image_puller.py -u alice --password-stdin ghcr.io/alice/app:1.0\n\nexit status: 0 success, 1 failure, 2 usage error, 130 interrupted (run the same command again to resume).": "示例：\n  python docker_image_puller.py nginx:latest -t 12\n  python docker_image_puller.py registry.example.com:5000/team/app:v1 --platform linux/arm64 -d images\n  echo \"$TOKEN\" | python docker_image_puller.py -u alice --password-stdin ghcr.io/alice/app:1.0\n\n退出码：0 成功，1 失败，2 用法错误，130 被中断（重新运行同一命令即可续传）。",
    "image reference: [HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST]; nginx means docker.io/library/nginx:latest": "镜像引用：[主机[:端口]/]名称[:标签][@sha256:DIGEST]；nginx 即 docker.io/library/nginx:latest",
    "registry for references that name none (default: docker.io)": "未写明 registry 的镜像引用所用的 registry（默认：docker.io）",
    "working folder for downloads, the log and archives (default: the current folder)": "存放下载内容、日志和归档的工作目录（默认：当前目录）",
    "platform to pull from a multi-platform image (default: $DOCKER_DEFAULT_PLATFORM or linux/amd64)": "从多平台镜像中拉取的平台（默认：$DOCKER_DEFAULT_PLATFORM 或 linux/amd64）",
    "registry user name (or $DOCKER_IMAGE_PULLER_USERNAME)": "registry 用户名（或 $DOCKER_IMAGE_PULLER_USERNAME）",
    "read the password or access token from standard input (or set $DOCKER_IMAGE_PULLER_PASSWORD)": "从标准输入读取密码或访问 token（或设置 $DOCKER_IMAGE_PULLER_PASSWORD）",
    "password on the command line: insecure, other users can read it; prefer --password-stdin": "在命令行给出密码：不安全，其他用户可以看到；请优先用 --password-stdin",
    "allow plain HTTP and skip TLS certificate checks for the registries of this run": "对本次运行的 registry 允许明文 HTTP 并跳过 TLS 证书校验",
    "retries per request and per blob after network errors, 408, 429 and 5xx (default: 5)": "遇到网络错误、408、429 和 5xx 时，每个请求和每个 blob 的重试次数（默认：5）",
    "first backoff before a retry, doubled on each retry up to 30 s, with jitter (default: 1)": "首次重试前的退避秒数，之后每次翻倍，最多 30 秒，带随机抖动（默认：1）",
    "seconds without data before a connection is given up and retried (default: 60)": "连接多少秒没有数据即放弃并重试（默认：60）",
    "print debug lines (one per request) and tracebacks": "输出调试信息（每个请求一行）和 traceback",
    "print only errors: no progress bars, no messages": "只输出错误：不显示进度条和其他信息",
    "language of messages (default: from LANGUAGE, LC_ALL, LC_MESSAGES or LANG)": "消息语言（默认：取自 LANGUAGE、LC_ALL、LC_MESSAGES 或 LANG）",
    "A password was given without a user name; add -u USER.": "给出了密码但没有用户名；请加 -u 用户名。",
    "No password for user {user}: pass it with --password-stdin or ${variable}; this tool never prompts.": "用户 {user} 没有密码：请用 --password-stdin 或 ${variable} 提供；本工具从不交互式提示。",
    "Invalid --threads {value}: expected 1 to {maximum}.": "无效的 --threads {value}：应为 1 到 {maximum}。",
    "Invalid --retry {value}: expected 0 or more.": "无效的 --retry {value}：应为 0 或更大。",
    "Invalid --retry-delay {value}: expected 0 or more seconds.": "无效的 --retry-delay {value}：应为 0 或更多秒。",
    "Invalid --timeout {value}: expected a positive number of seconds.": "无效的 --timeout {value}：应为正数秒。",
    "--json and -o - both write to standard output; use one of them.": "--json 和 -o - 都要写标准输出；只能用其中一个。",
    "--password and --password-stdin exclude each other.": "--password 和 --password-stdin 不能同时使用。",
    "WARNING! Using --password on the command line is insecure: other users can read it. Use --password-stdin.": "警告！在命令行使用 --password 不安全：其他用户可以看到。请使用 --password-stdin。",
}


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

ENV_USERNAME = "DOCKER_IMAGE_PULLER_USERNAME"
ENV_PASSWORD = "DOCKER_IMAGE_PULLER_PASSWORD"
ENV_DEFAULT_PLATFORM = "DOCKER_DEFAULT_PLATFORM"
SIGTERM_EXIT = 128 + 15


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives, to unwind like Ctrl-C."""


def _translate_argparse(message: str) -> str:
    return tr(message)


def program_name() -> str:
    """Return the name the tool was started as: docker_image_puller.py or docker-image-puller."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name and name not in ("-c", "-m", "__main__.py") and not name.startswith("pytest") else "docker_image_puller.py"


def build_parser() -> argparse.ArgumentParser:
    # argparse looks its own texts ("usage:", "error:") up through a module-level gettext
    # function; routing it through tr() gives them a Chinese translation too.
    argparse._ = _translate_argparse  # type: ignore[attr-defined]
    parser = argparse.ArgumentParser(
        prog=program_name(),
        description=tr("Pull container images from a registry into archives that docker load, podman load and ctr images import accept, without a Docker daemon."),
        epilog=tr(
            "examples:\n"
            "  python docker_image_puller.py nginx:latest -t 12\n"
            "  python docker_image_puller.py registry.example.com:5000/team/app:v1 --platform linux/arm64 -d images\n"
            "  echo \"$TOKEN\" | python docker_image_puller.py -u alice --password-stdin ghcr.io/alice/app:1.0\n"
            "\n"
            "exit status: 0 success, 1 failure, 2 usage error, 130 interrupted (run the same command again to resume)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="*", metavar="IMAGE", help=tr("image reference: [HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST]; nginx means docker.io/library/nginx:latest"))
    parser.add_argument("-f", "--file", metavar="LIST", help=tr("read image references from a file, one per line; blank lines and # comments are skipped; - reads standard input"))
    parser.add_argument("--compose", metavar="FILE", help=tr("pull every image: of a Compose file (needs PyYAML)"))
    parser.add_argument("--fail-fast", action="store_true", help=tr("stop at the first image that fails (default: pull the others and report at the end)"))
    parser.add_argument("--json", action="store_true", help=tr("print one JSON object per image on standard output, for scripts"))
    parser.add_argument("--list-platforms", action="store_true", help=tr("print the platforms each image offers, without downloading layers"))
    parser.add_argument("-t", "--threads", type=int, metavar="N", help=tr("parallel connections, 1 to 20, shared by all blobs; a large blob is fetched as several ranges (default: 5)"))
    parser.add_argument("-r", "--registry", metavar="HOST[:PORT]", help=tr("registry for references that name none (default: docker.io)"))
    parser.add_argument("-d", "--dir", default=".", metavar="DIR", help=tr("working folder for downloads, the log and archives (default: the current folder)"))
    parser.add_argument("-o", "--output", metavar="FILE", help=tr("archive path, or - for standard output (default: DIR/<repository with / as _>_<tag>.tar)"))
    parser.add_argument("--remove-blobs", action="store_true", help=tr("delete the downloaded blobs from DIR once the archive is written"))
    parser.add_argument("--limit-rate", metavar="RATE", help=tr("cap the total download rate in bytes per second, e.g. 500K, 50M, 1G (default: no cap)"))
    parser.add_argument("--config", metavar="FILE", help=tr("configuration file (default: DIR/config.ini, else config.ini in the user's configuration folder); command-line options override it"))
    parser.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help=tr("platform to pull from a multi-platform image (default: $DOCKER_DEFAULT_PLATFORM or linux/amd64)"))
    parser.add_argument("-u", "--username", metavar="USER", help=tr("registry user name (or $DOCKER_IMAGE_PULLER_USERNAME)"))
    parser.add_argument("--password-stdin", action="store_true", help=tr("read the password or access token from standard input (or set $DOCKER_IMAGE_PULLER_PASSWORD)"))
    parser.add_argument("-p", "--password", metavar="PASSWORD", help=tr("password on the command line: insecure, other users can read it; prefer --password-stdin"))
    parser.add_argument("--mirror", action="append", default=[], metavar="[REGISTRY=]URL", help=tr("fetch the registry's images from this mirror first, falling back to the next mirror and then the registry; repeatable; REGISTRY defaults to docker.io"))
    parser.add_argument("--ca-cert", metavar="FILE", help=tr("CA certificates (PEM) to verify registries with, instead of the system's"))
    parser.add_argument("--insecure", action="store_true", help=tr("allow plain HTTP and skip TLS certificate checks for the registries of this run"))
    parser.add_argument("--retry", type=int, metavar="N", help=tr("retries per request and per blob after network errors, 408, 429 and 5xx (default: 5)"))
    parser.add_argument("--retry-delay", type=float, default=DEFAULT_BACKOFF_BASE, metavar="SECONDS", help=tr("first backoff before a retry, doubled on each retry up to 30 s, with jitter (default: 1)"))
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help=tr("seconds without data before a connection is given up and retried (default: 60)"))
    output = parser.add_mutually_exclusive_group()
    output.add_argument("-v", "--verbose", action="store_true", help=tr("print debug lines (one per request) and tracebacks"))
    output.add_argument("-q", "--quiet", action="store_true", help=tr("print only errors: no progress bars, no messages"))
    parser.add_argument("--lang", choices=LANGUAGES, help=tr("language of messages (default: from LANGUAGE, LC_ALL, LC_MESSAGES or LANG)"))
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__, help=tr("show program's version number and exit"))
    return parser


def language_from_argv(argv: Sequence[str]) -> Optional[str]:
    """Find --lang before parsing, so that help and parse errors use it too."""
    for position, argument in enumerate(argv):
        if argument.startswith("--lang="):
            return argument.split("=", 1)[1]
        if argument == "--lang" and position + 1 < len(argv):
            return argv[position + 1]
    return None


def read_credentials(args: argparse.Namespace, stdin) -> Optional[Credentials]:
    username = args.username or os.environ.get(ENV_USERNAME)
    password = None
    if args.password_stdin:
        if args.password:
            raise UsageError(Text("--password and --password-stdin exclude each other."))
        password = stdin.read().rstrip("\r\n")
        if not password:
            raise UsageError(Text("The password read from standard input is empty."))
    elif args.password:
        LOGGER.warning(Text("WARNING! Using --password on the command line is insecure: other users can read it. Use --password-stdin."))
        password = args.password
    elif os.environ.get(ENV_PASSWORD):
        password = os.environ[ENV_PASSWORD]
    if password is None and username is None:
        return None
    if not username:
        raise UsageError(Text("A password was given without a user name; add -u USER."))
    if not password:
        raise UsageError(Text("No password for user {user}: pass it with --password-stdin or ${variable}; this tool never prompts.", user=username, variable=ENV_PASSWORD))
    return Credentials(username, password)


def read_reference_list(path: str, stdin) -> List[str]:
    """Read references one per line; blank lines and text after # are skipped."""
    try:
        if path == "-":
            text = stdin.read()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(Text("The image list {path} could not be read: {error}", path=path, error=error))
    references = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            references.append(line)
    return references


def read_compose_images(path: str) -> List[str]:
    """Return the image: of every service in a Compose file, in file order."""
    try:
        import yaml  # PyYAML, an optional dependency needed only here
    except ImportError:
        raise UsageError(Text("--compose needs PyYAML: pip install pyyaml"))
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise UsageError(Text("The Compose file {path} could not be read: {error}", path=path, error=str(error).splitlines()[0]))
    services = document.get("services") if isinstance(document, dict) else None
    if not isinstance(services, dict):
        raise UsageError(Text("The Compose file {path} has no services.", path=path))
    images = [service["image"] for service in services.values() if isinstance(service, dict) and isinstance(service.get("image"), str)]
    if not images:
        raise UsageError(Text("No service in the Compose file {path} names an image:.", path=path))
    return images


def collect_references(args: argparse.Namespace, stdin) -> List[Reference]:
    """Gather the references from the command line, -f and --compose, without repeats."""
    if args.file == "-" and args.password_stdin:
        raise UsageError(Text("-f - and --password-stdin both read standard input; use one of them."))
    texts = list(args.images)
    if args.file:
        texts += read_reference_list(args.file, stdin)
    if args.compose:
        texts += read_compose_images(args.compose)
    if not texts:
        raise UsageError(Text("No image given: name one or more images, or use -f LIST or --compose FILE."))
    default_registry = parse_registry(args.registry) if args.registry else DOCKER_HUB
    references: List[Reference] = []
    for text in texts:
        reference = parse_reference(text, default_registry)
        if reference not in references:
            references.append(reference)
    return references


_RATE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?(?:/s)?", re.IGNORECASE)
RATE_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
CONFIG_FILE_NAME = "config.ini"
# Keys of config.ini by section, and the command-line options they stand in for.
CONFIG_NETWORK_KEYS = {"max_bandwidth": "limit_rate", "threads": "threads", "retries": "retry", "timeout": "timeout", "proxy": "proxy"}
CONFIG_REGISTRY_KEYS = {"mirrors": "mirror", "insecure_registries": "insecure_registries", "platform": "platform", "ca_cert": "ca_cert"}


def parse_rate(text: str, source: str = "--limit-rate") -> float:
    """Parse a rate in bytes per second: 500K, 50M, 1G, 1.5M or a plain number (K = 1024)."""
    match = _RATE_RE.fullmatch((text or "").strip())
    if match is None or float(match.group(1)) <= 0:
        raise UsageError(Text("Invalid {source} {value!r}: expected bytes per second such as 500K, 50M or 1G.", source=source, value=text))
    return float(match.group(1)) * RATE_UNITS[match.group(2).lower()]


def user_config_folder() -> str:
    if os.name == "nt":
        base = os.environ.get("APPDATA") or os.path.expanduser("~")
    else:
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "docker-image-puller")


def load_config(args: argparse.Namespace) -> Tuple[Optional[str], Dict[str, str]]:
    """Read the [network] section of the first config.ini found: --config, DIR, the user's folder.

    Returns the file's path (None when there is none) and its values by option name.
    """
    import configparser

    if args.config:
        if not os.path.isfile(args.config):
            raise UsageError(Text("The configuration file {path} does not exist.", path=args.config))
        candidates = [args.config]
    else:
        candidates = [os.path.join(args.dir, CONFIG_FILE_NAME), os.path.join(user_config_folder(), CONFIG_FILE_NAME)]
    for path in candidates:
        if not os.path.isfile(path):
            continue
        parser = configparser.ConfigParser()
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle)
        except (OSError, UnicodeDecodeError, configparser.Error) as error:
            raise UsageError(Text("The configuration file {path} could not be read: {error}", path=path, error=str(error).splitlines()[0]))
        values = {}
        for section, keys in (("network", CONFIG_NETWORK_KEYS), ("registry", CONFIG_REGISTRY_KEYS)):
            if parser.has_section(section):
                for key, value in parser.items(section):
                    if key in keys and value.strip():
                        values[keys[key]] = value.strip()
                    elif key not in keys:
                        LOGGER.warning(Text("Unknown key {key} in [{section}] of {path}; it is ignored.", key=key, section=section, path=path))
        return path, values
    return None, {}


def split_list(text: str) -> List[str]:
    """Split a config.ini list written with commas, blanks or one item per line."""
    return [item for item in re.split(r"[\s,]+", text) if item]


def number_in_range(value: float, minimum: float, maximum: Optional[float]) -> float:
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(value)
    return value


def resolve_option(args: argparse.Namespace, config: Dict[str, str], config_path: Optional[str], name: str, convert: Callable[[str], object], default: object) -> object:
    """Return the option from the command line, else from config.ini, else the default."""
    value = getattr(args, name)
    if value is not None:
        return value
    if name in config:
        try:
            return convert(config[name])
        except (ValueError, UsageError):
            key = next(k for k, v in list(CONFIG_NETWORK_KEYS.items()) + list(CONFIG_REGISTRY_KEYS.items()) if v == name)
            raise UsageError(Text("Invalid value {value!r} for {key} in {path}.", value=config[name], key=key, path=config_path))
    return default


def settings_from_args(args: argparse.Namespace, references: Sequence[Reference], stdin) -> PullSettings:
    config_path, config = load_config(args)
    args.threads = resolve_option(args, config, config_path, "threads", lambda text: number_in_range(int(text), 1, MAX_THREADS), DEFAULT_THREADS)
    args.retry = resolve_option(args, config, config_path, "retry", lambda text: number_in_range(int(text), 0, None), DEFAULT_RETRIES)
    args.timeout = resolve_option(args, config, config_path, "timeout", lambda text: number_in_range(float(text), 1e-3, None), DEFAULT_READ_TIMEOUT)
    rate = resolve_option(args, config, config_path, "limit_rate", lambda text: parse_rate(text, "max_bandwidth"), None)
    if isinstance(rate, str):
        rate = parse_rate(rate)

    if args.output == STDOUT_ARCHIVE and sys.stdout.isatty():
        raise UsageError(Text("Refusing to write a binary archive to a terminal; redirect standard output to a file or pipe it into docker load."))
    if not 1 <= args.threads <= MAX_THREADS:
        raise UsageError(Text("Invalid --threads {value}: expected 1 to {maximum}.", value=args.threads, maximum=MAX_THREADS))
    if args.retry < 0:
        raise UsageError(Text("Invalid --retry {value}: expected 0 or more.", value=args.retry))
    if args.retry_delay < 0:
        raise UsageError(Text("Invalid --retry-delay {value}: expected 0 or more seconds.", value=args.retry_delay))
    if args.timeout <= 0:
        raise UsageError(Text("Invalid --timeout {value}: expected a positive number of seconds.", value=args.timeout))
    if args.output == STDOUT_ARCHIVE and args.json:
        raise UsageError(Text("--json and -o - both write to standard output; use one of them."))
    if not args.output:
        archives: Dict[str, Reference] = {}
        for reference in references:
            path = os.path.normcase(os.path.abspath(os.path.join(args.dir, reference.file_stem() + ".tar")))
            if path in archives and archives[path] != reference:
                raise UsageError(Text("{first} and {second} would both be written to {path}; pull them in separate runs with different -d or -o.", first=archives[path], second=reference, path=path))
            archives[path] = reference

    platform_text = args.platform or os.environ.get(ENV_DEFAULT_PLATFORM) or config.get("platform")
    platform = parse_platform(platform_text or DEFAULT_PLATFORM)
    mirror_texts = args.mirror or split_list(config.get("mirror", ""))
    mirrors = tuple(parse_mirror(text) for text in mirror_texts)
    insecure = set(r.api_host for r in references) if args.insecure else set()
    if args.insecure:
        insecure.update(mirror.host for mirror in mirrors)
    insecure.update(parse_registry(name) for name in split_list(config.get("insecure_registries", "")))

    ca_file = args.ca_cert or config.get("ca_cert")
    if ca_file and not os.path.isfile(ca_file):
        raise UsageError(Text("The CA certificate file {path} does not exist.", path=ca_file))
    proxy = config.get("proxy")
    if proxy and urllib.parse.urlsplit(proxy).scheme not in ("http", "https"):
        raise UsageError(Text("Invalid proxy {value!r} in {path}: expected http://HOST:PORT.", value=proxy, path=config_path))

    network = NetworkOptions(
        retries=args.retry, backoff_base=args.retry_delay, read_timeout=args.timeout,
        connect_timeout=min(DEFAULT_CONNECT_TIMEOUT, args.timeout), insecure_registries=frozenset(insecure),
        ca_file=ca_file, proxy=proxy,
    )
    return PullSettings(
        directory=args.dir, output=args.output, platform=platform, platform_explicit=bool(platform_text),
        threads=args.threads, network=network, credentials=CredentialSource(read_credentials(args, stdin), [r.registry for r in references]),
        show_progress=not args.quiet and sys.stderr.isatty(), log_progress=not args.quiet, remove_blobs=args.remove_blobs,
        limiter=RateLimiter(rate), config_path=config_path, mirrors=mirrors,
    )


def print_error(error: PullerError, reference: Optional[Reference] = None) -> None:
    message = error.render()
    if reference is not None:
        message = "%s: %s" % (reference, message)
    print(program_name() + ": " + Text("error: {message}", message=message).render(), file=sys.stderr)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


CANCEL_EVENTS: List[threading.Event] = []  # the events of the pulls under way, set on Ctrl-C


def new_cancel_event() -> threading.Event:
    event = threading.Event()
    CANCEL_EVENTS[:] = [event]
    return event


@dataclass
class ImageResult:
    reference: Reference
    status: str  # "pulled", "failed" or "skipped" (not tried after --fail-fast)
    digest: str = ""
    platform: str = ""
    archive: str = ""
    size: int = 0
    error: str = ""


def report_failure(reference: Reference, error: PullerError, args: argparse.Namespace) -> ImageResult:
    LOGGER.error("%s: %s", reference, error.render("en"), exc_info=args.verbose, extra=FILE_ONLY)
    if args.verbose:
        traceback.print_exc()
    print_error(error, reference)
    return ImageResult(reference, "failed", error=error.render())


def emit_result(result: ImageResult, args: argparse.Namespace) -> None:
    """Print an image's outcome on standard output: its archive path, or a JSON object with --json."""
    if args.json:
        record = {
            "reference": str(result.reference), "status": result.status, "digest": result.digest or None,
            "platform": result.platform or None, "archive": result.archive or None, "size": result.size,
            "error": result.error or None,
        }
        print(json.dumps(record, ensure_ascii=False), flush=True)
    elif result.status == "pulled" and not args.quiet and result.archive != STDOUT_ARCHIVE:
        print(result.archive, flush=True)


def run_pulls(references: Sequence[Reference], settings: PullSettings, args: argparse.Namespace) -> List[ImageResult]:
    """Pull each image into its own archive, or all into the one named with -o."""
    combined = settings.output is not None and len(references) > 1
    results: List[ImageResult] = []
    fetched: List[FetchedImage] = []
    for position, reference in enumerate(references):
        cancel = new_cancel_event()
        try:
            if combined:
                item = fetch_image(reference, settings, cancel, None)
                fetched.append(item)
                result = ImageResult(reference, "pulled", item.image.manifest.digest, str(item.platform), settings.output, item.size)
            else:
                pulled = pull_image(reference, settings, cancel)
                result = ImageResult(reference, "pulled", pulled.digest, str(pulled.platform), pulled.archive, pulled.size)
        except PullerError as error:
            cancel.set()
            result = report_failure(reference, error, args)
        results.append(result)
        if not combined:
            emit_result(result, args)
        if result.status == "failed" and args.fail_fast:
            results.extend(ImageResult(skipped, "skipped") for skipped in references[position + 1:])
            break

    if combined:
        failed = [r for r in results if r.status != "pulled"]
        if failed:
            not_written = PullerError(Text("The archive {path} was not written because {count} of {total} images could not be pulled.", path=settings.output, count=len(failed), total=len(references)))
            LOGGER.error(not_written.render("en"), extra=FILE_ONLY)
            print_error(not_written)
            for result in results:
                if result.status == "pulled":
                    result.archive = ""
        else:
            try:
                archive_images(settings.output, fetched, settings, new_cancel_event())
            except PullerError as error:
                print_error(error)
                for result in results:
                    result.status, result.archive, result.error = "failed", "", error.render()
        if args.json:
            for result in results:
                emit_result(result, args)
        elif not failed and not args.quiet and settings.output != STDOUT_ARCHIVE:
            print(settings.output, flush=True)
    LOGGER.info(Text("Finished: {pulled} pulled, {failed} failed, {skipped} skipped.", pulled=sum(r.status == "pulled" for r in results), failed=sum(r.status == "failed" for r in results), skipped=sum(r.status == "skipped" for r in results)), extra=FILE_ONLY)
    return results


def print_summary(results: Sequence[ImageResult]) -> None:
    """Print a table of every image's outcome on standard error."""
    status_words = {"pulled": tr("pulled"), "failed": tr("failed"), "skipped": tr("skipped")}
    header = [tr("IMAGE"), tr("PLATFORM"), tr("DIGEST"), tr("SIZE"), tr("ARCHIVE"), tr("STATUS")]
    rows = [header] + [
        [str(r.reference), r.platform or "-", r.digest[7:19] if r.digest else "-", format_size(r.size) if r.size else "-", r.archive or "-", status_words[r.status]]
        for r in results
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), file=sys.stderr)


def platforms_at(source: Reference, scheme: Optional[str], settings: PullSettings, cancel: threading.Event) -> List[Tuple[str, str]]:
    """Return (platform, manifest digest) pairs that the image at ``source`` offers."""
    client = RegistryClient(source, settings.network, settings.credentials.for_registry(source.registry), cancel, settings.limiter, scheme)
    try:
        client.ping()
        top = fetch_manifest(client, source.manifest_reference, source.digest)
        if top.media_type in INDEX_TYPES:
            return [(str(platform_from_descriptor(entry)), entry["digest"]) for entry in index_entries(top)
                    if not is_attestation(entry) and platform_from_descriptor(entry) is not None]
        image = parse_image_manifest(top)
        config = client.fetch_small(
            client.blob_url(image.config.digest), headers={}, limit=MAX_CONFIG_BYTES, what=Text("config"),
            phase=Text("Downloading blob {digest} of {image}", digest=image.config.digest, image=source.name),
            parse=lambda response, raw: parse_json_object(raw, response, Text("config")),
        )
        return [(str(check_config(config, image, None)), top.digest)]
    finally:
        client.close()


def list_platforms(references: Sequence[Reference], settings: PullSettings, args: argparse.Namespace) -> int:
    """Print each image's platforms and manifest digests, asking mirrors first; no layer is downloaded."""
    status = EXIT_OK
    for reference in references:
        try:
            offers = from_sources(reference, settings, new_cancel_event(), platforms_at)
        except PullerError as error:
            report_failure(reference, error, args)
            status = EXIT_FAILURE
            continue
        if args.json:
            print(json.dumps({"reference": str(reference), "platforms": [{"platform": p, "digest": d} for p, d in offers]}), flush=True)
        else:
            for platform, digest in offers:
                print("%s\t%s\t%s" % (reference, platform, digest), flush=True)
    return status


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; return the exit status. The only place errors become messages."""
    argv = list(sys.argv[1:] if argv is None else argv)
    set_language(language_from_argv(argv) or detect_language())
    args = build_parser().parse_args(argv)

    try:
        references = collect_references(args, sys.stdin)
        settings = settings_from_args(args, references, sys.stdin)
        os.makedirs(settings.directory, exist_ok=True)
    except PullerError as error:
        print_error(error)
        return error.exit_code
    except OSError as error:
        print_error(local_error(Text("Creating the working folder"), args.dir, error))
        return EXIT_FAILURE

    handlers = setup_logging(settings.directory, args.verbose, args.quiet)
    if any(settings.network.verify_tls("https://%s/" % r.api_host) is False for r in references):
        # The user chose not to verify these certificates; urllib3 would warn on every request.
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    previous_sigterm = None
    if threading.current_thread() is threading.main_thread():
        previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
    LOGGER.info(Text("docker-image-puller {version} started.", version=__version__), extra=FILE_ONLY)
    LOGGER.info(
        "Settings: threads=%d retries=%d timeout=%s limit_rate=%s config=%s", settings.threads,
        settings.network.retries, settings.network.read_timeout, settings.limiter.rate, settings.config_path, extra=FILE_ONLY,
    )
    try:
        if args.list_platforms:
            return list_platforms(references, settings, args)
        results = run_pulls(references, settings, args)
        if len(references) > 1 and not args.quiet and not args.json:
            print_summary(results)
        return EXIT_FAILURE if any(result.status != "pulled" for result in results) else EXIT_OK
    except BrokenPipeError:
        # The reader of standard output has gone (e.g. | head): stop quietly.
        for event in CANCEL_EVENTS:
            event.set()
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except (KeyboardInterrupt, Terminated, Cancelled) as interruption:
        for event in CANCEL_EVENTS:
            event.set()
        LOGGER.error(Text("Interrupted; downloads so far are kept. Run the same command again to resume."))
        return SIGTERM_EXIT if isinstance(interruption, Terminated) else EXIT_INTERRUPTED
    except Exception as error:  # a bug: report it as one, with the traceback in the log
        for event in CANCEL_EVENTS:
            event.set()
        LOGGER.error("Unexpected error", exc_info=True, extra=FILE_ONLY)
        if args.verbose:
            traceback.print_exc()
        print_error(PullerError(Text("Unexpected error: {error!r}.", error=error), Text("Run with -v for the traceback, and report it with the log {log}.", log=os.path.join(settings.directory, LOG_FILE_NAME))))
        return EXIT_FAILURE
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
        remove_logging(handlers)


def run() -> None:
    """Entry point of the script and of the installed docker-image-puller command."""
    status = main()
    if any(thread.name.startswith("blob") and thread.is_alive() for thread in threading.enumerate()):
        # A download worker is still blocked in a socket read after an interruption.
        # Its .part file is consistent (a rerun re-hashes it), so exit without joining it.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    run()
