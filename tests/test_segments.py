"""Segmented downloads, the connection budget, the rate cap, -o -, --remove-blobs and config.ini."""

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import docker_image_puller as dip
from cli import SCRIPT, puller_environment, run_puller
from fakeregistry import FakeRegistry
from relay import ThrottlingRelay
from test_fake_registry import assert_complete_archive, blob_gets, pull

SEED = 4242
MIB = 1024 * 1024


def big_layer(size: int, index: int = 0) -> bytes:
    return random.Random(SEED + index).randbytes(size)


@pytest.fixture(autouse=True)
def english_messages(monkeypatch):
    for name in ("LANGUAGE", "LC_ALL", "LC_MESSAGES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent-config-home")


@pytest.fixture
def registry():
    with FakeRegistry() as fake:
        yield fake
    assert fake.errors == [], "\n".join(fake.errors)


def add_big_image(fake: FakeRegistry, size: int = 40 * MIB) -> dict:
    # Uncompressed OCI layers keep setup fast; the puller treats them like any blob.
    return fake.add_image("team/app", "v1", [big_layer(size), big_layer(1000, 1)], media="oci", compress=False)


def ranges(records):
    result = []
    for record in records:
        header = record.header("Range")
        start, end = header[len("bytes="):].split("-")
        result.append((int(start), int(end) if end else None))
    return sorted(result)


def test_large_blob_fetched_in_ranges(registry, tmp_path, capsys):
    image = add_big_image(registry)
    layer, size = image["layer_digests"][0], len(image["layer_blobs"][0])
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "-t", "4")
    assert result.status == 0, result.stderr
    gets = blob_gets(registry, layer)
    # Twice as many ranges as connections, each at least 8 MiB: 40 MiB gives 5.
    assert len(gets) == 5
    spans = ranges(gets)
    assert spans[0][0] == 0
    assert spans[-1][1] == size - 1
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start == end + 1
    assert sum(r.body_bytes for r in gets) == size
    assert not list(tmp_path.rglob("segments.json"))
    assert_complete_archive(tmp_path, image)


def test_small_blob_uses_one_request(registry, tmp_path, capsys):
    image = registry.add_image("team/app", "v1", [big_layer(2 * MIB)], media="oci", compress=False)
    assert pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "-t", "8").status == 0
    (get,) = blob_gets(registry, image["layer_digests"][0])
    assert get.header("Range") is None


def test_cut_range_resumes_alone(registry, tmp_path, capsys):
    image = add_big_image(registry)
    layer, size = image["layer_digests"][0], len(image["layer_blobs"][0])
    registry.fault("drop_after", "/blobs/" + layer, after_bytes=3 * MIB)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "-t", "4")
    assert result.status == 0, result.stderr
    gets = blob_gets(registry, layer)
    assert len(gets) == 6
    starts = [start for start, _ in ranges(gets)]
    segment_starts = [segment.start for segment in dip.plan_segments(size, 8)]
    resumed = [start for start in starts if start not in segment_starts]
    assert len(resumed) == 1
    assert resumed[0] - max(s for s in segment_starts if s < resumed[0]) == 3 * MIB
    assert sum(r.body_bytes for r in gets) == size, "bytes already written were fetched again"
    assert_complete_archive(tmp_path, image)


def test_ignored_range_falls_back_to_one_connection(registry, tmp_path, capsys):
    image = add_big_image(registry)
    layer = image["layer_digests"][0]
    registry.fault("ignore_range", "/blobs/" + layer, times=None)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "-t", "4")
    assert result.status == 0, result.stderr
    assert "ignores Range requests" in result.stderr
    assert blob_gets(registry, layer)[-1].header("Range") is None
    assert_complete_archive(tmp_path, image)


def leave_partial_ranges(directory: Path, layer: str, data: bytes, segments, done) -> None:
    """Write the blob.part and segments.json that an interrupted run leaves behind."""
    folder = directory / "team_app_layers" / layer.replace(":", "_")
    folder.mkdir(parents=True)
    part = bytearray(len(data))
    for segment, written in zip(segments, done):
        part[segment.start:segment.start + written] = data[segment.start:segment.start + written]
    (folder / "blob.part").write_bytes(bytes(part))
    state = {"size": len(data), "segments": [[s.start, s.end, d] for s, d in zip(segments, done)]}
    (folder / "segments.json").write_text(json.dumps(state))


