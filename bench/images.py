"""Generate the benchmark's gzip layers, cache them on disk and push the images.

Each layer is a gzip-compressed tar with one file of pseudo-random bytes from
random.Random(seed), so its digest is the same on every machine and in every
run. Random bytes do not compress, which makes the compressed size (what a
pull downloads) about equal to the file size. Layers are written in a stream,
so generating one needs little memory, and they are kept in the cache folder
with a JSON file of their digests, so later runs skip the generation.
"""

import concurrent.futures
import gzip
import hashlib
import json
import os
import random
import sys
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

TESTS_DIR = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from realregistry import Layer, RunningRegistry, push_image  # noqa: E402

MIB = 1024 * 1024

# Bumped when the layer format changes, so that old cache entries are not used.
CACHE_FORMAT = 1

# Content generated per call of randbytes. A fixed block size keeps the bytes
# the same whatever read sizes tarfile requests.
RANDOM_BLOCK = MIB


@dataclass(frozen=True)
class LayerSpec:
    seed: int
    file_size: int  # bytes of the one file in the layer

    @property
    def file_name(self) -> str:
        return "bench-layer-%d.bin" % self.seed


@dataclass(frozen=True)
class ImageSpec:
    repository: str
    tag: str
    layers: Sequence[LayerSpec]


# 1 GiB in four layers, and one layer of 256 MiB.
BIG_IMAGE = ImageSpec("bench/big", "v1", tuple(LayerSpec(1000 + index, 256 * MIB) for index in range(4)))
SINGLE_IMAGE = ImageSpec("bench/single", "v1", (LayerSpec(2000, 256 * MIB),))


@dataclass(frozen=True)
class LayerFile:
    """A generated layer in the cache folder and the digests of its bytes."""

    path: str  # the gzip blob
    seed: int
    file_name: str
    file_size: int
    file_sha256: str  # hex sha256 of the file inside the tar
    tar_size: int  # bytes of the uncompressed tar
    diff_id: str  # sha256 of the uncompressed tar
    digest: str  # sha256 of the gzip blob
    size: int  # bytes of the gzip blob


@dataclass
class PushedImage:
    """An image in the registry, with what a pull has to download."""

    repository: str
    tag: str
    manifest_digest: str
    config_digest: str
    config_size: int
    layers: List[LayerFile]

    @property
    def image_bytes(self) -> int:
        """Compressed layers plus the config: the bytes a pull downloads, without the manifest."""
        return sum(layer.size for layer in self.layers) + self.config_size

    def reference(self, host: str) -> str:
        return "%s/%s:%s" % (host, self.repository, self.tag)


class _RandomReader:
    """File-like object that returns `size` bytes from random.Random(seed)."""

    def __init__(self, seed: int, size: int) -> None:
        self._random = random.Random(seed)
        self._remaining = size
        self._block = b""
        self._offset = 0
        self.sha256 = hashlib.sha256()

    def read(self, count: int = -1) -> bytes:
        if count < 0:
            count = self._remaining
        count = min(count, self._remaining)
        parts = []
        while count > 0:
            if self._offset == len(self._block):
                self._block = self._random.randbytes(RANDOM_BLOCK)
                self._offset = 0
            part = self._block[self._offset:self._offset + count]
            self._offset += len(part)
            count -= len(part)
            parts.append(part)
        data = b"".join(parts)
        self._remaining -= len(data)
        self.sha256.update(data)
        return data


class _HashingWriter:
    """File-like object that hashes what tarfile writes and passes it on to gzip."""

    def __init__(self, gzip_file: gzip.GzipFile) -> None:
        self._gzip_file = gzip_file
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._gzip_file.write(data)

    def tell(self) -> int:
        return self.size


