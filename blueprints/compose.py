"""compose: one VM running the app as a Docker Compose project, data on a cloud volume.

No spare: a dead VM is rebuilt by `pulumi up` (the volume and the floating IP survive it) or
restored from a backup. Backups follow the spec: restic to the stack's bucket, off the server
(blueprints.backup), and where the cloud snapshots volumes on a schedule (AWS), those snapshots
too.
"""

from __future__ import annotations

from collections.abc import Mapping

import pulumi

from blueprints.backup.remote import Access, vm_access
from blueprints.backup.storage import Storage, stack_backups, with_backup_secrets
from blueprints.dns import dns_records
from blueprints.release import channel
from blueprints.render.compose import (
    PROXY_SERVICE,
    WRAPPER,
    ComposeContext,
    check_app,
    release_documents,
    render_cloud_init,
)
from blueprints.settings import StackSettings
from blueprints.single_vm import check_release_channel, firewall_rules, node_ip
from blueprints.spec import AppSpec
from blueprints.targets import make_target
from blueprints.targets.base import ServerSpec, resource_labels


class Compose(pulumi.ComponentResource):
    """One server in the private network, its data volume, optionally a floating IP, backups."""

    @staticmethod
    def check(app: AppSpec) -> list[tuple[tuple[str | int, ...], str]]:
        return check_app(app)

    @staticmethod
    def check_settings(app: AppSpec, settings: StackSettings) -> list[str]:
        from blueprints.capacity import stack_problems

        return check_release_channel(app, settings) + stack_problems(app, settings)

    @staticmethod
    def backup_access(app: AppSpec, outputs: Mapping[str, object]) -> Access:
        """Where `blueprints backup|backups|restore` run: blueprints-backup on the node."""
        return vm_access(outputs, "address")

    def __init__(
        self,
        name: str,
        app: AppSpec,
        settings: StackSettings,
        secrets: pulumi.Input[Mapping[str, str]],
        stack: str,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("blueprints:index:Compose", name, None, opts)
        target = make_target(settings, self)
        prefix = f"{app.name}-{stack}"
        labels = resource_labels(app.name, "compose", stack)
        backups = app.backups
        # The volume carries this tag so the snapshot policy finds it (and nothing else).
        selector = {"backup-policy": f"{prefix}-data"}

        network = target.network(f"{prefix}-net", labels)
        firewall = target.firewall(f"{prefix}-fw", network, firewall_rules(app, settings), labels)
        deploy_key = channel.deploy_key(f"{prefix}-deploy-key", self)
        key = target.ssh_key(f"{prefix}-deploy", [deploy_key.public_key_openssh], labels)
        volume = target.volume(
            f"{prefix}-data",
            app.data_size_gb,
            {**labels, **selector} if backups.enabled else labels,
        )
        fip = target.floating_ip(f"{prefix}-ip", labels) if settings.floating_ip else None

        ip_in_os = fip is not None and target.floating_ip_in_os
        stack_backup = stack_backups(app, settings, stack, target, labels, self)
        storage = stack_backup.storage if stack_backup is not None else None
        address = fip.address if fip is not None else pulumi.Output.from_input("")
        user_data = pulumi.Output.all(
            volume.device_path, address, deploy_key.public_key_openssh
        ).apply(
            lambda values: render_cloud_init(
                ComposeContext(
                    app=app,
                    data_device=values[0],
                    floating_ip=values[1] if ip_in_os else None,
                    deploy_key=str(values[2]).strip(),
                )
            )
        )
        server = target.server(
            ServerSpec(
                name=f"{prefix}-vm",
                user_data=user_data,
                private_ip=node_ip(settings, 0),
                network=network,
                firewall=firewall,
                placement=None,
                ssh_key=key,
                labels=labels,
            )
        )
        attachment = target.attach_volume(f"{prefix}-data-attachment", volume, server)
        ready: list[pulumi.Resource] = [server.resource, attachment]
        if fip is not None:
            ready.append(target.assign_floating_ip(f"{prefix}-ip-assignment", fip, server))
        channel.deliver(
            prefix,
            host=fip.address if fip is not None else server.public_ip,
            key=deploy_key,
            secrets=with_backup_secrets(secrets, stack_backup),
            has_secrets=bool(app.secret_names()) or stack_backup is not None,
            volume_id=volume.id,
            documents=lambda key_pem, values: release_documents(app, key_pem, values, storage),
            depends_on=ready,
            parent=self,
        )
        # Where the cloud snapshots volumes on a schedule (AWS), those snapshots too.
        policy = f"{prefix}-snapshots"
        snapshots = backups.enabled and bool(
            target.volume_backups(policy, selector, backups, labels)
        )

        public = fip.address if fip is not None else server.public_ip
        self.outputs: dict[str, pulumi.Input[object]] = {
            "address": public,
            "url": f"https://{app.domain}",
            "sshCommand": public.apply(lambda ip: f"ssh deploy@{ip}"),
            "deployKey": pulumi.Output.secret(deploy_key.private_key_openssh),
            "dnsRecord": public.apply(lambda ip: dns_records(app, ip)),
            # The first certificates asked for again at once (acme-retry does it by itself
            # once DNS answers).
            "retryCertificates": public.apply(
                lambda ip: f"ssh deploy@{ip} sudo {WRAPPER} restart {PROXY_SERVICE}"
            ),
            "backups": _backup_note(app, storage, snapshots),
            **(stack_backup.outputs if stack_backup is not None else {}),
        }
        self.register_outputs(self.outputs)


def _backup_note(app: AppSpec, storage: Storage | None, snapshots: bool) -> str:
    b = app.backups
    if not b.enabled:
        return "off (the spec turns backups off)"
    when = "hourly" if b.schedule == "hourly" else f"{b.schedule} at {b.at} UTC"
    parts = []
    if storage is not None:
        parts.append(f"restic to {storage.repository}")
    if snapshots:
        parts.append("volume snapshots")
    if not parts:
        return "none: the stack sets no backup storage (blueprints:backupBucket)"
    return f"{when}: {' and '.join(parts)}, {b.keep} kept"
