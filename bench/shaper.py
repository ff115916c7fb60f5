"""A TCP relay on 127.0.0.1 that makes a loopback registry look like a distant CDN.

Clients connect to the relay's port as if it were the registry, and the relay
forwards each connection to the target port. Three limits shape the traffic:

* a per-connection token bucket caps each connection's download rate
  (target to client), the way a CDN or a long path caps one TCP stream;
* a total token bucket, shared by all connections, caps the sum of their
  download rates, the way the access link does;
* a fixed delay in each direction, made with a delay queue, so that every
  request costs one round trip of two delays before the first byte arrives.

Uploads (client to target) are delayed but not rate-limited, because pulls
send only small requests. The model has no packet loss, no TCP slow start and
no congestion control. The only window is --window: one direction of a
connection keeps at most that many bytes in its delay queue, so with a delay
of D one connection carries at most about WINDOW bytes per D.

The relay runs one asyncio event loop in one thread. It reads with
``recv_into`` into a fixed buffer (asyncio.BufferedProtocol), charges the bytes
to both buckets, and stops reading from a socket while either bucket is in
debt, so the kernel's socket buffers and TCP flow control slow the sender down.

Run it as a program (``python bench/shaper.py --help``). It prints one JSON
line with the listening address when ready, and one JSON line with byte counts
when it stops on SIGTERM or SIGINT, or by itself after --max-seconds.
"""

import argparse
import asyncio
import collections
import ipaddress
import json
import logging
import resource
import signal
import sys
import time
from typing import Deque, List, Optional, Set, Tuple

LOG = logging.getLogger("shaper")

LISTEN_HOST = "127.0.0.1"

# Bytes read per recv_into. With a cap of 8 MB/s, 64 KiB is about 8 ms of data,
# so the shaped rate is smooth at the scale of a round trip.
SHAPED_READ_SIZE = 64 * 1024
# Without any rate cap, larger reads cost fewer system calls per byte.
UNSHAPED_READ_SIZE = 256 * 1024

# Bytes a bucket may save up while a connection is idle, in seconds of its rate.
BURST_SECONDS = 0.02

# asyncio pauses the relay's reads from a socket when the transport writing to
# the other socket buffers more than this many bytes.
WRITE_BUFFER_HIGH = 512 * 1024

DEFAULT_WINDOW = 4 * 1024 * 1024

# The marker in a delay queue for the end of the stream (the source sent FIN).
END_OF_STREAM = None


