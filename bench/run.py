"""Benchmark docker_image_puller.py against skopeo and curl on a local registry.

Usage: python bench/run.py [--scenarios relay,loopback,shaped,threads] [--repeats N] ...

It starts CNCF distribution (/usr/bin/docker-registry) on 127.0.0.1, pushes
bench/big:v1 (four layers, 1 GiB) and bench/single:v1 (one 256 MiB layer),
and runs the scenarios below. Every server it starts listens on 127.0.0.1 and
every request goes there. BENCHMARKS.md explains the scenarios and results.

  relay     curl directly and through the relay without limits: the relay's own ceiling
  loopback  bench/big:v1 straight from the registry: this tool vs skopeo
  shaped    bench/single:v1 through the shaped relay: this tool vs skopeo vs parallel curl ranges
  threads   bench/single:v1 through the shaped relay with -t 1, 4, 12 and 20
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import images  # noqa: E402
from images import PushedImage  # noqa: E402
from measure import (  # noqa: E402
    ProcessResult,
    ShaperProcess,
    child_environment,
    other_cpu_seconds,
    run_concurrently,
    take_cpu_snapshot,
    verify_archive,
    verify_concatenation,
)
from realregistry import RunningRegistry, start_registry  # noqa: E402
from report import MIB, RunRecord, ScenarioReport, scenario_markdown  # noqa: E402

SCENARIOS = ("relay", "loopback", "shaped", "threads")
DEFAULT_ROOT = Path("/tmp/docker-image-puller-bench")


@dataclass(frozen=True)
class Link:
    """Relay settings: MB/s per connection and in total (0 = no cap), one-way delay in ms."""

    rate: float
    total_rate: float
    delay_ms: float

    def describe(self) -> str:
        if not (self.rate or self.total_rate or self.delay_ms):
            return "Through the relay without caps or delay"
        return "Through the relay at %g MB/s per connection, %g MB/s in total, %g ms each way" % (
            self.rate, self.total_rate, self.delay_ms,
        )


UNSHAPED = Link(0, 0, 0)

# Check a finished run: return None when it is fine, or what is wrong.
Check = Callable[[Path, List[ProcessResult]], Optional[str]]


def parse_list(text: str, choices: Optional[Sequence[str]] = None) -> List[str]:
    values = [value.strip() for value in text.split(",") if value.strip()]
    if choices is not None:
        unknown = [value for value in values if value not in choices]
        if unknown:
            raise argparse.ArgumentTypeError("unknown scenario %s; choose from %s" % (", ".join(unknown), ", ".join(choices)))
    return values


def parse_thread_counts(text: str) -> List[int]:
    try:
        counts = [int(value) for value in parse_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError("invalid thread counts %r: expected numbers such as 1,4,12,20" % text) from None
    if not counts or any(not 1 <= count <= 20 for count in counts):
        raise argparse.ArgumentTypeError("thread counts must be from 1 to 20, got %r" % text)
    return counts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark docker_image_puller.py against skopeo and curl on a local registry.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--scenarios", type=lambda text: parse_list(text, SCENARIOS), default=list(SCENARIOS),
        help="comma-separated scenarios to run: " + ", ".join(SCENARIOS),
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs of each command per scenario")
    parser.add_argument(
        "--warmup", type=int, default=1,
        help="unmeasured runs of each command before the measured ones, in the loopback scenario",
    )
    parser.add_argument("--rate", type=float, default=8.0, help="shaped link: MB/s per connection")
    parser.add_argument("--total-rate", type=float, default=80.0, help="shaped link: MB/s for all connections together")
    parser.add_argument("--delay", type=float, default=30.0, help="shaped link: delay each way in milliseconds")
    parser.add_argument("--threads", type=int, default=12, help="-t of this tool in the loopback and shaped scenarios")
    parser.add_argument(
        "--thread-counts", type=parse_thread_counts, default=[1, 4, 12, 20], help="-t values for the threads scenario",
    )
    parser.add_argument("--ranges", type=int, default=12, help="parallel curl range requests in the shaped scenario")
    parser.add_argument("--tool", type=Path, default=REPO_DIR / "docker_image_puller.py", help="the script to benchmark")
    parser.add_argument(
        "--tool-arg", action="append", default=[], metavar="ARG",
        help="extra argument for every run of the tool, repeatable (e.g. --tool-arg=--retry=0)",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_ROOT / "cache",
        help="generated layers and the registry's storage, kept between runs of the benchmark",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=DEFAULT_ROOT / "work",
        help="downloads and archives of the runs; emptied at the start and after each run",
    )
    parser.add_argument("--markdown", type=Path, default=DEFAULT_ROOT / "results.md", help="file for the Markdown tables")
    parser.add_argument("--json", type=Path, default=DEFAULT_ROOT / "results.json", help="file for every run's numbers")
    parser.add_argument("--run-timeout", type=float, default=300.0, help="seconds before a run is killed and marked failed")
    return parser


# ---------------------------------------------------------------------------
# Machine and version facts for the report


def _command_output(command: List[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, env=child_environment())
    except (OSError, subprocess.TimeoutExpired) as error:
        return "unavailable (%s)" % error
    return (result.stdout or result.stderr).strip().splitlines()[0] if (result.stdout or result.stderr).strip() else "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return "%.1f GiB" % (int(line.split()[1]) * 1024 / 2**30)
    except (OSError, ValueError, IndexError):
        pass
    return "unknown"


def tool_revision(tool: Path) -> str:
    """Return the short commit of the tool's repository, with "+changes" if the script differs from it."""
    folder = str(tool.resolve().parent)
    try:
        commit = subprocess.run(["git", "-C", folder, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=30)
        status = subprocess.run(
            ["git", "-C", folder, "status", "--porcelain", "--", tool.name], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return "unknown (%s)" % error
    if commit.returncode != 0:
        return "unknown (%s is not in a git repository)" % folder
    return commit.stdout.strip() + ("+changes" if status.stdout.strip() else "")


def machine_facts(tool: Path) -> Dict[str, str]:
    return {
        "tool commit": tool_revision(tool),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": "%s, %d cores (nproc)" % (_cpu_model(), os.cpu_count() or 0),
        "memory": _memory_gib(),
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "skopeo": _command_output(["skopeo", "--version"]),
        "registry": _command_output(["/usr/bin/docker-registry", "--version"]),
        "curl": _command_output(["curl", "--version"]),
        "RSS floor": "%.1f MiB" % rss_floor_mib(),
    }


def rss_floor_mib() -> float:
    """Return the peak RSS that launch.py reports for /bin/true: the least any command can show."""
    with tempfile.TemporaryDirectory() as folder:
        _, _, results = run_concurrently([["true"]], Path(folder), 30, child_environment())
    return results[0].max_rss_kib / 1024


# ---------------------------------------------------------------------------
# Running and checking one measured run


class Bench:
    def __init__(self, args: argparse.Namespace, registry: RunningRegistry, pushed: Dict[str, PushedImage]) -> None:
        self.args = args
        self.registry = registry
        self.images = pushed
        self.records: List[RunRecord] = []
        self.run_dir = args.work_dir / "run"
        self.failed_dir = args.work_dir / "failed"
        self.shaped = Link(args.rate, args.total_rate, args.delay)

    def measure(
        self,
        report: ScenarioReport,
        label: str,
        repeat: int,
        payload_bytes: int,
        link: Optional[Link],
        build: Callable[[str, Path], List[List[str]]],
        check: Check,
    ) -> RunRecord:
        """Run the commands that `build(host, run_dir)` returns and record the run.

        `link` None means straight to the registry. Otherwise a new shaper with
        those settings runs in front of the registry for this run only.
        """
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True)
        cpu_before = take_cpu_snapshot(self.registry.process.pid)
        relay = None
        host = self.registry.host
        if link is not None:
            relay = ShaperProcess(
                self.registry.host, link.rate, link.total_rate, link.delay_ms,
                self.args.work_dir / "shaper.log", max_seconds=self.args.run_timeout + 60,
            )
            host = relay.start()
        failure: Optional[str] = None
        wall, started, results = 0.0, 0.0, []
        try:
            commands = build(host, self.run_dir)
            wall, started, results = run_concurrently(
                commands, self.run_dir / "logs", self.args.run_timeout, child_environment()
            )
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            failure = "the launcher failed: %s" % error
        finally:
            relay_stats = relay.stop() if relay is not None else {}
        other_cpu, steal = other_cpu_seconds(cpu_before, take_cpu_snapshot(self.registry.process.pid))

        if failure is None:
            failure = _process_failure(results, self.args.run_timeout)
        if failure is None:
            failure = check(self.run_dir, results)
        record = RunRecord(
            scenario=report.name,
            label=label,
            repeat=repeat,
            payload_bytes=payload_bytes,
            wall_seconds=wall,
            cpu_seconds=sum(result.cpu_seconds for result in results),
            max_rss_mib=sum(result.max_rss_kib for result in results) / 1024,
            processes=len(results),
            failure=failure,
            other_cpu_seconds=other_cpu,
            steal_seconds=steal,
        )
        archive = self.run_dir / "archive.tar"
        if archive.is_file():
            record.archive_bytes = archive.stat().st_size
        if relay is not None:
            record.relay_cpu_seconds = relay.cpu_seconds
            record.relay_bytes_to_client = int(relay_stats.get("bytes_to_client", 0))  # type: ignore[arg-type]
            record.relay_connections = int(relay_stats.get("connections", 0))  # type: ignore[arg-type]
            record.relay_max_open_connections = int(relay_stats.get("max_open_connections", 0))  # type: ignore[arg-type]
            record.relay_connection_log = relay_stats.get("connection_log")  # type: ignore[assignment]
            record.last_byte_seconds = _last_byte_seconds(relay_stats, started, link)
        if repeat > 0:  # repeat 0 is a warm-up run, which is not measured
            report.records.append(record)
            self.records.append(record)
        self._print_progress(record)
        self._clean_up(record)
        return record

    def _print_progress(self, record: RunRecord) -> None:
        status = "ok" if record.ok else "FAILED: " + (record.failure or "")
        print(
            "[%s, %s] %s: %.2f s, %.1f MB/s, CPU %.2f s, peak RSS %.0f MiB, other CPU %.2f s, %s"
            % (record.scenario, "repeat %d" % record.repeat if record.repeat else "warm-up", record.label, record.wall_seconds, record.throughput,
               record.cpu_seconds, record.max_rss_mib, record.other_cpu_seconds or 0.0, status),
            file=sys.stderr,
            flush=True,
        )

    def _clean_up(self, record: RunRecord) -> None:
        """Delete the run's files; keep the logs of a failed run under work-dir/failed/."""
        if not record.ok:
            name = "%s-%s-%d" % (record.scenario, "".join(c if c.isalnum() else "_" for c in record.label), record.repeat)
            destination = self.failed_dir / name
            shutil.rmtree(destination, ignore_errors=True)
            self.failed_dir.mkdir(parents=True, exist_ok=True)
            if (self.run_dir / "logs").is_dir():
                shutil.copytree(self.run_dir / "logs", destination)
            tool_log = self.run_dir / "work" / "docker_puller.log"
            if tool_log.is_file():
                shutil.copy(tool_log, destination / tool_log.name)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        # Write back what the run left dirty now, not during the next run.
        os.sync()

    # Commands

    def tool_label(self, threads: int) -> str:
        return "docker-image-puller -t %d" % threads

    def run_tool(self, report: ScenarioReport, repeat: int, image: PushedImage, threads: int, link: Optional[Link]) -> RunRecord:
        def build(host: str, run_dir: Path) -> List[List[str]]:
            command = [
                sys.executable, str(self.args.tool), image.reference(host),
                "-t", str(threads), "-d", str(run_dir / "work"), "-o", str(run_dir / "archive.tar"), "-q",
            ]
            return [command + list(self.args.tool_arg)]

        def check(run_dir: Path, results: List[ProcessResult]) -> Optional[str]:
            return verify_archive(run_dir / "archive.tar", image)

        return self.measure(report, self.tool_label(threads), repeat, image.image_bytes, link, build, check)

    def run_skopeo(self, report: ScenarioReport, repeat: int, image: PushedImage, link: Optional[Link]) -> RunRecord:
        def build(host: str, run_dir: Path) -> List[List[str]]:
            # skopeo 1.9 writes each decompressed layer to a temporary file
            # (/var/tmp/stream-blob* unless --tmpdir is given, and it ignores
            # TMPDIR) before it appends the layer to the archive. --tmpdir keeps
            # that file in the run folder, which is deleted after the run.
            (run_dir / "tmp").mkdir()
            return [[
                "skopeo", "--tmpdir", str(run_dir / "tmp"), "copy", "--src-tls-verify=false", "--src-no-creds",
                "docker://" + image.reference(host), "docker-archive:%s" % (run_dir / "archive.tar"),
            ]]

        def check(run_dir: Path, results: List[ProcessResult]) -> Optional[str]:
            return verify_archive(run_dir / "archive.tar", image)

        return self.measure(report, "skopeo copy", repeat, image.image_bytes, link, build, check)

    def run_curl(
        self, report: ScenarioReport, label: str, repeat: int, image: PushedImage, ranges: int,
        link: Optional[Link], save: bool,
    ) -> RunRecord:
        """Download the image's first layer with `ranges` curl processes at once (0 = one request without Range).

        With save=False the bytes go to /dev/null and only their count is checked.
        """
        layer = image.layers[0]
        spans = split_ranges(layer.size, ranges) if ranges else []
        timeout = str(int(self.args.run_timeout))

        def build(host: str, run_dir: Path) -> List[List[str]]:
            url = "http://%s/v2/%s/blobs/%s" % (host, image.repository, layer.digest)
            commands = []
            for index, span in enumerate(spans or [None]):
                output = str(run_dir / ("part-%03d" % index)) if save else os.devnull
                command = ["curl", "--silent", "--show-error", "--noproxy", "*", "--max-time", timeout, "-o", output]
                command += ["-w", "%{http_code} %{size_download}"]
                if span is not None:
                    command += ["-r", "%d-%d" % span]
                commands.append(command + [url])
            return commands

        def check(run_dir: Path, results: List[ProcessResult]) -> Optional[str]:
            for index, (span, result) in enumerate(zip(spans or [None], results)):
                expected_status, expected_size = ("206", span[1] - span[0] + 1) if span else ("200", layer.size)
                written = result.stdout_path.read_text().split()
                if written != [expected_status, str(expected_size)]:
                    return "curl %d returned HTTP status and size %s, expected %s %d" % (
                        index, " ".join(written), expected_status, expected_size,
                    )
            if save:
                parts = [run_dir / ("part-%03d" % index) for index in range(len(results))]
                return verify_concatenation(parts, layer.digest, layer.size)
            return None

        return self.measure(report, label, repeat, layer.size, link, build, check)


def split_ranges(size: int, count: int) -> List[tuple]:
    """Split bytes 0..size-1 into `count` inclusive (start, end) ranges of nearly equal length."""
    bounds = [size * index // count for index in range(count + 1)]
    return [(bounds[index], bounds[index + 1] - 1) for index in range(count) if bounds[index + 1] > bounds[index]]


def _last_byte_seconds(relay_stats: Dict[str, object], started: float, link: Link) -> Optional[float]:
    """Return when the relay wrote the last byte to the client, in seconds from the start of the run.

    NOTE: a client that reads slower than the link (for example with
    --limit-rate) may then still have megabytes per connection unread in its
    socket buffers, so it finishes reading later than this.
    """
    log = relay_stats.get("connection_log")
    relay_started = relay_stats.get("started_monotonic")
    if not log or not isinstance(relay_started, float) or not started:
        return None
    last_read = max(entry[2] for entry in log)  # type: ignore[union-attr]
    return relay_started + last_read + link.delay_ms / 1000 - started


def _program_name(command: Sequence[str]) -> str:
    """Return "curl" for curl and "docker_image_puller.py" for python docker_image_puller.py."""
    name = os.path.basename(command[0])
    if name.startswith("python") and len(command) > 1:
        return os.path.basename(command[1])
    return name


def _process_failure(results: Sequence[ProcessResult], timeout: float) -> Optional[str]:
    for result in results:
        if result.error is not None:
            return result.error
        if result.exit_code is None:
            return "%s was killed after the run timeout of %.0f s" % (_program_name(result.command), timeout)
        if result.exit_code != 0:
            return "%s exited with status %d: %s" % (_program_name(result.command), result.exit_code, result.stderr_tail())
    return None


# ---------------------------------------------------------------------------
# Scenarios


def describe_repeats(repeats: int) -> str:
    if repeats == 1:
        return "1 run of each command"
    return "%d runs of each command, in turns (ABAB)" % repeats


def describe_warmup(warmup: int) -> str:
    if warmup == 0:
        return "no warm-up run"
    return "%d unmeasured warm-up run%s of each" % (warmup, "" if warmup == 1 else "s")


def scenario_relay(bench: Bench) -> ScenarioReport:
    image = bench.images["single"]
    ranges = bench.args.ranges
    report = ScenarioReport(
        "relay",
        "Relay ceiling: curl of the 256 MiB blob, output to /dev/null",
        "curl straight to the registry and through the relay with no caps and no delay; %s; payload %.1f MB."
        % (describe_repeats(bench.args.repeats), image.layers[0].size / 1e6),
    )
    direct = "curl, 1 request, direct"
    relayed = "curl, 1 request, relay"
    parallel = "curl, %d ranges, relay" % ranges
    report.ratios = [(relayed, direct)]
    for repeat in range(1, bench.args.repeats + 1):
        bench.run_curl(report, direct, repeat, image, 0, None, save=False)
        bench.run_curl(report, relayed, repeat, image, 0, UNSHAPED, save=False)
        bench.run_curl(report, parallel, repeat, image, ranges, UNSHAPED, save=False)
    return report


def scenario_loopback(bench: Bench) -> ScenarioReport:
    image = bench.images["big"]
    threads = bench.args.threads
    report = ScenarioReport(
        "loopback",
        "(a) Loopback, bench/big:v1 (1 GiB in 4 layers)",
        "Straight to the registry on 127.0.0.1, no relay; %s, after %s; payload %.1f MB."
        % (describe_repeats(bench.args.repeats), describe_warmup(bench.args.warmup), image.image_bytes / 1e6),
    )
    report.ratios = [(bench.tool_label(threads), "skopeo copy")]
    report.notes = [
        "skopeo's docker-archive holds decompressed layers, so skopeo also gunzips %.1f MB. It fetches the layers "
        "one after another and writes each one twice: to a temporary file, then into the archive. This tool stores "
        "the gzip blobs as downloaded." % (image.image_bytes / 1e6),
    ]
    # The first pulls after the images were pushed were up to three times slower than
    # the next ones, with several times the CPU time, for whichever program ran first.
    repeats = [0] * bench.args.warmup + list(range(1, bench.args.repeats + 1))
    for repeat in repeats:
        bench.run_tool(report, repeat, image, threads, None)
        bench.run_skopeo(report, repeat, image, None)
    return report


def scenario_shaped(bench: Bench) -> ScenarioReport:
    image = bench.images["single"]
    threads = bench.args.threads
    ranges = bench.args.ranges
    curl_label = "curl, %d ranges in parallel" % ranges
    report = ScenarioReport(
        "shaped",
        "(b) Shaped link, bench/single:v1 (one 256 MiB layer)",
        "%s; %s; payload %.1f MB. curl writes each range to a file, and the joined files are checked against "
        "the digest." % (bench.shaped.describe(), describe_repeats(bench.args.repeats), image.image_bytes / 1e6),
    )
    report.ratios = [(bench.tool_label(threads), "skopeo copy"), (bench.tool_label(threads), curl_label)]
    for repeat in range(1, bench.args.repeats + 1):
        bench.run_tool(report, repeat, image, threads, bench.shaped)
        bench.run_skopeo(report, repeat, image, bench.shaped)
        bench.run_curl(report, curl_label, repeat, image, ranges, bench.shaped, save=True)
    return report


def scenario_threads(bench: Bench) -> ScenarioReport:
    image = bench.images["single"]
    counts = bench.args.thread_counts
    report = ScenarioReport(
        "threads",
        "(c) Shaped link, bench/single:v1, this tool with -t %s" % ", ".join(str(count) for count in counts),
        "%s; %s; payload %.1f MB."
        % (bench.shaped.describe(), describe_repeats(bench.args.repeats), image.image_bytes / 1e6),
    )
    report.share_of = bench.shaped.total_rate or None
    for repeat in range(1, bench.args.repeats + 1):
        for count in counts:
            bench.run_tool(report, repeat, image, count, bench.shaped)
    return report


SCENARIO_FUNCTIONS = {
    "relay": scenario_relay,
    "loopback": scenario_loopback,
    "shaped": scenario_shaped,
    "threads": scenario_threads,
}


# ---------------------------------------------------------------------------
# Setup and output


def check_programs(scenarios: Sequence[str], tool: Path) -> List[str]:
    problems = []
    if not tool.is_file():
        problems.append("the tool %s does not exist (--tool)" % tool)
    if not os.path.exists("/usr/bin/docker-registry"):
        problems.append("/usr/bin/docker-registry is missing: apt-get install docker-registry")
    if shutil.which("curl") is None and {"relay", "shaped"} & set(scenarios):
        problems.append("curl is missing: apt-get install curl")
    if shutil.which("skopeo") is None and {"loopback", "shaped"} & set(scenarios):
        problems.append("skopeo is missing: apt-get install skopeo")
    return problems


def prepare_images(registry: RunningRegistry, cache_dir: Path, scenarios: Sequence[str]) -> Dict[str, PushedImage]:
    wanted = {"single": images.SINGLE_IMAGE}
    if "loopback" in scenarios:
        wanted["big"] = images.BIG_IMAGE
    specs = [spec for image in wanted.values() for spec in image.layers]
    layer_files = images.prepare_layers(cache_dir, specs)
    pushed = {}
    for name, image in wanted.items():
        started = time.monotonic()
        pushed[name] = images.push_bench_image(registry, image, layer_files)
        print("pushed %s:%s in %.1f s" % (image.repository, image.tag, time.monotonic() - started), file=sys.stderr, flush=True)
    return pushed


def warm_page_cache(registry: RunningRegistry, pushed: Dict[str, PushedImage]) -> None:
    """Read every blob the registry serves once, so no run pays for reading it from disk first."""
    for image in pushed.values():
        for layer in image.layers:
            with open(images.registry_blob_path(registry, layer.digest), "rb") as handle:
                while handle.read(16 * MIB):
                    pass


def render_markdown(facts: Dict[str, str], command: str, reports: Sequence[ScenarioReport]) -> str:
    lines = [
        "Results of `%s` on %s, tool commit %s." % (command, facts["date"], facts["tool commit"]),
        "",
        "Machine: %s, %s, Linux %s; Python %s; %s; %s; %s."
        % (facts["CPU"], facts["memory"], facts["kernel"], facts["Python"], facts["skopeo"], facts["registry"],
           " ".join(facts["curl"].split()[:2])),
        "",
        "MB/s is 10^6 bytes per second of payload over wall time; cells are medians of the successful runs. "
        "CPU s is user + system time, and peak RSS is ru_maxrss, both from os.wait4, summed over the processes "
        "of a run; a process spawned by the launcher shows at least %s (the value for /bin/true). Other CPU s is "
        "the CPU time (user + system, from /proc/stat) that processes outside the benchmark and the registry used "
        "during the run, and steal s the time the hypervisor gave this machine's cores to others; more than a few "
        "tenths of a second of either means the run competed for CPU. Last byte sent s is when the relay wrote the "
        "last byte to the client's socket, in seconds from the start of the run." % facts["RSS floor"],
        "",
    ]
    for report in reports:
        lines.append(scenario_markdown(report))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    for option, value in (("--repeats", args.repeats), ("--threads", args.threads), ("--ranges", args.ranges)):
        if value < 1:
            print("error: invalid %s %d: must be at least 1" % (option, value), file=sys.stderr)
            return 2
    if args.warmup < 0:
        print("error: invalid --warmup %d: must be 0 or more" % args.warmup, file=sys.stderr)
        return 2
    problems = check_programs(args.scenarios, args.tool)
    if problems:
        for problem in problems:
            print("error: " + problem, file=sys.stderr)
        return 1

    started = time.monotonic()
    command = "python bench/run.py" + "".join(" " + shlex.quote(argument) for argument in (argv if argv is not None else sys.argv[1:]))
    facts = machine_facts(args.tool)
    shutil.rmtree(args.work_dir, ignore_errors=True)
    args.work_dir.mkdir(parents=True)

    # The registry's storage lives in the cache folder, so a rerun finds the
    # blobs already pushed.
    registry = start_registry(args.cache_dir / "registry")
    reports: List[ScenarioReport] = []
    try:
        pushed = prepare_images(registry, args.cache_dir, args.scenarios)
        warm_page_cache(registry, pushed)
        # Generating and pushing layers leaves GiBs to write back, which would
        # otherwise slow down the first runs.
        os.sync()
        bench = Bench(args, registry, pushed)
        for name in SCENARIOS:
            if name in args.scenarios:
                reports.append(SCENARIO_FUNCTIONS[name](bench))
    finally:
        registry.stop()

    markdown = render_markdown(facts, command, reports)
    print(markdown)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(markdown)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(
        {"command": command, "facts": facts, "runs": [asdict(record) for report in reports for record in report.records]},
        indent=2,
    ) + "\n")
    failed = sum(1 for report in reports for record in report.records if not record.ok)
    print(
        "wrote %s and %s; %d failed run(s); total time %.0f s"
        % (args.markdown, args.json, failed, time.monotonic() - started),
        file=sys.stderr,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
