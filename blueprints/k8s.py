"""k8s: six VMs running k3s. Three control planes (embedded etcd) and three workers on the
private network in one spread placement group, a load balancer for 80/443 (and the spec's tcp
ports) to the workers, and the Kubernetes API for the admin networks only.

The cluster's certificate authorities, the join token and an admin client certificate are
generated here (pulumi-tls, pulumi-random) and kept in Pulumi's state as secrets, so the
kubeconfig is a stack output without asking the cluster for anything.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

import pulumi
import pulumi_random as random
import pulumi_tls as tls

from blueprints.render import k8s as render
from blueprints.settings import StackSettings
from blueprints.single_vm import PUBLIC, node_ip
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


def firewall_rules(app: AppSpec, api_on_nodes: bool) -> list[FirewallRule]:
    """Inbound from outside the private network: SSH from the admin networks, and where the
    cloud's load balancer cannot filter sources, the API port on the control planes from the
    admin networks too. Nothing else: web traffic reaches the nodes through the load balancer
    over the private network, and cluster traffic stays on it."""
    if not app.admin.cidrs:
        return []
    admins = tuple(app.admin.cidrs)
    rules = [FirewallRule(22, admins, "ssh from admin networks")]
    if api_on_nodes:
        rules.append(FirewallRule(render.API_PORT, admins, "kubernetes api from admin networks"))
    return rules


def public_ports(app: AppSpec) -> list[int]:
    """Ports of the ingress load balancer: http, https and every published tcp port."""
    tcp = {p.published for _, svc in app.sorted_services() for p in svc.public_tcp_ports}
    return [80, 443, *sorted(tcp)]


class K8s(pulumi.ComponentResource):
    """Three k3s servers and three agents behind load balancers, the app deployed by k3s."""

    @staticmethod
    def check(app: AppSpec) -> list[tuple[tuple[str | int, ...], str]]:
        """Spec rules of this blueprint (beyond the spec's own), as (field path, message)."""
        return render.check_app(app)

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
        timing = render.Timing(
            node_monitor_grace_period=settings.node_monitor_grace_period,
            not_ready_toleration=settings.not_ready_toleration_seconds,
            unreachable_toleration=settings.unreachable_toleration_seconds,
        )
        if app.backups.enabled:
            pulumi.log.warn(
                "the spec asks for backups; the k8s blueprint takes none of the app's volumes "
                "yet: back them up from inside the cluster (k3s snapshots etcd every 12 hours "
                "to /var/lib/rancher/k3s/server/db/snapshots on each control plane)"
            )

        # Cluster identity: protected like data, since replacing any of it orphans the cluster.
        keep = pulumi.ResourceOptions(parent=self, protect=settings.protect_data)
        token = random.RandomPassword(f"{prefix}-k3s-token", length=48, special=False, opts=keep)
        pki, admin_cert, admin_key = _pki(prefix, keep, pulumi.ResourceOptions(parent=self))

        network = target.network(f"{prefix}-net", labels)
        api_on_nodes = not target.load_balancer_filters_sources
        cp_firewall = target.firewall(
            f"{prefix}-cp-fw", network, firewall_rules(app, api_on_nodes), labels
        )
        worker_firewall = target.firewall(
            f"{prefix}-worker-fw", network, firewall_rules(app, False), labels
        )
        placement = target.placement_group(f"{prefix}-spread", labels)
        key = target.ssh_key(f"{prefix}-admin", list(app.admin.ssh_keys), labels)

        nodes = [
            render.K8sNode(f"{prefix}-cp-{i + 1}", "server", node_ip(settings, i))
            for i in range(CONTROL_PLANES)
        ] + [
            render.K8sNode(
                f"{prefix}-worker-{i + 1}", "agent", node_ip(settings, CONTROL_PLANES + i)
            )
            for i in range(WORKERS)
        ]
        server_ips = tuple(n.private_ip for n in nodes if n.role == "server")
        cloud_token = target.cluster_api_token()
        # The renderer keeps a table of per-cloud cluster add-ons (storage, cloud controllers).
        cloud = target.name

        servers: dict[str, Server] = {}
        for node in nodes:
            first = node.private_ip == server_ips[0]
            inputs = {
                "token": token.result,
                "secrets": secrets if first else {},
                "pki": pki if first else None,
                "cloud_token": cloud_token,
                "network_id": network.id,
            }
            user_data = pulumi.Output.secret(
                pulumi.Output.all(**inputs).apply(
                    lambda v, node=node: render.render_cloud_init(
                        render.ClusterContext(
                            app=app,
                            cloud=cloud,
                            server_ips=server_ips,
                            token=v["token"],
                            timing=timing,
                            secrets=dict(v["secrets"] or {}),
                            pki=render.K3sPki(**v["pki"]) if v["pki"] else None,
                            cloud_token=v["cloud_token"],
                            network_id=str(v["network_id"]),
                        ),
                        node,
                    )
                )
            )
            role = "control-plane" if node.role == "server" else "worker"
            servers[node.name] = target.server(
                ServerSpec(
                    name=node.name,
                    user_data=user_data,
                    private_ip=node.private_ip,
                    network=network,
                    firewall=cp_firewall if node.role == "server" else worker_firewall,
                    placement=placement,
                    ssh_key=key,
                    labels={**labels, "role": role},
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
            # No load balancer can keep the API to the admin networks here: kubectl talks to a
            # control plane's public address, which the firewall admits from those networks.
            api_host: pulumi.Output[str] = control_planes[0].public_ip
        else:
            api = target.load_balancer(
                f"{prefix}-api",
                network,
                control_planes,
                [render.API_PORT],
                labels,
                sources={render.API_PORT: tuple(app.admin.cidrs)},
            )
            api_host = api.address
        api_url = api_host.apply(lambda host: f"https://{host}:{render.API_PORT}")
        kubeconfig = pulumi.Output.all(
            api_url, pki["server_ca_cert"], admin_cert.cert_pem, admin_key.private_key_pem
        ).apply(lambda v: render.kubeconfig(prefix, v[0], v[1], v[2], v[3]))

        self.outputs: dict[str, pulumi.Input[object]] = {
            "url": f"https://{app.domain}",
            "kubeconfig": pulumi.Output.secret(kubeconfig),
            "apiEndpoint": api_url,
            "ingressAddress": ingress.address,
            "dnsRecord": ingress.address.apply(lambda a: _dns_record(app.domain, a)),
            "controlPlaneIps": {
                n.name: servers[n.name].public_ip for n in nodes if n.role == "server"
            },
            "workerIps": {n.name: servers[n.name].public_ip for n in nodes if n.role == "agent"},
            "sshCommand": control_planes[0].public_ip.apply(lambda ip: f"ssh deploy@{ip}"),
            "k3sVersion": render.K3S_VERSION,
            "failureTiming": {
                "nodeMonitorGracePeriodSeconds": timing.node_monitor_grace_period,
                "notReadyTolerationSeconds": timing.not_ready_toleration,
                "unreachableTolerationSeconds": timing.unreachable_toleration,
                "podEvictionAfterSeconds": timing.eviction_after,
            },
        }
        self.register_outputs(self.outputs)


def _dns_record(domain: str, address: str) -> str:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return f"{domain}. CNAME {address}."
    return f"{domain}. A {address}"


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
