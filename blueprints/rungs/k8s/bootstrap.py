"""The k8s rung's bootstrap: what each node's user data holds.

Six nodes: three k3s servers (control planes, embedded etcd) and three agents (workers). A
node's user data is its bootstrap only and depends on machine-level stack settings alone
(principle 9): SSH hardening, unattended upgrades, the deploy user with the stack's deploy key,
the pinned k3s binary (its installer checks the release's checksum), /etc/rancher/k3s/config.yaml
(a serializer's output), the k3s unit, the script that finds flannel's interface, the
installer of `k3s-node-ready`, and `node.json`, what that script needs to know (no secret).

It holds no secret, no app and no certificate authority: the join token, the admins' keys, the
etcd snapshot credentials and, on the first control plane founding a cluster, the cluster's CAs
arrive over SSH with `k3s-node-ready`, which writes them as files only root may read; the app
and the add-ons go through the Kubernetes API (release). So a release or a new admin replaces no
node, and the user data is no Pulumi secret: a preview shows its diff.

k3s is enabled, not started, by cloud-init: it starts once k3s-node-ready has written the token
and decided how the node reaches the cluster (the unit's conditions).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from blueprints.release.node_kit_ship import shipped_source
from blueprints.render.common import dump_json, dump_yaml, render_template
from blueprints.render.single_vm import ADMIN_KEYS_DIR, ADMIN_KEYS_SSHD
from blueprints.render.vm import DEPLOY_USER, cloud_config, host_files, install_node_ready
from blueprints.rungs.k8s.release import Cloud
from blueprints.settings import K3S_VERSION, StackSettings

SCRIPTS = "/usr/local/lib/blueprints"
UNITS = "/etc/systemd/system"
K3S_CONFIG_DIR = "/etc/rancher/k3s"
K3S_CONFIG = f"{K3S_CONFIG_DIR}/config.yaml"
DROPINS = f"{K3S_CONFIG_DIR}/config.yaml.d"
TOKEN_FILE = f"{K3S_CONFIG_DIR}/token"
# Written once by k3s-node-ready: `server: <a peer>` to join, `cluster-init: true` to found.
JOIN_DROPIN = f"{DROPINS}/50-blueprints-join.yaml"
# Written by k3s-node-ready on control planes when the stack names a snapshot bucket.
ETCD_S3_DROPIN = f"{DROPINS}/60-blueprints-etcd-s3.yaml"
# Written at every start of k3s by k3s-flannel-iface: the private interface's name.
FLANNEL_DROPIN = f"{DROPINS}/40-blueprints-flannel.yaml"
FLANNEL_SCRIPT = "k3s-flannel-iface"
PRIVATE_NETWORK_WAIT_SECONDS = 120
TLS_DIR = "/var/lib/rancher/k3s/server/tls"
K3S_BINARY = "/usr/local/bin/k3s"
API_PORT = 6443
STOP_TIMEOUT_SECONDS = 30
BOOTSTRAP_DIR = "/etc/blueprints/k3s"
NODE_CONFIG = f"{BOOTSTRAP_DIR}/node.json"
# Set by k3s-node-ready just before it first starts k3s on this machine: from then on it never
# removes a node record (the one it finds would be this machine's own).
JOINED_MARKER = "/var/lib/blueprints/k3s-joined"
NODE_READY = f"{SCRIPTS}/k3s-node-ready"
INSTALL_NODE_READY = f"{SCRIPTS}/install-k3s-node-ready"
# How long k3s-node-ready waits for its node, and how often it says what it waits for.
READY_TIMEOUT_SECONDS = 900
READY_PROGRESS_SECONDS = 15
# How long a joining node looks for a control plane that answers.
JOIN_WAIT_SECONDS = 180
# Where the control planes put their etcd snapshots in the stack's backup bucket.
ETCD_SNAPSHOT_FOLDER = "etcd-snapshots"
# What each node's user data installs (cloud-init's `packages:`, then install-packages for what
# it left out); k3s itself is the pinned binary (install-k3s), with its own containerd.
PACKAGES = ("curl", "python3", "unattended-upgrades")
# The app's pods run on the workers: the control planes only take cluster add-ons.
CONTROL_PLANE_TAINT = "CriticalAddonsOnly=true:NoExecute"


@dataclass(frozen=True)
class Timing:
    """How fast Kubernetes gives up on a dead node (seconds)."""

    node_monitor_grace_period: int = 30
    not_ready_toleration: int = 30
    unreachable_toleration: int = 30

    @property
    def eviction_after(self) -> int:
        """Seconds from a node's last heartbeat to its pods being evicted (either condition)."""
        return self.node_monitor_grace_period + max(
            self.not_ready_toleration, self.unreachable_toleration
        )


