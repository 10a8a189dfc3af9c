"""Is the active node's *host* alive, seen on several paths? (The watchdog's second opinion.)

The app's health probe failing says the app does not answer; it does not say why. A bad
release, a stopped unit or a full disk fail the app on a live host, and the spare would share
most of those causes, so fencing the primary would only add downtime. The watchdog therefore
asks the host itself, on independent paths, and promotes only when at least two of them say it
is unreachable (`DEAD_VOTES`):

* **public side**: the node's own public IPv4, TCP on the health URL's port (443 by default)
  or 22, and the floating IP on the health URL's port while it points at the node; any of
  them answering is enough. These are one path, not two: they share the watcher's route to
  the node's network (on AWS the instance's public address *is* the Elastic IP once it is
  associated), so a watcher cut off from that network must not count its outage twice;
  targets are de-duplicated by address and port;
* **private address**: TCP 22 on the node's address in `subnetCidr`, only when this machine
  sends from one of the stack's own node addresses in that subnet (the other node: the warm
  spare), not merely from somewhere in it;
* **cloud status**: the server's status from the cloud API; anything but `running` is dead.
  (A hung VM still reports `running`: that path alone never decides.)

So a dead host is one whose public side is silent *and* whose private address is silent or
whose server the cloud reports not running. From outside the private network (CI, a machine
elsewhere) there is no private path, and a hung VM still reports `running`: there, the public
side's silence counts twice only when it is corroborated by a **control**: the *other* node's
public address, in the same network, answers (TCP, as above) at the same moment. Then the
watcher's route into that network works and the silence is the host's own. A watcher whose own
network fails hears neither node, so it can never fence a healthy node, nor flap the app
between the nodes. The trade-off: with a cold spare (off, so no control) a watcher outside the
private network only alerts about a hung host the cloud still reports `running`; it promotes
when the cloud reports the server off or stopped.

A TCP answer is a completed handshake *or a refusal* (RST): either way the host's kernel
answered. Only silence (a timeout) or "no route" counts as unreachable. Every check is bounded
by `timeout`; they run at the same time, so checking a host takes at most `timeout`.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from blueprints.failover.cloud import NODES, Node

REACHABLE = "reachable"
UNREACHABLE = "unreachable"
UNKNOWN = "unknown"
DEAD_VOTES = 2  # paths that must say "unreachable" before the watchdog fences and promotes
SSH = 22


# What a vote is about: a path to the host, or the control (the other node, same network).
PUBLIC, PRIVATE, CLOUD, CONTROL = "public", "private", "cloud", "control"


@dataclass(frozen=True)
class Vote:
    path: str  # "public address 203.0.113.10", "cloud status", ...
    verdict: str  # reachable | unreachable | unknown
    detail: str  # what was seen, for the log line
    role: str = PUBLIC  # public | private | cloud | control

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


@dataclass(frozen=True)
class Verdict:
    node: str
    votes: tuple[Vote, ...]

    @property
    def paths(self) -> tuple[Vote, ...]:
        return tuple(v for v in self.votes if v.role != CONTROL)

    @property
    def corroborated(self) -> Vote | None:
        """The control that makes a silent public side count twice: the other node answers
        on the same network while this one's public side is silent."""
        if not any(v.role == PUBLIC and v.verdict == UNREACHABLE for v in self.paths):
            return None
        return next((v for v in self.votes if v.role == CONTROL and v.verdict == REACHABLE), None)

    @property
    def dead(self) -> bool:
        return self.count(UNREACHABLE) + (self.corroborated is not None) >= DEAD_VOTES

    def count(self, verdict: str) -> int:
        return sum(1 for v in self.paths if v.verdict == verdict)

    def describe(self) -> str:
        """E.g. '2 of 3 paths unreachable: public address 203.0.113.10: no answer ...; ...'."""
        head = f"{self.count(UNREACHABLE)} of {len(self.paths)} paths unreachable"
        control = self.corroborated
        if control is not None:
            head += f" and the other node answers on the same network ({control})"
        known = [v for v in self.paths if v.verdict != UNKNOWN]
        return head + (": " + "; ".join(str(v) for v in known) if known else "")