class TokenBucket:
    """Token bucket in bytes that may go into debt.

    A reader takes as many bytes as it has read, possibly more than the bucket
    holds, and then waits until the debt is repaid. The average rate stays
    exact, and the bucket never has to tell a reader how much it may read.
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate  # bytes per second
        self.burst = burst  # maximum saved-up tokens, in bytes
        self.tokens = burst
        self.updated = now  # event loop time of the last refill

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def take(self, count: int, now: float) -> None:
        self._refill(now)
        self.tokens -= count

    def seconds_until_paid(self, now: float) -> float:
        """Return how long until the bucket is out of debt, 0 when it is not in debt."""
        self._refill(now)
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class Stats:
    """Counters for the whole relay, reported when it stops."""

    def __init__(self) -> None:
        self.bytes_to_client = 0
        self.bytes_to_target = 0
        self.connections = 0
        self.failed_connects = 0
        # [opened, client done, last byte read from the target, bytes to the client],
        # times in seconds since the relay started, one entry per finished client connection
        self.connection_log: List[List[float]] = []
        # A client connection counts as open from accept until the client sends
        # FIN or the socket closes, so that draining a connection through the
        # delay queue does not count against the client's concurrency.
        self.open_connections = 0
        self.max_open_connections = 0


class Direction:
    """One direction of a relayed connection: reads from `source`, writes to `destination`.

    Read bytes are charged to `buckets`, then wait `delay` seconds in a FIFO
    queue before they are written. Reading from the source pauses for as long
    as any reason in `_pause_reasons` applies: a bucket in debt, a full window,
    or a destination transport whose write buffer is full.
    """

    def __init__(self, relay: "Shaper", source: "Endpoint", destination: "Endpoint", to_client: bool) -> None:
        self.relay = relay
        self.source = source
        self.destination = destination
        self.to_client = to_client
        self.buckets: List[TokenBucket] = relay.download_buckets() if to_client else []
        self.delay = relay.delay
        self.window = relay.window
        self.queue: Deque[Tuple[float, Optional[bytes]]] = collections.deque()
        self.queued_bytes = 0
        self.forwarded_bytes = 0
        self.last_read = 0.0  # loop.time() of the last read from the source
        self.finished = False  # True once END_OF_STREAM was delivered or the destination closed
        self._pause_reasons: Set[str] = set()
        self._flush_timer: Optional[asyncio.TimerHandle] = None
        self._token_timer: Optional[asyncio.TimerHandle] = None

    # Pausing and resuming the source

    def pause(self, reason: str) -> None:
        if not self._pause_reasons and self.source.transport is not None:
            self.source.transport.pause_reading()
        self._pause_reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason not in self._pause_reasons:
            return
        self._pause_reasons.discard(reason)
        # Resuming a transport after its EOF would make asyncio read the EOF again.
        transport = self.source.transport
        if not self._pause_reasons and transport is not None and not transport.is_closing() and not self.source.at_eof:
            transport.resume_reading()

    # Data from the source

    def push(self, data: bytes) -> None:
        now = self.relay.loop.time()
        count = len(data)
        self.forwarded_bytes += count
        self.last_read = now
        if self.to_client:
            self.relay.stats.bytes_to_client += count
        else:
            self.relay.stats.bytes_to_target += count

        if self.buckets:
            for bucket in self.buckets:
                bucket.take(count, now)
            self._wait_for_tokens()

        if self.delay <= 0:
            self.destination.write(data)
            return
        self.queue.append((now + self.delay, data))
        self.queued_bytes += count
        if self.queued_bytes >= self.window:
            self.pause("window")
        self._schedule_flush()

    def push_end_of_stream(self) -> None:
        if self.delay <= 0:
            self._deliver_end_of_stream()
            return
        self.queue.append((self.relay.loop.time() + self.delay, END_OF_STREAM))
        self._schedule_flush()

    def _wait_for_tokens(self) -> None:
        now = self.relay.loop.time()
        wait = max(bucket.seconds_until_paid(now) for bucket in self.buckets)
        if wait <= 0:
            self.resume("tokens")
            return
        self.pause("tokens")
        if self._token_timer is None:
            self._token_timer = self.relay.loop.call_later(wait, self._on_token_timer)

    def _on_token_timer(self) -> None:
        # Another connection may have taken from the shared bucket meanwhile, so
        # this checks again and may wait once more.
        self._token_timer = None
        self._wait_for_tokens()

    # The delay queue

    def _schedule_flush(self) -> None:
        if self._flush_timer is None and self.queue:
            self._flush_timer = self.relay.loop.call_at(self.queue[0][0], self._flush)

    def _flush(self) -> None:
        self._flush_timer = None
        now = self.relay.loop.time()
        ready: List[bytes] = []
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            if data is END_OF_STREAM:
                self._write_ready(ready)
                ready = []
                self._deliver_end_of_stream()
                continue
            ready.append(data)
            self.queued_bytes -= len(data)
        self._write_ready(ready)
        if self.queued_bytes < self.window:
            self.resume("window")
        self._schedule_flush()

    def _write_ready(self, ready: List[bytes]) -> None:
        if ready:
            self.destination.write(b"".join(ready) if len(ready) > 1 else ready[0])

    def _deliver_end_of_stream(self) -> None:
        self.finished = True
        self.destination.write_end_of_stream()
        self.relay.maybe_close(self.source)

    def cancel(self) -> None:
        """Drop queued data and timers, because the destination is gone."""
        self.finished = True
        self.queue.clear()
        self.queued_bytes = 0
        for timer in (self._flush_timer, self._token_timer):
            if timer is not None:
                timer.cancel()
        self._flush_timer = self._token_timer = None


class Endpoint(asyncio.BufferedProtocol):
    """One socket of a relayed connection: the client's or the target's."""

    def __init__(self, relay: "Shaper", name: str) -> None:
        self.relay = relay
        self.name = name
        self.transport: Optional[asyncio.Transport] = None
        self.peer: Optional["Endpoint"] = None
        self.outgoing: Optional[Direction] = None  # bytes this socket receives
        self.incoming: Optional[Direction] = None  # bytes written to this socket
        self.at_eof = False
        self.closed = False
        self.counted_done = False  # see Shaper.client_done
        self.opened = relay.loop.time()
        self._buffer = bytearray(relay.read_size)
        self._view = memoryview(self._buffer)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        if self.name == "client":
            self.relay.client_connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        if self.outgoing is not None:
            self.outgoing.push(bytes(self._view[:nbytes]))

    def eof_received(self) -> bool:
        if not self.at_eof and self.outgoing is not None:
            self.outgoing.push_end_of_stream()
        self.at_eof = True
        self.relay.client_done(self)
        # Keep the transport open for writing: the other direction may still
        # carry data (TCP half-close).
        return True

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.closed = True
        if exc is not None:
            LOG.debug("%s connection lost: %s", self.name, exc)
        self.relay.forget(self)
        self.relay.client_done(self)
        if self.incoming is not None:
            self.incoming.cancel()
        # Bytes already read from this socket still reach the peer after the
        # delay, followed by the end of the stream.
        if self.outgoing is not None and not self.outgoing.finished and not self.at_eof:
            self.at_eof = True
            self.outgoing.push_end_of_stream()
        self.relay.maybe_close(self)

    def pause_writing(self) -> None:
        if self.incoming is not None:
            self.incoming.pause("write buffer")

    def resume_writing(self) -> None:
        if self.incoming is not None:
            self.incoming.resume("write buffer")

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def write_end_of_stream(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class Shaper:
    """The relay: accepts on 127.0.0.1 and forwards each connection to `target`.

    Rates are in bytes per second (0 means no cap), `delay` is in seconds each
    way and `window` in bytes. Create it and call `start()` inside a running
    event loop.
    """

    def __init__(
        self,
        target: Tuple[str, int],
        connection_rate: float,
        total_rate: float,
        delay: float,
        window: int = DEFAULT_WINDOW,
        port: int = 0,
    ) -> None:
        require_loopback(target[0])
        if connection_rate < 0 or total_rate < 0 or delay < 0 or window <= 0:
            raise ValueError("rates and delay must be 0 or more and the window more than 0")
        self.target = target
        self.connection_rate = connection_rate
        self.total_rate = total_rate
        self.delay = delay
        self.window = window
        self.port = port
        shaped = connection_rate > 0 or total_rate > 0
        self.read_size = SHAPED_READ_SIZE if shaped else UNSHAPED_READ_SIZE
        self.stats = Stats()
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        self.total_bucket = self._new_bucket(total_rate) if total_rate > 0 else None
        self._server: Optional[asyncio.AbstractServer] = None
        self._endpoints: Set[Endpoint] = set()
        self._connecting: Set["asyncio.Task[None]"] = set()

    def _new_bucket(self, rate: float) -> TokenBucket:
        return TokenBucket(rate, max(float(self.read_size), rate * BURST_SECONDS), self.loop.time())

    def download_buckets(self) -> List[TokenBucket]:
        """Return a new per-connection bucket (when capped) and the shared total bucket."""
        buckets = []
        if self.connection_rate > 0:
            buckets.append(self._new_bucket(self.connection_rate))
        if self.total_bucket is not None:
            buckets.append(self.total_bucket)
        return buckets

    async def start(self) -> None:
        self._server = await self.loop.create_server(self._accept, LISTEN_HOST, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for endpoint in list(self._endpoints):
            if endpoint.transport is not None:
                endpoint.transport.abort()

    def _accept(self) -> Endpoint:
        client = Endpoint(self, "client")
        self._endpoints.add(client)
        self.stats.connections += 1
        self.stats.open_connections += 1
        self.stats.max_open_connections = max(self.stats.max_open_connections, self.stats.open_connections)
        return client

    def client_connected(self, client: Endpoint) -> None:
        # asyncio starts reading right after connection_made, so without the
        # pause the first request bytes would arrive before there is a target
        # to forward them to. They wait in the socket's receive buffer instead.
        assert client.transport is not None
        client.transport.pause_reading()
        task = self.loop.create_task(self._connect_target(client))
        # The event loop keeps only weak references to tasks.
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect_target(self, client: Endpoint) -> None:
        target = Endpoint(self, "target")
        try:
            await self.loop.create_connection(lambda: target, self.target[0], self.target[1])
        except OSError as error:
            self.stats.failed_connects += 1
            LOG.error("connecting to target %s:%d failed: %s", self.target[0], self.target[1], error)
            client.close()
            return
        if client.closed:
            target.close()
            return
        self._endpoints.add(target)
        client.peer, target.peer = target, client
        upload = Direction(self, client, target, to_client=False)
        download = Direction(self, target, client, to_client=True)
        client.outgoing, client.incoming = upload, download
        target.outgoing, target.incoming = download, upload
        if client.transport is not None and not client.transport.is_closing():
            client.transport.resume_reading()

    def maybe_close(self, endpoint: Endpoint) -> None:
        """Close both sockets once neither direction has anything left to deliver."""
        directions = (endpoint.outgoing, endpoint.incoming)
        if all(direction is not None and direction.finished for direction in directions):
            endpoint.close()
            if endpoint.peer is not None:
                endpoint.peer.close()

    def forget(self, endpoint: Endpoint) -> None:
        self._endpoints.discard(endpoint)

    def client_done(self, endpoint: Endpoint) -> None:
        """Count a client connection as closed, once, when the client sends FIN or its socket closes."""
        if endpoint.name == "client" and not endpoint.counted_done:
            endpoint.counted_done = True
            self.stats.open_connections -= 1
            download = endpoint.incoming
            last_byte = download.last_read if download is not None and download.forwarded_bytes else endpoint.opened
            self.stats.connection_log.append([
                round(endpoint.opened - self.started, 4),
                round(self.loop.time() - self.started, 4),
                round(last_byte - self.started, 4),
                download.forwarded_bytes if download is not None else 0,
            ])


def require_loopback(host: str) -> None:
    """Raise ValueError unless `host` is an IPv4 loopback address (127.0.0.0/8)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError("target host %r is not an IP address; use 127.0.0.1" % host) from None
    if address.version != 4 or not address.is_loopback:
        raise ValueError("target host %s is not in 127.0.0.0/8; the shaper only forwards to loopback" % host)


