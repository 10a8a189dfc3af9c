"""nomad: a three-node Nomad cluster (each node a server and a client) behind a load balancer.

The nodes share a private network and a spread placement group; Nomad's RPC and gossip stay on
that network, SSH and Nomad's HTTP API are open to the admin and deployer networks only, and
80/443 reach the nodes only through the load balancer. ACLs, gossip encryption and TLS are on:
the management token, the gossip key and a private CA with one certificate per node are
generated here as secrets. The cloud data volume is attached to the first node, which runs the
stateful services and the ingress.

Machines and releases are apart (principle 9):
- a node's user data is its bootstrap (bootstrap.py) and depends on machine settings only;
- each node is followed by `<prefix>-<node>-ready`, a command over SSH that hands the node its
  TLS files and the admins' keys and waits until it has (re)joined the cluster; the next node
  depends on it, so nodes that must be replaced are replaced one after another, each rejoined
  and healthy before the next goes;
- the app is one Nomad job per service plus the ingress job and a Variable per service with
  secrets, sent through Nomad's API (pulumi-nomad), so a release is a Nomad deployment and
  `pulumi up` fails, naming the job, when a deployment fails (Nomad then reverts it);
- backups (when the spec asks for them and the stack sets a bucket, see
  blueprints.backup.storage): two periodic jobs on the data node, `<app>-backup` and
  `<app>-backup-check`, each with a Variable holding the repository password (generated here)
  and the bucket's keys; the stack exports backupRepository and backupPassword for a restore.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping

import pulumi
import pulumi_nomad as nomad
import pulumi_random as random
import pulumi_tls as tls
from pulumi_command import remote

from blueprints.backup.node_files import PASSWORD_VALUE, SECRET_KEY_VALUE
from blueprints.backup.remote import Access
from blueprints.backup.storage import StackBackups, stack_backups
from blueprints.dns import dns_records
from blueprints.release import channel
from blueprints.render.vm import DEPLOY_USER
from blueprints.rungs.nomad.backup_access import backup_access
from blueprints.rungs.nomad.bootstrap import (
    DATA_NODE,
    INSTALL_NODE_READY,
    NODE_NAMES,
    NODE_READY,
    REGION,
    NomadNode,
    node_ready_source,
    render_cloud_init,
)
from blueprints.rungs.nomad.release import (
    DEPLOY_TIMEOUT_MINUTES,
    INGRESS_JOB,
    Timing,
    backup_variable_path,
    backup_variables,
    before_tasks,
    has_secrets,
    job_name,
    render_backup_jobs,
    render_ingress_job,
    render_jobs,
    render_run_jobs,
    run_services,
    run_variable_path,
    secrets_digest,
    variable_path,
    variables,
)
from blueprints.rungs.nomad.rules import (
    NODE_COUNT,
    NOMAD_HTTP,
    check_nomad,
    registry_note,
    schedule_job_name,
    task_job_name,
    unenforced_health,
)
from blueprints.rungs.nomad.tasks import MARGIN_SECONDS, run_command
from blueprints.settings import StackSettings
from blueprints.single_vm import PUBLIC, check_release_channel, node_ip, ssh_networks
from blueprints.spec import AppSpec
from blueprints.targets import FirewallRule, make_target
from blueprints.targets.base import Server, ServerSpec, resource_labels

# Certificates of the cluster's private CA: ten years for the CA, five for the nodes (renewed by
# replacing the certificate resource; the new one reaches the node over SSH, in place).
CA_HOURS = 10 * 365 * 24
NODE_CERT_HOURS = 5 * 365 * 24


def firewall_rules(app: AppSpec, settings: StackSettings) -> list[FirewallRule]:
    """Public inbound allowances of a node: SSH and Nomad's HTTP API from the admin and deployer
    networks only (no rule at all without them). 80/443 and published tcp ports arrive through
    the load balancer from its private address; RPC and Serf never leave the private network."""
    networks = tuple(ssh_networks(app, settings))
    if not networks:
        return []
    return [
        FirewallRule(22, networks, "ssh from admin and deployer networks"),
        FirewallRule(NOMAD_HTTP, networks, "Nomad API from admin and deployer networks"),
    ]


def balanced_ports(app: AppSpec) -> list[int]:
    """Ports the load balancer forwards to the nodes: the ingress, and every published tcp port."""
    tcp = {p.published for _, svc in app.sorted_services() for p in svc.public_tcp_ports}
    return sorted({80, 443} | tcp)


# A new server answers SSH before cloud-init is done; nomad-node-ready needs what it installs.
INSTALL_COMMAND = f"{channel.WAIT_FOR_CLOUD_INIT}sudo {INSTALL_NODE_READY}"


def ready_command(index: int) -> str:
    """What `<prefix>-<node>-ready` runs: the last node also waits for the whole cluster."""
    flag = " --cluster" if index == NODE_COUNT - 1 else ""
    return f"{channel.WAIT_FOR_CLOUD_INIT}sudo {NODE_READY}{flag}"


def node_document(
    admin_keys: list[str], ca_pem: str, cert_pem: str, key_pem: str, gossip_key: str, token: str
) -> str:
    """What nomad-node-ready reads on stdin (a secret: the node's private key, the gossip key
    and the management token)."""
    keys = "".join(key.strip() + "\n" for key in admin_keys)
    document = {
        "admin_keys": keys,
        "ca": ca_pem,
        "cert": cert_pem,
        "gossip_key": gossip_key,
        "key": key_pem,
        "token": token,
    }
    return json.dumps(document, sort_keys=True)


def _secret(resource: pulumi.CustomResource, attribute: str) -> pulumi.Output[str]:
    return pulumi.Output.secret(getattr(resource, attribute))


class Nomad(pulumi.ComponentResource):
    """Three Nomad servers+clients, a load balancer in front, the data volume on node-1."""

    @staticmethod
    def check(app: AppSpec) -> list[tuple[tuple[str | int, ...], str]]:
        """Spec rules of this blueprint (beyond the spec's own), as (field path, message)."""
        return check_nomad(app)

    @staticmethod
    def backup_access(app: AppSpec, outputs: Mapping[str, object]) -> Access:
        """Where `blueprints backup|backups|restore` run: the data node, against Nomad's API
        there (backup_access.py)."""
        return backup_access(app, outputs)

    @staticmethod
    def check_settings(app: AppSpec, settings: StackSettings) -> list[str]:
        """The release reaches the cluster from where `pulumi up` runs: Nomad's API for the app,
        SSH for each node's files. Refuse a stack whose firewall admits neither."""
        from blueprints.capacity import stack_problems

        return check_release_channel(
            app,
            settings,
            "the app is sent to Nomad's API (port 4646) and each node's TLS files over SSH",
        ) + stack_problems(app, settings)

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
        registries = registry_note(app)
        if registries is not None:
            pulumi.log.warn(registries)
        for volume, users in app.shared_volumes().items():
            pulumi.log.info(
                f"services {', '.join(users)} share volume {volume}, so they run on one node: "
                "the data node, which holds every volume"
            )
        # None (with a warning saying why and what to set) without backups or a bucket.
        backups = stack_backups(app, settings, stack, target, labels, self)

        child = pulumi.ResourceOptions(parent=self)
        # The management token: applied by the ACL bootstrap on node-1, exported as a secret.
        token = random.RandomUuid(
            f"{prefix}-acl-bootstrap",
            opts=pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(additional_secret_outputs=["result"])
            ),
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
        deploy_key = channel.deploy_key(f"{prefix}-deploy-key", self)

        network = target.network(f"{prefix}-net", labels)
        firewall = target.firewall(f"{prefix}-fw", network, firewall_rules(app, settings), labels)
        placement = target.placement_group(f"{prefix}-spread", labels)
        key = target.ssh_key(f"{prefix}-deploy", [deploy_key.public_key_openssh], labels)
        volume = target.volume(f"{prefix}-data", app.data_size_gb, labels)

        ips = tuple(node_ip(settings, i) for i in range(NODE_COUNT))
        timing = Timing.from_settings(settings)
        servers: list[Server] = []
        ready: list[remote.Command] = []
        for index, node in enumerate(NODE_NAMES):
            data_node = index == DATA_NODE
            # No secret in it (the secrets arrive with the ready command), so not a secret: a
            # preview shows what a machine change changes in it.
            user_data = pulumi.Output.all(
                volume.device_path if data_node else "", deploy_key.public_key_openssh
            ).apply(
                lambda values, i=index: _user_data(
                    app, values, index=i, ips=ips, settings=settings, timing=timing
                )
            )
            server = target.server(
                ServerSpec(
                    name=f"{prefix}-{node}",
                    user_data=user_data,
                    private_ip=ips[index],
                    network=network,
                    firewall=firewall,
                    placement=placement,
                    ssh_key=key,
                    labels={**labels, "node": node},
                    # One node at a time: this one is created (or replaced) only once the
                    # previous one has rejoined the cluster.
                    after=tuple(ready[-1:]),
                )
            )
            servers.append(server)
            before_ready: list[pulumi.Resource] = [server.resource]
            if data_node:
                before_ready.append(
                    target.attach_volume(f"{prefix}-data-attachment", volume, server)
                )
            node_key = tls.PrivateKey(
                f"{prefix}-{node}-key", algorithm="ECDSA", ecdsa_curve="P256", opts=child
            )
            request = tls.CertRequest(
                f"{prefix}-{node}-csr",
                private_key_pem=node_key.private_key_pem,
                # Nomad checks these names (verify_server_hostname); the CLI on the node uses
                # 127.0.0.1, the other nodes the private address, Pulumi the public one.
                dns_names=[f"server.{REGION}.nomad", f"client.{REGION}.nomad", "localhost"],
                ip_addresses=[
                    "127.0.0.1",
                    ips[index],
                    pulumi.Output.from_input(server.public_ip),
                ],
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
            document = pulumi.Output.all(
                ca.cert_pem,
                cert.cert_pem,
                _secret(node_key, "private_key_pem"),
                _secret(gossip, "base64"),
                _secret(token, "result"),
            ).apply(lambda v: node_document(list(app.admin.ssh_keys), *v))
            connection = channel.connection(server.public_ip, deploy_key)
            # The script first (it is not in the user data, so a newer one is no new machine).
            script = remote.Command(
                f"{prefix}-{node}-ready-script",
                connection=connection,
                create=INSTALL_COMMAND,
                update=INSTALL_COMMAND,
                stdin=node_ready_source(),
                triggers=[server.id],
                add_previous_output_in_env=False,
                opts=pulumi.ResourceOptions(parent=self, depends_on=before_ready),
            )
            command = ready_command(index)
            ready.append(
                remote.Command(
                    f"{prefix}-{node}-ready",
                    connection=connection,
                    create=command,
                    update=command,
                    stdin=pulumi.Output.secret(document),
                    # A new server is a new node: it gets its files and is waited for again.
                    triggers=[server.id],
                    add_previous_output_in_env=False,
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[*before_ready, script]),
                )
            )

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
        address = pulumi.Output.from_input(data_ip).apply(lambda ip: f"https://{ip}:{NOMAD_HTTP}")
        self._release(
            app,
            prefix,
            secrets,
            timing,
            ca,
            token,
            address,
            deploy_key=deploy_key,
            after=ready,
            backups=backups,
            data_node=channel.connection(servers[DATA_NODE].public_ip, deploy_key),
        )

        self.outputs: dict[str, pulumi.Input[object]] = {
            "url": f"https://{app.domain}",
            "loadBalancer": lb.address,
            "dnsRecord": lb.address.apply(lambda a: dns_records(app, a)),
            # Traefik asks again for a missing certificate only when its routes change or it
            # restarts: this restarts it (with NOMAD_ADDR, NOMAD_CACERT and NOMAD_TOKEN set).
            "retryCertificates": f"nomad job restart -yes {INGRESS_JOB}",
            "serverIps": {node: s.public_ip for node, s in zip(NODE_NAMES, servers, strict=True)},
            "dataNode": NODE_NAMES[DATA_NODE],
            "nomadAddress": address,
            "nomadTunnel": pulumi.Output.from_input(data_ip).apply(
                lambda ip: f"ssh -N -L {NOMAD_HTTP}:127.0.0.1:{NOMAD_HTTP} {DEPLOY_USER}@{ip}"
            ),
            # Public: clients verify the cluster's certificates with it (NOMAD_CACERT).
            "nomadCaCert": ca.cert_pem,
            "nomadToken": _secret(token, "result"),
            "deployKey": pulumi.Output.secret(deploy_key.private_key_openssh),
            # What a restore onto new servers needs: the repository and its password (secret).
            **(backups.outputs if backups is not None else {}),
        }
        self.register_outputs(self.outputs)

    def _release(
        self,
        app: AppSpec,
        prefix: str,
        secrets: pulumi.Input[Mapping[str, str]],
        timing: Timing,
        ca: tls.SelfSignedCert,
        token: random.RandomUuid,
        address: pulumi.Output[str],
        *,
        deploy_key: tls.PrivateKey,
        after: list[remote.Command],
        backups: StackBackups | None,
        data_node: pulumi.Input[remote.ConnectionArgs],
    ) -> None:
        """The app through Nomad's API: a Variable per service with secrets, the ingress job,
        then one job per service, each after the jobs of the services it depends on; with
        backups, a Variable and a periodic job each for the backup and its weekly check.

        Tasks: a parameterized batch job each, and a run per release (`<prefix>-task-<name>`,
        tasks.py: dispatched and followed on the data node over SSH, failing `pulumi up` when
        the run fails), in the order written, after the jobs of what their services depend on;
        every other service's job waits for the last run. Schedules: a periodic batch job each,
        registered after the tasks ran. Each task and schedule has a Variable of its own (a copy
        of its service's)."""
        provider = nomad.Provider(
            f"{prefix}-nomad",
            address=address,
            ca_pem=ca.cert_pem,
            secret_id=_secret(token, "result"),
            region=REGION,
            opts=pulumi.ResourceOptions(parent=self),
        )

        def opts(depends_on: list[pulumi.Resource]) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(
                parent=self,
                provider=provider,
                depends_on=[*after, *depends_on],
                # The provider waits 5 minutes by default; a rolling deployment may take longer.
                custom_timeouts=pulumi.CustomTimeouts(
                    create=f"{DEPLOY_TIMEOUT_MINUTES}m", update=f"{DEPLOY_TIMEOUT_MINUTES}m"
                ),
            )

        items = pulumi.Output.from_input(secrets).apply(lambda s: variables(app, dict(s or {})))
        stored: dict[str, nomad.Variable] = {}
        for name, _ in app.sorted_services():
            if has_secrets(app, name):
                path = variable_path(app, name)
                stored[name] = nomad.Variable(
                    f"{prefix}-secrets-{name}",
                    path=path,
                    items=pulumi.Output.secret(items.apply(lambda v, p=path: v[p])),
                    opts=opts([]),
                )
        services_of = run_services(app)
        run_stored: dict[str, nomad.Variable] = {}
        for job, service in services_of.items():
            if service in stored:
                path = run_variable_path(job)
                run_stored[job] = nomad.Variable(
                    f"{prefix}-secrets-{job.removeprefix(f'{app.name}-')}",
                    path=path,
                    items=pulumi.Output.secret(items.apply(lambda v, p=path: v[p])),
                    opts=opts([]),
                )
        nomad.Job(
            f"{prefix}-job-ingress",
            jobspec=ca.cert_pem.apply(lambda pem: render_ingress_job(app, pem, timing)),
            detach=False,
            opts=opts([]),
        )
        # A service with secrets carries a keyed digest of their values in its job (and so do
        # its tasks' and schedules' jobs), so a new value is a new job version: a deployment,
        # health-gated and reverted if it fails. The digest reveals nothing, so the jobspec
        # stays readable in a preview (not secret).
        digests = pulumi.Output.all(deploy_key.private_key_openssh, secrets).apply(
            lambda v: {name: secrets_digest(v[0], app, name, dict(v[1] or {})) for name in stored}
        )
        texts: pulumi.Output[dict[str, str]] = pulumi.Output.unsecret(
            digests.apply(lambda d: {**render_jobs(app, timing, d), **render_run_jobs(app, d)})
        )
        # The jobs of what has no secret do not wait for the digests: known in any preview.
        plain = {
            **render_jobs(app, timing, only=[n for n in app.services if n not in stored]),
            **{
                job: text
                for job, text in render_run_jobs(app).items()
                if services_of[job] not in stored
            },
        }

        def spec(job: str) -> pulumi.Input[str]:
            return plain[job] if job in plain else texts.apply(lambda t: t[job])

        # The release: every job's text, so each release dispatches each task once more.
        release = texts.apply(
            lambda t: hashlib.sha256(json.dumps(t, sort_keys=True).encode()).hexdigest()[:16]
        )
        jobs: dict[str, nomad.Job] = {}
        first = before_tasks(app)
        for name in app.start_order():
            if name in first:
                jobs[name] = self._service_job(app, prefix, name, spec, stored, jobs, opts, [])
        runs: list[pulumi.Resource] = []
        for name, task in app.tasks.items():
            job = task_job_name(app, name)
            deps = [jobs[d] for d in app.services[task.service].depends_on]
            registered = nomad.Job(
                f"{prefix}-job-task-{name}",
                jobspec=spec(job),
                # Registered only: each release dispatches a run (below).
                detach=True,
                opts=opts([*([run_stored[job]] if job in run_stored else []), *deps, *runs[-1:]]),
            )
            command = release.apply(lambda r, n=name, j=job: run_command(app, n, j, r))
            runs.append(
                remote.Command(
                    f"{prefix}-task-{name}",
                    connection=data_node,
                    create=command,
                    update=command,
                    stdin=_secret(token, "result"),
                    add_previous_output_in_env=False,
                    opts=pulumi.ResourceOptions(
                        parent=self,
                        depends_on=[*after, registered, *runs[-1:]],
                        custom_timeouts=pulumi.CustomTimeouts(
                            create=f"{(task.timeout + MARGIN_SECONDS) // 60 + 5}m",
                            update=f"{(task.timeout + MARGIN_SECONDS) // 60 + 5}m",
                        ),
                    ),
                )
            )
        for name in app.start_order():
            if name not in first:
                jobs[name] = self._service_job(app, prefix, name, spec, stored, jobs, opts, runs)
        for name, schedule in app.schedules.items():
            job = schedule_job_name(app, name)
            nomad.Job(
                f"{prefix}-job-schedule-{name}",
                jobspec=spec(job),
                # A periodic job has no deployment to wait for: registered, it runs at its times.
                detach=True,
                opts=opts(
                    [
                        *([run_stored[job]] if job in run_stored else []),
                        *(jobs[d] for d in app.services[schedule.service].depends_on),
                        *runs,
                    ]
                ),
            )
        if backups is not None:
            self._backups(app, prefix, backups, opts)

    def _service_job(
        self,
        app: AppSpec,
        prefix: str,
        name: str,
        spec: Callable[[str], pulumi.Input[str]],
        stored: Mapping[str, nomad.Variable],
        jobs: Mapping[str, nomad.Job],
        opts: Callable[[list[pulumi.Resource]], pulumi.ResourceOptions],
        runs: list[pulumi.Resource],
    ) -> nomad.Job:
        """One service's job, after its Variable, the jobs of its dependencies and `runs`
        (the tasks' runs, for a service released after them)."""
        return nomad.Job(
            f"{prefix}-job-{name}",
            jobspec=spec(job_name(app, name)),
            # Wait for the deployment: a release that fails fails `pulumi up` here.
            detach=False,
            opts=opts(
                [
                    *([stored[name]] if name in stored else []),
                    *(jobs[d] for d in app.services[name].depends_on),
                    *runs,
                ]
            ),
        )

    def _backups(
        self,
        app: AppSpec,
        prefix: str,
        backups: StackBackups,
        opts: Callable[[list[pulumi.Resource]], pulumi.ResourceOptions],
    ) -> None:
        """The backup and check jobs, each after its Variable (the repository password and the
        bucket's keys, secret) and the bucket the stack creates. A periodic job has no
        deployment to wait for: it is registered, and runs at its times."""
        storage = backups.storage
        items = backups.secret_values().apply(
            lambda v: backup_variables(app, storage, v[PASSWORD_VALUE], v[SECRET_KEY_VALUE])
        )
        for job, text in render_backup_jobs(app, storage, prefix).items():
            # <prefix>-job-backup, -job-backup-check (no service takes these names: rules.py)
            short = job.removeprefix(f"{app.name}-")
            path = backup_variable_path(job)
            variable = nomad.Variable(
                f"{prefix}-secrets-{short}",
                path=path,
                items=pulumi.Output.secret(items.apply(lambda v, p=path: v[p])),
                opts=opts([]),
            )
            nomad.Job(
                f"{prefix}-job-{short}",
                jobspec=text,
                detach=True,
                opts=opts([variable, *([backups.bucket] if backups.bucket is not None else [])]),
            )


def _user_data(
    app: AppSpec,
    values: list,
    *,
    index: int,
    ips: tuple[str, ...],
    settings: StackSettings,
    timing: Timing,
) -> str:
    device, deploy_key = values
    return render_cloud_init(
        NomadNode(
            index=index,
            node_ips=ips,
            subnet_cidr=settings.subnet_cidr,
            data_device=device,
            deploy_key=str(deploy_key).strip(),
            volumes=tuple(sorted(app.volumes)) if index == DATA_NODE else (),
            nomad_version=settings.nomad_version,
            timing=timing,
        )
    )