class _HashingFile:
    """File-like object that hashes and counts the gzip bytes on their way to disk."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self._handle.write(data)

    def flush(self) -> None:
        self._handle.flush()


def generate_layer(spec: LayerSpec, path: Path) -> LayerFile:
    """Write the layer for `spec` to `path` and return its digests."""
    temporary = path.with_name(path.name + ".partial")
    with open(temporary, "wb") as handle:
        blob_file = _HashingFile(handle)
        # Level 1 because random bytes do not compress and higher levels only cost
        # time. mtime=0 keeps the gzip header the same in every run.
        with gzip.GzipFile(fileobj=blob_file, mode="wb", compresslevel=1, mtime=0) as gzip_file:
            tar_stream = _HashingWriter(gzip_file)
            content = _RandomReader(spec.seed, spec.file_size)
            info = tarfile.TarInfo(spec.file_name)
            info.size = spec.file_size
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with tarfile.open(fileobj=tar_stream, mode="w", format=tarfile.PAX_FORMAT) as archive:
                archive.addfile(info, content)
    os.replace(temporary, path)
    return LayerFile(
        path=str(path),
        seed=spec.seed,
        file_name=spec.file_name,
        file_size=spec.file_size,
        file_sha256=content.sha256.hexdigest(),
        tar_size=tar_stream.size,
        diff_id="sha256:" + tar_stream.sha256.hexdigest(),
        digest="sha256:" + blob_file.sha256.hexdigest(),
        size=blob_file.size,
    )


def _cache_paths(cache_dir: Path, spec: LayerSpec) -> Tuple[Path, Path]:
    stem = "layer-v%d-seed%d-%d" % (CACHE_FORMAT, spec.seed, spec.file_size)
    return cache_dir / (stem + ".tar.gz"), cache_dir / (stem + ".json")


def load_cached_layer(cache_dir: Path, spec: LayerSpec) -> Optional[LayerFile]:
    """Return the cached layer for `spec`, or None when it is missing or its size is wrong."""
    blob_path, meta_path = _cache_paths(cache_dir, spec)
    try:
        meta: Dict[str, Any] = json.loads(meta_path.read_text())
        layer = LayerFile(**meta)
    except (OSError, ValueError, TypeError):
        return None
    # The digests are not recomputed (that takes seconds per layer), but a
    # truncated or replaced blob is caught by its size and path.
    if layer.path != str(blob_path) or not blob_path.is_file() or blob_path.stat().st_size != layer.size:
        return None
    return layer


def _generate_into_cache(cache_dir: str, spec: LayerSpec) -> LayerFile:
    blob_path, meta_path = _cache_paths(Path(cache_dir), spec)
    layer = generate_layer(spec, blob_path)
    temporary = meta_path.with_name(meta_path.name + ".partial")
    temporary.write_text(json.dumps(asdict(layer), indent=2) + "\n")
    os.replace(temporary, meta_path)
    return layer


def prepare_layers(cache_dir: Path, specs: Sequence[LayerSpec], workers: int = 2) -> Dict[LayerSpec, LayerFile]:
    """Return a LayerFile for every spec, generating missing ones in `workers` processes."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    layers: Dict[LayerSpec, LayerFile] = {}
    missing = []
    for spec in specs:
        cached = load_cached_layer(cache_dir, spec)
        if cached is None:
            missing.append(spec)
        else:
            layers[spec] = cached
    if missing:
        print(
            "generating %d layer(s) of %s into %s" % (len(missing), ", ".join("%d MiB" % (s.file_size // MIB) for s in missing), cache_dir),
            file=sys.stderr,
            flush=True,
        )
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {spec: pool.submit(_generate_into_cache, str(cache_dir), spec) for spec in missing}
            for spec, future in futures.items():
                layers[spec] = future.result()
    return layers


def push_bench_image(registry: RunningRegistry, image: ImageSpec, layer_files: Dict[LayerSpec, LayerFile]) -> PushedImage:
    """Push `image` with the cached layers and return what the registry stores.

    The blobs are read into memory for the push (push_image takes bytes), and
    blobs that the registry already has are not uploaded again.
    """
    files = [layer_files[spec] for spec in image.layers]
    layers = [
        Layer(
            blob=Path(layer.path).read_bytes(),
            digest=layer.digest,
            diff_id=layer.diff_id,
            file_name=layer.file_name,
            file_sha256=layer.file_sha256,
            file_size=layer.file_size,
        )
        for layer in files
    ]
    pushed = push_image(registry, image.repository, image.tag, layers)
    return PushedImage(
        repository=image.repository,
        tag=image.tag,
        manifest_digest=pushed["manifest_digest"],
        config_digest=pushed["config_digest"],
        config_size=len(pushed["config_bytes"]),
        layers=files,
    )


def registry_blob_path(registry: RunningRegistry, digest: str) -> Path:
    """Return where distribution's filesystem driver keeps the data of a blob."""
    algorithm, hex_digest = digest.split(":", 1)
    return registry.workdir / "storage" / "docker" / "registry" / "v2" / "blobs" / algorithm / hex_digest[:2] / hex_digest / "data"
