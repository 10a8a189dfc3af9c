"""k8s: six VMs running k3s. Three control planes (embedded etcd) and three workers on the
private network in one spread placement group, a load balancer for 80/443 (and the spec's tcp
ports) to the workers, and the Kubernetes API for the admin and deployer networks only.

The cluster's certificate authorities, the join token and an admin client certificate are
generated here (pulumi-tls, pulumi-random) and kept in Pulumi's state as secrets, so the
kubeconfig is a stack output without asking the cluster for anything.

Machines and releases are apart (principle 9):
- a node's user data is its bootstrap (bootstrap.py): no secret, no app, no CA;
- each node is followed by `<prefix>-<node>-ready`, a command over SSH that hands the node its
  token, the admins' keys, the etcd snapshot settings and (first control plane, founding) the
  CAs, removes the record of the machine it replaces, and waits until the node is Ready (and
  etcd healthy); the next node depends on it, so nodes that must be replaced are replaced one
  after another;
- the app, its Secrets and the add-ons go through the Kubernetes API (pulumi-kubernetes, a
  provider built from the kubeconfig): a release is a rollout that Pulumi waits for.

Backups off the servers go to the stack's bucket (`backupBucket`; created here on aws and
localstack): k3s's etcd snapshots, and the app's data, backed up from inside the cluster by
restic CronJobs (release.backup_objects) to the stack's repository, whose password is generated
here (blueprints.backup.storage) and exported as `backupPassword` beside `backupRepository`.
Without a bucket the plan says what to set, and nothing of the app is backed up.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pulumi
import pulumi_random as random
import pulumi_tls as tls
from pulumi_command import remote

from blueprints.backup.remote import Access
from blueprints.backup.storage import StackBackups, secret_key, stack_backups
from blueprints.dns import dns_records
from blueprints.release import channel
from blueprints.render.vm import DEPLOY_USER
from blueprints.rungs.k8s import release
from blueprints.rungs.k8s.backup_access import backup_access
from blueprints.rungs.k8s.bootstrap import (
    API_PORT,
    ETCD_SNAPSHOT_FOLDER,
    INSTALL_NODE_READY,
    NODE_READY,
    ClusterContext,
    K8sNode,
    Timing,
    etcd_s3_settings,
    node_ready_source,
    render_cloud_init,
)
from blueprints.rungs.k8s.marks import HOLDS_LABEL
from blueprints.rungs.k8s.rules import check_app
from blueprints.settings import StackSettings
from blueprints.single_vm import PUBLIC, check_release_channel, node_ip, ssh_networks
from blueprints.spec import AppSpec
from blueprints.targets import FirewallRule, make_target
from blueprints.targets.base import Server, ServerSpec, resource_labels

CONTROL_PLANES = 3
WORKERS = 3
# Cluster CAs live ten years, as the ones k3s makes itself; the admin certificate one year,
# renewed by the first `pulumi up` in its last month.
CA_HOURS = 10 * 365 * 24
ADMIN_HOURS = 365 * 24
ADMIN_RENEW_HOURS = 30 * 24
CA_USES = ["cert_signing", "crl_signing", "digital_signature", "key_encipherment"]
# pulumi-kubernetes waits for a rollout to finish (10 minutes by default); a Helm release for
# its resources to be ready (5 minutes by default, cert-manager's webhook takes a while).
ROLLOUT_TIMEOUT_MINUTES = 15
HELM_TIMEOUT_SECONDS = 900
# Set by every `pulumi up` and read back by the next one: the stack has founded its cluster, so a
# first control plane that reaches no peer must not found another (unless foundCluster says so).
FOUNDED_OUTPUT = "clusterFounded"
# A new server answers SSH before cloud-init is done; k3s-node-ready needs what it installs.
INSTALL_COMMAND = f"{channel.WAIT_FOR_CLOUD_INIT}sudo {INSTALL_NODE_READY}"


DRAIN_COMMAND = f"sudo {NODE_READY} --drain"


def ready_command(last: bool) -> str:
    """What `<prefix>-<node>-ready` runs: the last node also waits for the whole cluster."""
    return f"{channel.WAIT_FOR_CLOUD_INIT}sudo {NODE_READY}{' --cluster' if last else ''}"


def firewall_rules(app: AppSpec, settings: StackSettings, api_on_nodes: bool) -> list[FirewallRule]:
    """Inbound from outside the private network: SSH from the admin and deployer networks, and
    where the cloud's load balancer cannot filter sources, the API port on the control planes
    from those networks too (Pulumi sends the app there). Nothing else: web traffic reaches the
    nodes through the load balancer over the private network, and cluster traffic stays on it."""
    networks = tuple(ssh_networks(app, settings))
    if not networks:
        return []
    rules = [FirewallRule(22, networks, "ssh from admin and deployer networks")]
    if api_on_nodes:
        rules.append(
            FirewallRule(API_PORT, networks, "kubernetes api from admin and deployer networks")
        )
    return rules


def public_ports(app: AppSpec) -> list[int]:
    """Ports of the ingress load balancer: http, https and every published tcp port."""
    tcp = {p.published for _, svc in app.sorted_services() for p in svc.public_tcp_ports}
    return [80, 443, *sorted(tcp)]


def node_document(
    admin_keys: Sequence[str],
    token: str,
    ca: str,
    client_cert: str,
    client_key: str,
    pki: Mapping[str, str] | None,
    etcd_s3: Mapping[str, object] | None,
) -> str:
    """What k3s-node-ready reads on stdin (a secret: the token, the admin client key, the CA
    keys of a founding node and the snapshot bucket's secret key)."""
    return json.dumps(
        {
            "admin_keys": "".join(key.strip() + "\n" for key in admin_keys),
            "token": token,
            "ca": ca,
            "client_cert": client_cert,
            "client_key": client_key,
            "pki": dict(pki) if pki is not None else None,
            "etcd_s3": dict(etcd_s3) if etcd_s3 is not None else None,
        },
        sort_keys=True,
    )


def cluster_token(server_ca_pem: str, secret: str) -> str:
    """k3s's secure token: K10, the SHA-256 of the server CA bundle as the servers hand it out
    (/cacerts), and the secret: a joining node checks the CA it is shown against it."""
    digest = hashlib.sha256(server_ca_pem.encode()).hexdigest()
    return f"K10{digest}::server:{secret}"


def object_name(obj: Mapping[str, Any]) -> str:
    """A Pulumi resource name for a Kubernetes object: kind, namespace and name."""
    meta = obj["metadata"]
    where = f"{meta['namespace']}-" if meta.get("namespace") else ""
    return f"{obj['kind'].lower()}-{where}{meta['name']}"


def type_token(obj: Mapping[str, Any]) -> str:
    """pulumi-kubernetes' type token of an object: core objects are `core/v1`."""
    api = obj["apiVersion"]
    return f"kubernetes:{'core/v1' if api == 'v1' else api}:{obj['kind']}"


class KubeObject(pulumi.CustomResource):
    """One Kubernetes object, created and updated through the API by pulumi-kubernetes' provider.

    The generated classes (pulumi_kubernetes.apps.v1.Deployment and the like) send the same type
    token and properties; importing them costs over a second per run here (core.v1's input
    types alone 0.7 s, measured with -X importtime), which every plan would pay. The object is
    given as it will be stored (camelCase keys); a top-level value may be an Output."""

    def __init__(
        self,
        name: str,
        obj: Mapping[str, pulumi.Input[Any]],
        opts: pulumi.ResourceOptions,
    ):
        token = type_token(obj)
        if obj["kind"] == "Secret":
            opts = pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(additional_secret_outputs=["data", "stringData"])
            )
        super().__init__(token, name, dict(obj), opts)


