"""The app's health check as seen from outside: HTTP(S) GET on one address.

The URL is a template: {address} is where to connect, {domain} and {path} come from the spec.
The default, https://{domain}{path}, connects to the given address with the domain as TLS
server name and Host, so a node can be checked on its own IP before the floating IP moves.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

from blueprints.spec import AppSpec

DEFAULT_URL = "https://{domain}{path}"


def health_path(app: AppSpec) -> str:
    """The path of the first public http service's http health check, else /."""
    for _name, svc in app.sorted_services():
        if svc.public_http_ports and svc.health and svc.health.type == "http":
            return svc.health.path
    return "/"


def http_probe(
    app: AppSpec, template: str = DEFAULT_URL, timeout: float = 3.0
) -> Callable[[str], bool]:
    path = health_path(app)

    def probe(address: str) -> bool:
        url = template.format(address=address, domain=app.domain, path=path)
        parts = urlsplit(url)
        secure = parts.scheme == "https"
        host = parts.hostname or address
        connect_to = address if host == app.domain else host
        port = parts.port or (443 if secure else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn: http.client.HTTPConnection | None = None
        try:
            sock = socket.create_connection((connect_to, port), timeout=timeout)
            if secure:
                ctx = ssl.create_default_context()
                sock = ctx.wrap_socket(sock, server_hostname=host)
                conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
            else:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            conn.sock = sock
            conn.request(
                "GET", target, headers={"Host": parts.netloc, "User-Agent": "blueprints-watch"}
            )
            status = conn.getresponse().status
            return 200 <= status < 400
        except (OSError, http.client.HTTPException, ssl.SSLError):
            return False
        finally:
            if conn is not None:
                conn.close()

    return probe
