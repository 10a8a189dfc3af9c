"""single-vm: one active VM and a standby, data on a cloud volume, a floating IP.

The standby is warm (running without the volume, the release's images pulled on it; the default
on hcloud, where a powered-off server costs the same) or cold (powered off; the default on aws):
`blueprints:spareMode`. No node powers itself off: the program keeps each node's power through
the cloud's API (hcloud: blueprints.targets.hcloud_power, aws: InstanceState).

Which node is active is the cloud's answer first: the program looks up which node holds the
data volume (else the floating IP) before it places anything, so a `pulumi up` after a
promotion nobody recorded in the stack file keeps the app where it runs, and says so.
`blueprints:active` places the volume on a first deploy, and wherever the cloud cannot say.
Moving the app is `blueprints promote`'s job: the program never takes the volume or the address
from a node (their links are retained on delete), and it stops, before it declares anything,
while a promotion or park holds the stack's lock. Both nodes' user data is independent of the
active role.

A cold standby is powered off only once its first boot has finished (cloud-init done, the
release's images pulled): see first_boot.

The nodes' user data is their bootstrap only; the app is the release, handed over SSH to
whichever node holds the floating IP (blueprints.release.channel) and kept on the data volume.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from datetime import UTC, datetime

import pulumi
import pulumi_tls as tls
from pulumi_command import remote

from blueprints.backup.remote import Access, vm_access
from blueprints.backup.storage import stack_backups, with_backup_secrets
from blueprints.dns import dns_records
from blueprints.failover.lock import LockRecord, lock_name
from blueprints.release import channel
from blueprints.render import NodeContext, check_app, render_cloud_init
from blueprints.render.single_vm import (
    PULL_IMAGES_COMMAND,
    private_standby_images,
    release_documents,
    standby_images_text,
)
from blueprints.settings import StackSettings
from blueprints.spec import AppSpec
from blueprints.targets import FirewallRule, make_target
from blueprints.targets.base import Found, Server, ServerSpec, Target, resource_labels

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


def choose_active(found: Found, configured: str) -> tuple[str, list[str]]:
    """The node that keeps (or gets) the data volume and the floating IP, and what to tell the
    user about it: the volume's holder, else the floating IP's, else `configured` (the stack
    file's blueprints:active), as `blueprints promote`, `watch` and `park` decide too."""
    warnings = []
    if found.volume_node is not None:
        active = found.volume_node
        if active != configured:
            warnings.append(
                f"single-vm: the cloud has the data volume attached to {active}, but "
                f"blueprints:active says {configured} (a promotion not recorded in the stack "
                f"file?); keeping the volume, the floating IP and the app on {active}. Record "
                f"it with `pulumi config set blueprints:active {active}`, or move the app with "
                f"`blueprints promote --to {configured}`."
            )
        if found.address_node not in (None, active):
            warnings.append(
                f"single-vm: the floating IP points at {found.address_node}, not at {active}, "
                f"which holds the data volume; this update moves it to {active}."
            )
        return active, warnings
    if found.volume:
        active = found.address_node or configured
        why = (
            f"the floating IP points at {active}"
            if found.address_node
            else f"blueprints:active says {active}"
        )
        warnings.append(
            "single-vm: the data volume exists but is attached to no server (an interrupted "
            f"promotion?); {why}, so this update attaches it to {active}. To put it elsewhere, "
            "run `blueprints promote --to <node>` instead."
        )
        return active, warnings
    # A first deploy: nothing to keep.
    return found.address_node or configured, warnings


def power_warnings(found: Found, wanted: Mapping[str, bool], target: Target) -> list[str]:
    """What the update does to a node found in another power state than the one it should be
    in (a fenced node, one stopped or started by hand)."""
    out = []
    for node, running in wanted.items():
        status = found.status.get(node, "")
        if running and node in found.off:
            change = "powers it on"
        elif not running and node in found.running:
            change = "powers it off"
        else:
            continue
        how = (
            f"this update {change}"
            if target.power_follows_cloud
            else f"this update {change} (Pulumi.yaml has Pulumi refresh its state first, which "
            "reads the power state; `pulumi up --refresh=false` would not see it)"
        )
        role = "meant to run" if running else "the cold spare, meant to be off"
        out.append(f"single-vm: {node} is {status} in the cloud but is {role}; {how}.")
    return out


def refuse_during_promotion(found: Found, lock: str, stack: str) -> list[str]:
    """Stop the program (pulumi.RunError, one sentence) while `blueprints promote` or `park`
    holds the stack's lock: an update then would power a node it just fenced back on, or put
    the volume and address back under it. Returns the warnings for a lock left by a failed run.

    The lock expires lockTtl after its last heartbeat, judged by the cloud's clock, which this
    program cannot read (the cloud's look-ups carry no time). So it does not judge: any lock
    in state running stops it, and the sentence says how to clear one whose run died."""
    if found.lock is None:
        return []
    record = LockRecord.parse(found.lock)
    if record is None:
        raise pulumi.RunError(
            f"single-vm: the promotion lock {lock} exists but holds no record this version "
            "can read, so this update does not run beside what may be a promotion; if no "
            f"`blueprints promote` or `park` runs on {stack}, delete {lock} (a placement group on "
            "Hetzner, a key pair on AWS) and run `pulumi up` again"
        )
    if record.state == "running":
        beat = datetime.fromtimestamp(record.beat, UTC).strftime("%Y-%m-%d %H:%M:%S")
        raise pulumi.RunError(
            f"single-vm: `blueprints {record.action}` is running on this stack (lock {lock}, "
            f"owner {record.owner}, target {record.target}, last heartbeat {beat} UTC by the "
            "cloud's clock) and this update would undo what it does, so it stops here; run "
            "`pulumi up` again once that run has ended, and if it died, "
            f"`blueprints {record.action} {stack}` takes the lock over once it has had no "
            "heartbeat for lockTtl"
            + (" (at once with --takeover)" if record.action == "promote" else "")
            + " and finishes what it started"
        )
    return [
        f"single-vm: the lock {lock} records a failed `blueprints {record.action}` toward "
        f"{record.target} (owner {record.owner}); this update goes by what the cloud holds "
        f"now, and `blueprints {record.action} {stack}` resumes it."
    ]


class SingleVm(pulumi.ComponentResource):
    """Primary + spare in one spread placement group, the data volume and floating IP on the
    active node (the cloud's holder), the spare warm or cold."""

    @staticmethod
    def check(app: AppSpec) -> list[tuple[tuple[str | int, ...], str]]:
        """Spec rules of this blueprint (beyond the spec's own), as (field path, message)."""
        return check_app(app)

    @staticmethod
    def check_settings(app: AppSpec, settings: StackSettings) -> list[str]:
        from blueprints.capacity import stack_problems

        return check_release_channel(app, settings) + stack_problems(app, settings)

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

        # The cloud first, before any resource of the stack is declared: a promotion in
        # progress stops the program; otherwise where the volume and the address are now.
        lock = lock_name(app.name, stack)
        found = target.find(labels, NODES, f"{prefix}-data", f"{prefix}-ip", lock)
        warnings = refuse_during_promotion(found, lock, stack)
        active_node, placing = choose_active(found, settings.active)
        standby = next(n for n in NODES if n != active_node)
        mode = settings.spare
        wanted = {node: node == active_node or mode == "warm" for node in NODES}
        for message in warnings + placing + power_warnings(found, wanted, target):
            pulumi.log.warn(message)

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
            ctx_args = {"node": node, "ip_in_os": target.floating_ip_in_os}
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

        active = servers[active_node]
        # Retained on delete: the program never takes the volume or the address from a server
        # (`blueprints promote` moves them, and the program follows the cloud), so a stale link
        # in Pulumi's state, replaced without a refresh, must not detach or unassign by volume
        # or address from the node that holds them now. A replaced server's link is replaced
        # with it (deleted_with, and its server id changes): the old server's deletion frees
        # the volume and the new link attaches it to the new server.
        attachment = target.attach_volume(f"{prefix}-data-attachment", volume, active, retain=True)
        assignment = target.assign_floating_ip(f"{prefix}-ip-assignment", fip, active, retain=True)
        power = {}
        for node, server in servers.items():
            after = []
            if not wanted[node] and node not in found.off:
                # A cold standby the cloud does not have yet (or has running): it is powered
                # off only after its first boot has finished (see first_boot).
                after.append(first_boot(prefix, node, server, deploy_key, app, self))
            power[node] = target.server_power(
                f"{prefix}-{node}-power", server, running=wanted[node], depends_on=after
            )
        private = private_standby_images(app)
        if private:
            pulumi.log.info(
                f"{len(private)} image(s) come from a registry with credentials "
                f"({', '.join(private)}); the standby holds no secret, so a promotion pulls "
                "them with the release's credentials, which adds their download to the "
                "recovery time"
            )
        if mode == "warm":
            # The warm standby keeps the current release's images, so a promotion starts
            # containers rather than downloading them. Re-run (an update in place) when the
            # list of images changes; a promotion changes its host, never a server.
            remote.Command(
                f"{prefix}-standby-images",
                connection=channel.connection(
                    target.current_address(servers[standby], power[standby]), deploy_key
                ),
                create=PULL_IMAGES_COMMAND,
                update=PULL_IMAGES_COMMAND,
                stdin=standby_images_text(app),
                add_previous_output_in_env=False,
                opts=pulumi.ResourceOptions(
                    parent=self, depends_on=[servers[standby].resource, power[standby]]
                ),
            )
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
            depends_on=[active.resource, attachment, assignment, *power.values()],
            parent=self,
        )

        self.outputs: dict[str, pulumi.Input[object]] = {
            "activeNode": active_node,
            "spareMode": mode,
            "floatingIp": fip.address,
            "url": f"https://{app.domain}",
            "sshCommand": fip.address.apply(lambda ip: f"ssh deploy@{ip}"),
            "deployKey": pulumi.Output.secret(deploy_key.private_key_openssh),
            "serverIps": {node: s.public_ip for node, s in servers.items()},
            "dnsRecord": fip.address.apply(lambda ip: dns_records(app, ip)),
            # The first certificates asked for again at once (acme-retry does it by itself
            # once DNS answers).
            "retryCertificates": fip.address.apply(
                lambda ip: f"ssh deploy@{ip} sudo systemctl restart blueprints-caddy.service"
            ),
            "spareBilling": target.spare_billing[mode],
            **(backups.outputs if backups is not None else {}),
        }
        self.register_outputs(self.outputs)


