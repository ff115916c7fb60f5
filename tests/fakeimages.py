"""Build image content (layers, configs, manifests, indexes) as bytes for the fake registry.

Every function here is pure and deterministic: equal input gives byte-equal output,
so tests can rebuild the expected blobs and digests on their own.
Only the Python standard library is used.
"""

import gzip
import hashlib
import io
import json
import tarfile
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"

IN_TOTO = "application/vnd.in-toto+json"

# Media types per manifest flavour: (manifest, config, compressed layer, plain tar layer).
MEDIA_TYPES = {
    "docker": (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_LAYER_TAR),
    "oci": (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_TAR),
}
INDEX_MEDIA_TYPES = {"docker": DOCKER_MANIFEST_LIST, "oci": OCI_INDEX}

# Annotations that BuildKit puts on the index entry of an attestation manifest.
ATTESTATION_ANNOTATION_TYPE = "vnd.docker.reference.type"
ATTESTATION_ANNOTATION_DIGEST = "vnd.docker.reference.digest"
ATTESTATION_TYPE = "attestation-manifest"

FIXED_CREATED = "2024-01-01T00:00:00Z"

Platform = Union[Tuple[str, str], Tuple[str, str, Optional[str]], Dict[str, str]]


def sha256_digest(data: bytes) -> str:
    """Return the OCI digest string ``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_layer(files: Dict[str, bytes]) -> bytes:
    """Build an uncompressed tar archive of regular files with fixed metadata.

    Names are added in sorted order with mtime 0, mode 0644 and uid/gid 0, so the same
    mapping always gives the same bytes and therefore the same diff_id.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in sorted(files):
            data = files[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """Compress with gzip using mtime 0, so the output depends only on the input."""
    return gzip.compress(data, mtime=0)


def platform_dict(platform: Platform) -> Dict[str, str]:
    """Convert an (os, architecture[, variant]) tuple to an OCI platform object.

    A dict is returned as a copy. A variant of None or "" is left out.
    """
    if isinstance(platform, dict):
        return dict(platform)
    if len(platform) not in (2, 3):
        raise ValueError(f"platform must be (os, architecture[, variant]), got {platform!r}")
    result = {"architecture": platform[1], "os": platform[0]}
    if len(platform) == 3 and platform[2]:
        result["variant"] = platform[2]
    return result


def encode_manifest(document: Dict[str, Any]) -> bytes:
    """Serialize a manifest or index as the registry would store it.

    The 3-space indent matches what the Docker CLI pushes. Clients must verify the digest
    over these exact bytes, so any re-serialization on their side breaks the digest check.
    """
    return json.dumps(document, indent=3).encode("utf-8")


def build_image(
    layers: Sequence[bytes],
    platform: Platform = ("linux", "amd64", None),
    media: str = "docker",
    config_extra: Optional[Dict[str, Any]] = None,
    compress: bool = True,
) -> Dict[str, Any]:
    """Build the config, layer blobs and manifest of a single-platform image.

    ``layers`` are uncompressed tar archives (see make_layer), and each diff_id in the
    config is the sha256 of one of them. With ``compress`` the layer blobs are gzip
    streams of those archives, otherwise the archives themselves. ``config_extra`` is
    merged into the top level of the config last, so it can override any field,
    including ``rootfs``.

    Returns a dict with manifest_bytes, media_type, config_bytes, config_digest,
    layer_blobs, layer_digests and diff_ids.
    """
    if media not in MEDIA_TYPES:
        raise ValueError(f"media must be one of {sorted(MEDIA_TYPES)}, got {media!r}")
    manifest_type, config_type, gzip_type, tar_type = MEDIA_TYPES[media]
    platform_fields = platform_dict(platform)

    diff_ids = [sha256_digest(layer) for layer in layers]
    layer_blobs = [gzip_bytes(layer) if compress else bytes(layer) for layer in layers]
    layer_digests = [sha256_digest(blob) for blob in layer_blobs]

    config: Dict[str, Any] = dict(platform_fields)
    config.update(
        {
            "created": FIXED_CREATED,
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh"],
            },
            "history": [
                {"created": FIXED_CREATED, "created_by": f"fake layer {index}"}
                for index in range(len(layers))
            ],
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    )
    if config_extra:
        config.update(config_extra)
    config_bytes = json.dumps(config, separators=(",", ":"), sort_keys=True).encode("utf-8")
    config_digest = sha256_digest(config_bytes)

    manifest = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "size": len(config_bytes), "digest": config_digest},
        "layers": [
            {"mediaType": gzip_type if compress else tar_type, "size": len(blob), "digest": digest}
            for blob, digest in zip(layer_blobs, layer_digests)
        ],
    }
    return {
        "manifest_bytes": encode_manifest(manifest),
        "media_type": manifest_type,
        "config_bytes": config_bytes,
        "config_digest": config_digest,
        "layer_blobs": layer_blobs,
        "layer_digests": layer_digests,
        "diff_ids": diff_ids,
    }


def build_attestation(subject_digest: str) -> Dict[str, Any]:
    """Build an attestation manifest shaped like the ones BuildKit attaches to an index.

    Its one layer is an in-toto statement about ``subject_digest``. Returns a dict with
    manifest_bytes, media_type and blobs (the config and the statement).
    """
    statement = json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://slsa.dev/provenance/v0.2",
            "subject": [{"name": "fake", "digest": {"sha256": subject_digest.split(":", 1)[1]}}],
            "predicate": {},
        },
        sort_keys=True,
    ).encode("utf-8")
    config = json.dumps(
        {
            "architecture": "unknown",
            "os": "unknown",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(statement)]},
        },
        sort_keys=True,
    ).encode("utf-8")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "size": len(config), "digest": sha256_digest(config)},
        "layers": [
            {
                "mediaType": IN_TOTO,
                "size": len(statement),
                "digest": sha256_digest(statement),
                "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"},
            }
        ],
    }
    return {
        "manifest_bytes": encode_manifest(manifest),
        "media_type": OCI_MANIFEST,
        "blobs": [config, statement],
    }


def build_index(descriptors: List[Dict[str, Any]], media: str = "oci") -> Tuple[bytes, str]:
    """Build an OCI image index or a Docker manifest list from ready descriptors.

    Returns the index bytes and its media type.
    """
    if media not in INDEX_MEDIA_TYPES:
        raise ValueError(f"media must be one of {sorted(INDEX_MEDIA_TYPES)}, got {media!r}")
    media_type = INDEX_MEDIA_TYPES[media]
    index = {"schemaVersion": 2, "mediaType": media_type, "manifests": descriptors}
    return encode_manifest(index), media_type
