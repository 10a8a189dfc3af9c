"""What a renderer needs to know about one node, beyond the app spec."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from blueprints.backup.storage import Storage
from blueprints.spec import AppSpec


@dataclass(frozen=True)
class NodeContext:
    """Facts about one VM that the spec cannot know: its role and cloud-assigned values.

    Values here are plain strings; the Pulumi component resolves cloud outputs (volume id,
    floating IP) before calling a renderer, and `blueprints render` passes the plan's values.
    """

    app: AppSpec
    # The server's fixed identity in its blueprint ("primary", "spare"). Never the *active* role:
    # flipping which node is active must not change any node's files.
    node: str
    # Stable by-id path of the data volume's block device, for example
    # /dev/disk/by-id/scsi-0HC_Volume_12345678 (hcloud) or
    # /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123456789abcdef0 (aws).
    data_device: str
    # Address the OS must answer on (a Hetzner floating IP is routed to the server but must be
    # configured on its interface); None where the cloud translates it (an AWS Elastic IP).
    floating_ip: str | None
    # The stack's deploy key (OpenSSH public key): the one key the bootstrap authorizes, for the
    # release channel. Admin keys come with each release.
    deploy_key: str = ""
    # Secret environment values by name, for render_node_files' view of everything a node ends
    # up with (placeholders when rendering to disk). Never part of the user data.
    secrets: Mapping[str, str] = field(default_factory=dict)
    # The stack's backup storage, for render_node_files' view of the release (the backup's
    # files; its password and keys come with secrets, under blueprints.backup.node_files'
    # reserved names). None: the stack takes no backups.
    backup_storage: Storage | None = None
