"""AWS building blocks (pulumi-aws), for real AWS and for LocalStack.

LocalStack is not a third target: it is this one with an explicit provider whose endpoints
point at the emulator, test credentials, and the account/credential checks skipped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import ClassVar

import pulumi
import pulumi_aws as aws

from blueprints.settings import LOCALSTACK_AMI, StackSettings
from blueprints.spec import Backups
from blueprints.targets import userdata
from blueprints.targets.base import (
    Firewall,
    FirewallRule,
    FloatingIp,
    Found,
    LoadBalancer,
    Network,
    Placement,
    Server,
    ServerSpec,
    SshKey,
    Target,
    Volume,
)

# Canonical's AWS account, owner of the official Ubuntu images.
CANONICAL_OWNER = "099720109477"
UBUNTU_NOBLE = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"

# AWS's managed policy that lets Data Lifecycle Manager snapshot EBS volumes.
DLM_SERVICE_POLICY = "arn:aws:iam::aws:policy/service-role/AWSDataLifecycleManagerServiceRole"

# Services the blueprints use; LocalStack serves all of them on one gateway.
LOCALSTACK_SERVICES = ("dlm", "ec2", "elbv2", "iam", "sts")


def _tags(name: str, labels: dict[str, str]) -> dict[str, str]:
    return {"Name": name, **labels}


def _dlm_create_rule(
    backups: Backups,
) -> aws.dlm.LifecyclePolicyPolicyDetailsScheduleCreateRuleArgs:
    """When DLM takes a snapshot: every hour, every day at `at`, or Sundays at `at` (UTC)."""
    args = aws.dlm.LifecyclePolicyPolicyDetailsScheduleCreateRuleArgs
    hour, minute = (int(part) for part in backups.at.split(":"))
    if backups.schedule == "hourly":
        return args(interval=1, interval_unit="HOURS")
    if backups.schedule == "daily":
        return args(interval=24, interval_unit="HOURS", times=backups.at)
    return args(cron_expression=f"cron({minute} {hour} ? * SUN *)")


# What pulumi-aws's singular data sources say when nothing matches (Terraform's AWS provider,
# tfresource.SingularDataSourceFindError).
NO_KEY_PAIR = "no matching EC2 Key Pair found"

# EC2 instance states: every state of an instance that still exists, and those of one that is
# (or is on its way to being) stopped.
LIVE_STATES = ("pending", "running", "stopping", "stopped")
RUNNING_STATES = ("pending", "running")
STOPPED_STATES = ("stopping", "stopped")


class AwsTarget(Target):
    name = "aws"
    # An Elastic IP is translated by AWS; the instance only sees its private address.
    floating_ip_in_os = False
    user_data_limit = 16 * 1024
    # Data Lifecycle Manager snapshots EBS volumes on a schedule.
    volume_snapshots = True
    spare_billing: ClassVar[Mapping[str, str]] = {
        "warm": "The warm spare runs without the data volume; EC2 bills its compute like the "
        "primary's, and its root EBS volume.",
        "cold": "The cold spare is stopped; EC2 bills no compute for a stopped instance, only "
        "its root EBS volume.",
    }
    # InstanceState compares with Pulumi's state: an instance stopped outside Pulumi is seen
    # by the refresh Pulumi.yaml asks for before every update (not with --refresh=false).
    power_follows_cloud = False

    def __init__(self, settings: StackSettings, parent: pulumi.Resource):
        super().__init__(settings, parent)
        self.provider = self._provider(settings)

    def _provider(self, settings: StackSettings) -> aws.Provider:
        if settings.target == "localstack":
            endpoint = settings.localstack_endpoint
            return aws.Provider(
                "localstack",
                region=settings.region,
                access_key="test",
                secret_key="test",
                skip_credentials_validation=True,
                skip_metadata_api_check=True,
                skip_requesting_account_id=True,
                skip_region_validation=True,
                s3_use_path_style=True,
                endpoints=[
                    aws.ProviderEndpointArgs(**{svc: endpoint for svc in LOCALSTACK_SERVICES})
                ],
                opts=pulumi.ResourceOptions(parent=self.parent),
            )
        return aws.Provider(
            "aws", region=settings.region, opts=pulumi.ResourceOptions(parent=self.parent)
        )

    def opts(self, **kwargs) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self.parent, provider=self.provider, **kwargs)

    def _ami(self) -> pulumi.Input[str]:
        if self.settings.ami:
            return self.settings.ami
        if self.settings.target == "localstack":
            return LOCALSTACK_AMI
        found = aws.ec2.get_ami_output(
            most_recent=True,
            owners=[CANONICAL_OWNER],
            filters=[
                aws.ec2.GetAmiFilterArgs(name="name", values=[UBUNTU_NOBLE]),
                aws.ec2.GetAmiFilterArgs(name="virtualization-type", values=["hvm"]),
            ],
            opts=pulumi.InvokeOptions(provider=self.provider),
        )
        return found.id

    def network(self, name: str, labels: dict[str, str]) -> Network:
        vpc = aws.ec2.Vpc(
            name,
            cidr_block=self.settings.network_cidr,
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags=_tags(name, labels),
            opts=self.opts(),
        )
        subnet = aws.ec2.Subnet(
            f"{name}-subnet",
            vpc_id=vpc.id,
            cidr_block=self.settings.subnet_cidr,
            availability_zone=self.settings.availability_zone,
            map_public_ip_on_launch=True,
            tags=_tags(f"{name}-subnet", labels),
            opts=self.opts(),
        )
        gateway = aws.ec2.InternetGateway(
            f"{name}-gw", vpc_id=vpc.id, tags=_tags(f"{name}-gw", labels), opts=self.opts()
        )
        routes = aws.ec2.RouteTable(
            f"{name}-routes",
            vpc_id=vpc.id,
            routes=[aws.ec2.RouteTableRouteArgs(cidr_block="0.0.0.0/0", gateway_id=gateway.id)],
            tags=_tags(f"{name}-routes", labels),
            opts=self.opts(),
        )
        assoc = aws.ec2.RouteTableAssociation(
            f"{name}-routes-assoc", subnet_id=subnet.id, route_table_id=routes.id, opts=self.opts()
        )
        return Network(id=vpc.id, subnet_id=subnet.id, ready=[assoc])

    def firewall(
        self, name: str, network: Network, rules: list[FirewallRule], labels: dict[str, str]
    ) -> Firewall:
        # A security group denies all inbound traffic not listed. Private-network traffic is
        # allowed from the VPC range itself, as on a Hetzner private network.
        ingress = []
        for r in rules:
            v4 = [s for s in r.sources if ":" not in s]
            v6 = [s for s in r.sources if ":" in s]
            ingress.append(
                aws.ec2.SecurityGroupIngressArgs(
                    protocol=r.protocol,
                    from_port=r.port,
                    to_port=r.port,
                    cidr_blocks=v4,
                    ipv6_cidr_blocks=v6,
                    description=r.description,
                )
            )
        ingress.append(
            aws.ec2.SecurityGroupIngressArgs(
                protocol="-1",
                from_port=0,
                to_port=0,
                cidr_blocks=[self.settings.network_cidr],
                description="private network",
            )
        )
        sg = aws.ec2.SecurityGroup(
            name,
            name=name,
            description="blueprints: default deny inbound",
            vpc_id=network.id,
            ingress=ingress,
            egress=[
                aws.ec2.SecurityGroupEgressArgs(
                    protocol="-1",
                    from_port=0,
                    to_port=0,
                    cidr_blocks=["0.0.0.0/0"],
                    ipv6_cidr_blocks=["::/0"],
                    description="all outbound",
                )
            ],
            tags=_tags(name, labels),
            opts=self.opts(),
        )
        return Firewall(id=sg.id)

    def placement_group(self, name: str, labels: dict[str, str]) -> Placement:
        pg = aws.ec2.PlacementGroup(
            name, name=name, strategy="spread", tags=_tags(name, labels), opts=self.opts()
        )
        return Placement(id=pg.id)

    def ssh_key(self, name: str, public_keys: list[str], labels: dict[str, str]) -> SshKey | None:
        if not public_keys:
            return None
        key = aws.ec2.KeyPair(
            name,
            key_name=name,
            public_key=public_keys[0],
            tags=_tags(name, labels),
            opts=self.opts(),
        )
        return SshKey(id=key.key_name)

    def server(self, spec: ServerSpec) -> Server:
        inst = aws.ec2.Instance(
            spec.name,
            ami=self._ami(),
            instance_type=self.settings.size,
            subnet_id=spec.network.subnet_id,
            private_ip=spec.private_ip,
            vpc_security_group_ids=[spec.firewall.id],
            placement_group=spec.placement.id if spec.placement else None,
            key_name=spec.ssh_key.id if spec.ssh_key else None,
            # Always the base64 field: the limit (16 KB) applies to the decoded bytes there.
            user_data_base64=pulumi.Output.from_input(spec.user_data).apply(
                lambda text: userdata.encode(
                    text,
                    self.user_data_limit,
                    base64_always=True,
                    what=spec.name,
                    cloud="AWS",
                )
            ),
            associate_public_ip_address=True,
            # IMDSv2 only, one hop: containers (a hop further, behind docker's bridge) cannot
            # read the user data, which holds the app's secrets.
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_tokens="required", http_endpoint="enabled", http_put_response_hop_limit=1
            ),
            # cloud-init applies user data once per instance, so a changed spec needs a new one.
            user_data_replace_on_change=True,
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                volume_size=20, volume_type="gp3", encrypted=True
            ),
            tags=_tags(spec.name, spec.labels),
            opts=self.opts(
                depends_on=[*spec.network.ready, *spec.after],
                delete_before_replace=True,
                # A looked-up AMI is resolved when the instance is created and kept: the newest
                # Ubuntu image changes every few weeks, and taking it at every `up` would
                # replace the servers. A pinned `ami` setting is the user's choice and does
                # replace them when changed.
                ignore_changes=[] if self.settings.ami else ["ami"],
            ),
        )
        return Server(
            resource=inst, id=inst.id, public_ip=inst.public_ip, private_ip=spec.private_ip
        )

    def volume(self, name: str, size_gb: int, labels: dict[str, str]) -> Volume:
        vol = aws.ebs.Volume(
            name,
            availability_zone=self.settings.availability_zone,
            size=size_gb,
            type="gp3",
            encrypted=True,
            tags=_tags(name, labels),
            opts=self.data_protection(),
        )
        # Nitro instances expose EBS as NVMe; udev names it after the volume id without the dash.
        device = vol.id.apply(
            lambda i: f"/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_{i.replace('-', '')}"
        )
        return Volume(resource=vol, id=vol.id, device_path=device)

    def backup_bucket(
        self, name: str, bucket: str, labels: dict[str, str]
    ) -> pulumi.CustomResource | None:
        # Protected like a volume: it holds what a lost cluster is restored from.
        return aws.s3.Bucket(
            name, bucket=bucket, tags=_tags(name, labels), opts=self.data_protection()
        )

    def attach_volume(
        self, name: str, volume: Volume, server: Server, *, retain: bool = False
    ) -> pulumi.CustomResource:
        return aws.ec2.VolumeAttachment(
            name,
            device_name="/dev/sdf",
            volume_id=volume.id,
            instance_id=server.id,
            # Stop the old holder before detaching, so the filesystem is unmounted cleanly.
            stop_instance_before_detaching=True,
            opts=self.one_at_a_time(deleted_with=server.resource, retain_on_delete=retain),
        )

    def floating_ip(self, name: str, labels: dict[str, str]) -> FloatingIp:
        eip = aws.ec2.Eip(name, domain="vpc", tags=_tags(name, labels), opts=self.data_protection())
        return FloatingIp(resource=eip, id=eip.allocation_id, address=eip.public_ip)

    def assign_floating_ip(
        self, name: str, ip: FloatingIp, server: Server, *, retain: bool = False
    ) -> pulumi.CustomResource:
        return aws.ec2.EipAssociation(
            name,
            allocation_id=ip.id,
            instance_id=server.id,
            # A retained association is not removed before its successor is made, so the
            # successor must be allowed to take the address over.
            allow_reassociation=retain,
            opts=self.one_at_a_time(retain_on_delete=retain),
        )

    def server_power(
        self, name: str, server: Server, running: bool, **opts: object
    ) -> pulumi.CustomResource:
        # pulumi-aws keeps instance power state in a resource of its own.
        return aws.ec2transitgateway.InstanceState(
            name,
            instance_id=server.id,
            state="running" if running else "stopped",
            opts=self.opts(**opts),
        )

    def current_address(self, server: Server, after: pulumi.Resource) -> pulumi.Output[str]:
        # A stopped instance gives its public address back, and gets another one when it
        # starts: ask EC2 once `after` (the instance's power resource) is done.
        found = aws.ec2.get_instance_output(
            instance_id=server.id,
            opts=pulumi.InvokeOutputOptions(depends_on=[after], provider=self.provider),
        )
        return found.public_ip

    def find(
        self, labels: dict[str, str], nodes: Sequence[str], volume: str, address: str, lock: str
    ) -> Found:
        invoke = pulumi.InvokeOptions(provider=self.provider)
        held = self._lock(lock, invoke)
        volumes = sorted(aws.ebs.get_ebs_volumes(tags=_tags(volume, labels), opts=invoke).ids or [])
        addresses = sorted(
            aws.ec2.get_eips(tags=_tags(address, labels), opts=invoke).public_ips or []
        )

        def instances(node: str, states: Sequence[str], where: Mapping[str, list[str]]) -> bool:
            """Whether the node's instance is in one of `states` and matches the filters."""
            found = aws.ec2.get_instances(
                instance_tags={**labels, "node": node},
                instance_state_names=list(states),
                filters=[
                    aws.ec2.GetInstancesFilterArgs(name=key, values=values)
                    for key, values in where.items()
                ],
                opts=invoke,
            )
            return bool(found.ids)

        def holder(key: str, values: list[str]) -> str | None:
            if not values:
                return None
            return next((n for n in nodes if instances(n, LIVE_STATES, {key: values})), None)

        stopped = frozenset(n for n in nodes if instances(n, STOPPED_STATES, {}))
        live = frozenset(n for n in nodes if instances(n, RUNNING_STATES, {}))
        status = {n: "stopped" for n in stopped} | {n: "running" for n in live}
        return Found(
            volume=bool(volumes),
            volume_node=holder("block-device-mapping.volume-id", volumes),
            address=bool(addresses),
            # The public address of an instance's interface is its Elastic IP once associated.
            address_node=holder("network-interface.association.public-ip", addresses),
            running=live,
            off=stopped,
            status=dict(sorted(status.items())),
            lock=held,
        )

    def _lock(self, name: str, invoke: pulumi.InvokeOptions) -> dict[str, str] | None:
        """The tags of the key pair named `name` (the promotion lock), None if there is none.
        pulumi-aws has only the singular look-up, which fails when nothing matches: that
        failure, in the provider's standard words, is the answer "no lock"."""
        try:
            pair = aws.ec2.get_key_pair(
                filters=[aws.ec2.GetKeyPairFilterArgs(name="key-name", values=[name])],
                opts=invoke,
            )
        except Exception as exc:
            if NO_KEY_PAIR in str(exc):
                return None
            raise pulumi.RunError(
                f"single-vm: could not look up the promotion lock (the key pair {name}): {exc}"
            ) from None
        return dict(pair.tags or {})

    def volume_backups(
        self, name: str, selector: dict[str, str], backups: Backups, labels: dict[str, str]
    ) -> list[pulumi.CustomResource]:
        # DLM creates and prunes the snapshots itself, under a role AWS provides for it.
        role = aws.iam.Role(
            f"{name}-role",
            name=name,
            assume_role_policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": "dlm.amazonaws.com"},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                },
                sort_keys=True,
            ),
            tags=_tags(f"{name}-role", labels),
            opts=self.opts(),
        )
        attached = aws.iam.RolePolicyAttachment(
            f"{name}-role-policy",
            role=role.name,
            policy_arn=DLM_SERVICE_POLICY,
            opts=self.opts(),
        )
        policy = aws.dlm.LifecyclePolicy(
            name,
            description=f"{name}: {backups.schedule} snapshots, {backups.keep} kept",
            execution_role_arn=role.arn,
            state="ENABLED",
            policy_details=aws.dlm.LifecyclePolicyPolicyDetailsArgs(
                resource_types=["VOLUME"],
                target_tags=selector,
                schedules=[
                    aws.dlm.LifecyclePolicyPolicyDetailsScheduleArgs(
                        name=f"{backups.schedule} at {backups.at} UTC",
                        create_rule=_dlm_create_rule(backups),
                        retain_rule=aws.dlm.LifecyclePolicyPolicyDetailsScheduleRetainRuleArgs(
                            count=backups.keep
                        ),
                        copy_tags=True,
                        tags_to_add={"snapshot-of": name},
                    )
                ],
            ),
            tags=_tags(name, labels),
            opts=self.opts(depends_on=[attached]),
        )
        return [role, attached, policy]

    def load_balancer(
        self,
        name: str,
        network: Network,
        servers: list[Server],
        ports: list[int],
        labels: dict[str, str],
        *,
        sources: Mapping[int, Sequence[str]] | None = None,
    ) -> LoadBalancer:
        extra: dict[str, object] = {}
        if sources is not None:
            # A security group on the NLB admits each port from its sources only. The NLB then
            # connects to the targets from its own private address (client IP preservation
            # off), which the servers' "private network" rule admits.
            extra["security_groups"] = [self._load_balancer_group(name, network, sources, labels)]
        lb = aws.lb.LoadBalancer(
            name,
            name=name,
            load_balancer_type="network",
            subnets=[network.subnet_id],
            tags=_tags(name, labels),
            opts=self.opts(),
            **extra,
        )
        for port in ports:
            tg = aws.lb.TargetGroup(
                f"{name}-{port}",
                port=port,
                protocol="TCP",
                vpc_id=network.id,
                target_type="instance",
                tags=_tags(f"{name}-{port}", labels),
                opts=self.opts(),
                **({} if sources is None else {"preserve_client_ip": "false"}),
            )
            aws.lb.Listener(
                f"{name}-{port}",
                load_balancer_arn=lb.arn,
                port=port,
                protocol="TCP",
                default_actions=[
                    aws.lb.ListenerDefaultActionArgs(type="forward", target_group_arn=tg.arn)
                ],
                opts=self.opts(),
            )
            for i, srv in enumerate(servers):
                aws.lb.TargetGroupAttachment(
                    f"{name}-{port}-{i}",
                    target_group_arn=tg.arn,
                    target_id=srv.id,
                    port=port,
                    opts=self.opts(),
                )
        return LoadBalancer(resource=lb, id=lb.arn, address=lb.dns_name)

    # The NLB's security group admits exactly `sources` per port.
    load_balancer_filters_sources = True

    def _load_balancer_group(
        self,
        name: str,
        network: Network,
        sources: Mapping[int, Sequence[str]],
        labels: dict[str, str],
    ) -> pulumi.Output[str]:
        ingress = []
        for port, allowed in sorted(sources.items()):
            v4 = [s for s in allowed if ":" not in s]
            v6 = [s for s in allowed if ":" in s]
            if not v4 and not v6:
                continue  # nobody: no rule at all
            ingress.append(
                aws.ec2.SecurityGroupIngressArgs(
                    protocol="tcp",
                    from_port=port,
                    to_port=port,
                    cidr_blocks=v4,
                    ipv6_cidr_blocks=v6,
                    description=f"port {port}",
                )
            )
        sg = aws.ec2.SecurityGroup(
            f"{name}-lb",
            name=f"{name}-lb",
            description="blueprints: load balancer sources",
            vpc_id=network.id,
            ingress=ingress,
            egress=[
                aws.ec2.SecurityGroupEgressArgs(
                    protocol="-1",
                    from_port=0,
                    to_port=0,
                    cidr_blocks=[self.settings.network_cidr],
                    description="to the servers on the private network",
                )
            ],
            tags=_tags(f"{name}-lb", labels),
            opts=self.opts(),
        )
        return sg.id
