"""Run measured commands, run the shaper as a child process, and check outputs.

launch.py starts the measured commands. CPU time and peak RSS come from
os.wait4 on each command's PID, so they cover exactly that process and the
descendants it waited for. Wall time runs from just before the first command
is started until the last one is reaped (polled every 5 ms), so it includes
interpreter start-up, as a user would see it.
"""

import hashlib
import json
import os
import resource
import selectors
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from images import PushedImage

SHAPER_SCRIPT = Path(__file__).resolve().parent / "shaper.py"
LAUNCHER_SCRIPT = Path(__file__).resolve().parent / "launch.py"

# How often ShaperProcess.stop checks whether the shaper has exited.
POLL_INTERVAL = 0.005

HASH_CHUNK = 4 * 1024 * 1024

# Proxy variables would send curl's, skopeo's or the tool's requests for
# 127.0.0.1 to a proxy, so children never inherit them.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")


def child_environment(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    environment = {name: value for name, value in os.environ.items() if name.lower() not in PROXY_VARIABLES}
    environment.update(extra or {})
    return environment


@dataclass
class ProcessResult:
    command: List[str]
    exit_code: Optional[int]  # None when the process was killed after the timeout or did not start
    cpu_seconds: float  # user + system
    max_rss_kib: int
    stdout_path: Path
    stderr_path: Path
    error: Optional[str] = None  # why the process did not start

    def stderr_tail(self, lines: int = 5) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])


def run_concurrently(
    commands: Sequence[List[str]], log_dir: Path, timeout: float, environment: Dict[str, str]
) -> Tuple[float, float, List[ProcessResult]]:
    """Start all commands at once through launch.py and return the wall time, the start and each result.

    The start is time.monotonic() just before the first command was started.

    A command still running `timeout` seconds after the start is sent SIGKILL
    and gets exit_code None. Standard output and error go to files in `log_dir`.
    """
    spec = {"commands": [list(command) for command in commands], "log_dir": str(log_dir), "timeout": timeout}
    # -S -I keep the launcher small; see launch.py for why its size matters.
    completed = subprocess.run(
        [sys.executable, "-S", "-I", str(LAUNCHER_SCRIPT)],
        input=json.dumps(spec).encode(),
        capture_output=True,
        env=environment,
        timeout=timeout + 60,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            "launch.py exited with status %d: %s" % (completed.returncode, completed.stderr.decode(errors="replace")[-2000:])
        )
    output = json.loads(completed.stdout)
    results = []
    for index, (command, process) in enumerate(zip(commands, output["processes"])):
        results.append(
            ProcessResult(
                command=list(command),
                exit_code=process["exit_code"],
                cpu_seconds=process["cpu_seconds"],
                max_rss_kib=process["max_rss_kib"],
                stdout_path=log_dir / ("process-%d.stdout" % index),
                stderr_path=log_dir / ("process-%d.stderr" % index),
                error=process["error"],
            )
        )
    return output["wall_seconds"], output["started_monotonic"], results


class ShaperProcess:
    """bench/shaper.py running as a child process, between the client and the registry.

    Each run gets its own shaper, so its byte counts and CPU time belong to
    that run alone.
    """

    def __init__(
        self, target: str, rate: float, total_rate: float, delay_ms: float, log_path: Path, max_seconds: float
    ) -> None:
        self.command = [
            sys.executable, str(SHAPER_SCRIPT), "--target", target,
            "--rate", str(rate), "--total-rate", str(total_rate), "--delay", str(delay_ms),
            "--max-seconds", str(max_seconds),
        ]
        self.log_path = log_path
        self.host = ""
        self.stats: Dict[str, object] = {}
        self.cpu_seconds = 0.0
        self._process: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 10.0) -> str:
        """Start the shaper and return the HOST:PORT that it listens on."""
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=child_environment()
            )
        assert self._process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                self.stop()
                raise RuntimeError("shaper did not report its port within %.0f s; see %s" % (timeout, self.log_path))
        line = self._process.stdout.readline()
        try:
            self.host = json.loads(line)["listening"]
        except (ValueError, KeyError):
            self.stop()
            raise RuntimeError("shaper printed %r instead of its address; see %s" % (line[:200], self.log_path)) from None
        return self.host

    def stop(self, timeout: float = 10.0) -> Dict[str, object]:
        """Stop the shaper with SIGTERM (SIGKILL after `timeout` s) and return its final counters."""
        process = self._process
        if process is None or process.returncode is not None:
            return self.stats
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid != 0:
                break
            if time.monotonic() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(POLL_INTERVAL)
        process.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_seconds = usage.ru_utime + usage.ru_stime
        assert process.stdout is not None
        lines = process.stdout.read().decode(errors="replace").strip().splitlines()
        process.stdout.close()
        if lines:
            try:
                self.stats = json.loads(lines[-1])
            except ValueError:
                self.stats = {}
        return self.stats


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class CpuSnapshot:
    """CPU seconds used so far: by the whole machine, by this process's family and by the registry."""

    # user + nice + system over all cores, from /proc/stat. irq and softirq are
    # left out: with IRQ time accounting the kernel charges them to no process,
    # and most of them during a run come from the benchmark's own loopback traffic.
    machine_busy: float
    machine_steal: float  # time the hypervisor ran something else while a core wanted to run
    own: float  # this process and every child it has reaped (the launcher, the commands, the shaper)
    registry: float