class K8s(pulumi.ComponentResource):
    """Three k3s servers and three agents behind load balancers; the app through the API."""

    @staticmethod
    def check(app: AppSpec) -> list[tuple[tuple[str | int, ...], str]]:
        """Spec rules of this blueprint (beyond the spec's own), as (field path, message)."""
        return check_app(app)

    @staticmethod
    def check_settings(app: AppSpec, settings: StackSettings) -> list[str]:
        """Pulumi reaches the cluster from where `pulumi up` runs: the Kubernetes API for the
        app, SSH for each node's token. Refuse a stack whose firewall admits neither."""
        from blueprints.capacity import stack_problems

        return check_release_channel(
            app,
            settings,
            "the app is sent to the Kubernetes API (port 6443) and each node's token over SSH",
        ) + stack_problems(app, settings)

    @staticmethod
    def backup_access(app: AppSpec, outputs: Mapping[str, object]) -> Access:
        """Where `blueprints backup|backups|restore` run: k3s's kubectl on the first control
        plane, driving the backup CronJobs and one-off restic pods (backup_access.py)."""
        return backup_access(app, outputs)

    def __init__(
        self,
        name: str,
        app: AppSpec,
        settings: StackSettings,
        secrets: pulumi.Input[Mapping[str, str]],
        stack: str,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("blueprints:index:K8s", name, None, opts)
        target = make_target(settings, self)
        prefix = f"{app.name}-{stack}"
        labels = resource_labels(app.name, "k8s", stack)
        timing = Timing(
            node_monitor_grace_period=settings.node_monitor_grace_period,
            not_ready_toleration=settings.not_ready_toleration_seconds,
            unreachable_toleration=settings.unreachable_toleration_seconds,
        )
        # The app's data: restic CronJobs in the cluster (release.backup_objects), to the bucket
        # the etcd snapshots go to, created below whatever the spec says (make_bucket=False).
        backups = stack_backups(app, settings, stack, target, labels, self, make_bucket=False)

        # Cluster identity: protected like data, since replacing any of it orphans the cluster.
        keep = pulumi.ResourceOptions(parent=self, protect=settings.protect_data)
        child = pulumi.ResourceOptions(parent=self)
        token = random.RandomPassword(f"{prefix}-k3s-token", length=48, special=False, opts=keep)
        pki, admin_cert, admin_key = _pki(prefix, keep, child)
        deploy_key = channel.deploy_key(f"{prefix}-deploy-key", self)

        network = target.network(f"{prefix}-net", labels)
        api_on_nodes = not target.load_balancer_filters_sources
        cp_firewall = target.firewall(
            f"{prefix}-cp-fw", network, firewall_rules(app, settings, api_on_nodes), labels
        )
        worker_firewall = target.firewall(
            f"{prefix}-worker-fw", network, firewall_rules(app, settings, False), labels
        )
        placement = target.placement_group(f"{prefix}-spread", labels)
        key = target.ssh_key(f"{prefix}-deploy", [deploy_key.public_key_openssh], labels)

        nodes = tuple(
            [
                K8sNode(f"{prefix}-cp-{i + 1}", "server", node_ip(settings, i))
                for i in range(CONTROL_PLANES)
            ]
            + [
                K8sNode(f"{prefix}-worker-{i + 1}", "agent", node_ip(settings, CONTROL_PLANES + i))
                for i in range(WORKERS)
            ]
        )
        etcd_s3 = self._etcd_s3(settings)
        may_found = self._may_found(settings)
        bucket = (
            target.backup_bucket(f"{prefix}-backups", settings.backup_bucket, labels)
            if settings.backup_bucket is not None and settings.backup_endpoint is None
            else None
        )
        servers: dict[str, Server] = {}
        ready: list[remote.Command] = []
        for index, node in enumerate(nodes):
            first = index == 0
            # No secret in it (they arrive with the ready command), so not a secret: a preview
            # shows what a machine change changes in it.
            user_data = deploy_key.public_key_openssh.apply(
                lambda k, node=node: render_cloud_init(
                    ClusterContext(
                        cloud=target.name,
                        nodes=nodes,
                        timing=timing,
                        deploy_key=k.strip(),
                        k3s_version=settings.k3s_version,
                        app_namespace=app.name,
                    ),
                    node,
                )
            )
            role = "control-plane" if node.role == "server" else "worker"
            holds = _holds(node, target.name)
            server = target.server(
                ServerSpec(
                    name=node.name,
                    user_data=user_data,
                    private_ip=node.private_ip,
                    network=network,
                    firewall=cp_firewall if node.role == "server" else worker_firewall,
                    placement=placement,
                    ssh_key=key,
                    labels={**labels, "role": role, **({HOLDS_LABEL: holds} if holds else {})},
                    # One node at a time: created (or replaced) once the previous one is Ready.
                    after=tuple(ready[-1:]),
                )
            )
            servers[node.name] = server
            document = pulumi.Output.all(
                token.result,
                pki["server_ca_cert"],
                admin_cert.cert_pem,
                admin_key.private_key_pem,
                # The CAs only where a cluster may be founded: without them the first control
                # plane joins a peer or fails, never starts an empty cluster beside the real one.
                pulumi.Output.all(**pki) if first else None,
                may_found if first else False,
                etcd_s3 if node.role == "server" else None,
            ).apply(
                lambda v: node_document(
                    list(app.admin.ssh_keys),
                    cluster_token(v[1], v[0]),
                    v[1],
                    v[2],
                    v[3],
                    _pki_files(v[4]) if v[4] and v[5] else None,
                    v[6],
                )
            )
            connection = channel.connection(server.public_ip, deploy_key)
            script = remote.Command(
                f"{node.name}-ready-script",
                connection=connection,
                create=INSTALL_COMMAND,
                update=INSTALL_COMMAND,
                stdin=node_ready_source(),
                triggers=[server.id],
                add_previous_output_in_env=False,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[server.resource]),
            )
            command = ready_command(index == len(nodes) - 1)
            ready.append(
                remote.Command(
                    f"{node.name}-ready",
                    connection=connection,
                    create=command,
                    update=command,
                    # Run on the old machine before Pulumi deletes it (a replacement deletes
                    # this command first, the server is replaced delete-before-replace): cordon
                    # and evict its pods through the API, which honours disruption budgets.
                    delete=DRAIN_COMMAND,
                    stdin=pulumi.Output.secret(document),
                    # A new server is a new node: it gets its files and is waited for again.
                    triggers=[server.id],
                    add_previous_output_in_env=False,
                    opts=pulumi.ResourceOptions(
                        parent=self,
                        # k3s checks the snapshot bucket when it starts with etcd-s3.
                        depends_on=[
                            server.resource,
                            script,
                            *([bucket] if bucket is not None and node.role == "server" else []),
                        ],
                    ),
                )
            )
        control_planes = [servers[n.name] for n in nodes if n.role == "server"]
        workers = [servers[n.name] for n in nodes if n.role == "agent"]

        ports = public_ports(app)
        ingress = target.load_balancer(
            f"{prefix}-ingress",
            network,
            workers,
            ports,
            labels,
            sources={port: PUBLIC for port in ports},
        )
        if api_on_nodes:
            # No load balancer can keep the API to the admin networks here: kubectl and Pulumi
            # talk to the first control plane's public address, which the firewall admits from
            # the admin and deployer networks.
            api_host: pulumi.Output[str] = pulumi.Output.from_input(control_planes[0].public_ip)
        else:
            api = target.load_balancer(
                f"{prefix}-api",
                network,
                control_planes,
                [API_PORT],
                labels,
                sources={API_PORT: tuple(ssh_networks(app, settings))},
            )
            api_host = api.address
        api_url = api_host.apply(lambda host: f"https://{host}:{API_PORT}")
        kubeconfig = pulumi.Output.secret(
            pulumi.Output.all(
                api_url, pki["server_ca_cert"], admin_cert.cert_pem, admin_key.private_key_pem
            ).apply(lambda v: release.kubeconfig(prefix, v[0], v[1], v[2], v[3]))
        )
        self._release(
            app,
            prefix,
            settings,
            secrets,
            kubeconfig,
            deploy_key=deploy_key,
            network_id=network.id,
            cloud_token=target.cluster_api_token(),
            backups=backups,
            after=ready,
            stack=stack,
        )

        self.outputs: dict[str, pulumi.Input[object]] = {
            "url": f"https://{app.domain}",
            "kubeconfig": kubeconfig,
            "apiEndpoint": api_url,
            "ingressAddress": ingress.address,
            "dnsRecord": ingress.address.apply(lambda a: dns_records(app, a)),
            # cert-manager waits an hour and more after a failed issuance; the Ingress's
            # Certificate (named after its TLS secret), deleted, is made again and issued now.
            "retryCertificates": f"kubectl --namespace {app.name} delete certificate "
            f"{app.name}-tls",
            "controlPlaneIps": {
                n.name: servers[n.name].public_ip for n in nodes if n.role == "server"
            },
            "workerIps": {n.name: servers[n.name].public_ip for n in nodes if n.role == "agent"},
            "sshCommand": pulumi.Output.from_input(control_planes[0].public_ip).apply(
                lambda ip: f"ssh {DEPLOY_USER}@{ip}"
            ),
            "deployKey": pulumi.Output.secret(deploy_key.private_key_openssh),
            "k3sVersion": settings.k3s_version,
            FOUNDED_OUTPUT: True,
            "etcdSnapshots": (
                f"s3://{settings.backup_bucket}/{ETCD_SNAPSHOT_FOLDER}"
                if settings.backup_bucket
                else "on each control plane's disk only (set blueprints:backupBucket)"
            ),
            "failureTiming": {
                "nodeMonitorGracePeriodSeconds": timing.node_monitor_grace_period,
                "notReadyTolerationSeconds": timing.not_ready_toleration,
                "unreachableTolerationSeconds": timing.unreachable_toleration,
                "podEvictionAfterSeconds": timing.eviction_after,
            },
            # What a restore onto a new cluster needs: the repository and its password (secret).
            **(backups.outputs if backups is not None else {}),
        }
        self.register_outputs(self.outputs)

    def _may_found(self, settings: StackSettings) -> pulumi.Output[bool]:
        """Whether the first control plane may found a cluster: at the stack's first `pulumi up`
        (no earlier update left FOUNDED_OUTPUT), or when foundCluster says so."""
        if settings.found_cluster:
            return pulumi.Output.from_input(True)
        # The DIY backends' organization is "organization" (Pulumi's own default name).
        org = pulumi.get_organization() or "organization"
        me = f"{org}/{pulumi.get_project()}/{pulumi.get_stack()}"
        earlier = pulumi.StackReference(me, opts=pulumi.ResourceOptions(parent=self))
        return earlier.get_output(FOUNDED_OUTPUT).apply(lambda founded: not founded)

    @staticmethod
    def _etcd_s3(settings: StackSettings) -> pulumi.Output[dict[str, object]] | None:
        """k3s's etcd-s3 settings with the bucket's secret key (a secret), or None."""
        plain = etcd_s3_settings(settings, CONTROL_PLANES)
        if plain is None:
            return None
        return pulumi.Output.secret(
            secret_key().apply(lambda k: {**plain, "etcd-s3-secret-key": k})
        )

    def _release(
        self,
        app: AppSpec,
        prefix: str,
        settings: StackSettings,
        secrets: pulumi.Input[Mapping[str, str]],
        kubeconfig: pulumi.Output[str],
        *,
        deploy_key: tls.PrivateKey,
        network_id: pulumi.Input[str],
        cloud_token: pulumi.Output[str] | None,
        backups: StackBackups | None,
        after: list[remote.Command],
        stack: str,
    ) -> None:
        """Every Kubernetes object through the API, once the whole cluster is Ready: the
        add-ons (Helm releases, storage class, Traefik's redirect, the ACME issuer), then the
        app's namespace, Secrets and workloads, and its backups."""
        from pulumi_kubernetes import Provider
        from pulumi_kubernetes.helm.v3 import Release, RepositoryOptsArgs

        cloud = settings.cloud
        provider = Provider(
            f"{prefix}-kubernetes",
            kubeconfig=kubeconfig,
            # The API's address changes when the first control plane is replaced (hcloud): the
            # same cluster all along, so the provider is updated, never replaced (which would
            # replace every object it manages).
            cluster_identifier=prefix,
            # A changed Secret is updated in place (pulumi-kubernetes replaces it otherwise,
            # deleting it first since its name is fixed; provider/pkg/provider/diff.go).
            enable_secret_mutable=True,
            # The provider gives up on a cluster it cannot reach when it is configured: configure
            # it only once every node is ready (pulumi-kubernetes, provider.go, Configure).
            opts=pulumi.ResourceOptions(parent=self, depends_on=after),
        )

        def opts(*depends_on: pulumi.Resource, **extra: Any) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(
                parent=self, provider=provider, depends_on=[*after, *depends_on], **extra
            )

        done: dict[str, pulumi.Resource] = {}
        # Where the cloud's in-cluster controllers need its API token (Hetzner's).
        if cloud_token is not None:
            shape = release.hcloud_secret("", "")
            shape["stringData"] = pulumi.Output.secret(
                pulumi.Output.all(cloud_token, network_id).apply(
                    lambda v: release.hcloud_secret(v[0], str(v[1]))["stringData"]
                )
            )
            done[release.HCLOUD_SECRET] = self._object(prefix, shape, opts())
        for chart in release.charts(cloud):
            needs = [done[name] for name in chart.after]
            if release.HCLOUD_SECRET in done:
                needs.append(done[release.HCLOUD_SECRET])
            done[chart.name] = Release(
                f"{prefix}-helm-{chart.name}",
                name=chart.name,
                namespace=chart.namespace,
                create_namespace=True,
                chart=chart.chart,
                version=chart.version,
                repository_opts=RepositoryOptsArgs(repo=chart.repo),
                values=dict(chart.values),
                timeout=HELM_TIMEOUT_SECONDS,
                opts=opts(*needs),
            )
        storage = self._object(prefix, release.storage_class(cloud), opts())
        self._object(prefix, release.traefik_config(), opts())
        self._object(prefix, release.cluster_issuer(app), opts(done["cert-manager"]))

        # A service with secrets carries a keyed digest of their values in its pod template,
        # so a new value rolls its pods. The digest reveals nothing: the objects stay readable
        # in a preview (not secret).
        with_secrets = [name for name, _ in app.sorted_services() if release.has_secrets(app, name)]
        digests = pulumi.Output.all(deploy_key.private_key_openssh, secrets).apply(
            lambda v: {
                name: release.secrets_digest(v[0], app, name, dict(v[1] or {}))
                for name in with_secrets
            }
        )
        objects = release.app_objects(app, cloud)
        namespace = self._object(prefix, objects[0], opts(protect=settings.protect_data))
        values = pulumi.Output.from_input(secrets).apply(
            lambda s: {
                obj["metadata"]["name"]: obj["stringData"]
                for obj in release.secret_objects(app, dict(s or {}))
            }
        )
        sent: dict[tuple[str, str], KubeObject] = {}
        # The Secrets (a service's environment, its secret files, the registries' credentials),
        # their values Pulumi secrets; their shapes from placeholders.
        for obj in release.secret_objects(app, release.placeholders(app)):
            secret_name = obj["metadata"]["name"]
            obj["stringData"] = pulumi.Output.secret(values.apply(lambda v, n=secret_name: v[n]))
            sent[("Secret", secret_name)] = self._object(prefix, obj, opts(namespace))
        with_digests = pulumi.Output.unsecret(
            digests.apply(lambda d: release.app_objects(app, cloud, d))
        )
        rollout = pulumi.CustomTimeouts(
            create=f"{ROLLOUT_TIMEOUT_MINUTES}m", update=f"{ROLLOUT_TIMEOUT_MINUTES}m"
        )
        for note in release.volume_notes(app, stack, pulumi.get_project()):
            pulumi.log.info(note)
        # The tasks run one after another once what they need is there (the claims, the
        # services their services depend on, the network policies); every other workload (the
        # tasks' own services included) and the schedules wait for the last task: a failing
        # task fails the release before anything of it rolls. The network policies come first
        # (they are last in the rendered order).
        needed = release.before_tasks(app)
        own_claims = {release.claim_name(app, volume) for _, volume in release.own_claims(app)}
        early: list[pulumi.Resource] = []
        policies: list[pulumi.Resource] = []
        tasks: list[pulumi.Resource] = []
        order = sorted(range(1, len(objects)), key=lambda i: objects[i]["kind"] != "NetworkPolicy")
        for index in order:
            obj = objects[index]
            kind, name = obj["kind"], obj["metadata"]["name"]
            service = obj["metadata"].get("labels", {}).get(release.LABEL_NAME)
            needs: list[pulumi.Resource] = [namespace]
            needs += [sent[ref] for ref in release.references_of(obj) if ref in sent]
            shape: dict[str, pulumi.Input[Any]] = dict(obj)
            extra: dict[str, Any] = {}
            if kind in ("Deployment", "StatefulSet"):
                needs.append(storage)
                if service not in needed:
                    needs += tasks[-1:]
                if service in with_secrets:
                    shape["spec"] = with_digests.apply(lambda objs, i=index: objs[i]["spec"])
                extra["custom_timeouts"] = rollout
            elif kind == "Job":
                needs += [*policies, *early, *tasks[-1:]]
                if with_secrets:
                    # the release's secrets folded in: new values re-run the task
                    shape["spec"] = with_digests.apply(lambda objs, i=index: objs[i]["spec"])
                # Pulumi waits for the Job to complete; its deadline ends it before this does.
                limit = obj["spec"]["activeDeadlineSeconds"] // 60 + ROLLOUT_TIMEOUT_MINUTES
                extra["custom_timeouts"] = pulumi.CustomTimeouts(create=f"{limit}m")
            elif kind == "CronJob":
                needs += tasks[-1:]
            elif kind == "PersistentVolumeClaim":
                # A claim of its own (a shared volume's, or a volume whose service has tasks or
                # schedules), the app's data: never deleted or replaced by accident, and left in
                # the cluster if it leaves the program.
                needs.append(storage)
                extra["protect"] = settings.protect_data
                extra["retain_on_delete"] = True
                if name in own_claims:
                    # Imported from a running StatefulSet (release.volume_notes), it has the
                    # binding the cluster filled in, which is not a change.
                    extra["ignore_changes"] = ["spec.volumeName", "spec.volumeMode"]
            resource = self._object(prefix, shape, opts(*needs, **extra))
            sent[(kind, name)] = resource
            if kind == "NetworkPolicy":
                policies.append(resource)
            elif kind == "Job":
                tasks.append(resource)
            elif service in needed:
                early.append(resource)
        if backups is not None:
            self._backups(app, prefix, backups, lambda *needs: opts(namespace, *needs))

    def _backups(
        self,
        app: AppSpec,
        prefix: str,
        backups: StackBackups,
        opts: Callable[..., pulumi.ResourceOptions],
    ) -> None:
        """The backup CronJobs and what they read: the Secret with the repository, its password
        and the bucket's keys (a Pulumi secret), the script's ConfigMap, the exec accounts."""
        objects = release.backup_objects(app)
        if not objects:
            return
        storage = backups.storage
        shape = release.backup_secret(app, storage, "", "")
        shape["stringData"] = pulumi.Output.secret(
            pulumi.Output.all(backups.password, backups.secret_key).apply(
                lambda v: release.backup_secret(app, storage, v[0], v[1])["stringData"]
            )
        )
        secret = self._object(prefix, shape, opts())
        sent: dict[tuple[str, str], KubeObject] = {}
        for obj in objects:
            name = obj["metadata"]["name"]
            needs: list[pulumi.Resource] = []
            if obj["kind"] == "CronJob":
                # What its pods read and the account they exec with, before its first run.
                needs += [secret, sent[("ConfigMap", release.BACKUP_CONFIGMAP)]]
                needs += [sent[(kind, n)] for kind, n in sent if n == name]
            sent[(obj["kind"], name)] = self._object(prefix, obj, opts(*needs))

    def _object(
        self, prefix: str, obj: Mapping[str, pulumi.Input[Any]], opts: pulumi.ResourceOptions
    ) -> KubeObject:
        return KubeObject(f"{prefix}-{object_name(obj)}", obj, opts)


