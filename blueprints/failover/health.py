"""The app's health check as seen from outside: HTTP(S) GET on one address.

The URL is a template: {address} is where to connect, {domain} and {path} come from the spec.
The default, https://{domain}{path}, connects to the given address with the domain as TLS
server name and Host, so a node can be checked on its own IP before the floating IP moves.
Which templates are allowed is checked when the stack is read (settings: healthUrl).

One probe has a **total** deadline: connecting, the TLS handshake, sending the request and
reading the status line and headers together take at most `timeout` seconds, so an endpoint
that trickles one byte a second cannot stretch a probe. The body is not read.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from blueprints.spec import AppSpec

DEFAULT_URL = "https://{domain}{path}"
MAX_HEAD = 64 * 1024  # a status line and headers longer than this are not a health answer
_STATUS = re.compile(rb"HTTP/[0-9](?:\.[0-9])? ([0-9]{3})(?: |\r\n)")


def health_path(app: AppSpec) -> str:
    """The path of the first public http service's http health check, else /."""
    for _name, svc in app.sorted_services():
        if svc.public_http_ports and svc.health and svc.health.type == "http":
            return svc.health.path
    return "/"


class _Late(TimeoutError):
    """The probe's total deadline passed."""


def http_check(
    app: AppSpec,
    template: str = DEFAULT_URL,
    timeout: float = 3.0,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[str], tuple[bool, str]]:
    """check(address) -> (healthy, what was seen: "HTTP 200", "timed out after 3s", ...)."""
    path = health_path(app)
    # The template was validated with the settings; rendering it here once more means a
    # template that slipped past validation fails now, before any probe or cloud action.
    template.format(address="192.0.2.1", domain=app.domain, path=path)

    def check(address: str) -> tuple[bool, str]:
        deadline = clock() + timeout

        def left() -> float:
            remaining = deadline - clock()
            if remaining <= 0:
                raise _Late()
            return remaining

        url = template.format(address=address, domain=app.domain, path=path)
        parts = urlsplit(url)
        secure = parts.scheme == "https"
        host = parts.hostname or address
        connect_to = address if host == app.domain else host
        port = parts.port or (443 if secure else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "User-Agent: blueprints-watch\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        ).encode()
        sock: socket.socket | None = None
        try:
            sock = socket.create_connection((connect_to, port), timeout=left())
            if secure:
                ctx = ssl.create_default_context()
                sock.settimeout(left())
                # CPython bounds the whole handshake by the socket's timeout (one deadline).
                sock = ctx.wrap_socket(sock, server_hostname=host)
            sock.settimeout(left())
            sock.sendall(request)  # sendall: the timeout bounds the whole call
            head = b""
            while b"\r\n\r\n" not in head:
                sock.settimeout(left())
                chunk = sock.recv(4096)
                if not chunk:
                    return False, "the connection closed before the headers ended"
                head += chunk
                if len(head) > MAX_HEAD:
                    return False, f"no end of headers within {MAX_HEAD} bytes"
            match = _STATUS.match(head)
            if not match:
                return False, "the answer is not HTTP"
            status = int(match.group(1))
            return 200 <= status < 400, f"HTTP {status}"
        except TimeoutError:  # _Late included
            return False, f"no complete answer within {timeout:g}s"
        except ssl.SSLError as exc:
            return False, f"TLS: {exc.reason or exc.__class__.__name__}"
        except OSError as exc:
            return False, exc.strerror or exc.__class__.__name__
        finally:
            if sock is not None:
                sock.close()

    return check


def is_local_address(address: str) -> bool:
    """Whether `address` belongs to this machine: binding a socket to it succeeds.

    On Hetzner the floating IP is configured on eth0 of both nodes (netplan), so on the warm
    spare a connection to the floating IP never leaves the machine: it would probe the spare
    itself. (With net.ipv4.ip_nonlocal_bind=1 every address binds; the callers then probe the
    IP holder's own address instead, which checks the same host.)"""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind((address, 0))
    except (OSError, ValueError):
        return False
    return True


def http_probe(
    app: AppSpec, template: str = DEFAULT_URL, timeout: float = 3.0
) -> Callable[[str], bool]:
    """probe(address) -> the app answers its health check there (2xx or 3xx)."""
    check = http_check(app, template, timeout)
    return lambda address: check(address)[0]
