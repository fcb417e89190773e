"""A paginated JSON API on loopback that behaves like real ones, failures included.

Three collections, three pagination styles, all behind a bearer token:

- ``/api/tickets`` (and ``/api/items``): cursor pagination (``{"data": [...], "next": "<cursor>"}``), a
  ``since`` parameter (records with ``updated_at >= since``);
- ``/api/events``: a JSON array per page with an RFC 8288 ``Link: <...>; rel="next"`` header,
  ``since`` as well;
- ``/api/users``: offset pagination (``offset``/``limit``, ``{"items": [...], "total": n}``),
  no "changed since" parameter.

On the cursor collections, ``repeats`` lists extra records per path (``(position, record)``:
the record is listed again at that position of the sorted listing, as an API that pages
by offset while a record changes, or whose pages overlap); ``stuck`` is a set of paths
whose cursor, once the listing is exhausted, comes back as it was sent (an empty page with
the same ``next``: a cursor that stops advancing), and ``frozen`` a set of paths that
ignore the cursor parameter (every page is the first, with a new ``next`` each time).
Both give up after ``STUCK_LIMIT`` requests with ``next = null``, so a read that does not
stop them still ends. ``drops_nulls`` is a set of paths whose ``since`` filter leaves out
records without a time (``updated_at >= since``, false for NULL, as a SQL-backed API's);
the others send them with every ``since``.

``faults`` is a queue of (path prefix, status, headers) answered once each, before the
real answer, to the first request that matches; ``html`` is a set of path prefixes
answered with a 200 HTML page (a login page in front of the API).
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

PAGE = 4
STUCK_LIMIT = 40


@dataclass
class ApiServer:
    token: str = "s3cret-token"
    tickets: dict[int, dict] = field(default_factory=dict)
    events: dict[int, dict] = field(default_factory=dict)
    users: dict[int, dict] = field(default_factory=dict)
    items: dict[int, dict] = field(default_factory=dict)
    faults: list[tuple[str, int, dict[str, str]]] = field(default_factory=list)
    html: set[str] = field(default_factory=set)
    repeats: dict[str, list[tuple[int, dict]]] = field(default_factory=dict)
    stuck: set[str] = field(default_factory=set)
    frozen: set[str] = field(default_factory=set)
    drops_nulls: set[str] = field(default_factory=set)
    log: list[dict[str, Any]] = field(default_factory=list)

    def start(self) -> str:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802
                api._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_port}/api"
        return self.url

    def stop(self) -> None:
        if getattr(self, "_server", None) is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    def requests_to(self, prefix: str) -> list[dict[str, Any]]:
        return [r for r in self.log if r["path"].startswith(prefix)]

    # --- the API ------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        entry = {"path": parts.path, "query": query, "at": time.monotonic()}
        self.log.append(entry)
        for i, (prefix, status, headers) in enumerate(self.faults):
            if parts.path.startswith(prefix):
                del self.faults[i]
                entry["status"] = status
                return self._send(h, status, {"error": "injected"}, headers)
        if any(parts.path.startswith(p) for p in self.html):
            entry["status"] = 200
            body = b"<!doctype html><html><body>Please log in</body></html>"
            h.send_response(200)
            h.send_header("Content-Type", "text/html; charset=utf-8")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
            return
        if h.headers.get("Authorization") != f"Bearer {self.token}":
            entry["status"] = 401
            return self._send(h, 401, {"error": "unauthorized"})
        entry["status"] = 200
        if parts.path in ("/api/tickets", "/api/items"):
            coll = self.tickets if parts.path == "/api/tickets" else self.items
            rows = self._since(coll, query, keep_nulls=parts.path not in self.drops_nulls)
            for pos, rec in sorted(self.repeats.get(parts.path, []), key=lambda x: x[0]):
                rows.insert(pos, rec)
            start = int(query.get("cursor", 0))
            if parts.path in self.frozen:
                page, nxt = rows[:PAGE], str(start + PAGE)
            else:
                page = rows[start : start + PAGE]
                nxt = str(start + PAGE) if start + PAGE < len(rows) else None
                if parts.path in self.stuck:
                    nxt = str(min(start + PAGE, len(rows)))
            if (parts.path in self.stuck or parts.path in self.frozen) and len(
                self.requests_to(parts.path)
            ) >= STUCK_LIMIT:
                nxt = None
            return self._send(h, 200, {"data": page, "next": nxt})
        if parts.path == "/api/events":
            rows = self._since(self.events, query)
            n = int(query.get("page", 0))
            page = rows[n * PAGE : (n + 1) * PAGE]
            headers = {}
            if (n + 1) * PAGE < len(rows):
                q = {**query, "page": n + 1}
                headers["Link"] = f'<{self.url}/events?{urlencode(q)}>; rel="next"'
            return self._send(h, 200, page, headers)
        if parts.path == "/api/users":
            rows = [self.users[k] for k in sorted(self.users)]
            off, limit = int(query.get("offset", 0)), int(query.get("limit", PAGE))
            return self._send(h, 200, {"items": rows[off : off + limit], "total": len(rows)})
        entry["status"] = 404
        self._send(h, 404, {"error": "not found"})

    @staticmethod
    def _since(
        coll: dict[int, dict], query: dict[str, str], keep_nulls: bool = True
    ) -> list[dict]:
        since = query.get("since")

        def instant(text: Any) -> Any:  # as an API with a time column compares: instants
            from datetime import datetime, timezone

            if isinstance(text, (int, float)) or str(text).lstrip("-").isdigit():
                # a Unix time in seconds (as an API with an epoch column compares)
                return datetime.fromtimestamp(min(float(text), 253402300799), timezone.utc)
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
            return value if value.tzinfo else value.replace(tzinfo=timezone.utc)

        # a record without a time (null or missing) comes first, and with every "since"
        # (as an API whose filter is "updated_at >= since OR updated_at IS NULL") unless
        # the API drops them (keep_nulls False: "updated_at >= since")
        never = instant("0001-01-01T00:00:00")
        rows = sorted(coll.values(), key=lambda r: (instant(r.get("updated_at") or never.isoformat()), r["id"]))
        return [
            r
            for r in rows
            if since is None
            or (not r.get("updated_at") and keep_nulls)
            or (r.get("updated_at") and instant(r["updated_at"]) >= instant(since))
        ]

    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        raw = _RAW.sub(lambda m: m.group(1), json.dumps(body)).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(raw)


class Raw(str):
    """A number sent exactly as written (``Raw("1e400")``): JSON text Python would not write."""

    def __new__(cls, text: str) -> "Raw":
        return super().__new__(cls, f"\x00raw:{text}\x00")


# a Raw value as json.dumps writes it: the quoted marker around the text
_RAW = re.compile(r'"\\u0000raw:(.*?)\\u0000"')


# a test job against this server: the [jobs.api] header (``{url}``, ``{lake}`` to format)
API_JOB_HEADER = """
[jobs.api]
source = "rest_api"
url = "{url}"
lake = "{lake}"
auth = {{ type = "bearer", token = "env:API_TOKEN" }}
"""


def users_table(contract: str) -> str:
    """The ``users`` table of a test job (offset paging), checked by ``contract``."""
    return f"""
[[jobs.api.tables]]
name = "users"
primary_key = ["id"]
data_selector = "items"
paginator = {{{{ type = "offset", limit = 3, total_path = "total" }}}}
contract = "{contract}"
"""


def ts(second: int) -> str:
    """A cursor value of the seeded records: ``second`` seconds after 10:00 UTC."""
    return f"2026-11-01T10:00:{second:02d}+00:00"


def seeded() -> ApiServer:
    """A server with ten tickets (9 and 10 share the last cursor value), seven events and
    seven users; not started."""
    server = ApiServer()
    for i in range(1, 11):
        server.tickets[i] = {
            "id": i,
            "title": f"ticket {i} – Grüße",
            "status": "open",
            "tags": ["a", f"t{i}"],
            "meta": {"prio": i % 3, "owner": {"name": "ö"}},
            "updated_at": ts(min(i, 9)),
        }
    for i in range(1, 8):
        server.events[i] = {"id": i, "kind": "click", "updated_at": ts(i)}
    for i in range(1, 8):
        server.users[i] = {"id": i, "name": f"user {i}", "email": f"u{i}@example.com"}
    return server
