"""nomad: a three-node Nomad cluster (each node a server and a client) behind a load balancer.

The nodes share a private network and a spread placement group; Nomad's RPC and gossip stay on
that network, its HTTP API is open to the admin networks only, and 80/443 reach the nodes only
through the load balancer. ACLs, gossip encryption and TLS are on: the management token, the
gossip key and a private CA with one certificate per node are generated here as secrets. The
cloud data volume is attached to the first node, which runs the stateful groups and the ingress.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

import pulumi
import pulumi_random as random
import pulumi_tls as tls

from blueprints.render.nomad import (
    DATA_NODE,
    NODE_COUNT,
    NODE_NAMES,
    NOMAD_HTTP,
    REGION,
    NomadNode,
    Timing,
    check_nomad,
    render_cloud_init,
    unenforced_health,
)
from blueprints.settings import StackSettings
from blueprints.single_vm import PUBLIC, node_ip
from blueprints.spec import AppSpec
from blueprints.targets import FirewallRule, make_target
from blueprints.targets.base import Server, ServerSpec, resource_labels

# Certificates of the cluster's private CA: ten years for the CA, five for the nodes (renewed by
# replacing the certificate resource, which replaces the nodes).
CA_HOURS = 10 * 365 * 24
NODE_CERT_HOURS = 5 * 365 * 24


def firewall_rules(app: AppSpec) -> list[FirewallRule]:
    """Public inbound allowances of a node: SSH and Nomad's HTTP API from the admin networks
    only (no rule at all without them). 80/443 and published tcp ports arrive through the load
    balancer from its private address; RPC and Serf never leave the private network."""
    rules = []
    if app.admin.cidrs:
        admins = tuple(app.admin.cidrs)
        rules.append(FirewallRule(22, admins, "ssh from admin networks"))
        rules.append(FirewallRule(NOMAD_HTTP, admins, "Nomad API and UI from admin networks"))
    return rules


def balanced_ports(app: AppSpec) -> list[int]:
    """Ports the load balancer forwards to the nodes: the ingress, and every published tcp port."""
    tcp = {p.published for _, svc in app.sorted_services() for p in svc.public_tcp_ports}
    return sorted({80, 443} | tcp)


def _secret(resource: pulumi.CustomResource, attribute: str) -> pulumi.Output[str]:
    return pulumi.Output.secret(getattr(resource, attribute))


class Nomad(pulumi.ComponentResource):
    """Three Nomad servers+clients, a load balancer in front, the data volume on node-1."""

    @staticmethod
    def check(app: AppSpec) -> list[tuple[tuple[str | int, ...], str]]:
        """Spec rules of this blueprint (beyond the spec's own), as (field path, message)."""
        return check_nomad(app)

    def __init__(
        self,
        name: str,
        app: AppSpec,
        settings: StackSettings,
        secrets: pulumi.Input[Mapping[str, str]],
        stack: str,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("blueprints:index:Nomad", name, None, opts)
        target = make_target(settings, self)
        prefix = f"{app.name}-{stack}"
        labels = resource_labels(app.name, "nomad", stack)
        for note in unenforced_health(app):
            pulumi.log.warn(note)
        if app.backups.enabled:
            pulumi.log.warn(
                "the spec asks for backups; the nomad blueprint takes none yet: back up "
                "/srv/data on node-1 yourself"
            )

        child = pulumi.ResourceOptions(parent=self)
        # The management token: applied by `nomad acl bootstrap` on node-1, exported as a secret.
        token = random.RandomUuid(
            f"{prefix}-acl-bootstrap", opts=pulumi.ResourceOptions.merge(child, _secret_result())
        )
        gossip = random.RandomBytes(f"{prefix}-gossip", length=32, opts=child)
        ca_key = tls.PrivateKey(
            f"{prefix}-ca-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child
        )
        ca = tls.SelfSignedCert(
            f"{prefix}-ca",
            private_key_pem=ca_key.private_key_pem,
            is_ca_certificate=True,
            validity_period_hours=CA_HOURS,
            allowed_uses=["cert_signing", "crl_signing", "digital_signature"],
            subject=tls.SelfSignedCertSubjectArgs(common_name=f"{app.name} Nomad CA"),
            opts=child,
        )

        network = target.network(f"{prefix}-net", labels)
        firewall = target.firewall(f"{prefix}-fw", network, firewall_rules(app), labels)
        placement = target.placement_group(f"{prefix}-spread", labels)
        key = target.ssh_key(f"{prefix}-admin", list(app.admin.ssh_keys), labels)
        volume = target.volume(f"{prefix}-data", app.data_size_gb, labels)

        ips = tuple(node_ip(settings, i) for i in range(NODE_COUNT))
        timing = Timing.from_settings(settings)
        servers: list[Server] = []
        for index, node in enumerate(NODE_NAMES):
            node_key = tls.PrivateKey(
                f"{prefix}-{node}-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child
            )
            request = tls.CertRequest(
                f"{prefix}-{node}-csr",
                private_key_pem=node_key.private_key_pem,
                # Nomad checks these names (verify_server_hostname); the CLI on the node and the
                # ingress connect to 127.0.0.1 and the private address.
                dns_names=[f"server.{REGION}.nomad", f"client.{REGION}.nomad", "localhost"],
                ip_addresses=["127.0.0.1", ips[index]],
                subject=tls.CertRequestSubjectArgs(common_name=f"server.{REGION}.nomad"),
                opts=child,
            )
            cert = tls.LocallySignedCert(
                f"{prefix}-{node}-cert",
                cert_request_pem=request.cert_request_pem,
                ca_private_key_pem=ca_key.private_key_pem,
                ca_cert_pem=ca.cert_pem,
                validity_period_hours=NODE_CERT_HOURS,
                allowed_uses=[
                    "digital_signature",
                    "key_encipherment",
                    "server_auth",
                    "client_auth",
                ],
                opts=child,
            )
            user_data = pulumi.Output.secret(
                pulumi.Output.all(
                    volume.device_path,
                    ca.cert_pem,
                    cert.cert_pem,
                    _secret(node_key, "private_key_pem"),
                    _secret(gossip, "base64"),
                    _secret(token, "result"),
                    secrets,
                ).apply(
                    lambda values, i=index: _user_data(
                        app, values, index=i, ips=ips, settings=settings, timing=timing
                    )
                )
            )
            servers.append(
                target.server(
                    ServerSpec(
                        name=f"{prefix}-{node}",
                        user_data=user_data,
                        private_ip=ips[index],
                        network=network,
                        firewall=firewall,
                        placement=placement,
                        ssh_key=key,
                        labels={**labels, "node": node},
                    )
                )
            )

        target.attach_volume(f"{prefix}-data-attachment", volume, servers[DATA_NODE])
        ports = balanced_ports(app)
        lb = target.load_balancer(
            f"{prefix}-lb",
            network,
            servers,
            ports,
            labels,
            # Everyone may connect; the nodes then see the balancer's private address, so their
            # firewalls need no public rule for these ports.
            sources={port: PUBLIC for port in ports},
        )

        data_ip = servers[DATA_NODE].public_ip
        self.outputs: dict[str, pulumi.Input[object]] = {
            "url": f"https://{app.domain}",
            "loadBalancer": lb.address,
            "dnsRecord": lb.address.apply(lambda a: _dns_record(app.domain, a)),
            "serverIps": {node: s.public_ip for node, s in zip(NODE_NAMES, servers, strict=True)},
            "dataNode": NODE_NAMES[DATA_NODE],
            "nomadAddress": data_ip.apply(lambda ip: f"https://{ip}:{NOMAD_HTTP}"),
            "nomadTunnel": data_ip.apply(
                lambda ip: f"ssh -N -L {NOMAD_HTTP}:127.0.0.1:{NOMAD_HTTP} deploy@{ip}"
            ),
            # Public: clients verify the cluster's certificates with it (NOMAD_CACERT).
            "nomadCaCert": ca.cert_pem,
            "nomadToken": _secret(token, "result"),
        }
        self.register_outputs(self.outputs)


def _secret_result() -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions(additional_secret_outputs=["result"])


def _dns_record(domain: str, address: str) -> str:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return f"{domain}. CNAME {address}."
    return f"{domain}. A {address}"


def _user_data(
    app: AppSpec,
    values: list,
    *,
    index: int,
    ips: tuple[str, ...],
    settings: StackSettings,
    timing: Timing,
) -> str:
    device, ca_pem, cert_pem, key_pem, gossip_key, token, secrets = values
    return render_cloud_init(
        NomadNode(
            app=app,
            index=index,
            node_ips=ips,
            subnet_cidr=settings.subnet_cidr,
            data_device=device,
            ca_pem=ca_pem,
            cert_pem=cert_pem,
            key_pem=key_pem,
            gossip_key=gossip_key,
            bootstrap_token=token,
            nomad_version=settings.nomad_version,
            timing=timing,
            secrets=dict(secrets or {}),
        )
    )
