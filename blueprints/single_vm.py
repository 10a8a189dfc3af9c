"""single-vm: one active VM and a parked cold spare, data on a cloud volume, a floating IP.

Which node is active is stack config. Flipping it moves the volume attachment and the
floating IP assignment (and on a cloud whose provider manages power, the two power states) and
nothing else: both nodes' user data is independent of the active role.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

import pulumi

from blueprints.render import NodeContext, check_app, render_cloud_init
from blueprints.settings import StackSettings
from blueprints.spec import AppSpec
from blueprints.targets import FirewallRule, make_target
from blueprints.targets.base import Server, ServerSpec, resource_labels

NODES = ("primary", "spare")
PUBLIC = ("0.0.0.0/0", "::/0")


def firewall_rules(app: AppSpec) -> list[FirewallRule]:
    """Inbound allowances for a VM facing the internet directly: 80/443 from anywhere, SSH only
    from the admin networks (no rule at all when there are none), and any tcp port the spec
    publishes. Everything else is denied by the target's default."""
    rules = [
        FirewallRule(80, PUBLIC, "http (ACME challenge, redirect to https)"),
        FirewallRule(443, PUBLIC, "https"),
    ]
    if app.admin.cidrs:
        rules.append(FirewallRule(22, tuple(app.admin.cidrs), "ssh from admin networks"))
    for name, svc in app.sorted_services():
        for port in svc.public_tcp_ports:
            rules.append(FirewallRule(port.published, PUBLIC, f"{name} tcp {port.port}"))
    return sorted(rules, key=lambda r: r.port)


def node_ip(settings: StackSettings, index: int) -> str:
    """Fixed private addresses, so the nodes' files never depend on allocation order."""
    subnet = ipaddress.ip_network(settings.subnet_cidr)
    return str(subnet.network_address + 10 + index)


class SingleVm(pulumi.ComponentResource):
    """Primary + cold spare in one spread placement group, the data volume and floating IP on
    the active node."""

    @staticmethod
    def check(app: AppSpec) -> list[tuple[tuple[str | int, ...], str]]:
        """Spec rules of this blueprint (beyond the spec's own), as (field path, message)."""
        return check_app(app)

    def __init__(
        self,
        name: str,
        app: AppSpec,
        settings: StackSettings,
        secrets: pulumi.Input[Mapping[str, str]],
        stack: str,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("blueprints:index:SingleVm", name, None, opts)
        target = make_target(settings, self)
        # Cloud names carry the stack, so two stacks of one app can share a cloud project.
        prefix = f"{app.name}-{stack}"
        labels = resource_labels(app.name, "single-vm", stack)
        if app.backups.enabled:
            pulumi.log.warn(
                "the spec asks for backups; the single-vm blueprint takes none yet: back up "
                "/srv/data yourself (the compose blueprint adds volume snapshots)"
            )

        network = target.network(f"{prefix}-net", labels)
        firewall = target.firewall(f"{prefix}-fw", network, firewall_rules(app), labels)
        placement = target.placement_group(f"{prefix}-spread", labels)
        key = target.ssh_key(f"{prefix}-admin", list(app.admin.ssh_keys), labels)
        volume = target.volume(f"{prefix}-data", app.data_size_gb, labels)
        fip = target.floating_ip(f"{prefix}-ip", labels)

        servers: dict[str, Server] = {}
        for index, node in enumerate(NODES):
            ctx_args = {
                "node": node,
                # Both nodes park themselves at first boot unless they hold the data volume, so
                # user data never depends on a node's role: a replaced active node stays up.
                "park": target.parks_with_cloud_init,
                "ip_in_os": target.floating_ip_in_os,
            }
            user_data = pulumi.Output.all(volume.device_path, fip.address, secrets).apply(
                lambda values, a=ctx_args: _user_data(app, values, **a)
            )
            servers[node] = target.server(
                ServerSpec(
                    name=f"{prefix}-{node}",
                    user_data=user_data,
                    private_ip=node_ip(settings, index),
                    network=network,
                    firewall=firewall,
                    placement=placement,
                    ssh_key=key,
                    labels={**labels, "node": node},
                )
            )

        active = servers[settings.active]
        target.attach_volume(f"{prefix}-data-attachment", volume, active)
        target.assign_floating_ip(f"{prefix}-ip-assignment", fip, active)
        for node, server in servers.items():
            target.park_server(f"{prefix}-{node}-power", server, parked=node != settings.active)

        self.outputs: dict[str, pulumi.Input[object]] = {
            "activeNode": settings.active,
            "floatingIp": fip.address,
            "url": f"https://{app.domain}",
            "sshCommand": fip.address.apply(lambda ip: f"ssh deploy@{ip}"),
            "serverIps": {node: s.public_ip for node, s in servers.items()},
            "dnsRecord": fip.address.apply(lambda ip: f"{app.domain}. A {ip}"),
            "spareBilling": target.parked_billing_note,
        }
        self.register_outputs(self.outputs)


def _user_data(app: AppSpec, values: list, *, node: str, park: bool, ip_in_os: bool) -> str:
    device, address, secrets = values
    return render_cloud_init(
        NodeContext(
            app=app,
            node=node,
            data_device=device,
            floating_ip=address if ip_in_os else None,
            park_without_volume=park,
            secrets=dict(secrets or {}),
        )
    )
