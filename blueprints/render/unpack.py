"""Turn a plan's user data back into files: what `blueprints render` writes to disk.

Reading the user data the program actually passed to each server (rather than calling the
renderers a second time) guarantees the files on disk are exactly what the VM receives.
"""

from __future__ import annotations

import base64
import gzip
import re
from typing import Any

from blueprints.render.common import dump_json
from blueprints.targets import userdata
from blueprints.yaml_text import fast_load

SERVER_TYPES = ("hcloud:index/server:Server", "aws:ec2/instance:Instance")


def _decode(entry: dict[str, Any]) -> str:
    content = entry.get("content", "")
    encoding = str(entry.get("encoding", "text")).lower()
    if encoding in ("b64", "base64"):
        return base64.b64decode(content).decode()
    if encoding in ("gz+b64", "gzip+base64", "gz+base64", "gzip+b64"):
        return gzip.decompress(base64.b64decode(content)).decode()
    return str(content)


def user_data_files(user_data: str) -> dict[str, str]:
    """Path on the VM (without the leading /) -> text, for every write_files entry."""
    doc = fast_load(user_data) or {}
    files = {}
    for entry in doc.get("write_files", []) or []:
        files[str(entry["path"]).lstrip("/")] = _decode(entry)
    return files


def server_user_data(resource) -> str | None:
    """The cloud-config text a planned server receives, decoded from the field its cloud uses."""
    inputs = resource.plain_inputs()
    if isinstance(inputs.get("userData"), str):
        return userdata.decode(inputs["userData"])
    if isinstance(inputs.get("userDataBase64"), str):
        return userdata.decode(inputs["userDataBase64"], base64_always=True)
    return None


COMMAND_TYPE = "command:remote:Command"


def release_files(plan) -> dict[str, str]:
    """Relative path -> text of the release a plan delivers: `release/release.yaml` (the
    document the node receives), `release/<file path>` per file, and the same for the secrets
    document (placeholders in a plan), so the release reads beside each server's bootstrap."""
    from blueprints.release.bundle import parse_delivered

    files: dict[str, str] = {}
    for res in plan.resources:
        if res.type != COMMAND_TYPE:
            continue
        stdin = res.plain_inputs().get("stdin")
        delivered = parse_delivered(stdin)
        if delivered is None:
            continue
        name, body = delivered
        files[f"release/{name}"] = stdin
        for path, entry in body["files"].items():
            files[f"release/{str(path).lstrip('/')}"] = entry["text"]
    return files


NOMAD_JOB_TYPE = "nomad:index/job:Job"
NOMAD_VARIABLE_TYPE = "nomad:index/variable:Variable"
_JOB_ID = re.compile(r'^job\s+"([^"]+)"', re.M)


def nomad_files(plan) -> dict[str, str]:
    """Relative path -> text of what a plan sends through Nomad's API: `release/jobs/<job
    id>.nomad.hcl` per job and `release/variables/<path>.json` per Variable (its items;
    placeholders in a plan)."""
    files: dict[str, str] = {}
    for res in plan.resources:
        inputs = res.plain_inputs()
        if res.type == NOMAD_JOB_TYPE and isinstance(inputs.get("jobspec"), str):
            found = _JOB_ID.search(inputs["jobspec"])
            job = found.group(1) if found else res.name
            files[f"release/jobs/{job}.nomad.hcl"] = inputs["jobspec"]
        elif res.type == NOMAD_VARIABLE_TYPE and isinstance(inputs.get("path"), str):
            items = inputs.get("items")
            files[f"release/variables/{inputs['path']}.json"] = dump_json(
                {"Items": items if isinstance(items, dict) else {}}
            )
    return files


KUBERNETES_PREFIX = "kubernetes:"
HELM_RELEASE_TYPE = "kubernetes:helm.sh/v3:Release"


def kubernetes_files(plan) -> dict[str, str]:
    """Relative path -> text of what a plan sends through the Kubernetes API: `release/k8s/<kind>-
    <namespace>-<name>.yaml` per object (Secrets with placeholders, as planned) and
    `release/k8s/helm-<name>.yaml` per Helm release (chart, version, repository, values)."""
    from blueprints.render.common import dump_yaml

    files: dict[str, str] = {}
    for res in plan.resources:
        if not res.type.startswith(KUBERNETES_PREFIX):
            continue
        inputs = res.plain_inputs()
        if res.type == HELM_RELEASE_TYPE:
            files[f"release/k8s/helm-{inputs.get('name', res.name)}.yaml"] = dump_yaml(inputs)
            continue
        meta = inputs.get("metadata")
        kind = inputs.get("kind")
        if not isinstance(meta, dict) or not isinstance(kind, str):
            continue
        where = f"{meta['namespace']}-" if meta.get("namespace") else ""
        files[f"release/k8s/{kind.lower()}-{where}{meta.get('name')}.yaml"] = dump_yaml(inputs)
    return files


def stack_files(plan) -> dict[str, str]:
    """Relative path -> text: `<server>/user-data.yaml` and `<server>/<file path>` per server
    (the bootstrap), and the release beside them (release_files)."""
    files: dict[str, str] = {**release_files(plan), **nomad_files(plan), **kubernetes_files(plan)}
    for res in plan.resources:
        if res.type not in SERVER_TYPES:
            continue
        user_data = server_user_data(res)
        if user_data is None:
            continue
        files[f"{res.name}/user-data.yaml"] = user_data
        for path, text in user_data_files(user_data).items():
            files[f"{res.name}/{path}"] = text
    return dict(sorted(files.items()))
