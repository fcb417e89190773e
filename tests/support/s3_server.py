"""moto's S3-compatible server, with one fidelity fix for fault-injection tests.

S3 stores an object only when the whole request arrived: a PUT cut inside its headers or
its body (a reset or closed link) stores nothing. moto's server, on werkzeug's
http.server, takes EOF for the end of the headers and a short body for a whole one, and
stores the torn object (a manifest of 0 bytes, found by the chaos suite). This wrapper
answers such requests as S3 does (411 MissingContentLength, 400 IncompleteBody) and
passes everything else to moto unchanged.

    python tests/support/s3_server.py HOST PORT
"""

from __future__ import annotations

import io
import sys

from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

_INCOMPLETE = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>IncompleteBody</Code>'
    b"<Message>You did not provide the number of bytes specified by the Content-Length "
    b"HTTP header</Message></Error>"
)


_MISSING_LENGTH = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>MissingContentLength</Code>'
    b"<Message>You must provide the Content-Length HTTP header.</Message></Error>"
)


def _error(start_response, status: str, body: bytes) -> list[bytes]:  # noqa: ANN001
    start_response(
        status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
    )
    return [body]


def strict_body(app):  # noqa: ANN001, ANN201
    def wrapped(environ, start_response):  # noqa: ANN001, ANN202
        method = environ.get("REQUEST_METHOD")
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if method == "PUT" and not environ.get("CONTENT_LENGTH") and not chunked:
            # what is left of a request cut inside its headers (http.server takes EOF for
            # their end): S3 answers 411 and stores nothing
            return _error(start_response, "411 Length Required", _MISSING_LENGTH)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length and method in ("PUT", "POST"):
            stream = environ["wsgi.input"]
            chunks, got = [], 0
            try:
                while got < length:
                    chunk = stream.read(min(65536, length - got))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    got += len(chunk)
            except Exception:  # noqa: BLE001 - a client that vanished mid-body
                pass
            if got < length:
                return _error(start_response, "400 Bad Request", _INCOMPLETE)
            environ["wsgi.input"] = io.BytesIO(b"".join(chunks))
        return app(environ, start_response)

    return wrapped


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(host, port, strict_body(app), threaded=True, use_reloader=False)


if __name__ == "__main__":
    main()
