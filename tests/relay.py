"""A TCP relay on 127.0.0.1 that slows the registry's responses down.

Pulls from a registry on loopback finish in a fraction of a second, too fast to kill
a pull in the middle or to let a token expire between two requests. Pointing the
puller at the relay instead of the registry gives a link of a known speed, and the
relay counts the bytes it forwarded so that a test can tell what was downloaded twice.
"""

import socket
import threading
import time
from typing import List, Tuple

LOOPBACK = "127.0.0.1"
COPY_CHUNK = 64 * 1024


class ThrottlingRelay:
    """Forward connections from a free port to ``target``, capping each response stream at ``rate`` bytes/s per connection."""

    def __init__(self, target: Tuple[str, int], rate: float) -> None:
        if target[0] != LOOPBACK:
            raise ValueError("the relay only forwards to %s, not %r" % (LOOPBACK, target[0]))
        self.target = target
        self.rate = rate
        self.bytes_to_client = 0
        self.active_connections = 0
        self.max_active_connections = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._sockets: List[socket.socket] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.host = "%s:%d" % (LOOPBACK, self.port)
        threading.Thread(target=self._accept_loop, name="relay-accept", daemon=True).start()

    def reset_count(self) -> None:
        with self._lock:
            self.bytes_to_client = 0
            self.max_active_connections = self.active_connections

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.extend([client, upstream])
                self.active_connections += 1
                self.max_active_connections = max(self.max_active_connections, self.active_connections)
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, destination: socket.socket, throttled: bool) -> None:
        started, sent = time.monotonic(), 0
        try:
            while not self._closing.is_set():
                data = source.recv(COPY_CHUNK)
                if not data:
                    break
                destination.sendall(data)
                if throttled:
                    sent += len(data)
                    with self._lock:
                        self.bytes_to_client += len(data)
                    ahead = sent / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        except OSError:
            pass
        finally:
            if throttled:  # one of the two pipes of a connection counts its end
                with self._lock:
                    self.active_connections -= 1
            for sock in (source, destination):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closing.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.close()
                except OSError:
                    pass
