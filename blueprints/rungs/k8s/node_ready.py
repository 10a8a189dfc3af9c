#!/usr/bin/env python3
"""k3s-node-ready: install a k3s node's secrets, bring it into its cluster, wait until Ready;
with --drain, empty the node before its machine is deleted.

Pulumi runs this on each k3s node over SSH, as root, one node after the other:

    sudo /usr/local/lib/blueprints/k3s-node-ready [--config PATH] [--cluster | --drain]

and moves on to the next node only once it has exited 0 here. It is what keeps a rolling
replacement from taking down more than one control plane at a time, so "0" has to mean "this
node is back and the cluster can lose a node again". --drain is the delete command of the same
ready command: Pulumi runs it on the old machine just before it deletes it (delete-before-replace,
or pulumi destroy), and deletes the machine only once it has exited 0.

Input
  * the node's configuration, a JSON file written by its bootstrap (no secrets): its name and
    role, whether it is the first control plane, the other control planes' API addresses, every
    node's name, where the token, the admin keys, the k3s drop-ins, the TLS directory and the
    joined marker live, the systemd unit, the time limits and the app's namespace (if any);
  * on stdin, one JSON object with exactly the keys admin_keys, token, ca, client_cert,
    client_key, pki and etcd_s3: the admins' OpenSSH public keys, the cluster token (a bare
    secret or k3s's K10<CA hash>::server:<secret>), the cluster's server CA, an admin client
    certificate and its key (group system:masters), on the first control plane the cluster's
    CAs and keys (pki, else null) and on control planes the etcd snapshot settings (etcd_s3, or
    null). The user data holds no secret: they all arrive here. stdin is a secret and none of it
    is ever printed. --drain reads and checks the same object.

What it does
  1. checks the configuration and stdin completely, then writes the token, the admin keys and
     (on control planes) the etcd S3 drop-in, atomically and only those whose content changed
     (the drop-in is removed when etcd_s3 is null);
  2. if the joined marker exists the node has been started before: go to 3. Otherwise this is a
     fresh machine; it asks the other control planes for /ping for up to join_wait seconds:
       - one answers: join through it. The node object of this name, if any, is the stale record
         of the machine this one replaces: it is deleted and waited for until it is gone (k3s
         removes a server's etcd member with it), and so is its node password secret;
       - none answers on the first control plane: found a new cluster (cluster-init) with the
         CAs from pki (exit 1, not joined, when stdin has no pki);
       - none answers elsewhere: exit 1 (its private network may not be up, or the cluster is
         down), marker not written;
     then it writes the join drop-in and the joined marker (before k3s first starts: a later
     run never deletes this machine's own node object), and enables and starts the unit;
  3. on a node that was joined before: starts the unit if it is not running, restarts it if it
     runs and the token or the etcd S3 drop-in changed (systemctl returns once k3s runs);
  4. waits, with the admin client certificate, until this node is Ready; on control planes until
     etcd answers /readyz/etcd here and every etcd member's node is Ready; with --cluster until
     every node of the cluster is Ready, there is one node labelled as an etcd member per
     control plane, and etcd's own member list (k3s's /db/info, asked as user "server" with the
     token's secret) has exactly one member per control plane (1 + len(peers) on a server,
     len(peers) on an agent), each on another Ready etcd node of the cluster (k3s names a member
     <node name>-<suffix>): a stale member of a replaced machine fails it; with
     app_namespace, once that namespace exists, until every Deployment and StatefulSet in it has
     all its replicas ready and updated.

With --drain it writes nothing and starts nothing: through the local API on a server (else the
first other control plane answering /ping within join_wait) it cordons the node, evicts its pods
(not those of DaemonSets, not mirror pods, not finished or terminating ones; an eviction a
PodDisruptionBudget refuses (429) is retried) and waits until they have left the node, all
within drain_timeout seconds. Then it deletes the Node through another control plane (k3s
removes a server's etcd member with it), so the machine has left the cluster before it is
deleted; the last control plane answering keeps its Node. A node the API does not list is done
already. When no API answers, the drain fails and Pulumi keeps the old machine.

Exit status: 0 ready (drained); 1 not ready (not drained) in time, no control plane to join or
to drain through, or systemd or the disk failed; 2 bad usage, configuration or stdin (nothing is
written then). Every message is one line starting with the node's name; a failure says what it
waited for and the last answer it got, never a traceback.

Standard library only, Python 3.8 or newer: it runs on the nodes' system Python.
"""

import base64
import concurrent.futures
import contextlib
import json
import os
import re
import ssl
import sys
import tempfile
import time
import urllib.parse

# --- node_kit: blueprints/release/node_kit.py, inlined here when the script is shipped ---
from blueprints.release.node_kit import (
    PREFIX,
    REQUIRED,
    Api,
    Exit,
    NotYet,
    Systemd,
    Waiter,
    _is_bool,
    _is_command,
    _is_number,
    _is_path,
    _is_path_or_null,
    _is_text,
    _is_url,
    _is_urls,
    check_admin_keys,
    check_pem,
    load_config,
    main,
    make_dirs,
    parse,
    parse_args,
    read_stdin,
    remove_file,
    say,
    seconds,
    shorten,
    write_file,
)

