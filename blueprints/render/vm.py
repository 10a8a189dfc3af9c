"""What every blueprint's VM gets, whatever runs on it: the admin user, SSH and upgrade settings,
apt's patience with a held lock, Docker's daemon settings, the package check, and the
#cloud-config document that writes a renderer's files and stops at the first failing command."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from importlib import resources

from blueprints.render.common import dump_json, dump_yaml, render_template, static_file

DEPLOY_USER = "deploy"
SCRIPTS = "/usr/local/lib/blueprints"
# How long an apt or dpkg run waits for another one (apt-daily, unattended-upgrades, cloud-init's
# own install) to let go of dpkg's lock, and how long the package check keeps trying altogether.
APT_LOCK_TIMEOUT_SECONDS = 600
PACKAGES_DEADLINE_SECONDS = 1200
# The longest a first boot may legitimately take: cloud-init's own package step (which may wait
# APT_LOCK_TIMEOUT_SECONDS for the lock), then install-packages, whose last try may start just
# before its deadline and wait for the lock again, and a margin for the downloads and the rest
# of the bootstrap. What waits for a first boot with a limit waits at least this long.
FIRST_BOOT_MARGIN_SECONDS = 600
FIRST_BOOT_MAX_SECONDS = (
    APT_LOCK_TIMEOUT_SECONDS
    + PACKAGES_DEADLINE_SECONDS
    + APT_LOCK_TIMEOUT_SECONDS
    + FIRST_BOOT_MARGIN_SECONDS
)
APT_LOCK_CONF = "/etc/apt/apt.conf.d/51blueprints-lock-timeout"
INSTALL_PACKAGES = f"{SCRIPTS}/install-packages"
# Written when the user data's commands stop at a failing one; what runs over SSH later
# (install-agent, install-node-ready, the standby's image pull) refuses to go on while it exists.
BOOTSTRAP_FAILED = "/var/lib/blueprints/bootstrap-failed"
CLOUD_INIT_LOG = "/var/log/cloud-init-output.log"
CLOUD_INIT_RUNCMD = "/var/lib/cloud/instance/scripts/runcmd"
# What to do about it, printed after the marker's text (one line, no quotes or `$`: it goes into
# double-quoted shell strings).
BOOTSTRAP_FAILED_HINT = (
    "to go on, fix the cause, then either replace this server (pulumi up --replace <its urn>) "
    f"or finish its bootstrap by hand (the commands after the failing one in {CLOUD_INIT_RUNCMD}) "
    f"and remove {BOOTSTRAP_FAILED}; then run pulumi up again"
)
DOCKER_DAEMON_JSON = "/etc/docker/daemon.json"
UNITS = "/etc/systemd/system"
# The first certificate, asked for again once DNS answers (the Caddy rungs: acme_retry_files).
ACME_RETRY = f"{SCRIPTS}/acme-retry"
ACME_RETRY_UNIT = "blueprints-acme-retry"
ACME_RETRY_STATE = "/run/blueprints/acme-retry.json"


def docker_daemon_settings() -> dict[str, object]:
    """/etc/docker/daemon.json: written before cloud-init installs Docker, so its first start
    has them."""
    return {
        # The default json-file log driver never rotates; a chatty container would fill the disk.
        "log-driver": "json-file",
        "log-opts": {"max-file": "3", "max-size": "10m"},
        # Containers keep running while dockerd itself restarts (an upgrade told to restart it,
        # an admin's `systemctl restart docker`). No swarm mode here, which live-restore
        # does not support.
        "live-restore": True,
    }


def host_files(packages: Sequence[str], docker: bool = True) -> dict[str, str]:
    """SSH hardening, unattended security upgrades (no automatic reboot), apt waiting for its
    lock, the check that `packages` are installed and (where docker runs) Docker's settings."""
    files = {
        "/etc/ssh/sshd_config.d/10-blueprints.conf": static_file("sshd-hardening.conf"),
        "/etc/apt/apt.conf.d/52blueprints-auto-upgrades": static_file("auto-upgrades.conf"),
        APT_LOCK_CONF: render_template(
            "apt-lock-timeout.conf.j2", timeout=APT_LOCK_TIMEOUT_SECONDS
        ),
        INSTALL_PACKAGES: render_template(
            "install-packages.sh.j2",
            packages=sorted(packages),
            lock_timeout=APT_LOCK_TIMEOUT_SECONDS,
            deadline=PACKAGES_DEADLINE_SECONDS,
        ),
    }
    if docker:
        files[DOCKER_DAEMON_JSON] = dump_json(docker_daemon_settings())
    return files