def test_segments_resume_across_runs(registry, tmp_path, capsys):
    image = add_big_image(registry)
    layer, data = image["layer_digests"][0], image["layer_blobs"][0]
    size = len(data)
    segments = dip.plan_segments(size, 4)
    done = [0, 5 * MIB, segments[2].end - segments[2].start, 1234567]
    leave_partial_ranges(tmp_path, layer, data, segments, done)

    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "-t", "4")
    assert result.status == 0, result.stderr
    gets = blob_gets(registry, layer)
    expected = sorted((s.start + d, s.end - 1) for s, d in zip(segments, done) if s.start + d < s.end)
    assert ranges(gets) == expected
    assert sum(r.body_bytes for r in gets) == size - sum(done)
    assert "Resuming blob %s" % layer in result.log
    assert_complete_archive(tmp_path, image)


def test_damaged_segments_file_starts_over(registry, tmp_path, capsys):
    image = add_big_image(registry)
    layer = image["layer_digests"][0]
    folder = tmp_path / "team_app_layers" / layer.replace(":", "_")
    folder.mkdir(parents=True)
    (folder / "blob.part").write_bytes(b"")
    (folder / "segments.json").write_text("{broken")
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "-t", "4")
    assert result.status == 0, result.stderr
    assert "segments.json is damaged" in result.log
    assert_complete_archive(tmp_path, image)


