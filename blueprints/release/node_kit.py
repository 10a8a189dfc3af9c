"""node_kit: what the node-side scripts nomad-node-ready and k3s-node-ready share.

Both scripts (blueprints/rungs/nomad/node_ready.py, blueprints/rungs/k8s/node_ready.py) run on
a node's system Python, 3.8 or newer, with the standard library only, and travel to the node as
one file: blueprints.release.node_kit_ship.shipped_source puts this module's source (without
this docstring) in place of their marked import block. So this module holds:
  * nothing newer than Python 3.8 (no `X | Y`, no match, no str.removeprefix, no `dict |`) and
    no `from __future__` line (it would stand mid-file);
  * no import of blueprints or of anything outside the standard library;
  * no top-level name a script defines as well (shipped_source refuses the script then): the
    script's own definition would replace the one these functions call.

Every message is one line; the node's name (or the program's, before the configuration is read)
comes first. What differs between the scripts (the program name, the configuration's fields and
the names of its time limits, some words) is a parameter.
"""

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
import urllib.request

# Characters of an answer (an API body, an error) that make it into a message.
ANSWER_CHARS = 200
ADMIN_KEY_PREFIXES = (
    "ssh-ed25519 ",
    "ssh-rsa ",
    "ecdsa-sha2-",
    "sk-ssh-ed25519@openssh.com ",
    "sk-ecdsa-sha2-",
)

# Marks a configuration key that has no default.
REQUIRED = object()

# Messages start with the node's name once the configuration has been read (main sets the
# program's name, the script's run sets the node's).
PREFIX = [""]