def bootstrap_guard() -> list[str]:
    """The first commands of every user data's runcmd: stop at the first command that fails
    (cloud-init runs them with sh, which would otherwise carry on with a half-installed node),
    leave BOOTSTRAP_FAILED behind when that happens, and make sure the packages are there."""
    record = (
        f"mkdir -p {BOOTSTRAP_FAILED.rsplit('/', 1)[0]} && "
        f'echo "the bootstrap stopped at a failing command (exit status $status); '
        f'{CLOUD_INIT_LOG} shows which" >{BOOTSTRAP_FAILED}'
    )
    return [
        "set -e",
        f"trap 'status=$?; if [ \"$status\" -ne 0 ]; then {record}; fi' EXIT",
        INSTALL_PACKAGES,
    ]


def install_node_ready(target: str, name: str) -> str:
    """The installer of a cluster node's ready script (Pulumi sends the script over SSH)."""
    return render_template(
        "install-node-ready.sh.j2",
        target=target,
        name=name,
        bootstrap_failed=BOOTSTRAP_FAILED,
        bootstrap_failed_hint=BOOTSTRAP_FAILED_HINT,
        cloud_init_log=CLOUD_INIT_LOG,
    )


def acme_retry_source() -> str:
    """blueprints/render/acme_retry.py, the program shipped as ACME_RETRY."""
    return (resources.files("blueprints.render") / "acme_retry.py").read_text(encoding="utf-8")


def acme_retry_files(
    config: str, storage: str, restart: Sequence[str], running: Sequence[str]
) -> dict[str, str]:
    """acme-retry and its unit and timer (every minute): it reads the proxy's routes from
    `config` (a release file) and its certificates from `storage` (on the host), and runs
    `restart` once a domain without a certificate starts to resolve to the server, if `running`
    (a command that succeeds and prints something while the proxy runs) says it runs."""
    if not running or "--" in running or "--" in restart:
        raise ValueError("acme-retry needs a check that the proxy runs, and no `--` in a command")
    return {
        ACME_RETRY: acme_retry_source(),
        f"{UNITS}/{ACME_RETRY_UNIT}.service": render_template(
            "acme-retry.service.j2",
            script=ACME_RETRY,
            config=config,
            storage=storage,
            state=ACME_RETRY_STATE,
            restart=list(restart),
            running=list(running),
        ),
        f"{UNITS}/{ACME_RETRY_UNIT}.timer": render_template(
            "acme-retry.timer.j2", service=f"{ACME_RETRY_UNIT}.service"
        ),
    }


def cloud_config(
    ssh_keys: Sequence[str],
    files: Mapping[str, str],
    permissions: Callable[[str], str],
    packages: Sequence[str],
    runcmd: Sequence[str],
    **extra: object,
) -> str:
    """The user data: the `deploy` admin user (keys only, passwordless sudo), no password or root
    SSH logins, the packages, every file (root-owned, in the order given) and the commands, after
    bootstrap_guard's (the files must include host_files(packages))."""
    if files.get(INSTALL_PACKAGES) != host_files(packages, docker=False)[INSTALL_PACKAGES]:
        raise ValueError(f"{INSTALL_PACKAGES} must be host_files' for the same packages")
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
        "runcmd": [*bootstrap_guard(), *runcmd],
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
