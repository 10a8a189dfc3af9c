#!/usr/bin/env python3
"""nomad-node-ready: install a Nomad node's secrets, (re)start its agent and wait until it serves.

Pulumi runs this on each Nomad node over SSH, as root, one node after the other:

    sudo /usr/local/lib/blueprints/nomad-node-ready [--config PATH] [--cluster]

and moves on to the next node only once it has exited 0 here. It is what keeps a rolling
replacement from taking down more than one server at a time, so "0" has to mean "this node is
back": a voting server autopilot calls healthy and a client that takes work.

Input
  * the node's configuration, a JSON file written by its bootstrap (no secrets): its name and
    region, its own and its peers' HTTP API addresses, where the TLS files, the management token
    and the admin keys live, the systemd unit and the time limits;
  * on stdin, one JSON object with exactly the string keys admin_keys, ca, cert, key,
    gossip_key and token: the admins' OpenSSH public keys, the cluster CA, this node's
    certificate and private key, the cluster's gossip key and its management token (the user
    data holds no secret: they all arrive here). stdin is a secret and none of it is ever
    printed.

What it does
  1. checks the configuration and stdin completely, then writes the six files (atomically, only
     those whose content changed);
  2. starts the Nomad unit if it is not running, or reloads it (SIGHUP: Nomad rereads its TLS
     files) if it runs and a TLS file changed;
  3. waits for the local agent's HTTP API to answer;
  4. asks itself and every peer whether there is a leader, and if not whether it lists raft
     peers. No leader and no raft peers anywhere means a new cluster whose first nodes are still
     waiting for the others: that is done (exit 0), unless --cluster is given, or the data
     volume carries the mark of a formed cluster (formed_marker), or no other server answers at
     all on a node other than the first (its private network is not up: it has not joined). A
     formed cluster without a leader (an election) is waited for;
  5. waits, with the management token, until the token is accepted (ACLs are bootstrapped), this
     server is a healthy voter in autopilot and this node a ready, eligible client, and until
     the whole cluster can lose a server again: autopilot healthy with every server voting and
     a failure tolerance of at least one, every client eligible, and no job with allocations
     queued or starting (what this node's absence displaced runs again).

Exit status: 0 ready; 1 not ready in time, or systemd or the disk failed; 2 bad usage,
configuration or stdin (nothing is written then). Every message is one line starting with the
node's name; a failure says what it waited for and the last answer it got, never a traceback.

Standard library only, Python 3.8 or newer: it runs on the servers' system Python.
"""

import concurrent.futures
import os
import re
import ssl
import sys
import time

# --- node_kit: blueprints/release/node_kit.py, inlined here when the script is shipped ---
from blueprints.release.node_kit import (
    PREFIX,
    REQUIRED,
    Answer,
    Api,
    Exit,
    NotYet,
    Systemd,
    Waiter,
    _is_argv,
    _is_bool,
    _is_number,
    _is_path,
    _is_path_or_null,
    _is_text,
    _is_url,
    _is_urls,
    check_admin_keys,
    check_pem,
    describe_error,
    load_config,
    main,
    parse,
    parse_args,
    read_stdin,
    say,
    shorten,
    write_file,
)

# --- end node_kit ---

DEFAULT_CONFIG = "/etc/blueprints/nomad/node.json"
USAGE = "usage: nomad-node-ready [--config PATH] [--cluster]"
PROG = "nomad-node-ready"

# Seconds a peer gets to say who leads; an unreachable peer knows no leader.
PEER_TIMEOUT = 3.0
# Seconds a request to the local agent may take at most.
LOCAL_TIMEOUT = 10.0

STDIN_KEYS = ("admin_keys", "ca", "cert", "gossip_key", "key", "token")
STDIN_EXPECTED = (
    "expected one JSON object with exactly the string keys admin_keys (OpenSSH public keys, "
    "one per line), ca and cert (PEM certificates), key (a PEM private key), gossip_key (32 "
    "bytes in base64) and token (a UUID)"
)
GOSSIP_KEY = re.compile(r"^[A-Za-z0-9+/]{43}=$")
TOKEN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# The agent's gossip configuration (HCL). The key is checked against GOSSIP_KEY first, so it
# holds no character HCL would read specially.
GOSSIP_CONFIG = (
    "# Gossip (Serf) encryption key shared by the servers. Written by nomad-node-ready; root "
    "only.\n# Nomad reads it on a server's first start and keeps its own keyring after that.\n"
    'server {{\n  encrypt = "{key}"\n}}\n'
)

