"""A private test network: one network namespace holding a bridge, and a namespace per host.

Addresses come from 198.18.0.0/15 (set aside for network tests). A floating address (the
offline plan hands them out of 203.0.113.0/24) is routed to one node at a time, the way Hetzner
routes a floating IP to the server it is assigned to: `assign(ip, node_address)` points the
client side's route at that node, which answers because its netplan file put the address on
eth0 (every node of a stack has that file; only the assigned one gets the traffic). Traffic
never leaves these namespaces: there is no default route and no link to the host's network.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path

from tests.realnode.host import PREFIX, HarnessError, run, scoped

_counter = itertools.count(1)


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def add_netns(name: str) -> None:
    if netns_exists(name):
        raise HarnessError(f"network namespace {name} already exists; a run was not cleaned up")
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def del_netns(name: str) -> None:
    if netns_exists(name):
        run(["ip", "netns", "del", name], check=False)


class TestNetwork:
    """A bridge in namespace `<prefix>-<name>-lan` (the client side) and hosts attached to it."""

    def __init__(self, name: str):
        self.name = scoped(name)
        self.index = (os.getpid() + next(_counter)) % 250 + 1
        self.lan = f"{PREFIX}-{self.name}-lan"
        self.hosts: dict[str, str] = {}  # namespace -> address

    @property
    def gateway(self) -> str:
        return f"198.18.{self.index}.1"

    def address(self, host: int) -> str:
        """The address of host number `host` (2..254) on this network."""
        return f"198.18.{self.index}.{host}"

    def __enter__(self) -> TestNetwork:
        self.create()
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()

    def create(self) -> None:
        add_netns(self.lan)
        try:
            run(["ip", "-n", self.lan, "link", "add", "br0", "type", "bridge"])
            run(["ip", "-n", self.lan, "addr", "add", f"{self.gateway}/24", "dev", "br0"])
            run(["ip", "-n", self.lan, "link", "set", "br0", "up"])
        except HarnessError:
            del_netns(self.lan)
            raise

    def add_host(self, host: str, address: str) -> str:
        """A namespace `<prefix>-<name>-<host>` whose eth0 sits on the bridge with `address`/24."""
        ns = f"{PREFIX}-{self.name}-{host}"
        add_netns(ns)
        veth = "v" + hashlib.sha256(ns.encode()).hexdigest()[:10]
        try:
            run(
                [
                    "ip",
                    "link",
                    "add",
                    veth,
                    "netns",
                    self.lan,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    ns,
                ]
            )
            run(["ip", "-n", self.lan, "link", "set", veth, "master", "br0", "up"])
            run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"])
            run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        except HarnessError:
            del_netns(ns)
            raise
        self.hosts[ns] = address
        return ns

    def remove_host(self, ns: str) -> None:
        del_netns(ns)  # its eth0 and the veth's other end go with it
        self.hosts.pop(ns, None)

    def assign(self, floating_ip: str, node_address: str) -> None:
        """Route `floating_ip` to the node at `node_address` (moving it if routed elsewhere)."""
        run(["ip", "-n", self.lan, "route", "replace", f"{floating_ip}/32", "via", node_address])

    def unassign(self, floating_ip: str) -> None:
        """Route `floating_ip` nowhere (a request to it fails at once: no route)."""
        run(["ip", "-n", self.lan, "route", "del", f"{floating_ip}/32"], check=False)

    def run(self, argv: list[str], **kwargs):
        """Run a command on the client side of the network (the bridge's namespace)."""
        return run(["ip", "netns", "exec", self.lan, *argv], **kwargs)

    def destroy(self) -> None:
        for ns in list(self.hosts):
            self.remove_host(ns)
        del_netns(self.lan)