@dataclass(frozen=True)
class K8sNode:
    """One VM: its cloud name (also its Kubernetes node name), role and private address."""

    name: str
    role: Literal["server", "agent"]
    private_ip: str


@dataclass(frozen=True)
class ClusterContext:
    """Facts about the cluster a node's files need (machine settings only, no secret)."""

    cloud: Cloud
    nodes: tuple[K8sNode, ...]
    timing: Timing = Timing()
    # The stack's deploy key (OpenSSH public key): the only key the user data authorizes.
    deploy_key: str = ""
    # The pinned k3s release (blueprints:k3sVersion): a replaced node runs what its peers run,
    # and a change replaces every node, one after another.
    k3s_version: str = K3S_VERSION
    # The app's namespace: a node is ready once the app's workloads are back too.
    app_namespace: str | None = None

    @property
    def server_ips(self) -> tuple[str, ...]:
        return tuple(n.private_ip for n in self.nodes if n.role == "server")

    @property
    def first_server(self) -> str:
        return self.server_ips[0]


def k3s_config(ctx: ClusterContext, node: K8sNode) -> dict[str, Any]:
    """/etc/rancher/k3s/config.yaml: the k3s command line as a mapping. How the node reaches the
    cluster (`server` or `cluster-init`) is decided at its first start (JOIN_DROPIN)."""
    config: dict[str, Any] = {
        "node-name": node.name,
        "node-ip": node.private_ip,
        "token-file": TOKEN_FILE,
    }
    cloud_external = ctx.cloud == "hcloud"
    if cloud_external:
        # Hetzner's cloud controller manager initialises the nodes (addresses, provider id).
        config["kubelet-arg"] = ["cloud-provider=external"]
    if node.role == "agent":
        return config
    timing = ctx.timing
    config.update(
        {
            "advertise-address": node.private_ip,
            "node-taint": [CONTROL_PLANE_TAINT],
            "secrets-encryption": True,
            "write-kubeconfig-mode": "0600",
            "kube-controller-manager-arg": [
                f"node-monitor-grace-period={timing.node_monitor_grace_period}s"
            ],
            "kube-apiserver-arg": [
                f"default-not-ready-toleration-seconds={timing.not_ready_toleration}",
                f"default-unreachable-toleration-seconds={timing.unreachable_toleration}",
            ],
        }
    )
    if cloud_external:
        config["disable-cloud-controller"] = True
        # Claims go to Hetzner volumes; no second (node-local) default storage class.
        config["disable"] = ["local-storage"]
    return config


def etcd_s3_settings(settings: StackSettings, control_planes: int) -> dict[str, object] | None:
    """k3s's etcd-s3 settings for the stack's backup bucket (all but the secret key, which
    travels apart); None without a bucket. The endpoint is a host: k3s takes the scheme from
    etcd-s3-insecure."""
    storage = settings.backup_storage()
    if storage is None:
        return None
    url, region = storage
    scheme, _, host = url.partition("://")
    return {
        "etcd-s3": True,
        "etcd-s3-endpoint": host,
        "etcd-s3-insecure": scheme == "http",
        # Path-style requests work with every S3 (LocalStack, Hetzner, AWS).
        "etcd-s3-bucket-lookup-type": "path",
        "etcd-s3-bucket": settings.backup_bucket,
        "etcd-s3-region": region,
        "etcd-s3-access-key": settings.backup_access_key,
        "etcd-s3-folder": ETCD_SNAPSHOT_FOLDER,
        "etcd-snapshot-schedule-cron": settings.etcd_snapshot_schedule,
        "etcd-snapshot-retention": settings.etcd_snapshot_retention,
        # The bucket's retention counts every snapshot in the folder, and each control plane
        # uploads its own (k3s pkg/etcd/s3; rancher/rke2#5216).
        "etcd-s3-retention": control_planes * settings.etcd_snapshot_retention,
    }


