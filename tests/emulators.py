"""Local cloud emulators for failover tests, on 127.0.0.1 only, stopped by PID."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FaultProxy:
    """An HTTP proxy in front of the EC2 emulator that answers chosen API actions with an error
    instead of forwarding them, as a real endpoint under load or a busy resource would.

    It also logs every call (action, User-Agent), stamps answers with its own clock
    (`clock_offset`: a cloud whose clock differs from the caller's), and gives key pairs what
    EC2 promises and moto 5.2 lacks: DeleteKeyPair by KeyPairId deletes that key pair only
    (moto deletes by name and ignores the id), and creating or deleting a key pair is atomic
    (moto checks the name and stores the pair in two steps)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urllib.parse.urlsplit(upstream)
        self.pending: dict[str, list[tuple[int, str]]] = {}
        self.lock = threading.Lock()
        self.key_pairs = threading.Lock()
        self.calls: list[tuple[str, str]] = []
        self.clock_offset = 0.0
        self._admins: dict[str, object] = {}
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                # Headers and body go out in separate writes; without this, Nagle's algorithm
                # and delayed ACKs add 40 ms to every call.
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def date_time_string(self, timestamp=None):
                now = time.time() + proxy.clock_offset if timestamp is None else timestamp
                return super().date_time_string(now)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                params = urllib.parse.parse_qs(body.decode())
                action = params.get("Action", [""])[0]
                with proxy.lock:
                    proxy.calls.append((action, self.headers.get("User-Agent", "")))
                    queue = proxy.pending.get(action) or []
                    fault = queue.pop(0) if queue else None
                if fault:
                    status, code = fault
                    payload = (
                        '<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>'
                        f"<Code>{code}</Code><Message>injected for {action}</Message>"
                        "</Error></Errors><RequestID>fault</RequestID></Response>"
                    ).encode()
                    self._answer(status, payload, "text/xml")
                    return
                if action in ("CreateKeyPair", "DeleteKeyPair"):
                    with proxy.key_pairs:
                        if action == "DeleteKeyPair" and "KeyPairId" in params:
                            body = proxy._delete_by_id(params, self.headers)
                        self._forward(body)
                    return
                self._forward(body)

            def _forward(self, body: bytes) -> None:
                conn = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=30
                )
                # (the length is set anew: the body may have been rewritten)
                skip = ("host", "content-length")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                conn.request("POST", self.path, body, headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                self._answer(resp.status, data, resp.getheader("Content-Type", "text/xml"))

            def _answer(self, status: int, data: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 128  # many clients at once (racing promoters)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _delete_by_id(self, params: dict[str, list[str]], headers) -> bytes:
        """The DeleteKeyPair request to send moto: by the name of the pair with this id, or by
        a name that cannot exist when no pair has it (EC2 answers success either way)."""
        pair_id = params["KeyPairId"][0]
        # The region is in the request's credential scope: Credential=key/date/region/ec2/...
        region = headers.get("Authorization", "").split("/")[2]
        admin = self._admins.get(region)
        if admin is None:
            admin = self._admins[region] = boto3.client(
                "ec2",
                endpoint_url=urllib.parse.urlunsplit(self.upstream),
                region_name=region,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
        pairs = admin.describe_key_pairs()["KeyPairs"]
        name = next((p["KeyName"] for p in pairs if p["KeyPairId"] == pair_id), f"gone-{pair_id}")
        rest = {k: v for k, v in params.items() if k != "KeyPairId"}
        return urllib.parse.urlencode({**rest, "KeyName": [name]}, doseq=True).encode()

    def shift_clock(self, seconds: float) -> None:
        """Move the clock of the answers' Date headers by `seconds`."""
        with self.lock:
            self.clock_offset += seconds

    def calls_by(self, agent: str) -> list[str]:
        """The actions a client whose User-Agent contains `agent` called."""
        with self.lock:
            return [action for action, ua in self.calls if agent in ua]

    def fail_next(self, action: str, status: int, code: str) -> None:
        with self.lock:
            self.pending.setdefault(action, []).append((status, code))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


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

    def ec2(self, region: str = "eu-central-1", url: str | None = None, agent: str | None = None):
        # One attempt per call: retries are the failover code's job, and the tests watch them.
        # `agent` is added to the User-Agent, so a proxy's log tells clients apart.
        return boto3.client(
            "ec2",
            endpoint_url=url or self.url,
            config=Config(
                retries={"total_max_attempts": 1, "mode": "standard"}, user_agent_extra=agent
            ),
            region_name=region,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


def build_single_vm(
    ec2,
    app: str = "shop",
    stack: str = "single-vm-localstack",
    zone: str = "eu-central-1a",
    subnet_id: str | None = None,
) -> dict[str, str]:
    """What the single-vm blueprint creates, as the emulator sees it: two tagged instances
    (spare stopped), a tagged volume attached to the primary, a tagged EIP on the primary.
    Several stacks may share one `subnet_id` (ids["subnet"] of the first)."""
    tags = [
        {"Key": "app", "Value": app},
        {"Key": "blueprint", "Value": "single-vm"},
        {"Key": "stack", "Value": stack},
    ]
    if subnet_id is None:
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24", AvailabilityZone=zone)
        subnet_id = subnet["Subnet"]["SubnetId"]
        # As the blueprint's subnet: a started instance gets its own public address.
        ec2.modify_subnet_attribute(SubnetId=subnet_id, MapPublicIpOnLaunch={"Value": True})
    image = ec2.describe_images(Filters=[{"Name": "name", "Values": ["*ubuntu*"]}])["Images"]
    ami = image[0]["ImageId"] if image else "ami-12c6146b"
    ids: dict[str, str] = {"subnet": subnet_id}
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
