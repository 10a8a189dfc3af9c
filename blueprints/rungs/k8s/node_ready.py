#!/usr/bin/env python3
"""k3s-node-ready: install a k3s node's secrets, bring it into its cluster, wait until Ready.

Pulumi runs this on each k3s node over SSH, as root, one node after the other:

    sudo /usr/local/lib/blueprints/k3s-node-ready [--config PATH] [--cluster]

and moves on to the next node only once it has exited 0 here. It is what keeps a rolling
replacement from taking down more than one control plane at a time, so "0" has to mean "this
node is back and the cluster can lose a node again".

Input
  * the node's configuration, a JSON file written by its bootstrap (no secrets): its name and
    role, whether it is the first control plane, the other control planes' API addresses, every
    node's name, where the token, the admin keys, the k3s drop-ins, the TLS directory and the
    joined marker live, the systemd unit and the time limits;
  * on stdin, one JSON object with exactly the keys admin_keys, token, ca, client_cert,
    client_key, pki and etcd_s3: the admins' OpenSSH public keys, the cluster token, the
    cluster's server CA, an admin client certificate and its key (group system:masters), on the
    first control plane the cluster's CAs and keys (pki, else null) and on control planes the
    etcd snapshot settings (etcd_s3, or null). The user data holds no secret: they all arrive
    here. stdin is a secret and none of it is ever printed.

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
     every node of the cluster is Ready and there is one etcd member per control plane.

Exit status: 0 ready; 1 not ready in time, no control plane to join, or systemd or the disk
failed; 2 bad usage, configuration or stdin (nothing is written then). Every message is one line
starting with the node's name; a failure says what it waited for and the last answer it got,
never a traceback.

Standard library only, Python 3.8 or newer: it runs on the nodes' system Python.
"""

import concurrent.futures
import contextlib
import json
import os
import re
import ssl
import sys
import tempfile
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
USAGE = "usage: k3s-node-ready [--config PATH] [--cluster]"
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
ETCD_S3_KEY = re.compile(r"^etcd-[a-z0-9]+(-[a-z0-9]+)*$")
PKI_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _is_node_name(value):
    return isinstance(value, str) and len(value) <= 253 and NODE_NAME.fullmatch(value) is not None


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
    except Exit as e:
        raise bad(e.message) from None
    return value


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


def tls_context(secrets):
    """The TLS context of every request: the cluster's server CA and the admin certificate. The
    host name is not checked: the addresses are private IPs, and the CA is the cluster's own."""
    try:
        context = ssl.create_default_context(cadata=secrets["ca"])
    except Exception:
        raise Exit(2, "ca is not a valid PEM certificate") from None
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
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


def ping_peers(config, api, waiter):
    """Asks every peer for /ping at once; returns the answering ones (in the configuration's
    order) and a summary of the others' answers."""
    peers = config["peers"]
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


def wait_ready(config, api, waiter, cluster):
    """Waits until this node is Ready, on a server etcd and every etcd member's node too, with
    --cluster every node; returns the line."""
    name = config["name"]
    server = config["role"] == "server"
    servers = len(config["peers"]) + (1 if server else 0)
    nodes = config["nodes"]

    def base():
        if server:
            return config["local_api"]
        good, summary = ping_peers(config, api, waiter)
        if not good:
            raise NotYet("a control plane to answer /ping", summary)
        return good[0]

    def get(url, path):
        return api.call("GET", url, path, waiter.timeout(config["request_timeout"]))

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
        if not (server or cluster):
            return parts[0]

        if server:
            what = "etcd on this control plane to be ready (/readyz/etcd)"
            answer = get(url, "/readyz/etcd")
            if answer.status != 200 or answer.body.strip() != b"ok":
                raise NotYet(what, str(answer))

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
        return "; ".join(parts)

    return waiter.until(check)


# -- main -----------------------------------------------------------------------------------------


def run(argv, stdin):
    config_path, cluster = parse_args(argv, DEFAULT_CONFIG, USAGE)
    config = load_config(config_path, PROG, CONFIG_FIELDS, check_config)
    name = PREFIX[0] = config["name"]
    secrets = read_secrets(config, stdin.read())
    api = Api(secrets["tls"])
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
    say(wait_ready(config, api, waiter, cluster))
    return 0


if __name__ == "__main__":
    sys.exit(main(PROG, run))
