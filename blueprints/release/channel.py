"""The release channel's Pulumi resources: the stack's deploy key and the commands that hand a
release to the node holding the data volume (see CONTRACT.md): the release agent first (it
lives on the volume, so it travels like a release and never changes a machine), then the
secrets, then the release itself.

The commands have an `update` command, so pulumi-command runs it in place when their stdin
changes ("If an `update` command isn't provided, then `create` will also be run when the
resource's inputs are modified", pulumi-command's remote.Command docs): a release is an
update of `<prefix>-release`, never a new server. The release document is not secret, so
`pulumi preview --diff` shows its changed lines; the secret files travel in their own command,
whose stdin is a secret.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pulumi
import pulumi_tls as tls
from pulumi_command import remote

from blueprints.release import agent_source
from blueprints.release.bundle import Documents
from blueprints.render.single_vm import AGENT_SHIM, INSTALL_AGENT
from blueprints.render.vm import DEPLOY_USER

# A new server answers SSH before cloud-init has installed the agent; waiting for cloud-init
# first makes the first release of a fresh node just work. `|| true`: where cloud-init is not
# there (or exits non-zero for an old error) the agent itself says what is missing.
WAIT_FOR_CLOUD_INIT = "cloud-init status --wait >/dev/null 2>&1 || true; "
AGENT_COMMAND = f"{WAIT_FOR_CLOUD_INIT}sudo {INSTALL_AGENT}"
SECRETS_COMMAND = f"{WAIT_FOR_CLOUD_INIT}sudo {AGENT_SHIM} secrets"
RELEASE_COMMAND = f"{WAIT_FOR_CLOUD_INIT}sudo {AGENT_SHIM} deploy"
# A fresh server takes a minute or two to answer SSH; pulumi-command retries each failed dial.
DIAL_ERROR_LIMIT = 40
PER_DIAL_TIMEOUT = 15


def deploy_key(name: str, parent: pulumi.Resource) -> tls.PrivateKey:
    """The stack's deploy key: the only key a bootstrap authorizes; a secret of the stack."""
    return tls.PrivateKey(
        name,
        algorithm="ED25519",
        opts=pulumi.ResourceOptions(parent=parent, additional_secret_outputs=["privateKeyOpenssh"]),
    )


def connection(host: pulumi.Input[str], key: tls.PrivateKey) -> remote.ConnectionArgs:
    """SSH as the deploy user with the stack's deploy key, retrying while a new server boots."""
    return remote.ConnectionArgs(
        host=host,
        user=DEPLOY_USER,
        private_key=pulumi.Output.secret(key.private_key_openssh),
        dial_error_limit=DIAL_ERROR_LIMIT,
        per_dial_timeout=PER_DIAL_TIMEOUT,
    )


def deliver(
    prefix: str,
    *,
    host: pulumi.Input[str],
    key: tls.PrivateKey,
    secrets: pulumi.Input[Mapping[str, str]],
    has_secrets: bool,
    documents: Callable[[str, Mapping[str, str]], Documents],
    volume_id: pulumi.Input[str],
    depends_on: Sequence[pulumi.Resource],
    parent: pulumi.Resource,
) -> remote.Command:
    """`<prefix>-release`, after `<prefix>-release-agent` and, when the app has secrets,
    `<prefix>-release-secrets`.

    documents(deploy private key, secret values) renders both documents; the key only keys the
    digests that name the secrets. The releases live on the data volume, so a new volume (one
    restored from a snapshot, say) gets all three again: its id is their trigger, and a changed
    trigger runs the command once more (pulumi-command replaces it; there is no delete command,
    so nothing is undone on the node)."""
    docs = pulumi.Output.all(key.private_key_openssh, secrets).apply(
        lambda v: documents(v[0], dict(v[1] or {}))
    )
    common = {
        "connection": connection(host, key),
        "triggers": [volume_id],
        # Otherwise the previous output is sent as environment variables, which a stock sshd
        # refuses (AcceptEnv), and each update warns about it.
        "add_previous_output_in_env": False,
    }
    agent = remote.Command(
        f"{prefix}-release-agent",
        **common,
        create=AGENT_COMMAND,
        update=AGENT_COMMAND,
        stdin=agent_source(),
        opts=pulumi.ResourceOptions(parent=parent, depends_on=list(depends_on)),
    )
    after = [*depends_on, agent]
    if has_secrets:
        sent = remote.Command(
            f"{prefix}-release-secrets",
            **common,
            create=SECRETS_COMMAND,
            update=SECRETS_COMMAND,
            stdin=pulumi.Output.secret(docs.apply(lambda d: d.secrets or "")),
            # Deleting the resource leaves the node as it is (no delete command).
            opts=pulumi.ResourceOptions(parent=parent, depends_on=after),
        )
        after = [*after, sent]
    return remote.Command(
        f"{prefix}-release",
        **common,
        create=RELEASE_COMMAND,
        update=RELEASE_COMMAND,
        # Not secret: its digests are keyed, and `pulumi preview --diff` shows what changes.
        stdin=pulumi.Output.unsecret(docs.apply(lambda d: d.release)),
        opts=pulumi.ResourceOptions(parent=parent, depends_on=after),
    )