# --- end node_kit ---

DEFAULT_CONFIG = "/etc/blueprints/k3s/node.json"
USAGE = "usage: k3s-node-ready [--config PATH] [--cluster | --drain]"
PROG = "k3s-node-ready"

# The label k3s puts on every control plane that runs an etcd member.
ETCD_LABEL = "node-role.kubernetes.io/etcd"

STDIN_KEYS = ("admin_keys", "ca", "client_cert", "client_key", "etcd_s3", "pki", "token")
STDIN_EXPECTED = (
    "expected one JSON object with exactly the keys admin_keys (OpenSSH public keys, one per "
    "line), token (the cluster token), ca and client_cert (PEM certificates), client_key (a PEM "
    "private key), pki (null, or relative paths under the TLS directory to PEM texts) and "
    "etcd_s3 (null, or etcd-* k3s settings to strings, numbers or booleans)"
)
# The cluster token: printable ASCII without whitespace.
TOKEN = re.compile(r"[!-~]+")
# A Kubernetes node name (a DNS subdomain): it goes into API paths, so nothing else passes.
NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# A namespace name (a DNS label).
NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ETCD_S3_KEY = re.compile(r"^etcd-[a-z0-9]+(-[a-z0-9]+)*$")
PKI_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _is_node_name(value):
    return isinstance(value, str) and len(value) <= 253 and NODE_NAME.fullmatch(value) is not None


def _is_namespace_or_null(value):
    if value is None:
        return True
    return isinstance(value, str) and len(value) <= 63 and NAMESPACE.fullmatch(value) is not None


# The configuration's keys: (check, what the value must be, default or REQUIRED). Other keys are
# ignored, so that a newer bootstrap can add some.
CONFIG_FIELDS = {
    "name": (_is_node_name, "a Kubernetes node name (lowercase DNS name)", REQUIRED),
    "role": (lambda v: v in ("server", "agent"), '"server" or "agent"', REQUIRED),
    # The first control plane: the only node that may found a new cluster.
    "first": (_is_bool, "true or false", False),
    # The other control planes' API addresses (on an agent: all of them).
    "peers": (_is_urls, "a list of https:// URLs", REQUIRED),
    "local_api": (lambda v: v is None or _is_url(v), "null or an https:// URL", None),
    "nodes": (
        lambda v: isinstance(v, list) and len(v) > 0 and all(_is_node_name(n) for n in v),
        "a non-empty list of Kubernetes node names",
        REQUIRED,
    ),
    "unit": (_is_text, "a systemd unit name", REQUIRED),
    "systemctl": (_is_command, "a command (a string or a non-empty list of strings)", "systemctl"),
    "token_file": (_is_path, "an absolute path", REQUIRED),
    "admin_keys_file": (_is_path, "an absolute path", REQUIRED),
    "join_dropin": (_is_path, "an absolute path", REQUIRED),
    "joined_marker": (_is_path, "an absolute path", REQUIRED),
    "etcd_s3_dropin": (_is_path_or_null, "null or an absolute path", None),
    "tls_dir": (_is_path_or_null, "null or an absolute path", None),
    "join_wait": (_is_number, "a positive number", 120),
    "ready_timeout": (_is_number, "a positive number", 900),
    "progress_every": (_is_number, "a positive number", 15),
    "poll_every": (_is_number, "a positive number", 2),
    # Seconds a control plane gets to answer /ping (an unreachable one answers nothing).
    "ping_timeout": (_is_number, "a positive number", 3),
    # Seconds one request to the Kubernetes API may take at most.
    "request_timeout": (_is_number, "a positive number", 10),
    # --drain: seconds for cordoning, evicting and waiting until the pods have left the node.
    "drain_timeout": (_is_number, "a positive number", 600),
    # The app's namespace: once it exists, its Deployments and StatefulSets must be ready too.
    "app_namespace": (_is_namespace_or_null, "null or a Kubernetes namespace name", None),
}


def check_config(config, bad):
    """Checks the fields together (load_config has checked each); a command string becomes
    a list."""
    if isinstance(config["systemctl"], str):
        config["systemctl"] = [config["systemctl"]]
    server = config["role"] == "server"
    if server and config["local_api"] is None:
        raise bad("local_api must be an https:// URL on a server")
    if server and config["etcd_s3_dropin"] is None:
        raise bad("etcd_s3_dropin must be an absolute path on a server")
    if not server:
        for key in ("local_api", "etcd_s3_dropin"):
            if config[key] is not None:
                raise bad(f"{key} must be null on an agent")
        if config["first"]:
            raise bad("first must be false on an agent (only a server founds a cluster)")
    if config["first"] and config["tls_dir"] is None:
        raise bad("tls_dir must be an absolute path on the first server")
    if not config["peers"] and not config["first"]:
        raise bad("peers must not be empty unless first is true (this node joins through them)")
    if config["name"] not in config["nodes"]:
        raise bad(f"nodes must include this node's name ({config['name']})")


# -- stdin ----------------------------------------------------------------------------------------


