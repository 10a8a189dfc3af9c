"""What every blueprint's VM gets, whatever runs on it: the admin user, SSH and upgrade settings,
docker's log rotation, and the #cloud-config document that writes a renderer's files."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from blueprints.render.common import dump_json, dump_yaml, static_file

DEPLOY_USER = "deploy"


def host_files(docker: bool = True) -> dict[str, str]:
    """SSH hardening, unattended security upgrades and (where docker runs) its log rotation."""
    files = {
        "/etc/ssh/sshd_config.d/10-blueprints.conf": static_file("sshd-hardening.conf"),
        "/etc/apt/apt.conf.d/52blueprints-auto-upgrades": static_file("auto-upgrades.conf"),
    }
    if docker:
        # The default json-file log driver never rotates; a chatty container would fill the disk.
        files["/etc/docker/daemon.json"] = dump_json(
            {"log-driver": "json-file", "log-opts": {"max-file": "3", "max-size": "10m"}}
        )
    return files


def cloud_config(
    ssh_keys: Sequence[str],
    files: Mapping[str, str],
    permissions: Callable[[str], str],
    packages: Sequence[str],
    runcmd: Sequence[str],
    **extra: object,
) -> str:
    """The user data: the `deploy` admin user (keys only, passwordless sudo), no password or root
    SSH logins, the packages, every file (root-owned, in the order given) and the commands."""
    deploy_user: dict[str, object] = {
        "name": DEPLOY_USER,
        "shell": "/bin/bash",
        "lock_passwd": True,
        "sudo": "ALL=(ALL) NOPASSWD:ALL",
    }
    if ssh_keys:
        # cloud-init's schema wants at least one key when the list is given at all.
        deploy_user["ssh_authorized_keys"] = list(ssh_keys)
    config: dict[str, object] = {
        "package_update": True,
        "packages": list(packages),
        "ssh_pwauth": False,
        "disable_root": True,
        "users": [deploy_user],
        "write_files": [
            {"path": path, "content": text, "owner": "root:root", "permissions": permissions(path)}
            for path, text in files.items()
        ],
        "runcmd": list(runcmd),
        **extra,
    }
    return "#cloud-config\n" + dump_yaml(config)


def secret_values(
    secrets: Mapping[str, str], names: Sequence[str], service: str | None = None
) -> dict[str, str]:
    """The values of the named secrets, in the order given; a missing one is named with the
    command that sets it (the program reports missing secrets first; this guards other callers)."""
    for var in names:
        if var not in secrets:
            owner = f" (secret_env of service {service})" if service else ""
            raise ValueError(
                f"secret {var}{owner} has no value; set it with "
                f"`pulumi config set --secret --path 'blueprints:secrets.{var}'`"
            )
    return {var: secrets[var] for var in names}