# The configuration's keys: (check, what the value must be, default or REQUIRED). Other keys are
# ignored, so that a newer bootstrap can add some.
CONFIG_FIELDS = {
    "name": (_is_text, "a node name", REQUIRED),
    "region": (_is_text, "a region name", REQUIRED),
    "local": (_is_url, "an https:// URL", REQUIRED),
    "peers": (_is_urls, "a list of https:// URLs", REQUIRED),
    "servers": (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "a positive integer",
        REQUIRED,
    ),
    "ca_file": (_is_path, "an absolute path", REQUIRED),
    "cert_file": (_is_path, "an absolute path", REQUIRED),
    "key_file": (_is_path, "an absolute path", REQUIRED),
    "token_file": (_is_path, "an absolute path", REQUIRED),
    "admin_keys_file": (_is_path, "an absolute path", REQUIRED),
    "gossip_file": (_is_path, "an absolute path", REQUIRED),
    "unit": (_is_text, "a systemd unit name", REQUIRED),
    "systemctl": (_is_argv, "a non-empty list of strings (a command)", ["systemctl"]),
    # The first node of a new cluster has no peer to ask; any other node has at least one.
    "first": (_is_bool, "true or false", False),
    # A file the data node's ACL bootstrap leaves on the data volume once the cluster has
    # formed: a node that finds it knows a cluster exists even when no peer answers.
    "formed_marker": (_is_path_or_null, "null or an absolute path", None),
    "timeout_seconds": (_is_number, "a positive number", 900),
    "poll_seconds": (_is_number, "a positive number", 2),
    "progress_seconds": (_is_number, "a positive number", 15),
}


# -- stdin ----------------------------------------------------------------------------------------


def read_secrets(name, data):
    """Checks stdin; the errors name what is wrong, never what was sent."""

    def bad(what):
        return Exit(2, f"{name}: refusing stdin: {what}; {STDIN_EXPECTED}")

    value = read_stdin(data, STDIN_KEYS, STDIN_KEYS, bad)
    check_pem(value, ("ca", "cert"), "key", bad)
    if not GOSSIP_KEY.match(value["gossip_key"]):
        raise bad("gossip_key is not 32 bytes in base64")
    if not TOKEN.match(value["token"]):
        raise bad("token is not a UUID")
    check_admin_keys(value["admin_keys"], bad)
    return value


# -- files ----------------------------------------------------------------------------------------


def install_files(config, secrets):
    """Writes the six files; returns True when a TLS file changed."""
    name = config["name"]
    gossip = GOSSIP_CONFIG.format(key=secrets["gossip_key"])
    files = (
        ("admin keys", config["admin_keys_file"], secrets["admin_keys"], 0o644, False),
        ("CA certificate", config["ca_file"], secrets["ca"], 0o644, True),
        ("TLS key", config["key_file"], secrets["key"], 0o600, True),
        ("gossip key", config["gossip_file"], gossip, 0o600, False),
        ("management token", config["token_file"], secrets["token"] + "\n", 0o600, False),
        # Last: the unit starts only once this file exists (ConditionPathExists), and by then
        # everything it reads is in place.
        ("TLS certificate", config["cert_file"], secrets["cert"], 0o644, True),
    )
    tls_changed = False
    for label, path, content, mode, tls in files:
        try:
            outcome = write_file(path, content, mode)
        except OSError as e:
            raise Exit(
                1, f"{name}: cannot write the {label} to {path}: {e.strerror or e}"
            ) from None
        say(f"{name}: {label} {outcome}")
        if outcome != "unchanged" and tls:
            tls_changed = True
    return tls_changed


# -- the Nomad API --------------------------------------------------------------------------------