def read_secrets(config, data):
    """Checks stdin; the errors name what is wrong, never what was sent."""
    name = config["name"]

    def bad(what):
        return Exit(2, f"{name}: refusing stdin: {what}; {STDIN_EXPECTED}")

    strings = ("admin_keys", "ca", "client_cert", "client_key", "token")
    value = read_stdin(data, STDIN_KEYS, strings, bad)
    check_pem(value, ("ca", "client_cert"), "client_key", bad)
    if not TOKEN.fullmatch(value["token"]):
        raise bad("token is empty or holds whitespace or a character that is not printable ASCII")
    check_admin_keys(value["admin_keys"], bad)
    check_pki(config, value["pki"], bad)
    check_etcd_s3(config, value["etcd_s3"], bad)
    try:
        value["tls"] = tls_context(value)
        value["supervisor_tls"] = tls_context(value, client=False)
    except Exit as e:
        raise bad(e.message) from None
    return value


def supervisor_password(token):
    """The password of k3s's supervisor (user "server"): of a K10<CA hash>::<user>:<password>
    token only its password part, as k3s itself parses it (clientaccess.parseToken: the
    supervisor keeps the password alone, so the full K10 string would not match); a bare token
    is the password."""
    if token.startswith("K10") and "::" in token:
        credentials = token.split("::", 1)[1]
        if ":" in credentials:
            return credentials.split(":", 1)[1]
    return token


def check_pki(config, pki, bad):
    if pki is None:
        return
    if not config["first"]:
        raise bad(
            "pki is given but this node is not the first control plane (its configuration says "
            "first: false), and only the first may found a cluster"
        )
    if not isinstance(pki, dict) or not pki:
        raise bad("pki is neither null nor a non-empty object")
    for number, (path, text) in enumerate(sorted(pki.items()), 1):
        parts = path.split("/")
        if not all(PKI_PART.fullmatch(part) and part not in (".", "..") for part in parts):
            # The path may be anything: it is not shown, only which entry it is.
            raise bad(
                f"pki entry {number} is not a relative path under the TLS directory (letters, "
                "digits, '_', '.', '-' and '/' only, no '..')"
            )
        if not isinstance(text, str) or "-----BEGIN " not in text:
            raise bad(f"pki entry {path} is not a PEM text (no BEGIN line)")


def check_etcd_s3(config, etcd_s3, bad):
    if etcd_s3 is None:
        return
    if config["role"] != "server":
        raise bad("etcd_s3 is given but this node is an agent (it runs no etcd)")
    if not isinstance(etcd_s3, dict):
        raise bad("etcd_s3 is neither null nor an object")
    for number, (key, setting) in enumerate(sorted(etcd_s3.items()), 1):
        if not ETCD_S3_KEY.fullmatch(key):
            raise bad(f"etcd_s3 entry {number} is not a k3s setting named etcd-...")
        if not isinstance(setting, (str, int, bool)):
            raise bad(f"etcd_s3 {key} is not a string, an integer or a boolean")
        if isinstance(setting, str) and ("\n" in setting or "\r" in setting):
            raise bad(f"etcd_s3 {key} holds a line break")


@contextlib.contextmanager
def private_file(text):
    """A path holding text that only this process can read: an anonymous memory file where the
    kernel has them, else a file in a private temporary directory that is removed again."""
    data = text.encode("utf-8")
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        try:
            fd = memfd_create("k3s-node-ready")
        except OSError:
            fd = None
        if fd is not None:
            try:
                os.write(fd, data)
                yield f"/proc/self/fd/{fd}"
            finally:
                os.close(fd)
            return
    directory = tempfile.mkdtemp(prefix="k3s-node-ready.")
    path = os.path.join(directory, "pem")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def tls_context(secrets, client=True):
    """The TLS context of every request: the cluster's server CA and (with client) the admin
    certificate. The host name is not checked: the addresses are private IPs, and the CA is the
    cluster's own."""
    try:
        context = ssl.create_default_context(cadata=secrets["ca"])
    except Exception:
        raise Exit(2, "ca is not a valid PEM certificate") from None
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    if not client:
        return context
    try:
        # An ExitStack rather than one parenthesised with: Python 3.8 has no such syntax.
        with contextlib.ExitStack() as stack:
            cert = stack.enter_context(private_file(secrets["client_cert"]))
            key = stack.enter_context(private_file(secrets["client_key"]))
            context.load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError, UnicodeError):
        raise Exit(
            2, "client_cert and client_key are not a valid certificate and its private key"
        ) from None
    return context


# -- files ----------------------------------------------------------------------------------------


def install(config, label, path, content, mode):
    """write_file (or remove_file when content is None) with one line about it."""
    name = config["name"]
    try:
        outcome = write_file(path, content, mode) if content is not None else remove_file(path)
    except OSError as e:
        verb = "write" if content is not None else "remove"
        raise Exit(1, f"{name}: cannot {verb} the {label} at {path}: {e.strerror or e}") from None
    say(f"{name}: {label} {outcome}")
    return outcome not in ("unchanged", "absent")


