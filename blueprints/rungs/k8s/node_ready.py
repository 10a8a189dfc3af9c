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
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_CONFIG = "/etc/blueprints/k3s/node.json"
USAGE = "usage: k3s-node-ready [--config PATH] [--cluster]"
PROG = "k3s-node-ready"

# Characters of an answer (an API body, an error) that make it into a message.
ANSWER_CHARS = 200
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
ADMIN_KEY_PREFIXES = (
    "ssh-ed25519 ",
    "ssh-rsa ",
    "ecdsa-sha2-",
    "sk-ssh-ed25519@openssh.com ",
    "sk-ecdsa-sha2-",
)

# Marks a configuration key that has no default.
REQUIRED = object()


class Exit(Exception):
    """Ends the script with one line of output and an exit status."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _is_text(value):
    return isinstance(value, str) and value.strip() != "" and "\n" not in value


def _is_path(value):
    return _is_text(value) and os.path.isabs(value)


def _is_url(value):
    return _is_text(value) and value.startswith("https://")


def _is_node_name(value):
    return isinstance(value, str) and len(value) <= 253 and NODE_NAME.fullmatch(value) is not None


def _is_command(value):
    if isinstance(value, str):
        return _is_text(value)
    return isinstance(value, list) and len(value) > 0 and all(_is_text(a) for a in value)


# The configuration's keys: (check, what the value must be, default or REQUIRED). Other keys are
# ignored, so that a newer bootstrap can add some.
CONFIG_FIELDS = {
    "name": (_is_node_name, "a Kubernetes node name (lowercase DNS name)", REQUIRED),
    "role": (lambda v: v in ("server", "agent"), '"server" or "agent"', REQUIRED),
    # The first control plane: the only node that may found a new cluster.
    "first": (lambda v: isinstance(v, bool), "true or false", False),
    # The other control planes' API addresses (on an agent: all of them).
    "peers": (
        lambda v: isinstance(v, list) and all(_is_url(p) for p in v),
        "a list of https:// URLs",
        REQUIRED,
    ),
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
    "etcd_s3_dropin": (lambda v: v is None or _is_path(v), "null or an absolute path", None),
    "tls_dir": (lambda v: v is None or _is_path(v), "null or an absolute path", None),
    "join_wait": (_is_number, "a positive number", 120),
    "ready_timeout": (_is_number, "a positive number", 900),
    "progress_every": (_is_number, "a positive number", 15),
    "poll_every": (_is_number, "a positive number", 2),
    # Seconds a control plane gets to answer /ping (an unreachable one answers nothing).
    "ping_timeout": (_is_number, "a positive number", 3),
    # Seconds one request to the Kubernetes API may take at most.
    "request_timeout": (_is_number, "a positive number", 10),
}


def parse_args(argv):
    """Returns (config path, cluster flag); anything unexpected is a usage error."""
    config, cluster = DEFAULT_CONFIG, False
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--cluster":
            cluster = True
        elif arg == "--config" and args:
            config = args.pop(0)
        elif arg.startswith("--config=") and len(arg) > len("--config="):
            config = arg[len("--config=") :]
        else:
            raise Exit(2, USAGE)
    return config, cluster


def load_config(path):
    def bad(what):
        return Exit(2, f"{PROG}: configuration {path}: {what}")

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise bad(f"cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise bad("it is not UTF-8 text") from None
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise bad(f"it is not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise bad("expected a JSON object")
    config = {}
    missing = []
    for key, (check, description, default) in CONFIG_FIELDS.items():
        if key not in raw:
            if default is REQUIRED:
                missing.append(key)
            else:
                config[key] = default
            continue
        if not check(raw[key]):
            raise bad(f"{key} must be {description}")
        config[key] = raw[key]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
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
    return config


# -- stdin ----------------------------------------------------------------------------------------


def read_secrets(config, data):
    """Checks stdin; the errors name what is wrong, never what was sent."""
    name = config["name"]

    def bad(what):
        return Exit(2, f"{name}: refusing stdin: {what}; {STDIN_EXPECTED}")

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("it is not UTF-8 text") from None
    if text.strip() == "":
        raise bad("it is empty")
    try:
        value = json.loads(text)
    except ValueError:
        raise bad("it is not valid JSON") from None
    if not isinstance(value, dict):
        raise bad("it is JSON but not an object")
    missing = [k for k in STDIN_KEYS if k not in value]
    extra = sorted(k for k in value if k not in STDIN_KEYS)
    if missing:
        raise bad(f"missing key(s) {', '.join(missing)}")
    if extra:
        # Key names are not the secret, but show only ones that look like names.
        shown = [k for k in extra if re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", k)]
        if len(shown) == len(extra):
            raise bad(f"unexpected key(s) {', '.join(shown)}")
        raise bad(f"{len(extra)} unexpected key(s)")
    for key in ("admin_keys", "ca", "client_cert", "client_key", "token"):
        if not isinstance(value[key], str):
            raise bad(f"{key} is not a string")
    for key in ("ca", "client_cert"):
        if "-----BEGIN CERTIFICATE-----" not in value[key]:
            raise bad(f"{key} is not a PEM certificate (no BEGIN CERTIFICATE line)")
    key = value["client_key"]
    if "-----BEGIN" not in key or "PRIVATE KEY-----" not in key:
        raise bad("client_key is not a PEM private key (no BEGIN ... PRIVATE KEY line)")
    if not TOKEN.fullmatch(value["token"]):
        raise bad("token is empty or holds whitespace or a character that is not printable ASCII")
    for number, line in enumerate(value["admin_keys"].splitlines(), 1):
        line = line.strip()
        if line == "" or line.startswith("#"):
            continue
        if not line.startswith(ADMIN_KEY_PREFIXES):
            kinds = ", ".join(p.strip() for p in ADMIN_KEY_PREFIXES)
            raise bad(
                f"admin_keys line {number} is not an OpenSSH public key "
                f"(it must start with one of {kinds})"
            )
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


def make_dirs(path, mode=0o755):
    """Creates path and its missing parents with mode (whatever the umask)."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            continue
        os.chmod(directory, mode)