def max_overlap(intervals) -> int:
    """Return the largest number of (start, end) intervals that overlap at one moment."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    current = peak = 0
    for _, change in events:
        current += change
        peak = max(peak, current)
    return peak


def pull_through_relay(registry, directory, rate: float, threads: int):
    """Pull team/app:v1 through a relay that caps each connection at ``rate`` bytes/s; return the result and the relay."""
    host, port = registry.host.split(":")
    relay = ThrottlingRelay((host, int(port)), rate=rate)
    try:
        result = run_puller(["%s/team/app:v1" % relay.host, "-d", str(directory), "-t", str(threads), "-q"])
    finally:
        relay.close()
    return result, relay


def test_connections_stay_within_threads(registry, tmp_path):
    image = registry.add_image("team/app", "v1", [big_layer(24 * MIB), big_layer(24 * MIB, 2)], media="oci", compress=False)
    result, relay = pull_through_relay(registry, tmp_path, 20e6, 3)
    assert result.returncode == 0, result.stderr
    gets = [get for layer in image["layer_digests"] for get in blob_gets(registry, layer)]
    assert all(get.finished is not None for get in gets)
    # At most three layer requests are in flight at once, the -t budget.
    assert max_overlap([(get.received, get.finished) for get in gets]) <= 3
    # Connections: the three for the layers and the main thread's, which stays open after
    # the ping, manifest and config. The relay may still count a connection that has just
    # ended while the next one opens, hence one more.
    assert 3 <= relay.max_active_connections <= 5


def test_limit_rate_caps_total(registry, tmp_path, capsys):
    registry.add_image("team/app", "v1", [big_layer(3 * MIB)], media="oci", compress=False)
    started = time.monotonic()
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "--limit-rate", "2M", "-t", "4")
    elapsed = time.monotonic() - started
    assert result.status == 0, result.stderr
    # 3 MiB at 2 MiB/s takes 1.5 s, less the 0.25 s of burst credit.
    assert elapsed >= 1.2


@pytest.mark.parametrize("text, expected", [("500K", 500 * 1024), ("50M", 50 * MIB), ("1G", 1024 * MIB), ("1.5m", 1.5 * MIB), ("2048", 2048), ("10MB/s", 10 * MIB)])
def test_rate_parses(text, expected):
    assert dip.parse_rate(text) == expected


@pytest.mark.parametrize("text", ["", "fast", "-1M", "0", "5T"])
def test_rate_rejects_invalid(text):
    with pytest.raises(dip.UsageError):
        dip.parse_rate(text)


def test_config_ini_read_and_overridden(registry, tmp_path, capsys):
    registry.add_image("team/app", "v1", [big_layer(1000)], media="oci", compress=False)
    (tmp_path / "config.ini").write_text("[network]\nthreads = 0\nmax_bandwidth = 1M\n")
    rejected = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host)
    assert rejected.status == 2
    assert "threads" in rejected.stderr
    assert "config.ini" in rejected.stderr
    # The command line beats the file.
    accepted = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "-t", "2")
    assert accepted.status == 0, accepted.stderr
    assert "threads=2" in accepted.log
    assert "limit_rate=1048576" in accepted.log


def test_config_option_names_file(registry, tmp_path, capsys):
    registry.add_image("team/app", "v1", [big_layer(1000)], media="oci", compress=False)
    config = tmp_path / "elsewhere.ini"
    config.write_text("[network]\nretries = 1\ntimeout = 7\n")
    result = pull(capsys, tmp_path / "work", "%s/team/app:v1" % registry.host, "--config", str(config))
    assert result.status == 0, result.stderr
    assert "retries=1" in result.log
    assert str(config) in result.log
    missing = pull(capsys, tmp_path / "work", "%s/team/app:v1" % registry.host, "--config", str(tmp_path / "none.ini"))
    assert missing.status == 2


def test_archive_to_stdout_matches_file(registry, tmp_path):
    add_big_image(registry, 20 * MIB)
    reference = "%s/team/app:v1" % registry.host
    assert run_puller([reference, "-d", str(tmp_path / "file"), "-q"]).returncode == 0
    streamed = subprocess.run(
        [sys.executable, str(SCRIPT), reference, "-d", str(tmp_path / "stream"), "-o", "-"],
        capture_output=True, timeout=120, env=puller_environment(), stdin=subprocess.DEVNULL,
    )
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == (tmp_path / "file" / "team_app_v1.tar").read_bytes()
    assert not list((tmp_path / "stream").glob("*.tar*"))


def test_remove_blobs_after_archive(registry, tmp_path, capsys):
    image = add_big_image(registry, 20 * MIB)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "--remove-blobs")
    assert result.status == 0, result.stderr
    assert not (tmp_path / "team_app_layers").exists()
    assert "Removed 3 downloaded blobs" in result.log
    with open(tmp_path / "team_app_v1.tar", "rb") as handle:
        assert len(handle.read()) > 20 * MIB
    assert image["manifest_digest"]


def test_config_proxy_used(registry, tmp_path, capsys):
    registry.add_image("team/app", "v1", [big_layer(1000)], media="oci", compress=False)
    (tmp_path / "config.ini").write_text("[network]\nproxy = http://127.0.0.1:9\n")
    # NO_PROXY does not apply to a proxy named in config.ini, so the dead proxy is used.
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "--retry", "0")
    assert result.status == 1
    assert "Connection refused" in result.stderr or "ProxyError" in result.stderr or "proxy" in result.stderr.lower()
    (tmp_path / "config.ini").write_text("[network]\nproxy = ftp://127.0.0.1:9\n")
    assert pull(capsys, tmp_path, "%s/team/app:v1" % registry.host).status == 2


# -- how ranges are shared, split and written ----------------------------------------------


class RecordingFile:
    """A file stand-in that records the size of each write and accepts at most ``accept`` bytes."""

    def __init__(self, accept: int) -> None:
        self.accept = accept
        self.sizes = []
        self.data = bytearray()

    def write(self, data) -> int:
        self.sizes.append(len(data))
        accepted = bytes(data[:self.accept])
        self.data += accepted
        return len(accepted)


def test_write_fully_caps_each_call():
    data = random.Random(SEED).randbytes(3 * dip.WRITE_SIZE + 123)
    handle = RecordingFile(accept=dip.WRITE_SIZE)
    dip.write_fully(handle, data)
    assert bytes(handle.data) == data
    assert max(handle.sizes) == dip.WRITE_SIZE


def test_write_fully_finishes_partial_writes():
    data = random.Random(SEED).randbytes(dip.WRITE_SIZE + 5)
    handle = RecordingFile(accept=1000)
    dip.write_fully(handle, data)
    assert bytes(handle.data) == data


def descriptor(size: int, name: str) -> dip.Descriptor:
    return dip.Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:" + name * 64, size)


def test_ranges_shared_by_blob_size():
    blobs = [descriptor(300 * MIB, "a"), descriptor(100 * MIB, "b"), descriptor(1 * MIB, "c")]
    counts = dip.share_ranges(blobs, 4)
    # 8 ranges for 400 MiB of large blobs; the 1 MiB blob is never split.
    assert counts == {blobs[0].digest: 6, blobs[1].digest: 2}


def test_single_blob_gets_all_ranges():
    blob = descriptor(500 * MIB, "a")
    assert dip.share_ranges([blob], 12) == {blob.digest: 24}


def test_large_layers_share_the_ranges(registry, tmp_path, capsys):
    image = registry.add_image("team/app", "v1", [big_layer(40 * MIB), big_layer(40 * MIB, 2)], media="oci", compress=False)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "-t", "2")
    assert result.status == 0, result.stderr
    # 2 x 2 ranges for both layers, instead of 4 for each.
    for layer in image["layer_digests"]:
        gets = blob_gets(registry, layer)
        assert [get.header("Range") is not None for get in gets] == [True, True]
    assert_complete_archive(tmp_path, image)


def test_layer_with_one_range_fetched_whole(registry, tmp_path, capsys):
    image = registry.add_image("team/app", "v1", [big_layer(24 * MIB), big_layer(24 * MIB, 2)], media="oci", compress=False)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "-t", "1")
    assert result.status == 0, result.stderr
    for layer in image["layer_digests"]:
        (get,) = blob_gets(registry, layer)
        assert get.header("Range") is None
    assert_complete_archive(tmp_path, image)


def test_saved_ranges_resume_despite_share(registry, tmp_path, capsys):
    image = registry.add_image("team/app", "v1", [big_layer(40 * MIB), big_layer(40 * MIB, 2)], media="oci", compress=False)
    layer, data = image["layer_digests"][0], image["layer_blobs"][0]
    size = len(data)
    segments = dip.plan_segments(size, 4)
    done = [segments[0].end - segments[0].start, 3 * MIB, 0, 7 * MIB]
    leave_partial_ranges(tmp_path, layer, data, segments, done)

    # With -t 1 each layer's share is one range, but the saved ranges are resumed, not discarded.
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "-t", "1")
    assert result.status == 0, result.stderr
    gets = blob_gets(registry, layer)
    assert sum(r.body_bytes for r in gets) == size - sum(done)
    assert_complete_archive(tmp_path, image)


def test_idle_connection_splits_slow_range(registry, tmp_path, capsys):
    # One layer only: an idle connection gives way to another blob waiting for one.
    image = registry.add_image("team/app", "v1", [big_layer(40 * MIB)], media="oci", compress=False)
    layer, size = image["layer_digests"][0], len(image["layer_blobs"][0])
    planned = [segment.start for segment in dip.plan_segments(size, 6)]
    # The first range requested stalls after 1 MiB. The other connections finish the other
    # ranges and then take halves of what the stalled one has left.
    registry.fault("stall", "/blobs/" + layer, after_bytes=MIB, seconds=1.5)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "-t", "3", "-v")
    assert result.status == 0, result.stderr
    starts = [start for start, _ in ranges(blob_gets(registry, layer))]
    split_starts = [start for start in starts if start not in planned]
    assert split_starts, "no range was split: %s" % starts
    # Each split lands in the middle of a range, past the 1 MiB that the stalled one received.
    bounds = list(zip(planned, planned[1:] + [size]))
    for start in split_starts:
        assert any(low + MIB < start < high for low, high in bounds), (start, bounds)
    assert "Split the range" in result.log
    assert_complete_archive(tmp_path, image)


def test_idle_connections_wake_when_ranges_end(registry, tmp_path, monkeypatch):
    image = add_big_image(registry)
    # Idle connections look for a range to split at this interval, and must also wake
    # when the last range ends: with an hour here, a missed wake-up shows as a hang.
    monkeypatch.setattr(dip, "SPLIT_CHECK_INTERVAL", 3600)
    statuses = []
    arguments = ["%s/team/app:v1" % registry.host, "-t", "4", "-q", "-d", str(tmp_path)]
    worker = threading.Thread(target=lambda: statuses.append(dip.main(arguments)), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert statuses == [0]
    assert_complete_archive(tmp_path, image)


@pytest.mark.skipif(not hasattr(dip.os, "posix_fadvise"), reason="this OS has no posix_fadvise; the archive is fsynced instead")
def test_writeback_for_hashed_bytes_only(registry, tmp_path, capsys, monkeypatch):
    image = add_big_image(registry)
    layer = image["layer_digests"][0]
    calls = []
    real_fadvise = dip.os.posix_fadvise

    def recording_fadvise(fd, offset, length, advice):
        calls.append((dip.os.readlink("/proc/self/fd/%d" % fd), offset, length, advice))
        real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(dip.os, "posix_fadvise", recording_fadvise)
    monkeypatch.setattr(dip, "ARCHIVE_WRITEBACK_INTERVAL", 0.01)
    monkeypatch.setattr(dip, "ARCHIVE_FLUSH_BYTES", 1)
    # A pause in the middle of the layer gives the flusher time to run.
    registry.fault("stall", "/blobs/" + layer, after_bytes=4 * MIB, seconds=0.5)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "-t", "2")
    assert result.status == 0, result.stderr
    archive_calls = [call for call in calls if call[0].endswith(".tar.part")]
    part_calls = [call for call in calls if call[0].endswith("blob.part")]
    assert archive_calls
    assert part_calls
    assert {call[3] for call in calls} == {dip.os.POSIX_FADV_DONTNEED}
    # Only the bytes already hashed and copied into the archive leave the page cache.
    assert all(offset == 0 and length > 0 for _, offset, length, _ in part_calls)
    assert_complete_archive(tmp_path, image)


# -- ranges requested while the config is checked -------------------------------------------


def test_first_ranges_requested_during_config(registry, tmp_path, capsys):
    image = add_big_image(registry)
    layer, size = image["layer_digests"][0], len(image["layer_blobs"][0])
    config = image["config_digest"]
    registry.fault("stall", "/blobs/" + config, seconds=1.0)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "-t", "4")
    assert result.status == 0, result.stderr
    (config_get,) = blob_gets(registry, config)
    layer_gets = blob_gets(registry, layer)
    early = [get for get in layer_gets if get.received < config_get.received + 0.8]
    # -t 4: three ranges are requested while the config is stalled, and the fourth
    # connection is left for the blob's own download.
    assert len(early) == 3
    # Each early response is used: no byte is requested twice.
    assert sum(get.body_bytes for get in layer_gets) == size
    assert_complete_archive(tmp_path, image)


def test_rejected_config_writes_no_layer(registry, tmp_path, capsys):
    image = registry.add_image(
        "team/app", "v1", [big_layer(40 * MIB)], media="oci", compress=False,
        config_extra={"rootfs": {"type": "layers", "diff_ids": []}},
    )
    layer = image["layer_digests"][0]
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "-t", "4")
    assert result.status == 1
    assert "diff IDs" in result.stderr
    assert blob_gets(registry, layer), "no range was requested before the config was checked"
    assert not (tmp_path / "team_app_layers" / layer.replace(":", "_")).exists()
    assert not list(tmp_path.glob("*.tar*"))


def test_failed_early_range_requested_again(registry, tmp_path, capsys):
    image = add_big_image(registry)
    layer, size = image["layer_digests"][0], len(image["layer_blobs"][0])
    registry.fault("status", "/blobs/" + layer, status=503)
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "-t", "4")
    assert result.status == 0, result.stderr
    gets = blob_gets(registry, layer)
    assert [get.status for get in gets].count(503) == 1
    assert sum(get.body_bytes for get in gets if get.status == 206) == size
    assert_complete_archive(tmp_path, image)


def test_released_connection_goes_to_waiting_ranges(registry, tmp_path):
    image = registry.add_image("team/app", "v1", [big_layer(64 * MIB), big_layer(32 * MIB, 2)], media="oci", compress=False)
    small = image["layer_digests"][1]
    result, _ = pull_through_relay(registry, tmp_path, 4e6, 4)
    assert result.returncode == 0, result.stderr
    # -t 4 shares 8 ranges: 5 for the 64 MiB layer and 3 for the 32 MiB one. The large
    # layer takes the connections first. Each connection it frees while the small layer
    # has ranges waiting must go to the small layer, so its second range starts before
    # its first has finished.
    # A split at the end may add a fourth request.
    gets = sorted(blob_gets(registry, small), key=lambda get: get.received)
    assert len(gets) >= 3
    assert gets[0].finished is not None
    assert gets[1].received < gets[0].finished, [(get.received, get.finished) for get in gets]


def test_early_ranges_match_plan_on_rerun(registry, tmp_path, capsys):
    image = registry.add_image("team/app", "v1", [big_layer(40 * MIB), big_layer(40 * MIB, 2)], media="oci", compress=False)
    started, fresh = image["layer_digests"]
    # The first layer has 3 MiB from an earlier run over one connection.
    folder = tmp_path / "team_app_layers" / started.replace(":", "_")
    folder.mkdir(parents=True)
    (folder / "blob.part").write_bytes(image["layer_blobs"][0][:3 * MIB])
    result = pull(capsys, tmp_path, "%s/team/app:v1" % registry.host, "-t", "4")
    assert result.status == 0, result.stderr
    # Both layers share the 8 ranges, 4 each. The ranges requested early for the fresh
    # layer are the ones its download plans, so none is requested a second time.
    gets = blob_gets(registry, fresh)
    assert len(gets) == 4
    assert sum(get.body_bytes for get in gets) == len(image["layer_blobs"][1])
    assert_complete_archive(tmp_path, image)