def tcp_answers(address: str, port: int, timeout: float) -> tuple[bool, str]:
    """(the host answered, what happened): a handshake or a refusal are both answers."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True, f"TCP {port} open"
    except ConnectionRefusedError:
        return True, f"TCP {port} refused (the host answered)"
    except TimeoutError:
        return False, f"no answer on TCP {port} within {timeout:g}s"
    except OSError as exc:
        return False, f"TCP {port}: {exc.strerror or exc.__class__.__name__}"


def local_source(address: str) -> str | None:
    """The local address this machine would send from to reach `address` (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((address, 9))
            return sock.getsockname()[0]
    except OSError:
        return None


def private_address(subnet_cidr: str, node: str) -> str:
    """The node's fixed private address: .10 + its index (blueprints.single_vm.node_ip)."""
    subnet = ipaddress.ip_network(subnet_cidr)
    return str(subnet.network_address + 10 + NODES.index(node))


def node_addresses(subnet_cidr: str) -> dict[str, str]:
    """{private address: node} of the stack's servers in `subnet_cidr`."""
    return {private_address(subnet_cidr, node): node for node in NODES}


@dataclass
class HostCheck:
    subnet_cidr: str
    port: int = 443  # the health URL's port
    timeout: float = 3.0
    # None: this module's tcp_answers and local_source, looked up at each call
    tcp: Callable[[str, int, float], tuple[bool, str]] | None = None
    source_for: Callable[[str], str | None] | None = None

    def tcp_paths(
        self, node: Node, floating_ip: str, ip_on_node: bool, standby: Node | None = None
    ) -> list[tuple[str, str, Sequence[tuple[str, int]]]]:
        """(role, path name, the (address, port) pairs of which one answering means reachable).

        `floating_ip` empty leaves the floating IP out (the watchdog does so when it is an
        address of the watching machine itself). `standby` (the other node, when it runs and is
        not this machine) is the control, used only where there is no private path."""
        paths: list[tuple[str, str, Sequence[tuple[str, int]]]] = []
        ports = [self.port] if self.port == SSH else [self.port, SSH]
        public: list[tuple[str, int]] = []
        names: list[str] = []
        if node.address:
            public += [(node.address, p) for p in ports]
            names.append(f"public address {node.address}")
        if ip_on_node and floating_ip:
            if names and floating_ip == node.address:
                names[-1] += " (the floating IP)"
            else:
                names.append(f"floating IP {floating_ip}")
            public.append((floating_ip, self.port))
        if public:
            unique = list(dict.fromkeys(public))  # de-duplicated, in order
            paths.append((PUBLIC, " and ".join(names), unique))
        private = private_address(self.subnet_cidr, node.name)
        source_for = self.source_for or local_source
        source = source_for(private)
        # Only from the other node's own address: a machine that merely sits somewhere in the
        # subnet (or the node itself) is not a second path to this host.
        if source != private and source in node_addresses(self.subnet_cidr):
            paths.append((PRIVATE, f"private address {private}", [(private, SSH)]))
        elif standby is not None and standby.address and standby.address != node.address:
            targets = [(standby.address, p) for p in ports]
            paths.append((CONTROL, f"{standby.name} {standby.address}", targets))
        return paths

    def votes(
        self, node: Node, floating_ip: str, ip_on_node: bool, standby: Node | None = None
    ) -> list[Vote]:
        """Run every TCP check at once; each returns within `timeout` (a check still running
        then, which a correct socket timeout never leaves, votes unknown)."""
        paths = self.tcp_paths(node, floating_ip, ip_on_node, standby)
        results: dict[tuple[str, int], tuple[bool, str]] = {}
        tcp = self.tcp or tcp_answers
        threads = []
        for address, port in dict.fromkeys(t for _r, _n, targets in paths for t in targets):

            def run(a: str = address, p: int = port) -> None:
                results[(a, p)] = tcp(a, p, self.timeout)

            t = threading.Thread(target=run, daemon=True, name=f"hostcheck {address}:{port}")
            t.start()
            threads.append(t)
        for t in threads:
            t.join(self.timeout + 0.5)
        out = []
        for role, name, targets in paths:
            seen = [results.get(t) for t in targets]
            answered = [s[1] for s in seen if s and s[0]]
            if answered:
                out.append(Vote(name, REACHABLE, answered[0], role))
            elif all(s is not None for s in seen):
                out.append(Vote(name, UNREACHABLE, "; ".join(s[1] for s in seen if s), role))
            else:
                out.append(Vote(name, UNKNOWN, "the check did not finish", role))
        return out


def cloud_vote(node: Node | None, error: str | None = None) -> Vote:
    if node is None:
        return Vote("cloud status", UNKNOWN, error or "not read", CLOUD)
    if node.running:
        return Vote("cloud status", REACHABLE, "running", CLOUD)
    return Vote("cloud status", UNREACHABLE, node.status, CLOUD)