def _holds(node: K8sNode, cloud: str) -> str | None:
    """What a node holds that the cluster cannot rebuild by itself (HOLDS_LABEL)."""
    if node.role == "server":
        return "etcd"
    # e.g. k3s's local-path volumes: on the worker that first ran the pod.
    return "local-volumes" if release.STORAGE[cloud].node_local else None


def _pki_files(pki: Mapping[str, str]) -> dict[str, str]:
    """The CA files k3s adopts when it founds a cluster, relative to its TLS directory."""
    names = {
        "server_ca_cert": "server-ca.crt",
        "server_ca_key": "server-ca.key",
        "client_ca_cert": "client-ca.crt",
        "client_ca_key": "client-ca.key",
        "request_header_ca_cert": "request-header-ca.crt",
        "request_header_ca_key": "request-header-ca.key",
        "etcd_peer_ca_cert": "etcd/peer-ca.crt",
        "etcd_peer_ca_key": "etcd/peer-ca.key",
        "etcd_server_ca_cert": "etcd/server-ca.crt",
        "etcd_server_ca_key": "etcd/server-ca.key",
        "service_key": "service.key",
    }
    return {names[field]: pki[field] for field in sorted(names)}


def _pki(
    prefix: str, keep: pulumi.ResourceOptions, child: pulumi.ResourceOptions
) -> tuple[dict[str, pulumi.Output[str]], tls.LocallySignedCert, tls.PrivateKey]:
    """The CAs k3s would generate at first start, and an admin certificate from the client CA."""
    pki: dict[str, pulumi.Output[str]] = {}
    cas = {
        "server_ca": "k3s-server-ca",
        "client_ca": "k3s-client-ca",
        "request_header_ca": "k3s-request-header-ca",
        "etcd_peer_ca": "etcd-peer-ca",
        "etcd_server_ca": "etcd-server-ca",
    }
    for field, common_name in cas.items():
        res = f"{prefix}-{field.replace('_', '-')}"
        key = tls.PrivateKey(f"{res}-key", algorithm="ECDSA", ecdsa_curve="P256", opts=keep)
        cert = tls.SelfSignedCert(
            res,
            private_key_pem=key.private_key_pem,
            is_ca_certificate=True,
            validity_period_hours=CA_HOURS,
            allowed_uses=CA_USES,
            subject=tls.SelfSignedCertSubjectArgs(common_name=common_name),
            opts=keep,
        )
        pki[f"{field}_cert"] = cert.cert_pem
        pki[f"{field}_key"] = pulumi.Output.secret(key.private_key_pem)
    service = tls.PrivateKey(
        f"{prefix}-service-account-key", algorithm="RSA", rsa_bits=2048, opts=keep
    )
    pki["service_key"] = pulumi.Output.secret(service.private_key_pem)

    admin_key = tls.PrivateKey(
        f"{prefix}-admin-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child
    )
    request = tls.CertRequest(
        f"{prefix}-admin",
        private_key_pem=admin_key.private_key_pem,
        # Kubernetes maps O to groups: system:masters is cluster-admin.
        subject=tls.CertRequestSubjectArgs(
            common_name="blueprints-admin", organization="system:masters"
        ),
        opts=child,
    )
    admin_cert = tls.LocallySignedCert(
        f"{prefix}-admin",
        cert_request_pem=request.cert_request_pem,
        ca_cert_pem=pki["client_ca_cert"],
        ca_private_key_pem=pki["client_ca_key"],
        validity_period_hours=ADMIN_HOURS,
        early_renewal_hours=ADMIN_RENEW_HOURS,
        allowed_uses=["client_auth", "digital_signature", "key_encipherment"],
        opts=child,
    )
    return pki, admin_cert, admin_key