def as_json(value):
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def install_files(config, secrets):
    """Writes the token, the admin keys and the etcd S3 drop-in; returns True when the token or
    the drop-in changed (k3s reads them at its start only)."""
    changed = install(config, "cluster token", config["token_file"], secrets["token"] + "\n", 0o600)
    install(config, "admin keys", config["admin_keys_file"], secrets["admin_keys"], 0o644)
    if config["role"] == "server":
        etcd_s3 = secrets["etcd_s3"]
        content = None if etcd_s3 is None else as_json(etcd_s3)
        # JSON is YAML: k3s reads it like its other config.yaml.d files.
        if install(config, "etcd S3 settings", config["etcd_s3_dropin"], content, 0o600):
            changed = True
    return changed


def install_pki(config, pki):
    """Writes the cluster's CAs and keys under tls_dir: directories 0700, keys 0600."""
    name, tls_dir = config["name"], config["tls_dir"]
    try:
        make_dirs(os.path.dirname(tls_dir))
        for relative in sorted(pki):
            parts = relative.split("/")
            for depth in range(len(parts)):
                directory = os.path.join(tls_dir, *parts[:depth])
                if not os.path.isdir(directory):
                    os.mkdir(directory, 0o700)
                os.chmod(directory, 0o700)
            path = os.path.join(tls_dir, *parts)
            write_file(path, pki[relative], 0o644 if relative.endswith(".crt") else 0o600)
    except OSError as e:
        raise Exit(
            1, f"{name}: cannot write the cluster's CAs under {tls_dir}: {e.strerror or e}"
        ) from None
    say(f"{name}: wrote the cluster's CAs and keys ({len(pki)} files) under {tls_dir}")


# -- systemd --------------------------------------------------------------------------------------


def systemd(config):
    """systemctl for this node: a start returns once k3s runs, which may take a while."""
    return Systemd(
        config["name"],
        config["systemctl"],
        config["ready_timeout"],
        config["poll_every"],
        config["progress_every"],
    )


# -- the Kubernetes API ---------------------------------------------------------------------------


def new_waiter(config, limit):
    """Polls until a check holds, for at most limit seconds."""
    return Waiter(config["name"], limit, config["poll_every"], config["progress_every"])


def ping_peers(config, api, waiter, bases=None):
    """Asks every peer (or every one of bases) for /ping at once; returns the answering ones (in
    the given order) and a summary of the others' answers."""
    peers = config["peers"] if bases is None else bases
    timeout = waiter.timeout(config["ping_timeout"])

    def ping(base):
        return base, api.call("GET", base, "/ping", timeout)

    if not peers:
        return [], "no other control plane is configured"
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(peers)) as pool:
        answers = list(pool.map(ping, peers))
    good = [b for b, a in answers if a.status == 200 and a.body.strip() == b"pong"]
    summary = "; ".join(f"{b}: {a}" for b, a in answers if b not in good)
    return good, shorten(summary)


def node_path(name):
    return "/api/v1/nodes/" + urllib.parse.quote(name, safe="")


def quoted(text):
    return urllib.parse.quote(text, safe="")


