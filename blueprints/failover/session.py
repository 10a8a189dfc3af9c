"""Everything `watch`, `promote` and `park` need for one stack: settings, spec, cloud client.

Credentials come from the environment, as in a CI job: HCLOUD_TOKEN for Hetzner (the same
token as `hcloud:token`), the usual AWS variables or profile for AWS. LocalStack gets test
credentials and its endpoint from the stack. HCLOUD_ENDPOINT points the Hetzner client
elsewhere (an API proxy, or a test server).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blueprints.failover.cloud import Cloud
from blueprints.failover.health import http_probe
from blueprints.failover.record import record_active
from blueprints.plan import read_project, read_stack_file
from blueprints.settings import BACKUP_SECRET_KEY, NAMESPACE, StackSettings, parse_settings
from blueprints.spec import AppSpec, SpecError, load_spec


@dataclass
class Session:
    stack: str
    project_dir: Path
    stack_file: Path
    settings: StackSettings
    app: AppSpec
    cloud: Cloud
    probe: Callable[[str], bool]
    use_pulumi: bool = True

    def record(self, node: str) -> str:
        return record_active(
            self.project_dir, self.stack, self.stack_file, node, use_pulumi=self.use_pulumi
        )


def stack_settings(project_dir: Path, stack: str) -> tuple[Path, Path, StackSettings]:
    """(the stack file, its path relative to the project, its settings), checked."""
    _, stacks_dir, _ = read_project(project_dir)
    path, rel, config = read_stack_file(stacks_dir, stack, project_dir)
    prefix = f"{NAMESPACE}:"
    # (the app's secrets and the backup's secret key are not settings)
    raw: dict[str, Any] = {
        k[len(prefix) :]: v
        for k, v in config.items()
        if k.startswith(prefix) and k not in (f"{prefix}secrets", f"{prefix}{BACKUP_SECRET_KEY}")
    }
    return path, rel, parse_settings(raw, str(rel))


def read_stack(project_dir: Path, stack: str) -> tuple[Path, StackSettings, AppSpec]:
    path, rel, settings = stack_settings(project_dir, stack)
    if settings.blueprint != "single-vm":
        raise SpecError(
            [f"{rel}: failover applies to the single-vm blueprint, not {settings.blueprint}"]
        )
    app = load_spec(project_dir / settings.spec)
    return path, settings, app


def hcloud_cloud(
    app: AppSpec, stack: str, token: str | None = None, endpoint: str | None = None
) -> Cloud:
    from hcloud import Client

    from blueprints.failover.hcloud_cloud import HcloudCloud

    token = token or os.environ.get("HCLOUD_TOKEN")
    if not token:
        raise SpecError(
            ["HCLOUD_TOKEN is not set; export the Hetzner Cloud API token of the project"]
        )
    endpoint = endpoint or os.environ.get("HCLOUD_ENDPOINT") or "https://api.hetzner.cloud/v1"
    client = Client(token=token, api_endpoint=endpoint, application_name="blueprints")
    return HcloudCloud(client, app.name, stack)


def aws_cloud(settings: StackSettings, app: AppSpec, stack: str, poll: float = 5.0) -> Cloud:
    import boto3

    from blueprints.failover.aws_cloud import AwsCloud

    kwargs: dict[str, Any] = {"region_name": settings.region}
    if settings.target == "localstack":
        kwargs |= {
            "endpoint_url": settings.localstack_endpoint,
            "aws_access_key_id": os.environ.get("BLUEPRINTS_LOCALSTACK_KEY", "test"),
            "aws_secret_access_key": "test",
        }
    return AwsCloud(boto3.client("ec2", **kwargs), app.name, stack, poll=poll)


def open_session(project_dir: Path, stack: str, *, cloud: Cloud | None = None) -> Session:
    path, settings, app = read_stack(project_dir, stack)
    if cloud is None:
        if settings.cloud == "hcloud":
            cloud = hcloud_cloud(app, stack)
        else:
            cloud = aws_cloud(settings, app, stack)
    probe = http_probe(app, settings.health_url, timeout=settings.probe_timeout)
    return Session(stack, project_dir, path, settings, app, cloud, probe)
