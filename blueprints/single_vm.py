"""single-vm: one active VM and a parked cold spare, data on a cloud volume, a floating IP.

Which node is active is stack config. Flipping it moves the volume attachment and the
floating IP assignment (and on a cloud whose provider manages power, the two power states) and
nothing else: both nodes' user data is independent of the active role.

The nodes' user data is their bootstrap only; the app is the release, handed over SSH to
whichever node holds the floating IP (blueprints.release.channel) and kept on the data volume.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

import pulumi

from blueprints.backup.remote import Access, vm_access
from blueprints.backup.storage import stack_backups, with_backup_secrets
from blueprints.release import channel
from blueprints.render import NodeContext, check_app, render_cloud_init
from blueprints.render.single_vm import release_documents
from blueprints.settings import StackSettings
from blueprints.spec import AppSpec
from blueprints.targets import FirewallRule, make_target
from blueprints.targets.base import Server, ServerSpec, resource_labels

NODES = ("primary", "spare")
PUBLIC = ("0.0.0.0/0", "::/0")


def ssh_networks(app: AppSpec, settings: StackSettings) -> list[str]:
    """Where SSH is admitted from: the admin networks and those `pulumi up` runs from (the
    release channel), which default to the admin networks."""
    deployers = settings.deployer_networks
    return sorted({*app.admin.cidrs, *(app.admin.cidrs if deployers is None else deployers)})


def firewall_rules(app: AppSpec, settings: StackSettings) -> list[FirewallRule]:
    """Inbound allowances for a VM facing the internet directly: 80/443 from anywhere, SSH only
    from the admin and deployer networks, and any tcp port the spec publishes. Everything else
    is denied by the target's default."""
    rules = [
        FirewallRule(80, PUBLIC, "http (ACME challenge, redirect to https)"),
        FirewallRule(443, PUBLIC, "https"),
    ]
    ssh = ssh_networks(app, settings)
    if ssh:
        rules.append(FirewallRule(22, tuple(ssh), "ssh from admin and deployer networks"))
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

    @staticmethod
    def check_settings(app: AppSpec, settings: StackSettings) -> list[str]:
        return check_release_channel(app, settings)

    @staticmethod
    def backup_access(app: AppSpec, outputs: Mapping[str, object]) -> Access:
        """Where `blueprints backup|backups|restore` run: blueprints-backup on the node."""
        return vm_access(outputs, "floatingIp")

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
        backups = stack_backups(app, settings, stack, target, labels, self)
        storage = backups.storage if backups is not None else None

        network = target.network(f"{prefix}-net", labels)
        firewall = target.firewall(f"{prefix}-fw", network, firewall_rules(app, settings), labels)
        placement = target.placement_group(f"{prefix}-spread", labels)
        deploy_key = channel.deploy_key(f"{prefix}-deploy-key", self)
        key = target.ssh_key(f"{prefix}-deploy", [deploy_key.public_key_openssh], labels)
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
            user_data = pulumi.Output.all(
                volume.device_path, fip.address, deploy_key.public_key_openssh
            ).apply(lambda values, a=ctx_args: _user_data(app, values, **a))
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
        attachment = target.attach_volume(f"{prefix}-data-attachment", volume, active)
        assignment = target.assign_floating_ip(f"{prefix}-ip-assignment", fip, active)
        power = [
            target.park_server(f"{prefix}-{node}-power", server, parked=node != settings.active)
            for node, server in servers.items()
        ]
        # The release goes to whichever node holds the floating IP, so a promotion needs no
        # change here: the promoted node already runs the release it found on the volume.
        channel.deliver(
            prefix,
            host=fip.address,
            key=deploy_key,
            secrets=with_backup_secrets(secrets, backups),
            has_secrets=bool(app.secret_names()) or backups is not None,
            volume_id=volume.id,
            documents=lambda key_pem, values: release_documents(app, key_pem, values, storage),
            depends_on=[
                active.resource,
                attachment,
                assignment,
                *(p for p in power if p is not None),
            ],
            parent=self,
        )

        self.outputs: dict[str, pulumi.Input[object]] = {
            "activeNode": settings.active,
            "floatingIp": fip.address,
            "url": f"https://{app.domain}",
            "sshCommand": fip.address.apply(lambda ip: f"ssh deploy@{ip}"),
            "deployKey": pulumi.Output.secret(deploy_key.private_key_openssh),
            "serverIps": {node: s.public_ip for node, s in servers.items()},
            "dnsRecord": fip.address.apply(lambda ip: f"{app.domain}. A {ip}"),
            "spareBilling": target.parked_billing_note,
            **(backups.outputs if backups is not None else {}),
        }
        self.register_outputs(self.outputs)


def check_release_channel(
    app: AppSpec, settings: StackSettings, how: str = "releases are delivered over SSH"
) -> list[str]:
    """The release travels over SSH (`how` it travels): refuse a stack whose firewall would
    admit it from nowhere."""
    if ssh_networks(app, settings):
        return []
    return [
        f"{settings.blueprint}: {how} from where `pulumi up` runs, and "
        "no network may reach SSH: set blueprints:deployerNetworks (the runner's address/32, or "
        "0.0.0.0/0 for key-only SSH from anywhere) or admin.cidrs in the spec"
    ]


def _user_data(app: AppSpec, values: list, *, node: str, park: bool, ip_in_os: bool) -> str:
    device, address, public_key = values
    return render_cloud_init(
        NodeContext(
            app=app,
            node=node,
            data_device=device,
            floating_ip=address if ip_in_os else None,
            park_without_volume=park,
            deploy_key=str(public_key).strip(),
        )
    )
