"""The building blocks a blueprint asks a target for.

A blueprint never asks which cloud it is on; it calls these methods and reads the few
capability flags below. Each target implements them with its own provider's resources.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import pulumi

from blueprints.settings import StackSettings
from blueprints.spec import Backups


def resource_labels(app: str, blueprint: str, stack: str) -> dict[str, str]:
    """Labels (tags on AWS) on every resource of a stack; the failover drivers find a stack's
    servers, volume and address by app, blueprint and stack."""
    return {"app": app, "blueprint": blueprint, "stack": stack, "managed-by": "blueprints"}


@dataclass(frozen=True)
class FirewallRule:
    """One inbound allowance; everything not allowed is denied."""

    port: int
    sources: tuple[str, ...]
    description: str
    protocol: str = "tcp"


@dataclass
class Network:
    """A private network the servers share (hcloud network+subnet; aws VPC+subnet+routes)."""

    id: pulumi.Output[str]
    subnet_id: pulumi.Output[str]
    # Resources a server must wait for before it can join (hcloud: the subnet).
    ready: list[pulumi.Resource] = field(default_factory=list)


@dataclass
class Firewall:
    id: pulumi.Output[str]


@dataclass
class Placement:
    id: pulumi.Output[str]


@dataclass
class SshKey:
    id: pulumi.Output[str]


@dataclass
class Server:
    resource: pulumi.CustomResource
    id: pulumi.Output[str]
    public_ip: pulumi.Output[str]
    private_ip: str


@dataclass
class Volume:
    resource: pulumi.CustomResource
    id: pulumi.Output[str]
    # Stable by-id path of the block device as the OS sees it once attached.
    device_path: pulumi.Output[str]


@dataclass
class FloatingIp:
    resource: pulumi.CustomResource
    id: pulumi.Output[str]
    address: pulumi.Output[str]


@dataclass
class LoadBalancer:
    resource: pulumi.CustomResource
    id: pulumi.Output[str]
    address: pulumi.Output[str]


@dataclass(frozen=True)
class Found:
    """What the cloud holds of a stack right now, looked up before the program places anything:
    the cloud is the truth about which node is active, not the stack file. A first deploy finds
    nothing."""

    # The data volume exists, and the node it is attached to (None: attached to no server).
    volume: bool = False
    volume_node: str | None = None
    # The floating IP exists, and the node it points at.
    address: bool = False
    address_node: str | None = None
    # The stack's nodes that exist, by whether they run (or are on their way to running), and
    # each one's status in the cloud's words.
    running: frozenset[str] = frozenset()
    off: frozenset[str] = frozenset()
    status: Mapping[str, str] = field(default_factory=dict)
    # The stack's promotion lock (blueprints.failover.lock), when it exists: its labels (tags
    # on AWS), which hold the record of the promotion or park that holds it.
    lock: Mapping[str, str] | None = None


@dataclass(frozen=True)
class ServerSpec:
    """What a blueprint wants of one server."""

    name: str
    user_data: pulumi.Input[str]
    private_ip: str
    network: Network
    firewall: Firewall
    placement: Placement | None
    ssh_key: SshKey | None
    labels: dict[str, str]
    # The cloud's own backups of the server's disk, where it has them (Hetzner: daily, 7 kept).
    backups: bool = False
    # Resources that must be done before this server is created or replaced (a rung that
    # replaces its nodes one at a time chains each node to the previous node's readiness).
    after: tuple[pulumi.Resource, ...] = ()


class Target(ABC):
    """Building blocks on one cloud. `parent` is the blueprint component owning them."""

    name: str
    # The floating address must be configured on the server's interface (not NAT'd by the cloud).
    floating_ip_in_os: bool
    # What the single-vm standby costs, per spare mode (warm: running, cold: powered off); shown
    # as the stack output spareBilling.
    spare_billing: ClassVar[Mapping[str, str]]
    # server_power() compares with the server's real power state at every preview (True), or
    # with what Pulumi last recorded, so that a server switched off outside Pulumi is only seen
    # after a refresh (False; Pulumi.yaml asks for one before every update).
    power_follows_cloud: bool
    # Largest user data the cloud accepts, in bytes; larger user data is compressed.
    user_data_limit: int
    # The cloud snapshots a volume on a schedule (volume_backups() does something). Where False,
    # the data has to reach a backup some other way (on Hetzner: an archive on the server's
    # disk, which the server backups then copy).
    volume_snapshots: bool

    def __init__(self, settings: StackSettings, parent: pulumi.Resource):
        self.settings = settings
        self.parent = parent

    def opts(self, **kwargs) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self.parent, **kwargs)

    def server_user_data(
        self, spec: ServerSpec, *, base64_always: bool, cloud: str
    ) -> pulumi.Output[str]:
        """The server's user data as the cloud takes it: compressed (and base64) when over
        user_data_limit, refused naming the server when still too large (userdata.encode)."""
        from blueprints.targets import userdata

        return pulumi.Output.from_input(spec.user_data).apply(
            lambda text: userdata.encode(
                text, self.user_data_limit, base64_always=base64_always, what=spec.name, cloud=cloud
            )
        )

    @abstractmethod
    def network(self, name: str, labels: dict[str, str]) -> Network: ...

    @abstractmethod
    def firewall(
        self, name: str, network: Network, rules: list[FirewallRule], labels: dict[str, str]
    ) -> Firewall: ...

    @abstractmethod
    def placement_group(self, name: str, labels: dict[str, str]) -> Placement: ...

    @abstractmethod
    def ssh_key(
        self, name: str, public_keys: list[str], labels: dict[str, str]
    ) -> SshKey | None: ...

    @abstractmethod
    def server(self, spec: ServerSpec) -> Server: ...

    @abstractmethod
    def volume(self, name: str, size_gb: int, labels: dict[str, str]) -> Volume: ...

    @abstractmethod
    def attach_volume(
        self, name: str, volume: Volume, server: Server, *, retain: bool = False
    ) -> pulumi.CustomResource:
        """Attach the volume to the server. `retain`: deleting the attachment (a move, without
        a refresh after the volume moved outside Pulumi) detaches nothing; the volume leaves a
        server with that server, or by whoever moved it (single-vm: `blueprints promote`)."""

    @abstractmethod
    def floating_ip(self, name: str, labels: dict[str, str]) -> FloatingIp: ...

    @abstractmethod
    def assign_floating_ip(
        self, name: str, ip: FloatingIp, server: Server, *, retain: bool = False
    ) -> pulumi.CustomResource:
        """Point the floating IP at the server. `retain`: as attach_volume's; a new assignment
        takes the address over from the server holding it."""

    @abstractmethod
    def server_power(
        self, name: str, server: Server, running: bool, **opts: object
    ) -> pulumi.CustomResource:
        """Keep a server running or powered off (`opts`: more resource options, depends_on)."""

    def current_address(self, server: Server, after: pulumi.Resource) -> pulumi.Output[str]:
        """The server's public address once `after` (its power resource) is done, for a command
        sent to it over SSH. Here: the address the server resource reports, which is right
        where a server keeps its public address while powered off (Hetzner keeps its primary
        IPs); a target whose servers get a new one at each start (AWS) looks it up."""
        return server.public_ip

    @abstractmethod
    def find(
        self, labels: dict[str, str], nodes: Sequence[str], volume: str, address: str, lock: str
    ) -> Found:
        """Where the stack's data volume (named `volume`) and floating IP (named `address`) are
        attached now, which of its servers (labelled node=<one of nodes>) run, and the
        promotion lock named `lock` if it exists: the cloud's answer, looked up with the
        provider before anything is placed. Every resource carries `labels` (tags on AWS)."""

    @abstractmethod
    def load_balancer(
        self,
        name: str,
        network: Network,
        servers: list[Server],
        ports: list[int],
        labels: dict[str, str],
        *,
        sources: Mapping[int, Sequence[str]] | None = None,
    ) -> LoadBalancer:
        """A TCP load balancer forwarding each port to the same port on the servers.

        sources (k8s): per port, the networks allowed to connect through the balancer, and the
        balancer then reaches the servers from its private address (so the servers' firewalls
        need no public rule for these ports). Only a target whose balancers can filter
        (load_balancer_filters_sources) takes a port restricted to less than everyone; without
        sources the balancer behaves exactly as before."""

    # The cloud's load balancers can limit who connects, per port (AWS: a security group on the
    # NLB). Hetzner's cannot: a port on its load balancer is open to the whole internet.
    load_balancer_filters_sources: bool = False

    def backup_bucket(
        self, name: str, bucket: str, labels: dict[str, str]
    ) -> pulumi.CustomResource | None:
        """Create the stack's backup bucket where the stack's own cloud account holds it (AWS,
        LocalStack); None elsewhere (Hetzner Object Storage: the bucket is the user's)."""
        return None

    def cluster_api_token(self) -> pulumi.Output[str] | None:
        """The cloud API token in-cluster controllers need to manage the cloud's resources
        (k8s: Hetzner's cloud controller manager and CSI driver), as a secret; None where they
        need none."""
        return None

    @abstractmethod
    def volume_backups(
        self, name: str, selector: dict[str, str], backups: Backups, labels: dict[str, str]
    ) -> list[pulumi.CustomResource]:
        """Scheduled snapshots of the volumes carrying the `selector` tags, per the spec's
        backup settings (schedule, time of day, how many to keep); [] where the cloud has no
        volume snapshots (see volume_snapshots)."""

    def data_protection(self, **kwargs) -> pulumi.ResourceOptions:
        """Options for data-holding resources: protected unless the stack opts out."""
        return self.opts(protect=self.settings.protect_data, **kwargs)

    def one_at_a_time(self, **kwargs) -> pulumi.ResourceOptions:
        """Options for exclusive links (volume attachment, IP assignment): when the target moves,
        delete the old link before creating the new one, since a volume cannot be attached to two
        servers and Pulumi's default is create-before-delete."""
        return self.opts(delete_before_replace=True, **kwargs)
