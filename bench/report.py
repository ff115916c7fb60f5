"""Run records and the Markdown tables that summarise them.

Throughput is payload bytes divided by wall time, in MB/s (10^6 bytes per
second). The payload of a pull is the image's compressed layers plus its
config; the payload of curl is the blob it downloads.
"""

import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

MB = 1e6
MIB = 1024 * 1024


@dataclass
class RunRecord:
    """One measured run of one command (or of several processes started together)."""

    scenario: str
    label: str  # the command as it appears in the table
    repeat: int  # 1-based
    payload_bytes: int
    wall_seconds: float
    cpu_seconds: float  # user + system, summed over the processes
    max_rss_mib: float  # peak RSS, summed over the processes
    processes: int
    failure: Optional[str] = None
    archive_bytes: Optional[int] = None
    relay_cpu_seconds: Optional[float] = None
    # CPU seconds that processes outside the benchmark used during the run, and steal time
    other_cpu_seconds: Optional[float] = None
    steal_seconds: Optional[float] = None
    relay_bytes_to_client: Optional[int] = None
    relay_connections: Optional[int] = None
    relay_max_open_connections: Optional[int] = None
    # seconds from the start of the run until the relay wrote the last byte
    # from the registry to the client's socket, after the delay
    last_byte_seconds: Optional[float] = None
    # one [opened, client done, last byte, bytes to client] entry per connection, see shaper.py
    relay_connection_log: Optional[List[List[float]]] = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def throughput(self) -> float:
        """MB/s of payload."""
        return self.payload_bytes / self.wall_seconds / MB if self.wall_seconds > 0 else 0.0


@dataclass
class ScenarioReport:
    name: str
    title: str
    settings: str  # one sentence about the link, the image and the repeats
    records: List[RunRecord] = field(default_factory=list)
    # (numerator label, denominator label) pairs whose median throughputs are compared
    ratios: List[Tuple[str, str]] = field(default_factory=list)
    # a share of this many MB/s is shown for each command, e.g. the link's total cap
    share_of: Optional[float] = None
    notes: List[str] = field(default_factory=list)


def _median(values: Sequence[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def _format(value: Optional[float], digits: int = 1) -> str:
    return "—" if value is None else "%.*f" % (digits, value)


def labels_in_order(records: Sequence[RunRecord]) -> List[str]:
    labels: List[str] = []
    for record in records:
        if record.label not in labels:
            labels.append(record.label)
    return labels


def median_throughputs(records: Sequence[RunRecord]) -> Dict[str, Optional[float]]:
    return {
        label: _median([r.throughput for r in records if r.label == label and r.ok])
        for label in labels_in_order(records)
    }


def scenario_markdown(report: ScenarioReport) -> str:
    lines = ["### %s" % report.title, "", report.settings, ""]
    shaped = any(record.relay_cpu_seconds is not None for record in report.records)
    header = ["command", "runs ok", "wall s", "MB/s", "MB/s per run", "CPU s", "peak RSS MiB", "other CPU s", "steal s"]
    if report.share_of:
        header.append("share of %.0f MB/s" % report.share_of)
    if shaped:
        header += ["last byte sent s", "connections (max open)", "relay bytes / payload", "relay CPU s"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")

    for label in labels_in_order(report.records):
        runs = [r for r in report.records if r.label == label]
        good = [r for r in runs if r.ok]
        throughput = _median([r.throughput for r in good])
        per_run = ", ".join(_format(r.throughput) if r.ok else "failed" for r in runs)
        row = [
            label,
            "%d/%d" % (len(good), len(runs)),
            _format(_median([r.wall_seconds for r in good]), 2),
            _format(throughput),
            per_run,
            _format(_median([r.cpu_seconds for r in good]), 2),
            _format(_median([r.max_rss_mib for r in good]), 0),
            _format(_median([r.other_cpu_seconds for r in good if r.other_cpu_seconds is not None]), 2),
            _format(_median([r.steal_seconds for r in good if r.steal_seconds is not None]), 2),
        ]
        if report.share_of:
            row.append(_format(None if throughput is None else throughput / report.share_of, 2))
        if shaped:
            relayed = [r.relay_bytes_to_client / r.payload_bytes for r in good if r.relay_bytes_to_client is not None]
            relay_cpu = [r.relay_cpu_seconds for r in good if r.relay_cpu_seconds is not None]
            last_byte = [r.last_byte_seconds for r in good if r.last_byte_seconds is not None]
            connections = _median([r.relay_connections for r in good if r.relay_connections is not None])
            max_open = [r.relay_max_open_connections for r in good if r.relay_max_open_connections is not None]
            row += [
                _format(_median(last_byte), 2),
                "—" if connections is None else "%s (%d)" % (_format(connections, 0), max(max_open)),
                _format(_median(relayed), 3),
                _format(_median(relay_cpu), 2),
            ]
        lines.append("| " + " | ".join(row) + " |")

    medians = median_throughputs(report.records)
    ratio_texts = []
    for numerator, denominator in report.ratios:
        top, bottom = medians.get(numerator), medians.get(denominator)
        value = None if top is None or not bottom else top / bottom
        ratio_texts.append("%s / %s = **%s**" % (numerator, denominator, _format(value, 2)))
    if ratio_texts:
        lines += ["", "Median throughput ratios: " + "; ".join(ratio_texts) + "."]

    failures = [r for r in report.records if not r.ok]
    if failures:
        lines += ["", "Failed runs:", ""]
        lines += ["- %s, repeat %d: %s" % (r.label, r.repeat, r.failure) for r in failures]
    if report.notes:
        lines += [""] + ["- " + note for note in report.notes]
    return "\n".join(lines) + "\n"