def get(config, base, path, timeout, token=None):
    """GET base+path verified against the CA file (read now: it may just have been written)."""
    headers = {} if token is None else {"X-Nomad-Token": token}
    try:
        context = ssl.create_default_context(cafile=config["ca_file"])
    except Exception as e:
        return Answer(error=describe_error(e, base, timeout))
    return Api(context).call("GET", base, path, timeout, headers)


def wait_for_agent(config, waiter):
    """Waits until the local agent answers /v1/status/leader (with a leader or not)."""
    what = "the local Nomad agent's HTTP API to answer"

    def check():
        answer = get(config, config["local"], "/v1/status/leader", waiter.timeout(LOCAL_TIMEOUT))
        parse(answer, what, str)

    waiter.until(check)


def find_leader(config, waiter, cluster):
    """The leader any node knows of. "" only for a cluster that has never formed (no one names a
    leader and no one lists raft peers) and when --cluster was not given; a formed cluster
    without a leader (an election, a lost quorum) is waited for."""
    bases = [config["local"]] + [p for p in config["peers"] if p != config["local"]]

    def ask(base):
        """(base, the leader it names or "", its raft peers or None, why it named none)."""
        timeout = waiter.timeout(PEER_TIMEOUT)
        answer = get(config, base, "/v1/status/leader", timeout)
        try:
            leader, error = parse(answer, "", str), None
        except NotYet as e:
            leader, error = "", e.answer
        raft = None
        if not leader and error is None:
            try:
                raft = parse(get(config, base, "/v1/status/peers", timeout), "", list)
            except NotYet:
                raft = None
        return base, leader, raft, error

    def check():
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(bases)) as pool:
            answers = list(pool.map(ask, bases))
        for _, leader, _, _ in answers:
            if leader:
                return leader
        summary = "; ".join(f"{base}: {error or 'no leader'}" for base, _, _, error in answers)
        formed = [(base, raft) for base, _, raft, _ in answers if raft]
        if formed:
            base, raft = formed[0]
            raise NotYet(
                "a cluster leader (the cluster has formed)",
                shorten(f"{base} lists {len(raft)} raft peer(s) but no leader; {summary}"),
            )
        if cluster:
            raise NotYet("a cluster leader", shorten(summary))
        # Only the first node of a new cluster may find no other server at all: anywhere else
        # silence means this node cannot reach its peers (its private network is not up), and
        # calling it ready would let the next node go while this one has not joined.
        others = [a for a in answers if a[0] != config["local"]]
        if others and all(error is not None for _, _, _, error in others) and not config["first"]:
            raise NotYet("another server to answer", shorten(summary))
        return ""

    return waiter.until(check)


def healthy_voters(servers):
    return [
        s
        for s in servers
        if isinstance(s, dict) and s.get("Healthy") is True and s.get("Voter") is True
    ]


def eligible_clients(nodes):
    return [
        n
        for n in nodes
        if isinstance(n, dict)
        and n.get("Status") == "ready"
        and n.get("SchedulingEligibility") == "eligible"
    ]


