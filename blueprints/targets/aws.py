"""AWS building blocks (pulumi-aws), for real AWS and for LocalStack.

LocalStack is not a third target: it is this one with an explicit provider whose endpoints
point at the emulator, test credentials, and the account/credential checks skipped.

Resources and look-ups go by pulumi-aws's type tokens and property names (AwsResource, _invoke),
not through its generated classes: see AwsResource.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import ClassVar

import pulumi
import pulumi_aws as aws
from pulumi_aws import _utilities as aws_sdk

from blueprints.settings import LOCALSTACK_AMI, StackSettings
from blueprints.spec import Backups
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


class AwsResource(pulumi.CustomResource):
    """One pulumi-aws resource: its type token and its properties as the provider names them
    (camelCase, nested objects as dicts), which is what the generated classes send too.

    The generated classes cost every plan of an AWS stack about half a second and 45 MiB:
    `pulumi_aws.ec2` imports all of its 180 modules and input types to give one class (measured
    with -X importtime), more than the rest of a plan. The names used here are checked against
    those classes' metadata by tests/test_aws_resources.py: token, every input and output
    name (nested ones too), required inputs, and the aliases the classes add.

    `outputs` are the computed properties the blueprints read (as attributes, e.g.
    `res.publicIp`); `aliases` the older type tokens pulumi-aws gives the type, so that stacks
    made with them are not replaced."""

    def __init__(
        self,
        token: str,
        name: str,
        inputs: Mapping[str, pulumi.Input[object]],
        opts: pulumi.ResourceOptions,
        *,
        outputs: Sequence[str] = (),
        aliases: Sequence[str] = (),
    ):
        props: dict[str, object] = dict(inputs)
        for out in outputs:
            props.setdefault(out, None)
        # The plugin version the generated classes ask for, and their aliases.
        opts = pulumi.ResourceOptions.merge(aws_sdk.get_resource_opts_defaults(), opts)
        if aliases:
            alias = pulumi.ResourceOptions(aliases=[pulumi.Alias(type_=a) for a in aliases])
            opts = pulumi.ResourceOptions.merge(opts, alias)
        super().__init__(token, name, props, opts)

    def out(self, name: str) -> pulumi.Output:
        """A property given in `outputs` (or an input, as the provider reports it back)."""
        return getattr(self, name)


def _invoke(token: str, args: Mapping[str, object], opts: pulumi.InvokeOptions) -> dict:
    """A pulumi-aws data source, answered now: its result as the provider names it."""
    opts = pulumi.InvokeOptions.merge(aws_sdk.get_invoke_opts_defaults(), opts)
    return pulumi.runtime.invoke(token, dict(args), opts=opts).value or {}


def _invoke_output(
    token: str, args: Mapping[str, pulumi.Input[object]], opts: pulumi.InvokeOutputOptions
) -> pulumi.Output[dict]:
    """A pulumi-aws data source whose arguments may be outputs, answered when they are known."""
    opts = pulumi.InvokeOutputOptions.merge(aws_sdk.get_invoke_opts_defaults(), opts)
    return pulumi.runtime.invoke_output(token, dict(args), opts=opts)


def _dlm_create_rule(backups: Backups) -> dict[str, object]:
    """When DLM takes a snapshot: every hour, every day at `at`, or Sundays at `at` (UTC)."""
    hour, minute = (int(part) for part in backups.at.split(":"))
    if backups.schedule == "hourly":
        return {"interval": 1, "intervalUnit": "HOURS"}
    if backups.schedule == "daily":
        return {"interval": 24, "intervalUnit": "HOURS", "times": backups.at}
    return {"cronExpression": f"cron({minute} {hour} ? * SUN *)"}


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
        found = _invoke_output(
            "aws:ec2/getAmi:getAmi",
            {
                "mostRecent": True,
                "owners": [CANONICAL_OWNER],
                "filters": [
                    {"name": "name", "values": [UBUNTU_NOBLE]},
                    {"name": "virtualization-type", "values": ["hvm"]},
                ],
            },
            pulumi.InvokeOutputOptions(provider=self.provider),
        )
        return found.apply(lambda ami: ami["id"])

    def network(self, name: str, labels: dict[str, str]) -> Network:
        vpc = AwsResource(
            "aws:ec2/vpc:Vpc",
            name,
            {
                "cidrBlock": self.settings.network_cidr,
                "enableDnsHostnames": True,
                "enableDnsSupport": True,
                "tags": _tags(name, labels),
            },
            self.opts(),
        )
        subnet = AwsResource(
            "aws:ec2/subnet:Subnet",
            f"{name}-subnet",
            {
                "vpcId": vpc.id,
                "cidrBlock": self.settings.subnet_cidr,
                "availabilityZone": self.settings.availability_zone,
                "mapPublicIpOnLaunch": True,
                "tags": _tags(f"{name}-subnet", labels),
            },
            self.opts(),
        )
        gateway = AwsResource(
            "aws:ec2/internetGateway:InternetGateway",
            f"{name}-gw",
            {"vpcId": vpc.id, "tags": _tags(f"{name}-gw", labels)},
            self.opts(),
        )
        routes = AwsResource(
            "aws:ec2/routeTable:RouteTable",
            f"{name}-routes",
            {
                "vpcId": vpc.id,
                "routes": [{"cidrBlock": "0.0.0.0/0", "gatewayId": gateway.id}],
                "tags": _tags(f"{name}-routes", labels),
            },
            self.opts(),
        )
        assoc = AwsResource(
            "aws:ec2/routeTableAssociation:RouteTableAssociation",
            f"{name}-routes-assoc",
            {"subnetId": subnet.id, "routeTableId": routes.id},
            self.opts(),
        )
        return Network(id=vpc.id, subnet_id=subnet.id, ready=[assoc])

    def firewall(
        self, name: str, network: Network, rules: list[FirewallRule], labels: dict[str, str]
    ) -> Firewall:
        # A security group denies all inbound traffic not listed. Private-network traffic is
        # allowed from the VPC range itself, as on a Hetzner private network.
        ingress = [_rule(r.protocol, r.port, r.sources, r.description) for r in rules]
        ingress.append(_rule("-1", 0, (self.settings.network_cidr,), "private network", ipv6=False))
        sg = AwsResource(
            "aws:ec2/securityGroup:SecurityGroup",
            name,
            {
                "name": name,
                "description": "blueprints: default deny inbound",
                "vpcId": network.id,
                "ingress": ingress,
                "egress": [_rule("-1", 0, ("0.0.0.0/0", "::/0"), "all outbound")],
                "tags": _tags(name, labels),
            },
            self.opts(),
        )
        return Firewall(id=sg.id)

    def placement_group(self, name: str, labels: dict[str, str]) -> Placement:
        pg = AwsResource(
            "aws:ec2/placementGroup:PlacementGroup",
            name,
            {"name": name, "strategy": "spread", "tags": _tags(name, labels)},
            self.opts(),
        )
        return Placement(id=pg.id)

    def ssh_key(self, name: str, public_keys: list[str], labels: dict[str, str]) -> SshKey | None:
        if not public_keys:
            return None
        key = AwsResource(
            "aws:ec2/keyPair:KeyPair",
            name,
            {"keyName": name, "publicKey": public_keys[0], "tags": _tags(name, labels)},
            self.opts(),
        )
        return SshKey(id=key.out("keyName"))

    def server(self, spec: ServerSpec) -> Server:
        inst = AwsResource(
            "aws:ec2/instance:Instance",
            spec.name,
            {
                "ami": self._ami(),
                "instanceType": self.settings.size,
                "subnetId": spec.network.subnet_id,
                "privateIp": spec.private_ip,
                "vpcSecurityGroupIds": [spec.firewall.id],
                "placementGroup": spec.placement.id if spec.placement else None,
                "keyName": spec.ssh_key.id if spec.ssh_key else None,
                # Always the base64 field: the limit (16 KB) applies to the decoded bytes there.
                "userDataBase64": self.server_user_data(spec, base64_always=True, cloud="AWS"),
                "associatePublicIpAddress": True,
                # IMDSv2 only, one hop: containers (a hop further, behind docker's bridge)
                # cannot read the user data, which holds the app's secrets.
                "metadataOptions": {
                    "httpTokens": "required",
                    "httpEndpoint": "enabled",
                    "httpPutResponseHopLimit": 1,
                },
                # cloud-init applies user data once per instance, so a changed spec needs a new
                # one.
                "userDataReplaceOnChange": True,
                "rootBlockDevice": {"volumeSize": 20, "volumeType": "gp3", "encrypted": True},
                "tags": _tags(spec.name, spec.labels),
            },
            self.opts(
                depends_on=[*spec.network.ready, *spec.after],
                delete_before_replace=True,
                # A looked-up AMI is resolved when the instance is created and kept: the newest
                # Ubuntu image changes every few weeks, and taking it at every `up` would
                # replace the servers. A pinned `ami` setting is the user's choice and does
                # replace them when changed.
                ignore_changes=[] if self.settings.ami else ["ami"],
            ),
            outputs=["publicIp"],
        )
        return Server(
            resource=inst, id=inst.id, public_ip=inst.out("publicIp"), private_ip=spec.private_ip
        )

    def volume(self, name: str, size_gb: int, labels: dict[str, str]) -> Volume:
        vol = AwsResource(
            "aws:ebs/volume:Volume",
            name,
            {
                "availabilityZone": self.settings.availability_zone,
                "size": size_gb,
                "type": "gp3",
                "encrypted": True,
                "tags": _tags(name, labels),
            },
            self.data_protection(),
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
        return AwsResource(
            "aws:s3/bucket:Bucket",
            name,
            {"bucket": bucket, "tags": _tags(name, labels)},
            self.data_protection(),
            aliases=["aws:s3/bucketV2:BucketV2"],
        )

    def attach_volume(
        self, name: str, volume: Volume, server: Server, *, retain: bool = False
    ) -> pulumi.CustomResource:
        return AwsResource(
            "aws:ec2/volumeAttachment:VolumeAttachment",
            name,
            {
                "deviceName": "/dev/sdf",
                "volumeId": volume.id,
                "instanceId": server.id,
                # Stop the old holder before detaching, so the filesystem is unmounted cleanly.
                "stopInstanceBeforeDetaching": True,
            },
            self.one_at_a_time(deleted_with=server.resource, retain_on_delete=retain),
        )

    def floating_ip(self, name: str, labels: dict[str, str]) -> FloatingIp:
        eip = AwsResource(
            "aws:ec2/eip:Eip",
            name,
            {"domain": "vpc", "tags": _tags(name, labels)},
            self.data_protection(),
            outputs=["allocationId", "publicIp"],
        )
        return FloatingIp(resource=eip, id=eip.out("allocationId"), address=eip.out("publicIp"))

    def assign_floating_ip(
        self, name: str, ip: FloatingIp, server: Server, *, retain: bool = False
    ) -> pulumi.CustomResource:
        return AwsResource(
            "aws:ec2/eipAssociation:EipAssociation",
            name,
            {
                "allocationId": ip.id,
                "instanceId": server.id,
                # A retained association is not removed before its successor is made, so the
                # successor must be allowed to take the address over.
                "allowReassociation": retain,
            },
            self.one_at_a_time(retain_on_delete=retain),
        )

    def server_power(
        self, name: str, server: Server, running: bool, **opts: object
    ) -> pulumi.CustomResource:
        # pulumi-aws keeps instance power state in a resource of its own.
        return AwsResource(
            "aws:ec2transitgateway/instanceState:InstanceState",
            name,
            {"instanceId": server.id, "state": "running" if running else "stopped"},
            self.opts(**opts),
        )

    def current_address(self, server: Server, after: pulumi.Resource) -> pulumi.Output[str]:
        # A stopped instance gives its public address back, and gets another one when it
        # starts: ask EC2 once `after` (the instance's power resource) is done.
        found = _invoke_output(
            "aws:ec2/getInstance:getInstance",
            {"instanceId": server.id},
            pulumi.InvokeOutputOptions(depends_on=[after], provider=self.provider),
        )
        return found.apply(lambda instance: instance.get("publicIp"))

    def find(
        self, labels: dict[str, str], nodes: Sequence[str], volume: str, address: str, lock: str
    ) -> Found:
        invoke = pulumi.InvokeOptions(provider=self.provider)
        held = self._lock(lock, invoke)
        volumes = _invoke(
            "aws:ebs/getEbsVolumes:getEbsVolumes", {"tags": _tags(volume, labels)}, invoke
        )
        addresses = _invoke("aws:ec2/getEips:getEips", {"tags": _tags(address, labels)}, invoke)
        volume_ids = sorted(volumes.get("ids") or [])
        public_ips = sorted(addresses.get("publicIps") or [])

        def instances(node: str, states: Sequence[str], where: Mapping[str, list[str]]) -> bool:
            """Whether the node's instance is in one of `states` and matches the filters."""
            found = _invoke(
                "aws:ec2/getInstances:getInstances",
                {
                    "instanceTags": {**labels, "node": node},
                    "instanceStateNames": list(states),
                    "filters": [{"name": key, "values": values} for key, values in where.items()],
                },
                invoke,
            )
            return bool(found.get("ids"))

        def holder(key: str, values: list[str]) -> str | None:
            if not values:
                return None
            return next((n for n in nodes if instances(n, LIVE_STATES, {key: values})), None)

        stopped = frozenset(n for n in nodes if instances(n, STOPPED_STATES, {}))
        live = frozenset(n for n in nodes if instances(n, RUNNING_STATES, {}))
        status = {n: "stopped" for n in stopped} | {n: "running" for n in live}
        return Found(
            volume=bool(volume_ids),
            volume_node=holder("block-device-mapping.volume-id", volume_ids),
            address=bool(public_ips),
            # The public address of an instance's interface is its Elastic IP once associated.
            address_node=holder("network-interface.association.public-ip", public_ips),
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
            pair = _invoke(
                "aws:ec2/getKeyPair:getKeyPair",
                {"filters": [{"name": "key-name", "values": [name]}]},
                invoke,
            )
        except Exception as exc:
            if NO_KEY_PAIR in str(exc):
                return None
            raise pulumi.RunError(
                f"single-vm: could not look up the promotion lock (the key pair {name}): {exc}"
            ) from None
        return dict(pair.get("tags") or {})

    def volume_backups(
        self, name: str, selector: dict[str, str], backups: Backups, labels: dict[str, str]
    ) -> list[pulumi.CustomResource]:
        # DLM creates and prunes the snapshots itself, under a role AWS provides for it.
        role = AwsResource(
            "aws:iam/role:Role",
            f"{name}-role",
            {
                "name": name,
                "assumeRolePolicy": json.dumps(
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
                "tags": _tags(f"{name}-role", labels),
            },
            self.opts(),
            outputs=["arn"],
        )
        attached = AwsResource(
            "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
            f"{name}-role-policy",
            {"role": role.out("name"), "policyArn": DLM_SERVICE_POLICY},
            self.opts(),
        )
        schedule = {
            "name": f"{backups.schedule} at {backups.at} UTC",
            "createRule": _dlm_create_rule(backups),
            "retainRule": {"count": backups.keep},
            "copyTags": True,
            "tagsToAdd": {"snapshot-of": name},
        }
        policy = AwsResource(
            "aws:dlm/lifecyclePolicy:LifecyclePolicy",
            name,
            {
                "description": f"{name}: {backups.schedule} snapshots, {backups.keep} kept",
                "executionRoleArn": role.out("arn"),
                "state": "ENABLED",
                "policyDetails": {
                    "resourceTypes": ["VOLUME"],
                    "targetTags": selector,
                    "schedules": [schedule],
                },
                "tags": _tags(name, labels),
            },
            self.opts(depends_on=[attached]),
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
        inputs: dict[str, pulumi.Input[object]] = {
            "name": name,
            "loadBalancerType": "network",
            "subnets": [network.subnet_id],
            "tags": _tags(name, labels),
        }
        if sources is not None:
            # A security group on the NLB admits each port from its sources only. The NLB then
            # connects to the targets from its own private address (client IP preservation
            # off), which the servers' "private network" rule admits.
            inputs["securityGroups"] = [self._load_balancer_group(name, network, sources, labels)]
        lb = AwsResource(
            "aws:lb/loadBalancer:LoadBalancer",
            name,
            inputs,
            self.opts(),
            outputs=["arn", "dnsName"],
            aliases=["aws:elasticloadbalancingv2/loadBalancer:LoadBalancer"],
        )
        for port in ports:
            group: dict[str, pulumi.Input[object]] = {
                "port": port,
                "protocol": "TCP",
                "vpcId": network.id,
                "targetType": "instance",
                "tags": _tags(f"{name}-{port}", labels),
            }
            if sources is not None:
                group["preserveClientIp"] = "false"
            tg = AwsResource(
                "aws:lb/targetGroup:TargetGroup",
                f"{name}-{port}",
                group,
                self.opts(),
                outputs=["arn"],
                aliases=["aws:elasticloadbalancingv2/targetGroup:TargetGroup"],
            )
            AwsResource(
                "aws:lb/listener:Listener",
                f"{name}-{port}",
                {
                    "loadBalancerArn": lb.out("arn"),
                    "port": port,
                    "protocol": "TCP",
                    "defaultActions": [{"type": "forward", "targetGroupArn": tg.out("arn")}],
                },
                self.opts(),
                aliases=["aws:elasticloadbalancingv2/listener:Listener"],
            )
            for i, srv in enumerate(servers):
                AwsResource(
                    "aws:lb/targetGroupAttachment:TargetGroupAttachment",
                    f"{name}-{port}-{i}",
                    {"targetGroupArn": tg.out("arn"), "targetId": srv.id, "port": port},
                    self.opts(),
                    aliases=[
                        "aws:elasticloadbalancingv2/targetGroupAttachment:TargetGroupAttachment"
                    ],
                )
        return LoadBalancer(resource=lb, id=lb.out("arn"), address=lb.out("dnsName"))

    # The NLB's security group admits exactly `sources` per port.
    load_balancer_filters_sources = True

    def _load_balancer_group(
        self,
        name: str,
        network: Network,
        sources: Mapping[int, Sequence[str]],
        labels: dict[str, str],
    ) -> pulumi.Output[str]:
        ingress = [
            _rule("tcp", port, allowed, f"port {port}")
            for port, allowed in sorted(sources.items())
            if allowed  # nobody: no rule at all
        ]
        sg = AwsResource(
            "aws:ec2/securityGroup:SecurityGroup",
            f"{name}-lb",
            {
                "name": f"{name}-lb",
                "description": "blueprints: load balancer sources",
                "vpcId": network.id,
                "ingress": ingress,
                "egress": [
                    _rule(
                        "-1",
                        0,
                        (self.settings.network_cidr,),
                        "to the servers on the private network",
                        ipv6=False,
                    )
                ],
                "tags": _tags(f"{name}-lb", labels),
            },
            self.opts(),
        )
        return sg.id


def _rule(
    protocol: str, port: int, sources: Sequence[str], description: str, *, ipv6: bool = True
) -> dict[str, object]:
    """A security group rule for one port (0 with protocol -1: every port) from `sources`,
    IPv4 and IPv6 ranges apart; without `ipv6`, no IPv6 list at all."""
    rule: dict[str, object] = {
        "protocol": protocol,
        "fromPort": port,
        "toPort": port,
        "cidrBlocks": [s for s in sources if ":" not in s],
    }
    if ipv6:
        rule["ipv6CidrBlocks"] = [s for s in sources if ":" in s]
    rule["description"] = description
    return rule
