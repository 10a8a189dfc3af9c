"""The building blocks a blueprint asks a target for.

A blueprint never asks which cloud it is on; it calls these methods and reads the few
capability flags below. Each target implements them with its own provider's resources.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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
    # The cloud cannot create a server powered off, so a cold spare powers itself off at the end
    # of its first boot (cloud-init power_state). Where False, park_server() manages power.
    parks_with_cloud_init: bool
    # The floating address must be configured on the server's interface (not NAT'd by the cloud).
    floating_ip_in_os: bool
    # What a parked (powered-off) server costs; shown as a stack output.
    parked_billing_note: str
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
    def attach_volume(self, name: str, volume: Volume, server: Server) -> pulumi.CustomResource: ...

    @abstractmethod
    def floating_ip(self, name: str, labels: dict[str, str]) -> FloatingIp: ...

    @abstractmethod
    def assign_floating_ip(
        self, name: str, ip: FloatingIp, server: Server
    ) -> pulumi.CustomResource: ...

    @abstractmethod
    def park_server(self, name: str, server: Server, parked: bool) -> pulumi.CustomResource | None:
        """Keep a server powered off (parked) or running, where the cloud's provider can."""

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
