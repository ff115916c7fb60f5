"""SIGKILL at seeded random moments in every phase; each rerun must end with the clean archive.

The pull goes through a throttling relay so that it lasts a few seconds. Kills are aimed at
three phases in a seeded random order: start-up (before or while the manifest is fetched),
download (while a .part file exists) and the archive write (while FILE.tar.part exists).
After every kill no file under a final name may hold unverified bytes, and after the last
kill one more run must produce exactly the archive of an uninterrupted pull.
Set CRASH_SEED to replay a run; the seed is printed.
"""

import hashlib
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cli import run_puller, start_puller
from fakeregistry import FakeRegistry
from relay import ThrottlingRelay

SEED = int(os.environ.get("CRASH_SEED", "90210"))
LINK_RATE = 30e6  # bytes per second through the relay: a 100 MB layer takes about 3 s


def check_final_names(folder: Path, archive: Path, clean_archive: bytes) -> None:
    """Every blob under its final name matches its digest, and the archive is complete or absent."""
    for blob in folder.rglob("blob"):
        algorithm, hex_digest = blob.parent.name.split("_", 1)
        assert hashlib.new(algorithm, blob.read_bytes()).hexdigest() == hex_digest, "unverified bytes in %s" % blob
    if archive.exists():
        assert archive.read_bytes() == clean_archive, "an incomplete archive sits under its final name"


def wait_for(condition, process: subprocess.Popen, timeout: float) -> bool:
    """Poll until condition() holds; False when the process ended first or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.005)
    return False


def part_started(folder: Path):
    """A download is under way once a blob.part exists (a segmented one has its full size at once)."""

    def started() -> bool:
        return any(True for _ in folder.rglob("blob.part"))

    return started


def kill_run(arguments, target: str, rng: random.Random, work: Path, archive: Path) -> str:
    """Start one pull and SIGKILL it in the target phase; return the phase it was killed in."""
    process = start_puller(arguments)
    try:
        if target == "startup":
            time.sleep(rng.uniform(0.05, 0.45))
            reached = process.poll() is None
        elif target == "download":
            reached = wait_for(part_started(work), process, 30) and not time.sleep(rng.uniform(0.05, 0.6))
        else:
            partial = archive.with_name(archive.name + ".part")
            reached = wait_for(partial.exists, process, 30) and not time.sleep(rng.uniform(0.0, 0.08))
        if not reached or process.poll() is not None:
            return "finished"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        return target
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        process.stdout.close()
        process.stderr.close()


def crash_and_recover(reference: str, tmp_path: Path, kills_wanted: int, download_kills: int) -> dict:
    rng = random.Random(SEED)
    print("crash seed", SEED)
    clean_dir = tmp_path / "clean"
    assert run_puller([reference, "-d", str(clean_dir), "-q"]).returncode == 0
    archive_name = next(clean_dir.glob("*.tar")).name
    clean_archive = (clean_dir / archive_name).read_bytes()

    work = tmp_path / "work"
    archive = work / archive_name
    arguments = [reference, "-d", str(work), "-q", "--retry-delay", "0.05"]
    others = ["startup", "archive"] * ((kills_wanted - download_kills + 1) // 2)
    rng.shuffle(others)
    targets = ["download"] * download_kills + others
    counts = {"startup": 0, "download": 0, "archive": 0, "finished": 0}
    attempts = 0
    while sum(counts[p] for p in ("startup", "download", "archive")) < kills_wanted:
        attempts += 1
        assert attempts < kills_wanted * 3, "could not place the kills: %r" % counts
        target = targets[(attempts - 1) % len(targets)]
        phase = kill_run(arguments, target, rng, work, archive)
        counts[phase] += 1
        check_final_names(work, archive, clean_archive)

    final = run_puller(arguments)
    assert final.returncode == 0, final.stderr
    assert archive.read_bytes() == clean_archive
    assert not list(work.rglob("*.part"))
    print("kills by phase", counts)
    for phase in ("startup", "download", "archive"):
        assert counts[phase] >= 1, "no kill landed in the %s phase: %r" % (phase, counts)
    return counts


def test_sigkill_real_registry(real_registry_big, tmp_path):
    host, port = real_registry_big.host.split(":")
    relay = ThrottlingRelay((host, int(port)), rate=LINK_RATE)
    try:
        crash_and_recover("%s/test/big:v1" % relay.host, tmp_path, kills_wanted=20, download_kills=8)
    finally:
        relay.close()


def test_sigkill_fake_registry(tmp_path):
    layer = random.Random(SEED).randbytes(40 * 1024 * 1024)
    with FakeRegistry() as fake:
        # Uncompressed OCI layers: gzip of 40 MB would only slow the test down.
        fake.add_image("team/app", "v1", [layer, layer[:1000]], media="oci", compress=False)
        host, port = fake.host.split(":")
        relay = ThrottlingRelay((host, int(port)), rate=LINK_RATE)
        try:
            crash_and_recover("%s/team/app:v1" % relay.host, tmp_path, kills_wanted=12, download_kills=4)
        finally:
            relay.close()