def first_boot(
    prefix: str,
    node: str,
    server: Server,
    key: tls.PrivateKey,
    app: AppSpec,
    parent: pulumi.Resource,
) -> remote.Command:
    """`<prefix>-<node>-first-boot`: on a cold standby the cloud does not have yet (this update
    creates it) or has running, wait for cloud-init to finish and pull the release's images,
    before its power resource shuts it down; a power-off right after the server is created
    would cut its first boot (packages half installed) short.

    Declared only while the node is not found powered off: an off node booted before it was
    ever powered off (every power-off waited for this), and cannot be reached. So the update
    after the one that created the standby drops the command (deleting it runs nothing on the
    node), and a release never runs it again: its image list is ignored once it is created.

    Not covered: a standby replaced while it is off (a changed bootstrap replaces the servers).
    The program runs before Pulumi decides on replacements and sees the old, powered-off
    server, so the new one is powered off without this wait; with `blueprints:spareMode: warm`
    for that update the new server boots fully (its image pull waits for cloud-init)."""
    return remote.Command(
        f"{prefix}-{node}-first-boot",
        connection=channel.connection(server.public_ip, key),
        create=PULL_IMAGES_COMMAND,
        stdin=standby_images_text(app),
        add_previous_output_in_env=False,
        opts=pulumi.ResourceOptions(
            parent=parent, depends_on=[server.resource], ignore_changes=["stdin"]
        ),
    )


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


def _user_data(app: AppSpec, values: list, *, node: str, ip_in_os: bool) -> str:
    device, address, public_key = values
    return render_cloud_init(
        NodeContext(
            app=app,
            node=node,
            data_device=device,
            floating_ip=address if ip_in_os else None,
            deploy_key=str(public_key).strip(),
        )
    )