def parse_target(text: str) -> Tuple[str, int]:
    host, separator, port = text.rpartition(":")
    if not separator or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError("invalid target %r: expected 127.0.0.1:PORT" % text)
    try:
        require_loopback(host)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return host, int(port)


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("invalid value %r: must be 0 or more" % text)
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Relay TCP connections from 127.0.0.1 to a loopback port with rate caps and a fixed delay.",
    )
    parser.add_argument("--target", required=True, type=parse_target, help="address to forward to, 127.0.0.1:PORT")
    parser.add_argument("--port", type=int, default=0, help="port to listen on at 127.0.0.1 (default: a free port)")
    parser.add_argument(
        "--rate", type=non_negative_float, default=0.0,
        help="download cap per connection in MB/s (10^6 bytes per second); 0 means no cap (default: 0)",
    )
    parser.add_argument(
        "--total-rate", type=non_negative_float, default=0.0,
        help="download cap for all connections together in MB/s; 0 means no cap (default: 0)",
    )
    parser.add_argument("--delay", type=non_negative_float, default=0.0, help="delay in each direction in milliseconds (default: 0)")
    parser.add_argument(
        "--window", type=int, default=DEFAULT_WINDOW // 1024,
        help="max bytes waiting in the delay queue of one connection and direction, in KiB (default: %(default)s)",
    )
    parser.add_argument(
        "--max-seconds", type=non_negative_float, default=3600.0,
        help="stop by itself after this many seconds (default: %(default)s)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each lost connection")
    return parser