def read_token(path):
    what = "the management token"
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise NotYet(what, f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise NotYet(what, f"{path} is not UTF-8 text") from None
    if not token:
        raise NotYet(what, f"{path} is empty")
    return token


def wait_ready(config, waiter):
    """Waits until this node serves and the whole cluster is healthy with every job placed;
    returns the line."""
    name = config["name"]
    server_name = f"{name}.{config['region']}"
    want = config["servers"]

    def api(path, token=None):
        return get(config, config["local"], path, waiter.timeout(LOCAL_TIMEOUT), token)

    def check():
        token = read_token(config["token_file"])

        what = "the local agent to see the cluster leader"
        leader = parse(api("/v1/status/leader"), what, str)
        if not leader:
            raise NotYet(what, "no leader")

        what = "the management token to be accepted (ACLs bootstrapped)"
        answer = api("/v1/acl/token/self", token)
        if answer.status != 200:
            raise NotYet(what, str(answer))

        what = f"this server ({server_name}) to be a healthy voter in autopilot"
        health = parse(api("/v1/operator/autopilot/health", token), what, dict)
        servers = health.get("Servers")
        if not isinstance(servers, list):
            raise NotYet(what, "autopilot's answer has no Servers list")
        mine = [s for s in servers if isinstance(s, dict) and s.get("Name") == server_name]
        if not mine:
            names = [str(s.get("Name")) for s in servers if isinstance(s, dict)]
            listed = ", ".join(names) or "no server"
            raise NotYet(what, shorten(f"autopilot lists no {server_name} (it lists {listed})"))
        if not healthy_voters(mine):
            raise NotYet(
                what,
                "; ".join(
                    f"{server_name}: Healthy={s.get('Healthy')}, Voter={s.get('Voter')}"
                    for s in mine
                ),
            )

        what = f"this node ({name}) to be a ready, eligible client"
        nodes = parse(api("/v1/nodes", token), what, list)
        mine = [n for n in nodes if isinstance(n, dict) and n.get("Name") == name]
        if not eligible_clients(mine):
            raise NotYet(
                what,
                shorten(
                    "; ".join(
                        f"{name}: Status={n.get('Status')}, "
                        f"SchedulingEligibility={n.get('SchedulingEligibility')}"
                        for n in mine
                    )
                    or f"/v1/nodes lists no node named {name}"
                ),
            )

        # Once there is a cluster, this node being back is not enough: the next node may only go
        # when losing it keeps the quorum, and the work this node's absence displaced runs again.
        voters = len(healthy_voters(servers))
        clients = len(eligible_clients(nodes))
        tolerance = health.get("FailureTolerance")
        enough = want < 3 or (isinstance(tolerance, int) and tolerance >= 1)
        if health.get("Healthy") is not True or voters < want or clients < want or not enough:
            raise NotYet(
                f"a healthy cluster with {want} voting servers and {want} eligible clients",
                f"autopilot Healthy={health.get('Healthy')}, FailureTolerance={tolerance}, "
                f"{voters} healthy voting server(s), {clients} eligible client(s)",
            )
        what = "every job's allocations to be placed and running"
        jobs = parse(api("/v1/jobs", token), what, list)
        waiting = []
        for job in jobs:
            if not isinstance(job, dict) or job.get("Status") == "dead":
                continue
            summary = (job.get("JobSummary") or {}).get("Summary") or {}
            for group, counts in sorted(summary.items()):
                if not isinstance(counts, dict):
                    continue
                queued, starting = counts.get("Queued") or 0, counts.get("Starting") or 0
                if queued or starting:
                    waiting.append(f"{job.get('ID')}/{group}: {queued} queued, {starting} starting")
        if waiting:
            raise NotYet(what, shorten("; ".join(waiting)))
        return (
            f"{name}: ready: a healthy voting server and an eligible client; the cluster is "
            f"healthy with {voters} voting servers and {clients} eligible clients, every job "
            f"placed (leader {leader})"
        )

    return waiter.until(check)


# -- main -----------------------------------------------------------------------------------------


def run(argv, stdin):
    config_path, cluster = parse_args(argv, DEFAULT_CONFIG, USAGE)
    config = load_config(config_path, PROG, CONFIG_FIELDS)
    PREFIX[0] = config["name"]
    secrets = read_secrets(config["name"], stdin.read())
    deadline = time.monotonic() + config["timeout_seconds"]
    tls_changed = install_files(config, secrets)
    systemd = Systemd(
        config["name"],
        config["systemctl"],
        config["timeout_seconds"],
        config["poll_seconds"],
        verb="end",
    )
    systemd.ensure_running(
        config["unit"],
        tls_changed,
        deadline,
        "reload",
        "its TLS files changed",
        "its TLS files are unchanged",
    )
    waiter = Waiter(
        config["name"],
        config["timeout_seconds"],
        config["poll_seconds"],
        config["progress_seconds"],
        deadline,
    )
    wait_for_agent(config, waiter)
    marker = config["formed_marker"]
    formed = marker is not None and os.path.exists(marker)
    if not find_leader(config, waiter, cluster or formed):
        say(
            f"{config['name']}: the Nomad agent is up; no cluster has formed yet "
            "(a new cluster's first nodes wait for the others)"
        )
        return 0
    say(wait_ready(config, waiter))
    return 0


if __name__ == "__main__":
    sys.exit(main(PROG, run))
