"""The single-vm stack on AWS (or LocalStack), through boto3.

Instances, the EBS volume and the Elastic IP are found by the tags the blueprint sets (app,
blueprint, node). Waiters await each change; the emulators finish at once, real EC2 takes
seconds to a minute.

The promotion lock is an EC2 key pair named blueprints-lock-<app>-<stack> (free, unique by
name: a second create answers InvalidKeyPair.Duplicate), its record in the key pair's tags;
it is deleted by its KeyPairId. The cloud's clock is the Date header of the API's answer.
"""

from __future__ import annotations

import time

from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from blueprints.failover.cloud import (
    NODES,
    Cloud,
    CloudError,
    Node,
    OutOfTime,
    Snapshot,
    TransientCloudError,
    date_header,
)
from blueprints.failover.lock import LockRecord, StoredLock, lock_name

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
        self.tags = {"app": app, "blueprint": blueprint, "stack": stack}
        self._lock_name = lock_name(app, stack)
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
        """A boto3 waiter, polled one attempt at a time so that every poll calls `tick` (the
        promotion's lock heartbeat) and the command's budget can cut it short (OutOfTime)."""
        waiter = self.ec2.get_waiter(name)
        delay, attempts = self.waiter["Delay"], self.waiter["MaxAttempts"]
        what = name.replace("_", " ")
        for attempt in range(attempts):
            left = self.time_left()
            if left is not None and left <= 0:
                raise OutOfTime(f"no time left to wait for {what}")
            try:
                waiter.wait(WaiterConfig={"Delay": 1, "MaxAttempts": 1}, **kwargs)
                return
            except WaiterError as exc:
                # Only "not yet" is polled again; a terminal state or an error is the answer.
                if not str(exc.kwargs.get("reason", "")).startswith("Max attempts exceeded"):
                    raise
            if attempt == attempts - 1:
                break
            self.tick()  # the promotion's lock heartbeat, rate-limited by the promotion
            left = self.time_left()
            if left is not None and left <= delay:
                raise OutOfTime(f"still waiting for {what} when time ran out")
            time.sleep(delay)
        raise TransientCloudError(f"gave up waiting for {what} after {attempts} polls")

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
            holder = self._attached_to(volume)
            return Snapshot(
                nodes=nodes,
                volume_holder=ids.get(holder) if holder else None,
                ip_holder=ids.get(address.get("InstanceId", "")),
                floating_ip=address["PublicIp"],
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

    # -- the promotion lock ----------------------------------------------------------------

    @property
    def lock_name(self) -> str:
        return self._lock_name

    def _key_pairs(self) -> dict:
        return self.ec2.describe_key_pairs(
            Filters=[{"Name": "key-name", "Values": [self._lock_name]}]
        )

    def now(self) -> float:
        def run() -> float:
            headers = self._key_pairs().get("ResponseMetadata", {}).get("HTTPHeaders", {})
            date = headers.get("date")
            if not date:
                raise CloudError(
                    "the EC2 API answered without a Date header; the promotion lock needs the "
                    "cloud's clock"
                )
            return date_header(date, "the EC2 API")

        return self._do("reading the EC2 API's clock", run)

    def _lock_tags(self, record: LockRecord) -> list[dict[str, str]]:
        return [{"Key": k, "Value": v} for k, v in {**self.tags, **record.fields()}.items()]

    def create_lock(self, record: LockRecord) -> str | None:
        def run() -> str | None:
            try:
                made = self.ec2.create_key_pair(
                    KeyName=self._lock_name,
                    KeyType="ed25519",
                    TagSpecifications=[
                        {"ResourceType": "key-pair", "Tags": self._lock_tags(record)}
                    ],
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "InvalidKeyPair.Duplicate":
                    return None
                raise
            return made["KeyPairId"]  # the private key is dropped: nothing logs in with it

        return self._do(f"creating the key pair {self._lock_name}", run)

    def read_lock(self) -> StoredLock | None:
        def run() -> StoredLock | None:
            pairs = self._key_pairs()["KeyPairs"]
            if not pairs:
                return None
            tags = {t["Key"]: t["Value"] for t in pairs[0].get("Tags", [])}
            return StoredLock(pairs[0]["KeyPairId"], LockRecord.parse(tags))

        return self._do(f"reading the key pair {self._lock_name}", run)

    def update_lock(self, lock_id: str, record: LockRecord) -> bool:
        def run() -> bool:
            try:
                self.ec2.create_tags(Resources=[lock_id], Tags=self._lock_tags(record))
            except ClientError as exc:
                if "NotFound" in exc.response.get("Error", {}).get("Code", ""):
                    return False
                raise
            return True

        return self._do(f"updating the key pair {self._lock_name}", run)

    def delete_lock(self, lock_id: str) -> None:
        def run() -> None:
            try:
                self.ec2.delete_key_pair(KeyPairId=lock_id)
            except ClientError as exc:
                if "NotFound" not in exc.response.get("Error", {}).get("Code", ""):
                    raise

        self._do(f"deleting the key pair {self._lock_name}", run)