def metadata_of(item):
    metadata = item.get("metadata") if isinstance(item, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def ready_condition(node):
    status = node.get("status") if isinstance(node, dict) else None
    conditions = status.get("conditions") if isinstance(status, dict) else None
    for condition in conditions if isinstance(conditions, list) else []:
        if isinstance(condition, dict) and condition.get("type") == "Ready":
            return condition
    return None


def node_name(node):
    metadata = node.get("metadata") if isinstance(node, dict) else None
    return metadata.get("name") if isinstance(metadata, dict) else None


def node_labels(node):
    metadata = node.get("metadata") if isinstance(node, dict) else None
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    return labels if isinstance(labels, dict) else {}


def is_ready(node):
    condition = ready_condition(node)
    return condition is not None and condition.get("status") == "True"


def describe_node(name, node):
    condition = ready_condition(node)
    if condition is None:
        return f"{name}: no Ready condition yet"
    text = f"{name}: Ready={condition.get('status')}"
    detail = ": ".join(str(condition[k]) for k in ("reason", "message") if condition.get(k))
    return f"{text} ({detail})" if detail else text


# -- joining --------------------------------------------------------------------------------------


def find_peer(config, api):
    """The first control plane that answers /ping within join_wait, or None; and the last
    answers."""
    if not config["peers"]:
        return None, "no other control plane is configured"
    waiter = new_waiter(config, config["join_wait"])
    what = "a control plane to answer /ping"

    def check():
        good, summary = ping_peers(config, api, waiter)
        if good:
            return good[0]
        raise NotYet(what, summary)

    last = []

    def give_up(_what, answer):
        last.append(answer)
        return None

    peer = waiter.until(check, give_up)
    return peer, (last[0] if last else "")


def remove_stale_node(config, api, waiter, peer):
    """Deletes the node object of this name (the machine this one replaces) and waits until it
    is gone, then its node password secret; returns True if there was one."""
    name = config["name"]
    path = node_path(name)
    what = f"the stale node object {name} to be removed (its etcd member goes with it)"
    deleted = []

    def check():
        answer = api.call("GET", peer, path, waiter.timeout(config["request_timeout"]))
        if answer.status == 404:
            return bool(deleted)
        node = parse(answer, what, dict)
        metadata = node.get("metadata") if isinstance(node.get("metadata"), dict) else {}
        if metadata.get("deletionTimestamp"):
            finalizers = metadata.get("finalizers") or []
            waiting = f" (finalizers: {', '.join(map(str, finalizers))})" if finalizers else ""
            raise NotYet(what, shorten(f"{name} is being deleted{waiting}"))
        answer = api.call("DELETE", peer, path, waiter.timeout(config["request_timeout"]))
        if answer.status not in (200, 202, 404):
            raise NotYet(what, f"DELETE {path}: {answer}")
        deleted.append(True)
        raise NotYet(what, f"deleted {name}; it is still listed")

    removed = waiter.until(check)
    if removed:
        say(f"{name}: removed the stale node object {name} of the machine this one replaces")

    secret = f"{name}.node-password.k3s"
    secret_path = "/api/v1/namespaces/kube-system/secrets/" + urllib.parse.quote(secret, safe="")
    what = f"the stale node password secret kube-system/{secret} to be deleted"

    def delete_secret():
        answer = api.call("DELETE", peer, secret_path, waiter.timeout(config["request_timeout"]))
        if answer.status in (200, 202):
            return True
        if answer.status == 404:
            return False
        raise NotYet(what, str(answer))

    if waiter.until(delete_secret):
        say(f"{name}: deleted the stale node password secret kube-system/{secret}")
    return removed


def join(config, secrets, api):
    """A fresh machine: joins through a control plane that answers, or founds a new cluster on
    the first one; writes the join drop-in and the marker. Returns the ready waiter."""
    name = config["name"]
    peer, last = find_peer(config, api)
    waiter = new_waiter(config, config["ready_timeout"])
    if peer is not None:
        say(f"{name}: {peer} answers: joining the cluster through it")
        remove_stale_node(config, api, waiter, peer)
        dropin = {"server": peer}
    elif config["first"]:
        if secrets["pki"] is None:
            raise Exit(
                1,
                f"{name}: no control plane answered within {seconds(config['join_wait'])} s and "
                "stdin carries no pki: cannot found a new cluster without its CAs (not joined)",
            )
        say(
            f"{name}: no other control plane answered within {seconds(config['join_wait'])} s: "
            "founding a new cluster (cluster-init); if this cluster existed before, restore "
            "etcd from a snapshot (see the README's k8s section)"
        )
        install_pki(config, secrets["pki"])
        dropin = {"cluster-init": True}
    else:
        raise Exit(
            1,
            f"{name}: no control plane answered at {', '.join(config['peers'])} within "
            f"{seconds(config['join_wait'])} s (this node's private network may not be up, or "
            f"the cluster is down); not joined; last answers: {last}",
        )
    install(config, "join settings", config["join_dropin"], as_json(dropin), 0o600)
    # Before k3s first starts: from now on a node object of this name is this machine's own.
    install(config, "joined marker", config["joined_marker"], "joined\n", 0o600)
    # Enables and starts the unit.
    unit = config["unit"]
    systemd(config).must(waiter.deadline, "enable", "--now", unit)
    say(f"{name}: enabled and started {unit}")
    return waiter


# -- readiness ------------------------------------------------------------------------------------


def member_node(member, etcd_nodes):
    """The etcd node a member of k3s's member list runs on: k3s names a member <node>-<suffix>
    (older versions: <host name's first label>-<suffix>); None if it is none of etcd_nodes."""
    stem = member.rsplit("-", 1)[0] if "-" in member else None
    for node in etcd_nodes:
        if stem in (node, node.split(".")[0]):
            return node
    return None


def check_etcd_members(token, call, url, servers, ready_etcd):
    """k3s's etcd member list (/db/info, asked as the supervisor's user "server" with the
    cluster token) must hold exactly one member per control plane, each on another Ready etcd
    node (ready_etcd); returns the part of the ready line."""
    what = f"{servers} etcd members (one per control plane) in etcd's member list (/db/info)"
    password = supervisor_password(token)
    credentials = base64.b64encode(f"server:{password}".encode()).decode("ascii")
    answer = call(url, "/db/info", {"Authorization": "Basic " + credentials})
    if answer.status in (401, 403):
        raise NotYet(what, f"/db/info refused the cluster token: {answer}")
    if answer.status == 404:
        raise NotYet(what, f"/db/info is not served here (no embedded etcd?): {answer}")
    info = parse(answer, what, dict)
    members = info.get("members")
    if not isinstance(members, list) or not all(
        isinstance(m, dict) and isinstance(m.get("name"), str) for m in members
    ):
        raise NotYet(what, "the answer has no members list of objects with a name")
    names = sorted(m["name"] for m in members)
    if len(names) != servers:
        listed = ", ".join(n or "(unnamed: not started yet)" for n in names) or "none"
        raise NotYet(what, shorten(f"{len(names)} member(s): {listed}"))
    on = {}
    for member in sorted(members, key=lambda m: m["name"]):
        node = member_node(member["name"], ready_etcd)
        if node is None:
            raise NotYet(
                what,
                shorten(
                    f"member {member['name'] or '(unnamed)'} is on no Ready etcd node (Ready "
                    f"etcd nodes: {', '.join(ready_etcd) or 'none'})"
                ),
            )
        if node in on:
            raise NotYet(what, f"members {on[node]} and {member['name']} are both on {node}")
        on[node] = member["name"]
        if member.get("isLearner") is True:
            raise NotYet(what, f"member {member['name']} is still a learner")
    return f"etcd has one member on each of the {servers} control plane(s)"


def replicas(value, default):
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def check_workloads(namespace, get, url):
    """Once namespace exists, every Deployment and StatefulSet in it must have its replicas
    ready and updated; returns the part of the ready line."""
    what = f"the Deployments and StatefulSets in namespace {namespace} to be ready"
    answer = get(url, "/api/v1/namespaces/" + quoted(namespace))
    if answer.status == 404:
        return f"namespace {namespace} does not exist yet: no app to wait for"
    parse(answer, what, dict)
    waiting, count = [], 0
    for kind, plural in (("deployment", "deployments"), ("statefulset", "statefulsets")):
        path = f"/apis/apps/v1/namespaces/{quoted(namespace)}/{plural}"
        items = parse(get(url, path), what, dict).get("items")
        if not isinstance(items, list):
            raise NotYet(what, f"the {plural} list has no items list")
        for item in items:
            count += 1
            spec = item.get("spec") if isinstance(item, dict) else None
            status = item.get("status") if isinstance(item, dict) else None
            spec = spec if isinstance(spec, dict) else {}
            status = status if isinstance(status, dict) else {}
            want = replicas(spec.get("replicas"), 1)
            ready = replicas(status.get("readyReplicas"), 0)
            updated = replicas(status.get("updatedReplicas"), 0)
            if ready < want or updated < want:
                text = f"{kind} {metadata_of(item).get('name')} {ready}/{want} ready"
                if updated < want:
                    text += f", {updated}/{want} updated"
                waiting.append(text)
    if waiting:
        raise NotYet(what, shorten("; ".join(waiting)))
    return f"all {count} Deployments and StatefulSets in namespace {namespace} are ready"


def wait_ready(config, secrets, api, waiter, cluster):
    """Waits until this node is Ready, on a server etcd and every etcd member's node too, with
    --cluster every node and etcd's member list, with app_namespace its workloads; returns the
    line."""
    name = config["name"]
    server = config["role"] == "server"
    servers = len(config["peers"]) + (1 if server else 0)
    nodes = config["nodes"]
    namespace = config["app_namespace"]
    supervisor = Api(secrets["supervisor_tls"])

    def base():
        if server:
            return config["local_api"]
        good, summary = ping_peers(config, api, waiter)
        if not good:
            raise NotYet("a control plane to answer /ping", summary)
        return good[0]

    def get(url, path):
        return api.call("GET", url, path, waiter.timeout(config["request_timeout"]))

    def get_supervisor(url, path, headers):
        # Not with the admin certificate: k3s's supervisor wants its own user, "server".
        timeout = waiter.timeout(config["request_timeout"])
        return supervisor.call("GET", url, path, timeout, headers)

    def check():
        url = base()
        what = f"this node ({name}) to be Ready"
        answer = get(url, node_path(name))
        if answer.status == 404:
            raise NotYet(what, f"{url} lists no node {name} yet")
        node = parse(answer, what, dict)
        if not is_ready(node):
            raise NotYet(what, shorten(describe_node(name, node)))
        parts = [f"{name}: ready: node {name} is Ready"]

        if server:
            what = "etcd on this control plane to be ready (/readyz/etcd)"
            answer = get(url, "/readyz/etcd")
            if answer.status != 200 or answer.body.strip() != b"ok":
                raise NotYet(what, str(answer))

        if server or cluster:
            what = "the cluster's node list"
            listing = parse(get(url, "/api/v1/nodes"), what, dict)
            items = listing.get("items")
            if not isinstance(items, list):
                raise NotYet(what, "the answer has no items list")
            by_name = {node_name(n): n for n in items if isinstance(node_name(n), str)}
            etcd = sorted(
                n for n, node in by_name.items() if node_labels(node).get(ETCD_LABEL) == "true"
            )

        if server:
            what = "every etcd member's node to be Ready"
            if name not in etcd:
                raise NotYet(what, f"{name} is not labelled {ETCD_LABEL}=true yet")
            waiting = [describe_node(n, by_name[n]) for n in etcd if not is_ready(by_name[n])]
            if waiting:
                raise NotYet(what, shorten("; ".join(waiting)))
            parts.append(f"etcd answers here and all {len(etcd)} etcd members' nodes are Ready")

        if cluster:
            what = f"all {len(nodes)} nodes of the cluster to be Ready"
            missing = [n for n in nodes if n not in by_name]
            waiting = [
                describe_node(n, by_name[n])
                for n in nodes
                if n in by_name and not is_ready(by_name[n])
            ]
            if missing or waiting:
                listed = [f"not listed: {', '.join(missing)}"] if missing else []
                raise NotYet(what, shorten("; ".join(listed + waiting)))
            what = f"{servers} etcd members (one per control plane)"
            if len(etcd) != servers:
                listed = ", ".join(etcd) or "none"
                raise NotYet(
                    what, shorten(f"{len(etcd)} node(s) labelled {ETCD_LABEL}=true: {listed}")
                )
            parts.append(f"all {len(nodes)} nodes of the cluster are Ready")
            ready_etcd = [n for n in etcd if is_ready(by_name[n])]
            parts.append(
                check_etcd_members(secrets["token"], get_supervisor, url, servers, ready_etcd)
            )

        if namespace is not None:
            parts.append(check_workloads(namespace, get, url))
        return "; ".join(parts)

    return waiter.until(check)


# -- --drain --------------------------------------------------------------------------------------

# Pods a drain leaves alone: they are not rescheduled elsewhere (DaemonSets, mirror pods of
# static manifests) or have stopped already.
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
FINISHED_PHASES = ("Succeeded", "Failed")


def pod_key(pod):
    metadata = metadata_of(pod)
    return metadata.get("namespace"), metadata.get("name")


def pod_node(pod):
    spec = pod.get("spec") if isinstance(pod, dict) else None
    return spec.get("nodeName") if isinstance(spec, dict) else None


def pod_phase(pod):
    status = pod.get("status") if isinstance(pod, dict) else None
    return status.get("phase") if isinstance(status, dict) else None


def skipped_because(pod):
    """Why a drain leaves the pod alone, or None."""
    metadata = metadata_of(pod)
    owners = metadata.get("ownerReferences")
    if any(isinstance(o, dict) and o.get("kind") == "DaemonSet" for o in owners or []):
        return "DaemonSet"
    annotations = metadata.get("annotations")
    if isinstance(annotations, dict) and MIRROR_ANNOTATION in annotations:
        return "mirror"
    if pod_phase(pod) in FINISHED_PHASES or metadata.get("deletionTimestamp"):
        return "finished or terminating"
    return None


def status_message(answer):
    """What a Kubernetes Status body says (a DisruptionBudget cause names the budget), else the
    answer."""
    try:
        value = json.loads(answer.body.decode("utf-8"))
    except ValueError:
        value = None
    value = value if isinstance(value, dict) else {}
    details = value.get("details") if isinstance(value.get("details"), dict) else {}
    causes = details.get("causes") if isinstance(details.get("causes"), list) else []
    for cause in causes:
        message = cause.get("message") if isinstance(cause, dict) else None
        # (message is a string only when cause is an object)
        if isinstance(message, str) and message and cause.get("reason") == "DisruptionBudget":
            return shorten(message)
    message = value.get("message")
    return shorten(message) if isinstance(message, str) and message else str(answer)


def find_api(config, api):
    """The API to drain through: the local one on a server (else another control plane), the
    first control plane that answers /ping on an agent; exit 1 when none answers in join_wait."""
    name = config["name"]
    bases = ([config["local_api"]] if config["local_api"] else []) + config["peers"]
    waiter = new_waiter(config, config["join_wait"])
    what = "an API server to answer /ping"

    def check():
        good, summary = ping_peers(config, api, waiter, bases)
        if good:
            return good[0]
        raise NotYet(what, summary)

    def give_up(_what, answer):
        raise Exit(
            1,
            f"{name}: cannot drain {name}: no API server answered /ping at {', '.join(bases)} "
            f"within {seconds(config['join_wait'])} s; the old machine is kept (Pulumi stops "
            f"before deleting it); last answers: {answer}; run `pulumi state delete` on this "
            "ready command to skip the drain",
        )

    return waiter.until(check, give_up)


def drain(config, api):
    """--drain: cordons this node, evicts its pods and waits until they have left; returns the
    line. Writes nothing and starts nothing."""
    name = config["name"]
    started = time.monotonic()
    url = find_api(config, api)
    say(f"{name}: draining {name} through {url}")
    waiter = new_waiter(config, config["drain_timeout"])
    path = node_path(name)

    def call(method, request_path, body=None, content_type="application/json"):
        timeout = waiter.timeout(config["request_timeout"])
        if body is None:
            return api.call(method, url, request_path, timeout)
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": content_type}
        return api.call(method, url, request_path, timeout, headers, data)

    def give_up(what, answer):
        raise Exit(
            1,
            f"{name}: not drained after {seconds(config['drain_timeout'])} s: waiting for {what}; "
            f"last answer: {answer}; the old machine is kept (Pulumi stops before deleting it)",
        )

    def cordon():
        what = f"the node {name} to be cordoned"
        answer = call("GET", path)
        if answer.status == 404:
            return False
        parse(answer, what, dict)
        patch = {"spec": {"unschedulable": True}}
        answer = call("PATCH", path, patch, "application/merge-patch+json")
        if answer.status == 404:
            return False
        if answer.status != 200:
            raise NotYet(what, f"PATCH {path}: {answer}")
        return True

    if not waiter.until(cordon, give_up):
        return f"{name}: the API lists no node {name}: nothing to drain"
    say(f"{name}: cordoned {name} (no new pods are scheduled on it)")

    def list_pods():
        what = f"the list of the pods on {name}"
        query = urllib.parse.urlencode({"fieldSelector": f"spec.nodeName={name}"})
        items = parse(call("GET", "/api/v1/pods?" + query), what, dict).get("items")
        if not isinstance(items, list):
            raise NotYet(what, "the answer has no items list")
        return items

    pods, skipped = {}, 0
    for pod in waiter.until(list_pods, give_up):
        key = pod_key(pod)
        if not all(isinstance(part, str) and part for part in key) or pod_node(pod) != name:
            continue
        if skipped_because(pod) is not None:
            skipped += 1
            continue
        pods[key] = metadata_of(pod).get("uid")
    names = [f"{ns}/{pod}" for ns, pod in sorted(pods)]
    if names:
        say(
            shorten(
                f"{name}: evicting {len(names)} pod(s) ({skipped} left alone): " + ", ".join(names)
            )
        )

    evicted = set()

    def evict():
        what = "the pods to be evicted"
        blocked, failed = [], []
        for ns, pod in sorted(pods):
            if (ns, pod) in evicted:
                continue
            body = {
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": pod, "namespace": ns},
            }
            eviction = f"/api/v1/namespaces/{quoted(ns)}/pods/{quoted(pod)}/eviction"
            answer = call("POST", eviction, body)
            if answer.status in (200, 201, 404):
                evicted.add((ns, pod))
            elif answer.status == 429:
                blocked.append(f"{ns}/{pod} ({status_message(answer)})")
            else:
                failed.append(f"{ns}/{pod}: {answer}")
        if blocked or failed:
            parts = [f"blocked by a PodDisruptionBudget: {', '.join(blocked)}"] if blocked else []
            raise NotYet(what, shorten("; ".join(parts + failed)))
        return True

    waiter.until(evict, give_up)

    def gone():
        still = []
        for ns, pod in sorted(pods):
            answer = call("GET", f"/api/v1/namespaces/{quoted(ns)}/pods/{quoted(pod)}")
            if answer.status == 404:
                continue
            current = parse(answer, f"the pod {ns}/{pod}", dict)
            if metadata_of(current).get("uid") != pods[ns, pod] or pod_node(current) != name:
                continue
            phase = pod_phase(current) or "no phase"
            deleting = ", terminating" if metadata_of(current).get("deletionTimestamp") else ""
            still.append(f"{ns}/{pod} ({phase}{deleting})")
        if still:
            what = f"the evicted pods to leave {name}"
            raise NotYet(what, shorten("still there: " + ", ".join(still)))
        return True

    waiter.until(gone, give_up)
    removed = remove_drained_node(config, api, waiter, give_up)
    taken = time.monotonic() - started
    return (
        f"{name}: drained: evicted {len(pods)} pod(s) in {taken:.1f} s ({skipped} DaemonSet, "
        f"mirror or finished pod(s) left alone); {removed}"
    )


def remove_drained_node(config, api, waiter, give_up):
    """Deletes the drained node's Node (k3s removes a server's etcd member with it) through
    another control plane, so the machine leaves the cluster before it is deleted: a destroy
    then shrinks etcd one member at a time instead of losing its quorum. The last control plane
    answering keeps its Node (etcd cannot remove its last member). Returns a phrase."""
    name = config["name"]
    others = [url for url in ping_peers(config, api, waiter, config["peers"])[0]]
    if not others:
        return "its node object is kept (no other control plane answers)"
    url = others[0]
    path = node_path(name)
    deleted = []

    def delete():
        what = f"the node object {name} to be removed through {url}"
        answer = api.call("GET", url, path, waiter.timeout(config["request_timeout"]))
        if answer.status == 404:
            return True
        parse(answer, what, dict)
        if not deleted:
            answer = api.call("DELETE", url, path, waiter.timeout(config["request_timeout"]))
            if answer.status not in (200, 202, 404):
                raise NotYet(what, f"DELETE {path}: {answer}")
            deleted.append(True)
        raise NotYet(what, f"deleted {name}; it is still listed (etcd member removal)")

    waiter.until(delete, give_up)
    return f"removed its node object through {url}"


# -- main -----------------------------------------------------------------------------------------


def parse_command_line(argv):
    """Returns (config path, --cluster, --drain); --cluster and --drain exclude each other."""
    rest, drain_flag = [], False
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--drain":
            drain_flag = True
            continue
        rest.append(arg)
        if arg == "--config" and args:
            rest.append(args.pop(0))
    config_path, cluster = parse_args(rest, DEFAULT_CONFIG, USAGE)
    if cluster and drain_flag:
        raise Exit(2, USAGE)
    return config_path, cluster, drain_flag


def run(argv, stdin):
    config_path, cluster, drain_flag = parse_command_line(argv)
    config = load_config(config_path, PROG, CONFIG_FIELDS, check_config)
    name = PREFIX[0] = config["name"]
    secrets = read_secrets(config, stdin.read())
    api = Api(secrets["tls"])
    if drain_flag:
        # The delete command: nothing is written, nothing started.
        say(drain(config, api))
        return 0
    changed = install_files(config, secrets)
    if os.path.exists(config["joined_marker"]):
        say(f"{name}: joined before ({config['joined_marker']} exists): no node object is removed")
        waiter = new_waiter(config, config["ready_timeout"])
        systemd(config).ensure_running(
            config["unit"],
            changed,
            waiter.deadline,
            "restart",
            "its token or etcd S3 settings changed",
            "its token and settings are unchanged",
        )
    else:
        waiter = join(config, secrets, api)
    say(wait_ready(config, secrets, api, waiter, cluster))
    return 0


if __name__ == "__main__":
    sys.exit(main(PROG, run))