def node_config(ctx: ClusterContext, node: K8sNode) -> str:
    """What k3s-node-ready needs to know about its node (no secret)."""
    server = node.role == "server"
    return dump_json(
        {
            "name": node.name,
            "role": node.role,
            "first": server and node.private_ip == ctx.first_server,
            # The control planes to join through (a server's own address is not among them).
            "peers": [f"https://{ip}:{API_PORT}" for ip in ctx.server_ips if ip != node.private_ip],
            "local_api": f"https://127.0.0.1:{API_PORT}" if server else None,
            "nodes": [n.name for n in ctx.nodes],
            "unit": unit_name(node),
            "systemctl": "systemctl",
            "token_file": TOKEN_FILE,
            "join_dropin": JOIN_DROPIN,
            "etcd_s3_dropin": ETCD_S3_DROPIN if server else None,
            "tls_dir": TLS_DIR,
            "admin_keys_file": f"{ADMIN_KEYS_DIR}/{DEPLOY_USER}",
            "joined_marker": JOINED_MARKER,
            "join_wait": JOIN_WAIT_SECONDS,
            "app_namespace": ctx.app_namespace,
            "ready_timeout": READY_TIMEOUT_SECONDS,
            "progress_every": READY_PROGRESS_SECONDS,
        }
    )


def unit_name(node: K8sNode) -> str:
    return "k3s.service" if node.role == "server" else "k3s-agent.service"


def node_ready_source() -> str:
    """The k3s-node-ready script, as Pulumi sends it to every node (install-k3s-node-ready):
    one file, node_kit inlined."""
    return shipped_source(resources.files("blueprints.rungs.k8s") / "node_ready.py")


def _t(template: str, **values: object) -> str:
    return render_template(f"k8s/{template}", **values)


def file_permissions(path: str) -> str:
    """The mode a rendered file gets on the node: scripts executable, the rest readable (no
    file of the user data holds a secret)."""
    if path.startswith(SCRIPTS + "/"):
        return "0755"
    return "0644"


def render_node_files(ctx: ClusterContext, node: K8sNode) -> dict[str, str]:
    """Absolute path on the VM -> text, for every file the node's cloud-init writes."""
    files: dict[str, str] = {
        **host_files(PACKAGES, docker=False),
        ADMIN_KEYS_SSHD: render_template(
            "single-vm/admin-keys.conf.j2", admin_keys_dir=ADMIN_KEYS_DIR
        ),
        K3S_CONFIG: dump_yaml(k3s_config(ctx, node)),
        NODE_CONFIG: node_config(ctx, node),
        INSTALL_NODE_READY: install_node_ready(NODE_READY, "k3s-node-ready"),
        f"{SCRIPTS}/install-k3s": _t(
            "install-k3s.sh.j2", version=ctx.k3s_version, binary=K3S_BINARY
        ),
        f"{SCRIPTS}/{FLANNEL_SCRIPT}": _t(
            "k3s-flannel-iface.sh.j2",
            config=K3S_CONFIG,
            dropin=FLANNEL_DROPIN,
            wait_seconds=PRIVATE_NETWORK_WAIT_SECONDS,
        ),
        f"{UNITS}/{unit_name(node)}": _t(
            "k3s.service.j2",
            role=node.role,
            binary=K3S_BINARY,
            stop_timeout=STOP_TIMEOUT_SECONDS,
            flannel_script=f"{SCRIPTS}/{FLANNEL_SCRIPT}",
            token_file=TOKEN_FILE,
            join_dropin=JOIN_DROPIN,
        ),
    }
    return dict(sorted(files.items()))


def render_cloud_init(ctx: ClusterContext, node: K8sNode) -> str:
    """The node's user data: a #cloud-config document embedding every file it needs."""
    files = render_node_files(ctx, node)
    runcmd = [
        "systemctl try-reload-or-restart ssh.service",
        f"{SCRIPTS}/install-k3s",
        "systemctl daemon-reload",
        # Enabled, not started: k3s starts once k3s-node-ready has handed it the token.
        f"systemctl enable {unit_name(node)}",
    ]
    return cloud_config(
        [ctx.deploy_key] if ctx.deploy_key else [],
        files,
        file_permissions,
        PACKAGES,
        runcmd,
    )
