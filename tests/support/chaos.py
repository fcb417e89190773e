"""A seeded, fault-injecting TCP proxy (asyncio, our own code) for chaos tests.

It sits between deltaferry and the S3-compatible server, or the PostgreSQL source. Every connection draws its
faults from its own RNG, seeded from the proxy's seed and the connection's index, so
a run with the same seed and the same request sequence meets the same faults in the
same order. Faults, each with a probability (per connection) and a direction:

- latency with jitter on every forwarded chunk;
- a bandwidth limit (bytes per second);
- reset mid-stream (TCP RST after some bytes);
- blackhole (accept, then never answer);
- slicing into tiny packets;
- close after N bytes (a clean FIN, mid-response);
- link down: the listening socket is closed for a period (connections refused).
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class FaultPlan:
    """Reset, blackhole and close-after probabilities apply to each forwarded chunk (so
    pooled keep-alive connections meet them too); slicing is per connection.
    ``direction`` is "up", "down" or "both"."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    bandwidth_bps: int | None = None
    reset_p: float = 0.0
    blackhole_p: float = 0.0
    slice_p: float = 0.0
    close_after_p: float = 0.0
    direction: str = "both"
    # per HTTP request (client to server): cut it with a reset, or answer 503 Slow Down
    request_reset_p: float = 0.0
    request_503_p: float = 0.0
    # bytes into the stream where a reset, blackhole or close strikes (None: drawn, 0-16 KiB)
    fault_at: int | None = None

    @classmethod
    def random(cls, rng: random.Random) -> FaultPlan:
        """A plan for a chaos round: each kind on or off, with moderate rates."""
        return cls(
            latency_ms=rng.choice([0, 0, 5, 20]),
            jitter_ms=rng.choice([0, 5, 15]),
            bandwidth_bps=rng.choice([None, None, 2_000_000]),
            reset_p=rng.choice([0.1, 0.25, 0.4]),
            blackhole_p=rng.choice([0, 0.05]),
            slice_p=rng.choice([0, 0.3]),
            close_after_p=rng.choice([0, 0.15]),
            direction=rng.choice(["both", "up", "down"]),
        )


@dataclass
class ChaosProxy:
    upstream_port: int
    seed: int
    plan: FaultPlan = field(default_factory=FaultPlan)
    injected: Counter = field(default_factory=Counter)
    events: list[tuple[int, str]] = field(default_factory=list)  # (connection, fault), in order

    def __post_init__(self) -> None:
        self.requests = 0
        self._conn_index = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()
        self._tasks: set[asyncio.Task] = set()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    # --- control (from the test's thread) --------------------------------------------

    def set_plan(self, plan: FaultPlan) -> None:
        self.plan = plan

    def link_down(self, seconds: float) -> None:
        """Refuse connections for ``seconds`` (the listening socket is closed)."""
        self.injected["link_down"] += 1
        asyncio.run_coroutine_threadsafe(self._down(seconds), self._loop).result(10)

    def close(self) -> None:
        async def stop() -> None:
            if self._server:
                self._server.close()
            for t in list(self._tasks):
                t.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # --- the proxy ------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._listen())
        self._ready.set()
        self._loop.run_forever()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )

    async def _down(self, seconds: float) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()
        self._loop.call_later(seconds, lambda: self._loop.create_task(self._listen()))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task:
            self._tasks.add(task)
        index = self._conn_index
        self._conn_index += 1
        rng = random.Random(f"{self.seed}:{index}")
        plan = self.plan
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        sliced = rng.random() < plan.slice_p
        if sliced:
            self._note(index, "slice")
        up_fault = self._draw(rng, plan) if plan.direction in ("up", "both") else (None, 0)
        down_fault = self._draw(rng, plan) if plan.direction in ("down", "both") else (None, 0)
        try:
            await asyncio.gather(
                self._pipe(reader, up_w, plan, up_fault, sliced, writer, index, rng.random()),
                self._pipe(up_r, writer, plan, down_fault, sliced, writer, index, rng.random()),
            )
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_w):
                w.close()
            if task:
                self._tasks.discard(task)

    @staticmethod
    def _draw(rng: random.Random, plan: FaultPlan) -> tuple[str | None, int]:
        draw, at = rng.random(), rng.randint(0, 16_384)
        if plan.fault_at is not None:
            at = plan.fault_at
        for kind, p in (
            ("reset", plan.reset_p),
            ("blackhole", plan.blackhole_p),
            ("close_after", plan.close_after_p),
        ):
            if draw < p:
                return kind, at
            draw -= p
        return None, at

    def _note(self, index: int, kind: str) -> None:
        self.injected[kind] += 1
        self.events.append((index, kind))

    async def _pipe(self, src, dst, plan, fault, sliced, client, index, seed) -> None:  # noqa: ANN001
        kind, at = fault
        jitter = random.Random(seed)
        sent = 0
        upstream = dst is not client
        while True:
            data = await src.read(65536)
            if not data:
                if dst.can_write_eof():
                    dst.write_eof()
                return
            if upstream and data[:8].split(b" ", 1)[0] in _METHODS:
                self.requests += 1
                if plan.request_reset_p or plan.request_503_p:
                    draw = jitter.random()
                    if draw < plan.request_reset_p:
                        self._note(index, "request_reset")
                        _rst(client)
                        raise ConnectionResetError("chaos: request reset")
                    if draw < plan.request_reset_p + plan.request_503_p:
                        self._note(index, "request_503")
                        client.write(_SLOW_DOWN)
                        await client.drain()
                        client.close()
                        raise ConnectionAbortedError("chaos: 503")
            if plan.latency_ms or plan.jitter_ms:
                await asyncio.sleep((plan.latency_ms + jitter.uniform(0, plan.jitter_ms)) / 1000)
            if kind and sent + len(data) > at:
                head = data[: at - sent]
                if head:
                    dst.write(head)
                    await dst.drain()
                self._note(index, kind)
                if kind == "reset":
                    _rst(client)
                    raise ConnectionResetError("chaos: reset mid-stream")
                if kind == "close_after":
                    client.close()
                    raise ConnectionAbortedError("chaos: closed after N bytes")
                await asyncio.sleep(3600)  # blackhole: never answer; the client times out
            chunks = [data[i : i + 64] for i in range(0, len(data), 64)] if sliced else [data]
            for chunk in chunks:
                dst.write(chunk)
                await dst.drain()
                if plan.bandwidth_bps:
                    await asyncio.sleep(len(chunk) / plan.bandwidth_bps)
            sent += len(data)


_METHODS = {b"GET", b"PUT", b"POST", b"HEAD", b"DELETE"}
_SLOW_DOWN = (
    b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
    b"Content-Length: 88\r\n\r\n"
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>\n"
)


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()
