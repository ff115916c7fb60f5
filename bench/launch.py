"""Start commands at once, reap each with os.wait4 and print their times and peak RSS as JSON.

run.py starts this small process instead of starting the measured commands
itself, because of how Linux counts ru_maxrss. A child's peak RSS is at least
the peak RSS of the process that spawned it, because the spawner's memory is
the child's until exec replaces it. run.py grows to hundreds of MiB while it
pushes images. This launcher imports only a few standard modules and runs
with -S -I, so it stays near 10 MiB. It also resets its own peak before
spawning (/proc/self/clear_refs), so every child's ru_maxrss is its own peak
or about 10 MiB, whichever is larger.

Input on stdin: {"commands": [[ARGV...], ...], "log_dir": PATH, "timeout": SECONDS}.
Each child's stdout and stderr go to LOG_DIR/process-N.stdout and .stderr.
Output on stdout: {"wall_seconds": ..., "started_monotonic": ..., "processes":
[{"pid", "exit_code", "cpu_seconds", "max_rss_kib", "finished_seconds",
"error"}, ...]}, where exit_code is null for a child killed after the timeout,
finished_seconds counts from just before the first spawn, and
started_monotonic is time.monotonic() at that moment.
"""

import json
import os
import signal
import sys
import time

POLL_INTERVAL = 0.005


def reset_peak_rss() -> None:
    # Linux 4.0 and later: writing 5 sets this process's peak RSS to its current RSS.
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def spawn(argv, stdout_path, stderr_path) -> int:
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, stdout_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
        (os.POSIX_SPAWN_OPEN, 2, stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
    ]
    return os.posix_spawnp(argv[0], argv, os.environ, file_actions=actions)


def record(pid: int, status: int, usage, started: float, killed: bool) -> dict:
    return {
        "pid": pid,
        "exit_code": None if killed else os.waitstatus_to_exitcode(status),
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "max_rss_kib": usage.ru_maxrss,
        "finished_seconds": time.monotonic() - started,
        "error": None,
    }


def main() -> int:
    spec = json.load(sys.stdin)
    commands = spec["commands"]
    log_dir = spec["log_dir"]
    deadline_seconds = float(spec["timeout"])
    os.makedirs(log_dir, exist_ok=True)
    reset_peak_rss()

    results = [None] * len(commands)
    running = {}  # pid -> index
    started = time.monotonic()
    for index, argv in enumerate(commands):
        stdout_path = os.path.join(log_dir, "process-%d.stdout" % index)
        stderr_path = os.path.join(log_dir, "process-%d.stderr" % index)
        try:
            running[spawn(argv, stdout_path, stderr_path)] = index
        except OSError as error:
            results[index] = {
                "pid": None, "exit_code": None, "cpu_seconds": 0.0, "max_rss_kib": 0,
                "finished_seconds": time.monotonic() - started,
                "error": "starting %s failed: %s" % (argv[0], error),
            }

    while running:
        for pid in list(running):
            reaped, status, usage = os.wait4(pid, os.WNOHANG)
            if reaped:
                results[running.pop(pid)] = record(pid, status, usage, started, killed=False)
        if not running:
            break
        if time.monotonic() - started > deadline_seconds:
            for pid in list(running):
                os.kill(pid, signal.SIGKILL)
                _, status, usage = os.wait4(pid, 0)
                results[running.pop(pid)] = record(pid, status, usage, started, killed=True)
            break
        time.sleep(POLL_INTERVAL)

    wall = max(result["finished_seconds"] for result in results) if results else 0.0
    json.dump({"wall_seconds": wall, "started_monotonic": started, "processes": results}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