class Exit(Exception):
    """Ends the script with one line of output and an exit status."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def say(line):
    print(line, flush=True)


def shorten(text):
    text = " ".join(str(text).split())
    if len(text) > ANSWER_CHARS:
        text = text[: ANSWER_CHARS - 3] + "..."
    return text


def seconds(value):
    return f"{value:g}"


# -- configuration --------------------------------------------------------------------------------


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _is_text(value):
    return isinstance(value, str) and value.strip() != "" and "\n" not in value


def _is_path(value):
    return _is_text(value) and os.path.isabs(value)


def _is_url(value):
    return _is_text(value) and value.startswith("https://")


def _is_path_or_null(value):
    return value is None or _is_path(value)


def _is_urls(value):
    return isinstance(value, list) and all(_is_url(p) for p in value)


def _is_bool(value):
    return isinstance(value, bool)


def _is_argv(value):
    return isinstance(value, list) and len(value) > 0 and all(_is_text(a) for a in value)


def _is_command(value):
    if isinstance(value, str):
        return _is_text(value)
    return _is_argv(value)


def parse_args(argv, default_config, usage):
    """Returns (config path, cluster flag); anything unexpected is a usage error."""
    config, cluster = default_config, False
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
            raise Exit(2, usage)
    return config, cluster


def load_config(path, prog, fields, check=None):
    """The configuration file's JSON object checked against fields, a dict of key to (check,
    what the value must be, default or REQUIRED); other keys are ignored, so that a newer
    bootstrap can add some. check(config, bad), if given, checks the whole afterwards."""

    def bad(what):
        return Exit(2, f"{prog}: configuration {path}: {what}")

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
    for key, (valid, description, default) in fields.items():
        if key not in raw:
            if default is REQUIRED:
                missing.append(key)
            else:
                config[key] = default
            continue
        if not valid(raw[key]):
            raise bad(f"{key} must be {description}")
        config[key] = raw[key]
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    if check is not None:
        check(config, bad)
    return config


# -- stdin ----------------------------------------------------------------------------------------


def read_stdin(data, keys, strings, bad):
    """stdin's JSON object with exactly keys, those in strings strings. bad(what) makes the
    error; the errors name what is wrong, never what was sent."""
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
    missing = [k for k in keys if k not in value]
    extra = sorted(k for k in value if k not in keys)
    if missing:
        raise bad(f"missing key(s) {', '.join(missing)}")
    if extra:
        # Key names are not the secret, but show only ones that look like names.
        shown = [k for k in extra if re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", k)]
        if len(shown) == len(extra):
            raise bad(f"unexpected key(s) {', '.join(shown)}")
        raise bad(f"{len(extra)} unexpected key(s)")
    for key in strings:
        if not isinstance(value[key], str):
            raise bad(f"{key} is not a string")
    return value


def check_pem(value, certificates, private_key, bad):
    """The values of certificates must look like PEM certificates, private_key's like a PEM
    private key."""
    for key in certificates:
        if "-----BEGIN CERTIFICATE-----" not in value[key]:
            raise bad(f"{key} is not a PEM certificate (no BEGIN CERTIFICATE line)")
    text = value[private_key]
    if "-----BEGIN" not in text or "PRIVATE KEY-----" not in text:
        raise bad(f"{private_key} is not a PEM private key (no BEGIN ... PRIVATE KEY line)")


def check_admin_keys(text, bad):
    """Every line of the admin keys that is not blank or a comment is an OpenSSH public key."""
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line == "" or line.startswith("#"):
            continue
        if not line.startswith(ADMIN_KEY_PREFIXES):
            kinds = ", ".join(p.strip() for p in ADMIN_KEY_PREFIXES)
            raise bad(
                f"admin_keys line {number} is not an OpenSSH public key "
                f"(it must start with one of {kinds})"
            )


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


# -- systemd --------------------------------------------------------------------------------------


class Systemd:
    """Runs systemctl for the node name: command (a list) is systemctl, limit the time limit
    the messages name, poll_every how often it looks whether a call has returned; with
    progress_every a call that takes longer says now and then that it still waits. A call that
    outlasts the deadline "did not {verb}"."""

    def __init__(self, name, command, limit, poll_every, progress_every=None, verb="return"):
        self.name = name
        self.command = list(command)
        self.limit = limit
        self.poll_every = poll_every
        self.progress_every = progress_every
        self.verb = verb

    def run(self, deadline, *args):
        """Runs systemctl args and waits for it (a start returns once the service has told
        systemd it runs); returns (exit status, last line of its output)."""
        name = self.name
        command = self.command + list(args)
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
                    timeout=max(0.05, min(self.poll_every, deadline - now))
                )
                break
            except subprocess.TimeoutExpired:
                now = time.monotonic()
                if now >= deadline:
                    process.kill()
                    process.communicate()
                    limit = seconds(self.limit)
                    raise Exit(
                        1, f"{name}: {what} did not {self.verb} within the {limit} s time limit"
                    ) from None
                every = self.progress_every
                if every is not None and now - last_progress >= every:
                    say(f"{name}: still waiting for {what} to return")
                    last_progress = now
        lines = [line.strip() for line in output.decode("utf-8", "replace").splitlines()]
        lines = [line for line in lines if line]
        return process.returncode, shorten(lines[-1]) if lines else ""

    def must(self, deadline, *args):
        """systemctl args, which must succeed."""
        status, output = self.run(deadline, *args)
        if status != 0:
            detail = ": " + output if output else ""
            raise Exit(
                1,
                f"{self.name}: systemctl {' '.join(args)} failed with exit status {status}{detail}",
            )

    def ensure_running(self, unit, changed, deadline, action, why, unchanged):
        """Starts unit if it is not running; else, if changed, runs systemctl action (reload,
        restart) on it, why saying what changed; else says that unit is running and unchanged."""
        status, _ = self.run(deadline, "is-active", "--quiet", unit)
        if status != 0:
            action, why = "start", "it was not running"
        elif not changed:
            say(f"{self.name}: {unit} is running and {unchanged}")
            return
        self.must(deadline, action, unit)
        say(f"{self.name}: {action}ed {unit} ({why})")


# -- HTTP APIs ------------------------------------------------------------------------------------


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
    """Requests to HTTPS APIs verified with an ssl context; never through a proxy."""

    def __init__(self, context):
        # The addresses are private or loopback: never go through a proxy from the environment.
        self.opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )

    def call(self, method, base, path, timeout, headers=None, data=None):
        """One request; data, if given, is the body (bytes)."""
        url = base.rstrip("/") + path
        headers = {"Accept": "application/json", **(headers or {})}
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
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
        if error.filename:
            return f"cannot read {error.filename}: {error.strerror}"
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
    """Polls a check every poll_every seconds until it holds or the deadline passes (by default
    limit seconds from now), saying every progress_every seconds what it waits for."""

    def __init__(self, name, limit, poll_every, progress_every, deadline=None):
        self.name = name
        self.limit = limit
        self.poll_every = poll_every
        self.progress_every = progress_every
        self.deadline = time.monotonic() + limit if deadline is None else deadline
        self.last_progress = time.monotonic()

    def until(self, check, give_up=None):
        """Returns what check() returns, retrying while it raises NotYet. At the deadline:
        give_up(what, last answer) if given, else exit 1 saying what it waited for."""
        name = self.name
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
            if now - self.last_progress >= self.progress_every:
                say(f"{name}: still waiting for {what}; last answer: {answer}")
                self.last_progress = now
            time.sleep(max(0.0, min(self.poll_every, self.deadline - now)))

    def timeout(self, limit):
        """A request's timeout: limit, or less when the deadline is nearer."""
        return max(0.1, min(limit, self.deadline - time.monotonic()))


# -- main -----------------------------------------------------------------------------------------


def main(prog, run, argv=None):
    """Runs run(argv, stdin) and returns the exit status: every failure is one line on stderr,
    never a traceback (nor stdin's content)."""
    argv = sys.argv[1:] if argv is None else argv
    PREFIX[0] = prog
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
