"""The nomad rung's bootstrap: what each node's user data holds.

Three nodes, each a Nomad server and client. A node's user data is its bootstrap only, and it
depends on machine-level stack settings alone (principle 9): Nomad from HashiCorp's apt
repository at a pinned version, Docker as the task driver (and raw_exec, for the backup jobs,
with Debian's restic, which they run), the agent configuration (its own address and its
peers'), the deploy user with the stack's deploy key, and the installer of `nomad-node-ready`
(the script itself arrives over SSH, so a newer one replaces no node).
The first node (the data node) also mounts the cloud data volume, exposes it to Nomad as host
volumes, and bootstraps the ACLs.

It holds no secret, no job and no admin key: the app travels through Nomad's API (release), and
the node's TLS files, the gossip key, the management token and the admins' keys over SSH
(nomad-node-ready, which writes the secrets as files only root may read), so a release or a new
admin never replaces a node, and the user data is no Pulumi secret: a preview shows its diff.

Every value reaching an HCL file passes the `hcl` filter, every one reaching a script the
`shell` filter; JSON comes from a serializer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

from blueprints.release.node_kit_ship import shipped_source
from blueprints.render.common import dump_json, render_template, systemd_escape_path
from blueprints.render.single_vm import (
    ADMIN_KEYS_DIR,
    ADMIN_KEYS_SSHD,
    METADATA_GUARD_UNIT,
    _checked_device,
    _metadata_guard_files,
    volume_mount_files,
)
from blueprints.render.vm import (
    APT_LOCK_TIMEOUT_SECONDS,
    DEPLOY_USER,
    PACKAGES_DEADLINE_SECONDS,
    cloud_config,
    host_files,
    install_node_ready,
)
from blueprints.rungs.nomad.release import DATA_META, DATACENTER, INGRESS_VOLUME, Timing
from blueprints.rungs.nomad.rules import INGRESS_DIR, NODE_COUNT, NOMAD_HTTP, NOMAD_RPC

NODE_NAMES = tuple(f"node-{i + 1}" for i in range(NODE_COUNT))
# The node the data volume is attached to: its host volumes, the stateful jobs and the ingress.
DATA_NODE = 0
REGION = "global"
NOMAD_VERSION_SUFFIX = "-1"  # HashiCorp's deb revision
HASHICORP_KEY_URL = "https://apt.releases.hashicorp.com/gpg"
# HashiCorp's archive signing key (https://www.hashicorp.com/trust/security); the key fetched at
# boot is used only if its primary key has exactly this fingerprint.
HASHICORP_FINGERPRINT = "798AEC654E5C15428C8E42EEAA16FCBCA621E701"
HASHICORP_APT = "https://apt.releases.hashicorp.com"

SCRIPTS = "/usr/local/lib/blueprints"
UNITS = "/etc/systemd/system"
NOMAD_DIR = "/etc/nomad.d"
TLS_DIR = f"{NOMAD_DIR}/tls"
AGENT_CONFIG = f"{NOMAD_DIR}/blueprints.hcl"
GOSSIP_CONFIG = f"{NOMAD_DIR}/gossip.hcl"
CA_FILE = f"{TLS_DIR}/ca.pem"
CERT_FILE = f"{TLS_DIR}/node.pem"
KEY_FILE = f"{TLS_DIR}/node-key.pem"
BOOTSTRAP_DIR = "/etc/blueprints/nomad"
TOKEN_FILE = f"{BOOTSTRAP_DIR}/bootstrap-token"
NODE_CONFIG = f"{BOOTSTRAP_DIR}/node.json"
NODE_READY = f"{SCRIPTS}/nomad-node-ready"
# What the user data holds instead of the script: Pulumi sends the script before each ready step.
INSTALL_NODE_READY = f"{SCRIPTS}/install-node-ready"
# Left on the data volume by the ACL bootstrap once the cluster has formed, so that a new data
# node knows it joins an existing cluster even when no peer answers (nomad-node-ready).
FORMED_MARKER = "/srv/data/.blueprints/nomad-cluster-formed"
# How long nomad-node-ready waits for its node to rejoin, and how often it says what it waits for.
READY_TIMEOUT_SECONDS = 900
READY_POLL_SECONDS = 2
READY_PROGRESS_SECONDS = 15
# How long the data node's ACL bootstrap waits for a leader (a new cluster's nodes boot in turn).
LEADER_WAIT_MINUTES = 30
# What each node's user data installs (cloud-init's `packages:`, then install-packages for what
# it left out). restic: the backup jobs' tool (raw_exec on the data node; every node has it, so
# a node's user data does not depend on the app or on where the data is).
PACKAGES = (
    "ca-certificates",
    "curl",
    "docker.io",
    "gnupg",
    "iptables",
    "python3",
    "restic",
    "unattended-upgrades",
)


@dataclass(frozen=True)
class NomadNode:
    """Everything one node's user data depends on: machine-level settings, never the app and
    no secret."""

    index: int
    node_ips: tuple[str, ...]
    subnet_cidr: str
    data_device: str
    deploy_key: str
    # The data volume's directories, one host volume each: the disk's layout, set by the spec's
    # volumes (only the data node has them).
    volumes: tuple[str, ...] = ()
    nomad_version: str = "1.10.5"
    timing: Timing = field(default_factory=Timing)

    @property
    def name(self) -> str:
        return NODE_NAMES[self.index]

    @property
    def ip(self) -> str:
        return self.node_ips[self.index]

    @property
    def data_node(self) -> bool:
        return self.index == DATA_NODE


def node_ready_source() -> str:
    """The nomad-node-ready script, as Pulumi sends it to every node (install-node-ready):
    one file, node_kit inlined."""
    return shipped_source(resources.files("blueprints.rungs.nomad") / "node_ready.py")


def render_agent_config(node: NomadNode) -> str:
    """Nomad agent configuration (HCL) of one node: server and client, ACLs, TLS."""
    return _t(
        "agent.hcl.j2",
        name=node.name,
        datacenter=DATACENTER,
        region=REGION,
        ip=node.ip,
        node_ips=list(node.node_ips),
        expect=NODE_COUNT,
        subnet=node.subnet_cidr,
        timing=node.timing,
        data_node=node.data_node,
        data_meta=DATA_META,
        host_volumes=host_volumes(node.volumes) if node.data_node else [],
        ca_file=CA_FILE,
        cert_file=CERT_FILE,
        key_file=KEY_FILE,
        rpc_port=NOMAD_RPC,
    )


def host_volumes(volumes: tuple[str, ...]) -> list[dict[str, str]]:
    vols = [{"name": v, "path": f"/srv/data/{v}"} for v in sorted(volumes)]
    vols.append({"name": INGRESS_VOLUME, "path": f"/srv/data/{INGRESS_DIR}"})
    return vols


def node_config(node: NomadNode) -> str:
    """What nomad-node-ready needs to know about its node (no secret)."""
    return dump_json(
        {
            "name": node.name,
            "region": REGION,
            "local": f"https://127.0.0.1:{NOMAD_HTTP}",
            # The other servers (this one is "local").
            "peers": [f"https://{ip}:{NOMAD_HTTP}" for ip in node.node_ips if ip != node.ip],
            "servers": NODE_COUNT,
            "ca_file": CA_FILE,
            "cert_file": CERT_FILE,
            "key_file": KEY_FILE,
            "token_file": TOKEN_FILE,
            "admin_keys_file": f"{ADMIN_KEYS_DIR}/{DEPLOY_USER}",
            "gossip_file": GOSSIP_CONFIG,
            "first": node.index == 0,
            "formed_marker": FORMED_MARKER if node.data_node else None,
            "unit": "nomad.service",
            "systemctl": ["systemctl"],
            "timeout_seconds": READY_TIMEOUT_SECONDS,
            "poll_seconds": READY_POLL_SECONDS,
            "progress_seconds": READY_PROGRESS_SECONDS,
        }
    )


def file_permissions(path: str) -> str:
    if path.startswith(SCRIPTS + "/"):
        return "0755"
    return "0644"


def render_node_files(node: NomadNode) -> dict[str, str]:
    """Absolute path on the VM -> text, for every file the node's cloud-init writes."""
    files: dict[str, str] = {
        **host_files(PACKAGES),
        ADMIN_KEYS_SSHD: render_template(
            "single-vm/admin-keys.conf.j2", admin_keys_dir=ADMIN_KEYS_DIR
        ),
        f"{SCRIPTS}/install-nomad": _t(
            "install-nomad.sh.j2",
            version=node.nomad_version + NOMAD_VERSION_SUFFIX,
            key_url=HASHICORP_KEY_URL,
            fingerprint=HASHICORP_FINGERPRINT,
            repository=HASHICORP_APT,
            lock_timeout=APT_LOCK_TIMEOUT_SECONDS,
            deadline=PACKAGES_DEADLINE_SECONDS,
        ),
        AGENT_CONFIG: render_agent_config(node),
        NODE_CONFIG: node_config(node),
        INSTALL_NODE_READY: install_node_ready(NODE_READY, "nomad-node-ready"),
        f"{UNITS}/nomad.service": _t(
            "nomad.service.j2",
            agent_config=AGENT_CONFIG,
            gossip_config=GOSSIP_CONFIG,
            cert_file=CERT_FILE,
            guard=METADATA_GUARD_UNIT,
            data_node=node.data_node,
        ),
    }
    files.update(_metadata_guard_files())
    if node.data_node:
        files.update(_data_node_files(node))
    return dict(sorted(files.items()))


