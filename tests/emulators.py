"""Local cloud emulators for failover tests, on 127.0.0.1 only, stopped by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """moto's EC2 emulator (the code LocalStack's EC2 runs) in its own process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> MotoServer:
        exe = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen(
            [str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1).close()
                return self
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("moto_server did not answer within 30 s")

    def __exit__(self, *_exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).close()

    def ec2(self, region: str = "eu-central-1"):
        return boto3.client(
            "ec2",
            endpoint_url=self.url,
            region_name=region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


def build_single_vm(
    ec2, app: str = "shop", stack: str = "single-vm-localstack", zone: str = "eu-central-1a"
) -> dict[str, str]:
    """What the single-vm blueprint creates, as the emulator sees it: two tagged instances
    (spare stopped), a tagged volume attached to the primary, a tagged EIP on the primary."""
    tags = [
        {"Key": "app", "Value": app},
        {"Key": "blueprint", "Value": "single-vm"},
        {"Key": "stack", "Value": stack},
    ]
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24", AvailabilityZone=zone)
    subnet_id = subnet["Subnet"]["SubnetId"]
    # As the blueprint's subnet: a started instance gets its own public address.
    ec2.modify_subnet_attribute(SubnetId=subnet_id, MapPublicIpOnLaunch={"Value": True})
    image = ec2.describe_images(Filters=[{"Name": "name", "Values": ["*ubuntu*"]}])["Images"]
    ami = image[0]["ImageId"] if image else "ami-12c6146b"
    ids: dict[str, str] = {}
    for node in ("primary", "spare"):
        inst = ec2.run_instances(
            ImageId=ami,
            MinCount=1,
            MaxCount=1,
            InstanceType="t3.small",
            SubnetId=subnet_id,
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": [*tags, {"Key": "node", "Value": node}]}
            ],
        )["Instances"][0]
        ids[node] = inst["InstanceId"]
    ec2.stop_instances(InstanceIds=[ids["spare"]])
    vol = ec2.create_volume(
        AvailabilityZone=zone,
        Size=21,
        TagSpecifications=[{"ResourceType": "volume", "Tags": tags}],
    )
    ids["volume"] = vol["VolumeId"]
    ec2.attach_volume(VolumeId=vol["VolumeId"], InstanceId=ids["primary"], Device="/dev/sdf")
    eip = ec2.allocate_address(
        Domain="vpc", TagSpecifications=[{"ResourceType": "elastic-ip", "Tags": tags}]
    )
    ids["allocation"] = eip["AllocationId"]
    ids["eip"] = eip["PublicIp"]
    ec2.associate_address(AllocationId=eip["AllocationId"], InstanceId=ids["primary"])
    return ids
