"""The single-vm stack on AWS (or LocalStack), through boto3.

Instances, the EBS volume and the Elastic IP are found by the tags the blueprint sets (app,
blueprint, node). Waiters await each change; the emulators finish at once, real EC2 takes
seconds to a minute.
"""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from blueprints.failover.cloud import (
    NODES,
    Cloud,
    CloudError,
    Node,
    Snapshot,
    TransientCloudError,
)

LOCK_TAG = "blueprints-promotion"
DEVICE = "/dev/sdf"  # as in the blueprint's VolumeAttachment
TRANSIENT = {
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "IncorrectState",
    "IncorrectInstanceState",
    "InternalError",
    "ServiceUnavailable",
    "Unavailable",
}


class AwsCloud(Cloud):
    def __init__(self, ec2, app: str, stack: str, blueprint: str = "single-vm", poll: float = 5.0):
        self.ec2 = ec2  # a boto3 EC2 client
        self.filters = [
            {"Name": "tag:app", "Values": [app]},
            {"Name": "tag:blueprint", "Values": [blueprint]},
            {"Name": "tag:stack", "Values": [stack]},
        ]
        self.app = app
        self.waiter = {"Delay": poll, "MaxAttempts": max(1, int(600 / max(poll, 0.01)))}

    def _do(self, what: str, fn):
        try:
            return fn()
        except CloudError:
            raise
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = err.get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            message = f"{what}: {code}: {err.get('Message', '')}"
            if code in TRANSIENT or status >= 500:
                raise TransientCloudError(message) from exc
            raise CloudError(f"{what}: AWS said {code}: {err.get('Message', '')}") from exc
        except WaiterError as exc:
            raise TransientCloudError(f"{what}: gave up waiting: {exc}") from exc
        except BotoCoreError as exc:  # connection errors, endpoint unreachable
            raise TransientCloudError(f"{what}: {exc}") from exc

    def _instances(self) -> dict[str, dict]:
        pages = self.ec2.get_paginator("describe_instances").paginate(
            Filters=[
                *self.filters,
                {
                    "Name": "instance-state-name",
                    "Values": ["pending", "running", "stopping", "stopped"],
                },
            ]
        )
        by_node: dict[str, dict] = {}
        for page in pages:
            for reservation in page["Reservations"]:
                for inst in reservation["Instances"]:
                    tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                    if tags.get("node") in NODES:
                        by_node[tags["node"]] = inst
        missing = [n for n in NODES if n not in by_node]
        if missing:
            raise CloudError(
                f"no instance tagged app={self.app},node={missing[0]} in this account/region; "
                "is this the right stack?"
            )
        return by_node

    def _volume(self) -> dict:
        vols = self.ec2.describe_volumes(Filters=self.filters)["Volumes"]
        if len(vols) != 1:
            raise CloudError(f"expected one EBS volume tagged app={self.app}, found {len(vols)}")
        return vols[0]

    def _address(self) -> dict:
        addrs = self.ec2.describe_addresses(Filters=self.filters)["Addresses"]
        if len(addrs) != 1:
            raise CloudError(f"expected one Elastic IP tagged app={self.app}, found {len(addrs)}")
        return addrs[0]

    @staticmethod
    def _attached_to(volume: dict) -> str | None:
        for att in volume.get("Attachments", []):
            if att.get("State") in ("attaching", "attached", "busy"):
                return att["InstanceId"]
        return None

    def _wait(self, name: str, **kwargs) -> None:
        self.ec2.get_waiter(name).wait(WaiterConfig=self.waiter, **kwargs)

    # -- Cloud -----------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        def read() -> Snapshot:
            instances = self._instances()
            ids = {i["InstanceId"]: n for n, i in instances.items()}
            volume = self._volume()
            address = self._address()
            nodes = {
                n: Node(n, i["InstanceId"], i["State"]["Name"], i.get("PublicIpAddress", ""))
                for n, i in instances.items()
            }
            tags = {t["Key"]: t["Value"] for t in volume.get("Tags", [])}
            holder = self._attached_to(volume)
            return Snapshot(
                nodes=nodes,
                volume_holder=ids.get(holder) if holder else None,
                ip_holder=ids.get(address.get("InstanceId", "")),
                floating_ip=address["PublicIp"],
                lock=tags.get(LOCK_TAG),
            )

        return self._do("reading the stack from the EC2 API", read)

    def power_off(self, node: str) -> None:
        def run():
            inst = self._instances()[node]
            if inst["State"]["Name"] != "stopped":
                # Force: the node is being fenced, it may be hung and never finish a clean stop.
                self.ec2.stop_instances(InstanceIds=[inst["InstanceId"]], Force=True)
            self._wait("instance_stopped", InstanceIds=[inst["InstanceId"]])

        self._do(f"stopping {node}", run)

    def power_on(self, node: str) -> None:
        def run():
            inst = self._instances()[node]
            if inst["State"]["Name"] != "running":
                if inst["State"]["Name"] == "stopping":
                    self._wait("instance_stopped", InstanceIds=[inst["InstanceId"]])
                self.ec2.start_instances(InstanceIds=[inst["InstanceId"]])
            self._wait("instance_running", InstanceIds=[inst["InstanceId"]])

        self._do(f"starting {node}", run)

    def detach_volume(self, node: str) -> None:
        def run():
            volume = self._volume()
            inst = self._instances()[node]
            if self._attached_to(volume) != inst["InstanceId"]:
                return
            # InstanceId is required by the emulators even when the volume has one attachment.
            self.ec2.detach_volume(VolumeId=volume["VolumeId"], InstanceId=inst["InstanceId"])
            self._wait("volume_available", VolumeIds=[volume["VolumeId"]])

        self._do(f"detaching the volume from {node}", run)

    def attach_volume(self, node: str) -> None:
        def run():
            volume = self._volume()
            inst = self._instances()[node]
            holder = self._attached_to(volume)
            if holder == inst["InstanceId"]:
                return
            if holder is not None:
                raise CloudError(f"the data volume is still attached to {holder}")
            self.ec2.attach_volume(
                VolumeId=volume["VolumeId"], InstanceId=inst["InstanceId"], Device=DEVICE
            )
            self._wait("volume_in_use", VolumeIds=[volume["VolumeId"]])

        self._do(f"attaching the volume to {node}", run)

    def unassign_ip(self) -> None:
        def run():
            address = self._address()
            if address.get("AssociationId"):
                self.ec2.disassociate_address(AssociationId=address["AssociationId"])

        self._do("disassociating the Elastic IP", run)

    def assign_ip(self, node: str) -> None:
        def run():
            address = self._address()
            inst = self._instances()[node]
            if address.get("InstanceId") == inst["InstanceId"]:
                return
            self.ec2.associate_address(
                AllocationId=address["AllocationId"],
                InstanceId=inst["InstanceId"],
                AllowReassociation=False,
            )

        self._do(f"associating the Elastic IP with {node}", run)

    def write_lock(self, value: str | None) -> None:
        def run():
            volume_id = self._volume()["VolumeId"]
            if value is None:
                self.ec2.delete_tags(Resources=[volume_id], Tags=[{"Key": LOCK_TAG}])
            else:
                self.ec2.create_tags(
                    Resources=[volume_id], Tags=[{"Key": LOCK_TAG, "Value": value}]
                )

        self._do("recording the promotion on the volume", run)
