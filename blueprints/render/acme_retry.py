#!/usr/bin/env python3
"""acme-retry: restart the reverse proxy once a domain it has no certificate for starts to
resolve to this server, so that the first certificate is asked for at once instead of at the
proxy's next retry.

Shipped verbatim in the bootstrap (user data) of the nodes that run Caddy (single-vm, compose)
and run every minute by a systemd timer. Caddy asks for each domain's certificate when it
starts; when DNS does not point at the server yet that fails, and Caddy tries again after 1, 2,
2, 5, 10 ... minutes, then every hour or more. The domains are not part of the bootstrap: they
are read at run time from the proxy's configuration, which each release writes.

Each run, for each domain the configuration routes that has no certificate in the proxy's
storage yet: resolve it, and tell whether the answer holds one of this server's own addresses
(see node_addresses). A domain whose answer comes to hold one (it did not resolve, or pointed
elsewhere, on the previous run) is due: the proxy is restarted with the command given after
`--`, once for all the due domains, and only while the proxy runs (the command given after
`--running`, if any, succeeds and prints something). What each run saw is kept in --state
(under /run, so it starts empty at boot). The first answer seen for a domain is only recorded:
the proxy has just started and asks by itself. A domain with a certificate is left alone, so a
renewal never restarts anything, and an answer that never holds this server's address (DNS
still elsewhere, a CDN in front) never restarts anything either.

A restart makes the proxy ask for every domain still without a certificate, and Let's Encrypt
allows 5 failed validations per domain and hour: so after a restart a domain may cause the next
one only BACKOFF_SECONDS later, doubling with each restart up to BACKOFF_MAX_SECONDS (kept in the
state per domain, while it has no certificate). A due domain waits out its backoff and then
restarts the proxy if it still points here. A restart that fails is recorded as not done: the
next run tries again.

Standard library only (python3 of the Ubuntu image); nothing of blueprints is imported.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import ipaddress
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

Resolver = Callable[[str], list[str]]
# Runs a command: its exit status and what it printed on stdout.
Runner = Callable[[Sequence[str]], "tuple[int, str]"]

BACKOFF_SECONDS = 600
BACKOFF_MAX_SECONDS = 3600
# AWS's instance metadata (IMDSv2): the public IPv4 address the cloud translates to the
# instance's private one (an Elastic IP or the address it was launched with), which no interface
# holds. Asked from the host itself: the metadata guard only keeps containers away.
METADATA_URL = "http://169.254.169.254/latest"
METADATA_TIMEOUT_SECONDS = 2


def served_hosts(config: dict) -> list[str]:
    """Every host a Caddy JSON configuration's HTTP routes match, sorted, each once."""
    hosts: set[str] = set()
    servers = config.get("apps", {}).get("http", {}).get("servers", {})
    for server in servers.values():
        for route in server.get("routes", []):
            for match in route.get("match", []):
                hosts.update(h for h in match.get("host", []) if isinstance(h, str))
    return sorted(hosts)


def has_certificate(storage: Path, host: str) -> bool:
    """Whether Caddy's file storage holds a certificate for `host` (from any issuer)."""
    pattern = os.path.join(glob.escape(str(storage)), "certificates", "*", host, f"{host}.crt")
    return bool(glob.glob(pattern))


def _address(text: str) -> str | None:
    """`text` as an IP address in its canonical form; None when it is not one."""
    try:
        return ipaddress.ip_address(text.split("%", 1)[0]).compressed
    except ValueError:
        return None


def resolve(host: str) -> list[str]:
    """The addresses `host` resolves to now (the node's resolver), sorted; [] when it does not."""
    try:
        answers = socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return sorted({a for a in (_address(str(x[4][0])) for x in answers) if a})


def interface_addresses(ip_json: str) -> set[str]:
    """The global addresses of `ip -json address show`'s output: the server's public IPv4 and
    IPv6, and a floating IP configured on an interface (Hetzner's, by netplan)."""
    try:
        links = json.loads(ip_json)
    except ValueError:
        return set()
    found = set()
    for link in links if isinstance(links, list) else []:
        for info in link.get("addr_info", []) if isinstance(link, dict) else []:
            if isinstance(info, dict) and info.get("scope") == "global":
                address = _address(str(info.get("local", "")))
                if address:
                    found.add(address)
    return found