def print_json(value: dict) -> None:
    sys.stdout.write(json.dumps(value, sort_keys=True) + "\n")
    sys.stdout.flush()


async def serve(args: argparse.Namespace) -> None:
    shaper = Shaper(
        target=args.target,
        connection_rate=args.rate * 1e6,
        total_rate=args.total_rate * 1e6,
        delay=args.delay / 1000.0,
        window=args.window * 1024,
        port=args.port,
    )
    await shaper.start()
    started = time.monotonic()
    print_json({"listening": "%s:%d" % (LISTEN_HOST, shaper.port), "target": "%s:%d" % args.target})
    LOG.info(
        "listening on %s:%d, forwarding to %s:%d, rate %s MB/s per connection, total %s MB/s, delay %s ms each way",
        LISTEN_HOST, shaper.port, args.target[0], args.target[1], args.rate, args.total_rate, args.delay,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    stop_reason: List[str] = ["max-seconds"]

    def request_stop(reason: str) -> None:
        stop_reason[0] = reason
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, request_stop, "SIGTERM")
    loop.add_signal_handler(signal.SIGINT, request_stop, "SIGINT")
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.max_seconds)
    except asyncio.TimeoutError:
        LOG.warning("stopping after --max-seconds %s", args.max_seconds)
    shaper.close()
    # Let the aborted connections run their connection_lost callbacks, so they are counted.
    await asyncio.sleep(0.05)

    usage = resource.getrusage(resource.RUSAGE_SELF)
    stats = shaper.stats
    print_json(
        {
            "stopped_by": stop_reason[0],
            "seconds": round(time.monotonic() - started, 3),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
            "bytes_to_client": stats.bytes_to_client,
            "bytes_to_target": stats.bytes_to_target,
            "connections": stats.connections,
            "failed_connects": stats.failed_connects,
            "max_open_connections": stats.max_open_connections,
            # loop.time() is time.monotonic(), the same clock in every process of this machine
            "started_monotonic": shaper.started,
            "connection_log": stats.connection_log,
        }
    )


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="shaper: %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
