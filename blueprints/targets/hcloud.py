"""Hetzner Cloud building blocks (pulumi-hcloud). The API token is `hcloud:token` (secret)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping, Sequence
from typing import ClassVar

import pulumi
import pulumi_hcloud as hcloud

from blueprints.spec import Backups
from blueprints.targets.base import (
    Firewall,
    FirewallRule,
    FloatingIp,
    Found,
    LoadBalancer,
    Network,
    Placement,
    Server,
    ServerSpec,
    SshKey,
    Target,
    Volume,
)
from blueprints.targets.hcloud_power import REACHED, RUNNING, ServerPower


class HcloudTarget(Target):
    name = "hcloud"
    # A Hetzner floating IP is routed to the server; the OS must own the address.
    floating_ip_in_os = True
    user_data_limit = 32 * 1024
    # Hetzner Cloud volumes cannot be snapshotted, and server backups leave volumes out.
    volume_snapshots = False
    spare_billing: ClassVar[Mapping[str, str]] = {
        "warm": "The warm spare runs without the data volume; Hetzner bills it like the primary "
        "(a powered-off server would cost the same).",
        "cold": "The cold spare is powered off, but Hetzner bills powered-off servers in full: "
        "it costs as much as the primary, and a warm spare (the default here) would cost the "
        "same and recover faster.",
    }
    # ServerPower (blueprints.targets.hcloud_power) reads the real status at every preview.
    power_follows_cloud = True

    def network(self, name: str, labels: dict[str, str]) -> Network:
        net = hcloud.Network(
            name, name=name, ip_range=self.settings.network_cidr, labels=labels, opts=self.opts()
        )
        subnet = hcloud.NetworkSubnet(
            f"{name}-subnet",
            network_id=net.id.apply(int),
            type="cloud",
            network_zone=self.settings.network_zone,
            ip_range=self.settings.subnet_cidr,
            opts=self.opts(),
        )
        return Network(id=net.id, subnet_id=subnet.id, ready=[subnet])

    def firewall(
        self, name: str, network: Network, rules: list[FirewallRule], labels: dict[str, str]
    ) -> Firewall:
        # Hetzner firewalls filter only public interfaces; private-network traffic is not affected.
        # With inbound rules present, all other inbound traffic is dropped; outbound is open.
        fw = hcloud.Firewall(
            name,
            name=name,
            labels=labels,
            rules=[
                hcloud.FirewallRuleArgs(
                    direction="in",
                    protocol=r.protocol,
                    port=str(r.port),
                    source_ips=list(r.sources),
                    description=r.description,
                )
                for r in rules
            ],
            opts=self.opts(),
        )
        return Firewall(id=fw.id)

    def placement_group(self, name: str, labels: dict[str, str]) -> Placement:
        pg = hcloud.PlacementGroup(name, name=name, type="spread", labels=labels, opts=self.opts())
        return Placement(id=pg.id)

    def ssh_key(self, name: str, public_keys: list[str], labels: dict[str, str]) -> SshKey | None:
        # Registering the first admin key stops Hetzner from mailing a root password; every key
        # reaches the deploy user through cloud-init, and root login is off anyway.
        if self.settings.hcloud_ssh_key:
            # Hetzner refuses a second key with the same fingerprint in one project, so a key
            # that is already uploaded is referenced by name instead of created.
            return SshKey(id=pulumi.Output.from_input(self.settings.hcloud_ssh_key))
        if not public_keys:
            return None
        key = hcloud.SshKey(
            name, name=name, public_key=public_keys[0], labels=labels, opts=self.opts()
        )
        return SshKey(id=key.id)

    def server(self, spec: ServerSpec) -> Server:
        srv = hcloud.Server(
            spec.name,
            name=spec.name,
            server_type=self.settings.size,
            image=self.settings.image,
            location=self.settings.location,
            placement_group_id=spec.placement.id.apply(int) if spec.placement else None,
            backups=spec.backups,
            firewall_ids=[spec.firewall.id.apply(int)],
            ssh_keys=[spec.ssh_key.id] if spec.ssh_key else [],
            user_data=self.server_user_data(spec, base64_always=False, cloud="Hetzner Cloud"),
            labels=spec.labels,
            public_nets=[hcloud.ServerPublicNetArgs(ipv4_enabled=True, ipv6_enabled=True)],
            networks=[
                hcloud.ServerNetworkArgs(network_id=spec.network.id.apply(int), ip=spec.private_ip)
            ],
            # A replaced server is shut down cleanly (unmounting the volume) and deleted before
            # its successor exists: its name is taken until then, and the volume can move.
            shutdown_before_deletion=True,
            opts=self.opts(
                depends_on=[*spec.network.ready, *spec.after], delete_before_replace=True
            ),
        )
        return Server(
            resource=srv, id=srv.id, public_ip=srv.ipv4_address, private_ip=spec.private_ip
        )

    def volume(self, name: str, size_gb: int, labels: dict[str, str]) -> Volume:
        vol = hcloud.Volume(
            name,
            name=name,
            size=size_gb,
            location=self.settings.location,
            format="ext4",
            delete_protection=self.settings.protect_data,
            labels=labels,
            opts=self.data_protection(),
        )
        device = vol.id.apply(lambda i: f"/dev/disk/by-id/scsi-0HC_Volume_{i}")
        return Volume(resource=vol, id=vol.id, device_path=device)

    def attach_volume(
        self, name: str, volume: Volume, server: Server, *, retain: bool = False
    ) -> pulumi.CustomResource:
        # Deleting a hcloud_volume_attachment detaches the volume from whatever server holds
        # it now (it detaches by volume): `retain` keeps that from ever hitting a new holder.
        return hcloud.VolumeAttachment(
            name,
            volume_id=volume.id.apply(int),
            server_id=server.id.apply(int),
            automount=False,
            opts=self.one_at_a_time(deleted_with=server.resource, retain_on_delete=retain),
        )

    def floating_ip(self, name: str, labels: dict[str, str]) -> FloatingIp:
        fip = hcloud.FloatingIp(
            name,
            name=name,
            type="ipv4",
            home_location=self.settings.location,
            delete_protection=self.settings.protect_data,
            labels=labels,
            opts=self.data_protection(),
        )
        return FloatingIp(resource=fip, id=fip.id, address=fip.ip_address)

    def assign_floating_ip(
        self, name: str, ip: FloatingIp, server: Server, *, retain: bool = False
    ) -> pulumi.CustomResource:
        # Likewise, deleting an assignment unassigns the address from whichever server has it;
        # assigning it to a server moves it there.
        return hcloud.FloatingIpAssignment(
            name,
            floating_ip_id=ip.id.apply(int),
            server_id=server.id.apply(int),
            opts=self.one_at_a_time(retain_on_delete=retain),
        )

    def server_power(
        self, name: str, server: Server, running: bool, **opts: object
    ) -> pulumi.CustomResource:
        # pulumi-hcloud has no power state: a resource of ours that asks the API (see its module).
        return ServerPower(
            name,
            server_id=server.id,
            running=running,
            token=self._api_token("the servers' power resources get"),
            endpoint=os.environ.get("HCLOUD_ENDPOINT") or None,
            timeout=self.settings.api_timeout,
            # Deleting the server takes its power state with it: nothing to do then.
            opts=self.opts(deleted_with=server.resource, **opts),
        )

    def find(
        self, labels: dict[str, str], nodes: Sequence[str], volume: str, address: str, lock: str
    ) -> Found:
        # The lock first: a placement group found by its unique name (its labels are the
        # record, not the stack's resource labels).
        locks = [g for g in hcloud.get_placement_groups().placement_groups or [] if g.name == lock]
        selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
        volumes = [
            v for v in hcloud.get_volumes(with_selector=selector).volumes or [] if v.name == volume
        ]
        addresses = [
            f
            for f in hcloud.get_floating_ips(with_selector=selector).floating_ips or []
            if f.name == address
        ]
        servers = {
            int(s.id): s
            for s in hcloud.get_servers(with_selector=selector).servers or []
            if (s.labels or {}).get("node") in nodes
        }

        def node_of(server_id: object) -> str | None:
            server = servers.get(int(server_id)) if server_id else None
            return None if server is None else str(server.labels["node"])

        statuses = {str(s.labels["node"]): str(s.status) for s in servers.values()}
        return Found(
            volume=bool(volumes),
            volume_node=next((node_of(v.server_id) for v in volumes if v.server_id), None),
            address=bool(addresses),
            address_node=next((node_of(f.server_id) for f in addresses if f.server_id), None),
            running=frozenset(n for n, s in statuses.items() if s in REACHED[RUNNING]),
            off=frozenset(n for n, s in statuses.items() if s not in REACHED[RUNNING]),
            status=dict(sorted(statuses.items())),
            lock=dict(locks[0].labels or {}) if locks else None,
        )

    def _api_token(self, who: str) -> pulumi.Output[str]:
        # The token the provider itself uses: `hcloud:token`, or HCLOUD_TOKEN from the
        # environment as the provider falls back to. A plan without either gets a placeholder.
        token = pulumi.Config("hcloud").get_secret("token")
        if token is not None:
            return token
        if os.environ.get("HCLOUD_TOKEN"):
            return pulumi.Output.secret(os.environ["HCLOUD_TOKEN"])
        pulumi.log.warn(
            f"hcloud:token is not set; {who} a placeholder token "
            "(run `pulumi config set --secret hcloud:token`)"
        )
        return pulumi.Output.secret("<secret:token>")

    def cluster_api_token(self) -> pulumi.Output[str] | None:
        return self._api_token("the cluster's cloud controller manager and CSI driver get")

    def volume_backups(
        self, name: str, selector: dict[str, str], backups: Backups, labels: dict[str, str]
    ) -> list[pulumi.CustomResource]:
        return []

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
        # A Hetzner load balancer has no source filter, and it reaches the targets over the
        # private network, where the servers' firewalls do not apply: a port on it is open to
        # everyone, so a restricted one is refused rather than silently opened.
        for port, allowed in sorted((sources or {}).items()):
            if not _everyone(allowed):
                raise ValueError(
                    f"{name}: port {port} is limited to {', '.join(allowed) or 'nobody'}, but a "
                    "Hetzner load balancer cannot filter sources (load_balancer_filters_sources)"
                )
        lb = hcloud.LoadBalancer(
            name,
            name=name,
            load_balancer_type="lb11",
            location=self.settings.location,
            labels=labels,
            opts=self.opts(),
        )
        attached = hcloud.LoadBalancerNetwork(
            f"{name}-net",
            load_balancer_id=lb.id.apply(int),
            network_id=network.id.apply(int),
            opts=self.opts(depends_on=network.ready),
        )
        for i, srv in enumerate(servers):
            hcloud.LoadBalancerTarget(
                f"{name}-target-{i}",
                type="server",
                load_balancer_id=lb.id.apply(int),
                server_id=srv.id.apply(int),
                use_private_ip=True,
                opts=self.opts(depends_on=[attached]),
            )
        for port in ports:
            hcloud.LoadBalancerService(
                f"{name}-{port}",
                load_balancer_id=lb.id,
                protocol="tcp",
                listen_port=port,
                destination_port=port,
                opts=self.opts(),
            )
        return LoadBalancer(resource=lb, id=lb.id, address=lb.ipv4)


def _everyone(sources: Sequence[str]) -> bool:
    """Whether the sources cover every IPv4 and IPv6 address."""
    nets = [ipaddress.ip_network(s, strict=False) for s in sources]
    return any(n.prefixlen == 0 and n.version == 4 for n in nets) and any(
        n.prefixlen == 0 and n.version == 6 for n in nets
    )