def sync_dir(directory):
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_file(path, content, mode):
    """Writes content to path atomically unless it is there already; returns what happened."""
    data = content.encode("utf-8")
    try:
        with open(path, "rb") as f:
            current = f.read()
    except FileNotFoundError:
        current = None
    if current == data:
        if os.stat(path).st_mode & 0o7777 != mode:
            os.chmod(path, mode)
        return "unchanged"
    directory = os.path.dirname(path)
    make_dirs(directory)
    fd, temp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    sync_dir(directory)
    return "written" if current is None else "updated"


def remove_file(path):
    """Removes path if it is there; returns what happened."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return "absent"
    sync_dir(os.path.dirname(path))
    return "removed"


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


def systemctl(config, deadline, *args):
    """Runs systemctl and waits for it (a start returns once k3s has told systemd it runs),
    saying now and then that it still waits; returns (exit status, last line of its output)."""
    name = config["name"]
    command = list(config["systemctl"]) + list(args)
    what = "systemctl " + " ".join(args)
    try:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    except OSError as e:
        raise Exit(1, f"{name}: cannot run {command[0]}: {e.strerror or e}") from None
    last_progress = time.monotonic()
    while True:
        now = time.monotonic()
        try:
            output, _ = process.communicate(
                timeout=max(0.05, min(config["poll_every"], deadline - now))
            )
            break
        except subprocess.TimeoutExpired:
            now = time.monotonic()
            if now >= deadline:
                process.kill()
                process.communicate()
                limit = seconds(config["ready_timeout"])
                raise Exit(
                    1, f"{name}: {what} did not return within the {limit} s time limit"
                ) from None
            if now - last_progress >= config["progress_every"]:
                say(f"{name}: still waiting for {what} to return")
                last_progress = now
    lines = [line.strip() for line in output.decode("utf-8", "replace").splitlines()]
    lines = [line for line in lines if line]
    return process.returncode, shorten(lines[-1]) if lines else ""


def run_systemctl(config, deadline, *args):
    """systemctl args, which must succeed."""
    status, output = systemctl(config, deadline, *args)
    if status != 0:
        detail = ": " + output if output else ""
        raise Exit(
            1,
            f"{config['name']}: systemctl {' '.join(args)} failed with exit status "
            f"{status}{detail}",
        )


def start_fresh(config, deadline):
    """Enables and starts the unit."""
    unit = config["unit"]
    run_systemctl(config, deadline, "enable", "--now", unit)
    say(f"{config['name']}: enabled and started {unit}")


def ensure_running(config, changed, deadline):
    name, unit = config["name"], config["unit"]
    status, _ = systemctl(config, deadline, "is-active", "--quiet", unit)
    if status != 0:
        action, why = "start", "it was not running"
    elif changed:
        action, why = "restart", "its token or etcd S3 settings changed"
    else:
        say(f"{name}: {unit} is running and its token and settings are unchanged")
        return
    run_systemctl(config, deadline, action, unit)
    done = "started" if action == "start" else "restarted"
    say(f"{name}: {done} {unit} ({why})")


# -- the Kubernetes API ---------------------------------------------------------------------------


def shorten(text):
    text = " ".join(str(text).split())
    if len(text) > ANSWER_CHARS:
        text = text[: ANSWER_CHARS - 3] + "..."
    return text


def seconds(value):
    return f"{value:g}"


class Answer:
    """One HTTP answer, or why there was none (then status is None and error says why)."""

    def __init__(self, status=None, body=b"", error=None):
        self.status = status
        self.body = body
        self.error = error

    def text(self):
        return shorten(self.body.decode("utf-8", "replace"))

    def __str__(self):
        if self.error is not None:
            return self.error
        body = self.text()
        return f"HTTP {self.status}: {body}" if body else f"HTTP {self.status}"


class NotYet(Exception):
    """A check does not hold yet: what it waits for and the last answer."""

    def __init__(self, what, answer):
        super().__init__(what)
        self.what = what
        self.answer = answer


class Api:
    """Requests to k3s API servers, verified against the cluster CA, as the admin."""

    def __init__(self, context):
        # The addresses are private or loopback: never go through a proxy from the environment.
        self.opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )

    def call(self, method, base, path, timeout):
        url = base.rstrip("/") + path
        request = urllib.request.Request(url, method=method, headers={"Accept": "application/json"})
        try:
            with self.opener.open(request, timeout=timeout) as r:
                return Answer(r.status, r.read())
        except urllib.error.HTTPError as e:
            try:
                body = e.read()
            except Exception:
                body = b""
            return Answer(e.code, body)
        except urllib.error.URLError as e:
            return Answer(error=describe_error(e.reason, base, timeout))
        except Exception as e:
            return Answer(error=describe_error(e, base, timeout))


def describe_error(error, base, timeout):
    if isinstance(error, socket.timeout):
        return f"no answer from {base} within {seconds(timeout)} s"
    if isinstance(error, ssl.SSLError):
        return f"TLS error from {base}: {shorten(error)}"
    if isinstance(error, OSError) and error.strerror:
        return f"cannot connect to {base}: {error.strerror}"
    if isinstance(error, OSError):
        return f"cannot connect to {base}: {shorten(error)}"
    return f"{type(error).__name__} from {base}: {shorten(error) or '(no detail)'}"


def parse(answer, what, expected_type):
    """The JSON body of a 200 answer, of the expected type; else NotYet(what, the answer)."""
    if answer.status != 200:
        raise NotYet(what, str(answer))
    try:
        value = json.loads(answer.body.decode("utf-8"))
    except ValueError:
        body = answer.text() or "(empty)"
        raise NotYet(what, f"HTTP 200 with a body that is not JSON: {body}") from None
    if not isinstance(value, expected_type):
        raise NotYet(
            what,
            f"HTTP 200 with a JSON {type(value).__name__} where a {expected_type.__name__} "
            f"was expected: {answer.text()}",
        )
    return value


class Waiter:
    """Polls a check until it holds or limit seconds pass, printing progress now and then."""

    def __init__(self, config, limit):
        self.config = config
        self.limit = limit
        self.deadline = time.monotonic() + limit
        self.last_progress = time.monotonic()

    def until(self, check, give_up=None):
        """Returns what check() returns, retrying while it raises NotYet. At the deadline:
        give_up(what, last answer) if given, else exit 1 saying what it waited for."""
        config = self.config
        name = config["name"]
        while True:
            try:
                return check()
            except NotYet as e:
                what, answer = e.what, e.answer
            now = time.monotonic()
            if now >= self.deadline:
                if give_up is not None:
                    return give_up(what, answer)
                limit = seconds(self.limit)
                raise Exit(
                    1,
                    f"{name}: not ready after {limit} s: waiting for {what}; last answer: {answer}",
                )
            if now - self.last_progress >= config["progress_every"]:
                say(f"{name}: still waiting for {what}; last answer: {answer}")
                self.last_progress = now
            time.sleep(max(0.0, min(config["poll_every"], self.deadline - now)))

    def timeout(self, limit):
        """A request's timeout: limit, or less when the deadline is nearer."""
        return max(0.1, min(limit, self.deadline - time.monotonic()))


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
    waiter = Waiter(config, config["join_wait"])
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
    waiter = Waiter(config, config["ready_timeout"])
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
    start_fresh(config, waiter.deadline)
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

# Messages start with the node's name once the configuration has been read.
PREFIX = [PROG]


def say(line):
    print(line, flush=True)


def run(argv, stdin):
    config_path, cluster = parse_args(argv)
    config = load_config(config_path)
    name = PREFIX[0] = config["name"]
    secrets = read_secrets(config, stdin.read())
    api = Api(secrets["tls"])
    changed = install_files(config, secrets)
    if os.path.exists(config["joined_marker"]):
        say(f"{name}: joined before ({config['joined_marker']} exists): no node object is removed")
        waiter = Waiter(config, config["ready_timeout"])
        ensure_running(config, changed, waiter.deadline)
    else:
        waiter = join(config, secrets, api)
    say(wait_ready(config, api, waiter, cluster))
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        return run(argv, sys.stdin.buffer)
    except Exit as e:
        print(e.message, file=sys.stderr, flush=True)
        return e.status
    except KeyboardInterrupt:
        print(f"{PREFIX[0]}: interrupted", file=sys.stderr, flush=True)
        return 1
    except Exception as e:
        # A bug rather than a state of the cluster: still one line, and never stdin's content.
        print(
            f"{PREFIX[0]}: unexpected error: {type(e).__name__}: {shorten(e)}",
            file=sys.stderr,
            flush=True,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