def metadata_public_addresses(base: str = METADATA_URL) -> set[str]:
    """The public IPv4 address AWS's instance metadata gives this server (IMDSv2); empty
    elsewhere (another cloud's metadata service answers no such path) or when none answers."""
    timeout = METADATA_TIMEOUT_SECONDS
    try:
        request = urllib.request.Request(
            f"{base}/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            token = response.read().decode("ascii", "replace").strip()
        request = urllib.request.Request(
            f"{base}/meta-data/public-ipv4", headers={"X-aws-ec2-metadata-token": token}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode("ascii", "replace")
    except (OSError, urllib.error.URLError, http.client.HTTPException, ValueError):
        return set()
    return {a for a in (_address(line.strip()) for line in text.splitlines()) if a}


def node_addresses() -> set[str]:
    """This server's own addresses, as far as it can tell: its interfaces' global addresses,
    and the public IPv4 AWS translates (instance metadata). An address only something in front
    of the server knows (a load balancer, a NAT of another kind) is not among them."""
    try:
        out = subprocess.run(
            ["ip", "-json", "address", "show"], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        out = ""
    return interface_addresses(out) | metadata_public_addresses()


def execute(argv: Sequence[str]) -> tuple[int, str]:
    """Runs argv; its exit status and its stdout (its stderr goes to the journal)."""
    try:
        proc = subprocess.run(list(argv), stdout=subprocess.PIPE, text=True, check=False)
    except OSError as exc:
        print(f"acme-retry: cannot run {argv[0]}: {exc}", file=sys.stderr)
        return 127, ""
    return proc.returncode, proc.stdout


def _entry(value: object) -> dict | None:
    """A host's record from the state file; None when it is not one this program writes."""
    if not isinstance(value, dict):
        return None
    answer, restarted, backoff = value.get("answer"), value.get("restarted"), value.get("backoff")
    number = (int, float)
    if (
        isinstance(answer, list)
        and all(isinstance(a, str) for a in answer)
        and isinstance(value.get("here"), bool)
        and isinstance(value.get("due"), bool)
        and (restarted is None or (isinstance(restarted, number) and math.isfinite(restarted)))
        and isinstance(backoff, number)
        and 0 <= backoff <= BACKOFF_MAX_SECONDS
    ):
        return value
    return None


def read_state(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {h: e for h, e in ((h, _entry(v)) for h, v in data.items()) if e is not None}


def write_state(path: Path, state: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(state, sort_keys=True) + "\n", encoding="utf-8")
    partial.replace(path)


def ready_at(entry: dict) -> float:
    """When a due host may restart the proxy: its backoff after the last restart."""
    return -math.inf if entry["restarted"] is None else entry["restarted"] + entry["backoff"]


def run(
    config_path: Path,
    storage: Path,
    state_path: Path,
    restart: Sequence[str],
    resolver: Resolver = resolve,
    runner: Runner = execute,
    addresses: Callable[[], Iterable[str]] = node_addresses,
    running: Sequence[str] = (),
    clock: Callable[[], float] = time.time,
) -> int:
    """One look (see the module's docstring); 0 unless the configuration cannot be read or
    the restart fails."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return 0  # no release with routes yet
    except (OSError, ValueError) as exc:
        print(f"acme-retry: cannot read {config_path}: {exc}", file=sys.stderr)
        return 1
    pending = [h for h in served_hosts(config) if not has_certificate(storage, h)]
    before = read_state(state_path)
    now = clock()
    own: set[str] | None = None
    state: dict[str, dict] = {}
    for host in pending:
        answer = resolver(host)
        if answer and own is None:
            own = {a for a in (_address(str(x)) for x in addresses()) if a}
        here = bool(own and own.intersection(answer))
        prev = before.get(host)
        entry = {
            "answer": answer,
            "here": here,
            "due": bool(prev and here and (prev["due"] or not prev["here"])),
            "restarted": prev["restarted"] if prev else None,
            "backoff": prev["backoff"] if prev else 0,
        }
        if entry["due"] and not prev["due"] and ready_at(entry) > now:
            wait = math.ceil(ready_at(entry) - now)
            print(
                f"acme-retry: {host} resolves to this server now and has no certificate yet; "
                f"the proxy was restarted for it not long ago, so it waits {wait}s"
            )
        state[host] = entry
    ready = [h for h in pending if state[h]["due"] and ready_at(state[h]) <= now]
    if not ready:
        write_state(state_path, state)
        return 0
    if running:
        status, out = runner(list(running))
        if status != 0 or not out.strip():
            print(
                f"acme-retry: {', '.join(ready)} resolve(s) to this server now, but the proxy "
                "does not run; it asks for the certificates when it starts"
            )
            for entry in state.values():
                entry["due"] = False
            write_state(state_path, state)
            return 0
    for host in ready:
        print(
            f"acme-retry: {host} now resolves to this server ({', '.join(state[host]['answer'])}) "
            "and has no certificate yet; restarting the proxy so that it asks for one now"
        )
    status, out = runner(list(restart))
    if out.strip():
        print(out.rstrip())
    if status != 0:
        # Not recorded as a restart: the due hosts stay due, and the next run tries again.
        write_state(state_path, state)
        print(f"acme-retry: {' '.join(restart)} failed (exit status {status})", file=sys.stderr)
        return 1
    # The proxy asks again for every host without a certificate, so each of them counts it.
    for entry in state.values():
        entry["due"] = False
        first = entry["restarted"] is None or entry["backoff"] == 0
        entry["backoff"] = (
            BACKOFF_SECONDS if first else min(2 * entry["backoff"], BACKOFF_MAX_SECONDS)
        )
        entry["restarted"] = now
    write_state(state_path, state)
    return 0


def split_running(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """`--running CHECK... --` taken out of argv (the check's words end at the `--` that starts
    the restart command): the rest of argv, with that `--`, and the check."""
    args = list(argv)
    if "--running" not in args:
        return args, []
    start = args.index("--running")
    try:
        end = args.index("--", start + 1)
    except ValueError:
        return args, []  # argparse names the problem
    return args[:start] + args[end:], args[start + 1 : end]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="acme-retry",
        description=__doc__.split("\n\n")[0],
        usage="%(prog)s --config FILE --storage DIR --state FILE "
        "[--running CHECK...] -- RESTART...",
    )
    parser.add_argument("--config", type=Path, required=True, help="Caddy's JSON configuration")
    parser.add_argument("--storage", type=Path, required=True, help="Caddy's storage directory")
    parser.add_argument("--state", type=Path, required=True, help="what the previous run saw")
    parser.add_argument(
        "--running",
        metavar="CHECK",
        help="a command (its words, up to the `--` before RESTART) that succeeds and prints "
        "something while the proxy runs; the proxy is restarted only then",
    )
    parser.add_argument("restart", nargs="+", help="the command that restarts the proxy")
    rest, running = split_running(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(rest)
    if args.running is not None:  # no `--` after it: its words cannot be told from RESTART's
        parser.error("--running's command ends with `--`, followed by the restart command")
    return run(args.config, args.storage, args.state, args.restart, running=running)


if __name__ == "__main__":
    sys.exit(main())