def take_cpu_snapshot(registry_pid: int) -> CpuSnapshot:
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (fields + [0] * 8)[:8]
    own = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        own += usage.ru_utime + usage.ru_stime
    return CpuSnapshot(
        machine_busy=(user + nice + system) / CLOCK_TICKS,
        machine_steal=steal / CLOCK_TICKS,
        own=own,
        registry=process_cpu_seconds(registry_pid),
    )


def process_cpu_seconds(pid: int) -> float:
    """Return utime + stime of a running process from /proc/PID/stat, 0 when it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            text = handle.read()
    except OSError:
        return 0.0
    # The fields after the command name, which is in brackets and may contain spaces.
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def other_cpu_seconds(before: CpuSnapshot, after: CpuSnapshot) -> Tuple[float, float]:
    """Return CPU seconds that other processes used between the snapshots, and the steal time.

    "Other" is everything but the benchmark, its children and the registry,
    for example a test suite running at the same time.
    """
    busy = after.machine_busy - before.machine_busy
    ours = (after.own - before.own) + (after.registry - before.registry)
    return max(0.0, busy - ours), after.machine_steal - before.machine_steal


def sha256_of(handle, size: int) -> str:
    digest = hashlib.sha256()
    remaining = size
    while remaining > 0:
        chunk = handle.read(min(HASH_CHUNK, remaining))
        if not chunk:
            break
        digest.update(chunk)
        remaining -= len(chunk)
    return "sha256:" + digest.hexdigest()


def verify_archive(path: Path, image: PushedImage) -> Optional[str]:
    """Check a docker-save style archive against the pushed image; return None or the problem.

    The config and every layer that manifest.json lists are hashed. A layer may
    be stored compressed (its hash is the layer digest, as this tool stores it)
    or uncompressed (its hash is the diff ID, as skopeo's docker-archive
    stores it).
    """
    if not path.is_file():
        return "archive %s is missing" % path
    try:
        with tarfile.open(path) as archive:
            manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
            if not isinstance(manifest, list) or len(manifest) != 1:
                return "manifest.json lists %s images, expected 1" % (len(manifest) if isinstance(manifest, list) else "no")
            entry = manifest[0]
            config_member = archive.getmember(entry["Config"])
            config_digest = sha256_of(archive.extractfile(config_member), config_member.size)
            if config_digest != image.config_digest:
                return "config %s has digest %s, expected %s" % (entry["Config"], config_digest, image.config_digest)
            layer_names = entry["Layers"]
            if len(layer_names) != len(image.layers):
                return "manifest.json lists %d layers, expected %d" % (len(layer_names), len(image.layers))
            for name, layer in zip(layer_names, image.layers):
                member = archive.getmember(name)
                digest = sha256_of(archive.extractfile(member), member.size)
                if digest not in (layer.digest, layer.diff_id):
                    return "layer %s has digest %s, expected %s or diff ID %s" % (name, digest, layer.digest, layer.diff_id)
    except (OSError, tarfile.TarError, KeyError, ValueError) as error:
        return "archive %s is unreadable: %s: %s" % (path, type(error).__name__, error)
    return None


def verify_concatenation(paths: Sequence[Path], expected_digest: str, expected_size: int) -> Optional[str]:
    """Check that the files, joined in order, are the blob; return None or the problem."""
    digest = hashlib.sha256()
    size = 0
    try:
        for path in paths:
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
                    digest.update(chunk)
                    size += len(chunk)
    except OSError as error:
        return "reading the downloaded ranges failed: %s" % error
    if size != expected_size:
        return "the ranges add up to %d bytes, expected %d" % (size, expected_size)
    if "sha256:" + digest.hexdigest() != expected_digest:
        return "the joined ranges have digest sha256:%s, expected %s" % (digest.hexdigest(), expected_digest)
    return None
