"""A small fault-injecting TCP proxy for tests (threads, our own code).

Sits between deltaferry and the S3-compatible server. ``reset_puts(n)`` makes the
next ``n`` HTTP requests that start with ``PUT`` end in a TCP reset before they
reach the server; everything else is piped through unchanged.
"""

from __future__ import annotations

import socket
import struct
import threading


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._lock = threading.Lock()
        self._put_resets = 0
        self.resets_done = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def reset_puts(self, n: int) -> None:
        with self._lock:
            self._put_resets = n

    def _take_put_reset(self) -> bool:
        with self._lock:
            if self._put_resets > 0:
                self._put_resets -= 1
                self.resets_done += 1
                return True
            return False

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                _reset(client)
                continue
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upstream and data.startswith(b"PUT ") and self._take_put_reset():
                    _reset(src)
                    _reset(dst)
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self.sock.close()


def _reset(s: socket.socket) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    except OSError:
        pass