def _data_node_files(node: NomadNode) -> dict[str, str]:
    escaped = systemd_escape_path(_checked_device(node.data_device))
    return {
        # The data volume, mounted as in single-vm (same units, same never-reformat script).
        **volume_mount_files(node.data_device),
        f"{UNITS}/blueprints-nomad-volumes.service": _t(
            "volumes.service.j2", script=f"{SCRIPTS}/nomad-volumes", device_unit=escaped + ".device"
        ),
        f"{SCRIPTS}/nomad-volumes": _t(
            "volumes.sh.j2", volumes=sorted(node.volumes), ingress_dir=INGRESS_DIR
        ),
        f"{UNITS}/blueprints-nomad-acl-bootstrap.service": _t(
            "acl-bootstrap.service.j2", script=f"{SCRIPTS}/nomad-acl-bootstrap"
        ),
        f"{SCRIPTS}/nomad-acl-bootstrap": _t(
            "acl-bootstrap.sh.j2",
            ca_file=CA_FILE,
            token_file=TOKEN_FILE,
            http_port=NOMAD_HTTP,
            leader_tries=LEADER_WAIT_MINUTES * 60 // 5,
            formed_marker=FORMED_MARKER,
        ),
    }


def render_cloud_init(node: NomadNode) -> str:
    """The node's user data: a #cloud-config document embedding every file it needs."""
    files = render_node_files(node)
    units = ["nomad.service"]
    if node.data_node:
        units += ["blueprints-nomad-volumes.service", "blueprints-nomad-acl-bootstrap.service"]
    runcmd = [
        "systemctl try-reload-or-restart ssh.service",
        f"usermod --append --groups docker {DEPLOY_USER}",
        f"{SCRIPTS}/install-nomad",
        "systemctl daemon-reload",
        # Enabled, not started: the agent starts once its TLS files arrive (nomad-node-ready).
        "systemctl enable " + " ".join(units),
    ]
    return cloud_config(
        [node.deploy_key] if node.deploy_key else [],
        files,
        file_permissions,
        PACKAGES,
        runcmd,
    )


def _t(template: str, **values: object) -> str:
    return render_template(f"nomad/{template}", **values)
