#!/usr/bin/env python3
"""A gevent WSGI server and a greentap forwarder sharing one hub.

    python examples/wsgi_status.py --listen 127.0.0.1:8080 tap0 tap1

``GET /`` answers with the forwarder's counters as JSON while it forwards
frames.  Under full forwarding load the server keeps answering: the
forwarder reads at most 50 frames back to back before yielding to the hub.
"""

import argparse
import json
import sys

import structlog
from gevent.pywsgi import WSGIServer

from greentap import Forwarder
from greentap.core.endpoints import parse_endpoint
from greentap.ports import open_ports


def make_app(forwarder):
    """Return a WSGI app serving ``forwarder.stats()`` as JSON."""

    def app(environ, start_response):
        body = json.dumps(forwarder.stats()).encode()
        start_response(
            "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        )
        return [body]

    return app


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT (port 0: any)")
    parser.add_argument("endpoints", nargs="+", help="tap-forward endpoints (two or more)")
    args = parser.parse_args(argv)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    ports = open_ports([parse_endpoint(text) for text in args.endpoints])
    forwarder = Forwarder(ports)
    host, port = args.listen.rsplit(":", 1)
    server = WSGIServer((host, int(port)), make_app(forwarder), log=None)
    server.start()
    print(f"serving on http://{host}:{server.server_port}/", flush=True)
    forwarder.handle_signals()
    try:
        forwarder.serve_forever()
    finally:
        server.stop(timeout=1)


if __name__ == "__main__":
    main()
