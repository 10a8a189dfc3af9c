"""The app spec: what an application needs, independent of how it runs.

A team writes this once (YAML); every blueprint reads the validated model, never raw YAML.
`load_spec(path)` turns any problem into a `SpecError` whose lines each name the file, the
field path and what is allowed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import shlex
import types
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from blueprints.yaml_text import FastLoader

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?\Z")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
IMAGE_REF = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*\Z")
HOSTNAME = re.compile(r"^(?=.{1,253}\Z)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z]{2,63}\Z")
# No braces: Caddy expands {...} in the ACME e-mail as a placeholder (and refuses to start on
# an unknown one, or silently fills in {env.*}); its `\{` escape does not survive the second
# expansion Caddy applies to the same address.
EMAIL = re.compile(r"^[^@\s\"'`$\\{}]+@[a-z0-9.-]+\.[a-z]{2,63}\Z")
SSH_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com)"
    r" [A-Za-z0-9+/]+={0,3}( [^\n\r]*)?\Z"
)
_ENV_RULE = "(letters, digits and _, not starting with a digit)"
HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]\Z")

_DURATION = re.compile(r"^(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?(?:([0-9]+)ms)?\Z")
_MEMORY = re.compile(r"^([0-9]+)(Mi|Gi|M|G)?\Z")
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+\Z")
# A % that does not start a %XX escape, and what follows it (for the message).
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2}).{0,2}", re.DOTALL)
# The Kubernetes API server's rule for Ingress paths of pathType Prefix and Exact
# (pkg/apis/networking/validation: invalidPathSequences, invalidPathSuffixes).
INGRESS_BAD_SEQUENCES = ("//", "/./", "/../", "%2f", "%2F")
INGRESS_BAD_SUFFIXES = ("/..", "/.")


def ingress_path_problem(path: str) -> str | None:
    """What the Kubernetes API server refuses in an Ingress path (pathType Prefix or Exact),
    as 'must not ...', or None when it accepts it."""
    if not path.startswith("/"):
        return "must be an absolute path"
    for seq in INGRESS_BAD_SEQUENCES:
        if seq in path:
            return f"must not contain {seq!r}"
    for suffix in INGRESS_BAD_SUFFIXES:
        if path.endswith(suffix):
            return f"must not end with {suffix!r}"
    return None


_UNIONS = (Union, types.UnionType)


class SpecError(Exception):
    """A spec (or stack setting) that cannot be used; each line names file, field and rule."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


class FieldProblem(ValueError):
    """Raised by cross-field checks so the message can name the exact field path."""

    def __init__(self, path: tuple[str | int, ...], message: str):
        super().__init__(message)
        self.path = path
        self.message = message


def _seconds(value: Any) -> int | None:
    """Whole seconds from 90, "90", "90s", "1m30s", "2h", "500ms" (rounded up), or None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return int(text)
    m = _DURATION.match(text)
    if not m or not text:
        return None
    h, mins, secs, ms = (int(g) if g else 0 for g in m.groups())
    return h * 3600 + mins * 60 + secs + -(-ms // 1000)


def _duration_between(low: int, high: int, example: str) -> Any:
    def check(value: Any) -> Any:
        seconds = _seconds(value)
        if seconds is None:
            raise ValueError(
                f"must be a duration such as {example} (got {_show(value)}); "
                "units are h, m, s and ms, and 500ms counts as 1s"
            )
        if not low <= seconds <= high:
            raise ValueError(
                f"must be a duration from {_span(low)} to {_span(high)} (got {_show(value)})"
            )
        return seconds

    return check


def _span(seconds: int) -> str:
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


_duration = _duration_between(1, 3600, "10s, 1m30s or 1h")


def _memory(value: Any) -> Any:
    """Accept 512 (MiB), "512Mi", "512M", "1Gi", "1G"; return MiB between 16Mi and 256Gi."""
    mib = None
    if isinstance(value, int) and not isinstance(value, bool):
        mib = value
    elif isinstance(value, str):
        m = _MEMORY.match(value.strip())
        if m:
            mib = int(m.group(1)) * (1024 if m.group(2) in ("Gi", "G") else 1)
    if mib is None:
        raise ValueError(f"must be a memory size such as 256Mi or 1Gi (got {_show(value)})")
    if not 16 <= mib <= 262144:
        raise ValueError(f"must be a memory size from 16Mi to 256Gi (got {_show(value)})")
    return mib


Seconds = Annotated[int, BeforeValidator(_duration), Field(ge=1, le=3600)]
# Tasks and schedules may run longer than a probe: up to a day.
LongSeconds = Annotated[
    int, BeforeValidator(_duration_between(1, 86400, "10m, 1h30m or 24h")), Field(ge=1, le=86400)
]


def _argv(value: Any) -> Any:
    """A command as a list (numbers become strings) or a string split by shell rules."""
    if isinstance(value, str):
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise ValueError(
                f"cannot be split into words by shell rules ({exc}); write it as a list"
            ) from None
        if not words:
            raise ValueError("must not be empty: give a program and its arguments")
        return words
    if isinstance(value, list):
        out = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise ValueError(f"every word must be a string, and one is {_show(item)}; quote it")
            out.append(item if isinstance(item, str) else str(item))
        return out
    return value


def _env_value(value: Any) -> Any:
    """YAML numbers and booleans as the strings a process receives ("3", "true")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if value is None:
        raise ValueError('must be a value; write "" for an empty string')
    return value


Argv = Annotated[list[str], BeforeValidator(_argv)]
EnvValue = Annotated[str, BeforeValidator(_env_value)]
MiB = Annotated[int, BeforeValidator(_memory), Field(ge=16, le=262144)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HealthCheck(_Model):
    """How to tell that a service is healthy."""

    type: Literal["http", "tcp", "command"] = Field(
        description="http: GET path on port answers 2xx/3xx; tcp: port accepts a connection; "
        "command: the command exits 0 inside the container."
    )
    port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Container port to probe (http/tcp); defaults to the service's first port.",
    )
    path: str = Field(default="/", description="HTTP path to request (http only).")
    command: Argv | None = Field(
        default=None,
        description="Command and arguments run in the container (command only): a list, or a "
        "string split by shell rules.",
    )
    interval: Seconds = Field(default=10, description="Time between probes (e.g. 10s).")
    timeout: Seconds = Field(
        default=5, description="Time one probe may take; 5s, or the interval when that is shorter."
    )
    retries: int = Field(
        default=3, ge=1, le=100, description="Consecutive failures before the service is unhealthy."
    )
    start_period: Seconds = Field(
        default=30, description="Grace time after start during which failures do not count."
    )

    @model_validator(mode="before")
    @classmethod
    def _timeout_follows_interval(cls, data: Any) -> Any:
        if isinstance(data, dict) and "timeout" not in data and "interval" in data:
            try:
                interval = _duration(data["interval"])
            except ValueError:
                return data  # the interval's own check reports it
            return {**data, "timeout": min(5, interval)}
        return data

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        # A NUL is left to the renderers' check, which names it in every field alike.
        control = any(unicodedata.category(c) == "Cc" and c != "\0" for c in v)
        if not v.startswith("/") or control or any(c.isspace() for c in v):
            raise ValueError(
                "must be an absolute URL path without spaces or control characters, like "
                f"/healthz (got {v!r})"
            )
        bad = _BAD_ESCAPE.search(v)
        if bad:
            # Caddy parses it as a URL (so do Nomad and the kubelet) and refuses the whole
            # proxy configuration over one bad escape. Braces need nothing: Caddy expands no
            # placeholder in a health check's path, and sends them escaped (%7B, %7D).
            raise ValueError(
                f"has a % that does not start a %XX escape ({bad.group()!r}); the proxy reads "
                f"the path as a URL and refuses it (write a literal % as %25; got {v!r})"
            )
        return v

    @model_validator(mode="after")
    def _shape(self) -> HealthCheck:
        if self.type == "command" and not self.command:
            raise FieldProblem(
                ("command",), "a command health check needs a non-empty command list"
            )
        if self.type != "command" and self.command is not None:
            raise FieldProblem(
                ("command",), f"command is only allowed with type command, not {self.type}"
            )
        if self.timeout > self.interval:
            raise FieldProblem(
                ("timeout",),
                f"must not exceed interval (timeout {self.timeout}s > interval {self.interval}s)",
            )
        return self


class Port(_Model):
    """A port the service listens on inside its container, and how it is exposed."""

    port: int = Field(
        ge=1,
        le=65535,
        description="The service's port: where other services and the proxy reach it, and the "
        "port the container listens on unless container_port says otherwise.",
    )
    container_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port the process listens on inside the container, when it differs from "
        "port (an image fixed on 80, say). On single-vm and compose other services reach the "
        "container itself, so on port only through ${services.NAME.port}, which each rung fills.",
    )
    expose: Literal["private", "http", "tcp"] = Field(
        default="private",
        description="private: reachable only by other services; http: routed by the reverse proxy "
        "with TLS on 443; tcp: published as-is on public_port.",
    )
    host: str | None = Field(
        default=None,
        description="Host name this http port answers (http only); defaults to the app's domain.",
    )
    path: str = Field(
        default="/", description="Path prefix routed to this port (http only), e.g. /api."
    )
    public_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Public port for tcp exposure; defaults to port. 22, 80 and 443 are reserved.",
    )

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is not None and not HOSTNAME.match(v):
            raise ValueError(f"must be a lower-case DNS name like app.example.com (got {v!r})")
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not re.match(r"^/[A-Za-z0-9._~/-]*\Z", v):
            raise ValueError(
                "must be a URL path prefix of letters, digits and ._~/- starting with / "
                f"(got {v!r})"
            )
        problem = ingress_path_problem(v)
        if problem:
            raise ValueError(f"{problem}, which Kubernetes refuses in an Ingress path (got {v!r})")
        return v

    @model_validator(mode="after")
    def _shape(self) -> Port:
        if self.expose != "http" and (self.host is not None or self.path != "/"):
            raise FieldProblem(
                ("host" if self.host else "path",), "host and path routes need expose: http"
            )
        if self.expose != "tcp" and self.public_port is not None:
            raise FieldProblem(("public_port",), "public_port needs expose: tcp")
        if self.expose == "tcp" and self.published in (22, 80, 443):
            raise FieldProblem(
                ("public_port",),
                f"{self.published} is reserved for SSH and the reverse proxy; "
                "choose another public_port",
            )
        return self

    @property
    def published(self) -> int:
        return self.public_port or self.port

    @property
    def target(self) -> int:
        """The container-side port: what the process listens on."""
        return self.container_port or self.port


class Mount(_Model):
    """A named data volume mounted into a service's container."""

    volume: str = Field(description="Name of a volume declared under volumes.")
    path: str = Field(description="Absolute path inside the container.")
    read_only: bool = Field(default=False, description="Mount read-only.")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not re.match(r"^/[A-Za-z0-9._/-]*\Z", v) or "/../" in v + "/":
            raise ValueError(
                f"must be an absolute container path of letters, digits and ._/- (got {v!r})"
            )
        return v


class Dump(_Model):
    """How a service copies its state consistently while it runs, and how it loads it back.

    Both commands run inside one of the service's running containers (`docker exec`, `docker
    compose exec`, `kubectl exec`), so they reach a database over its local socket."""

    dump: Argv = Field(
        description="Command that writes a consistent copy of the service's state to standard "
        "output, like [pg_dump, --username=shop, --format=custom, shop]. The backup stores that "
        "output instead of the service's volumes, so the service is never paused.",
    )
    restore: Argv = Field(
        description="Command that reads such a copy on standard input and loads it into the "
        "service, run by a restore: on single-vm, compose and nomad into a fresh, empty service; "
        "on k8s into the running one, so it should replace what is there, like [pg_restore, "
        "--username=shop, --dbname=shop, --no-owner, --clean, --if-exists].",
    )

    @field_validator("dump", "restore")
    @classmethod
    def _command(cls, v: list[str]) -> list[str]:
        if not v or not v[0]:
            raise ValueError("must be a command: a program and its arguments, like [pg_dump, shop]")
        return v


# --- references inside env values and file contents -------------------------------------------

# `${secrets.NAME}`, `${services.NAME.host}`, `${services.NAME.port}`; `$${` is a literal `${`.
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_SECRET_REF = re.compile(r"^secrets\.([A-Za-z_][A-Za-z0-9_]*)\Z")
_SERVICE_REF = re.compile(r"^services\.([a-z0-9-]+)\.(host|port)\Z")
_REF_RULE = (
    "references are ${secrets.NAME}, ${services.NAME.host} and ${services.NAME.port}; "
    "write $${ for a literal ${"
)


@dataclass(frozen=True)
class Reference:
    """One `${...}` in a value: a secret's name, or a service's host or port."""

    kind: Literal["secret", "service"]
    name: str
    attr: str = ""


def references(text: str) -> list[Reference]:
    """The references in text, in order; ValueError (one sentence) for one that is not allowed."""
    found = []
    for m in _REFERENCE.finditer(text):
        whole = m.group(0)
        if whole == "$${":
            continue
        if m.group(1) is None:
            raise ValueError(f"has a ${{ that is never closed by }}; {_REF_RULE}")
        inner = m.group(1).strip()
        secret, service = _SECRET_REF.match(inner), _SERVICE_REF.match(inner)
        if secret:
            found.append(Reference("secret", secret.group(1)))
        elif service:
            found.append(Reference("service", service.group(1), service.group(2)))
        else:
            raise ValueError(f"has an unknown reference {whole!r}; {_REF_RULE}")
    return found


def interpolate(text: str, secret: Callable[[str], str], address: Callable[[str, str], str]) -> str:
    """text with every reference replaced (and `$${` turned into `${`)."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$${":
            return "${"
        ref = references(m.group(0))[0]
        return secret(ref.name) if ref.kind == "secret" else address(ref.name, ref.attr)

    return _REFERENCE.sub(one, text)


def _referenced_secrets(text: str) -> set[str]:
    return {r.name for r in references(text) if r.kind == "secret"}


# How a rung addresses a service from another one: the host is the service's name everywhere;
# the port is the first port's container side where containers reach each other directly on a
# Docker network (single-vm, compose), and the service port where the cluster maps it (nomad's
# host ports, k8s Services).
Addressing = Literal["docker", "cluster"]


@dataclass(frozen=True)
class Environment:
    """A service's environment on one rung: values with no secret in them, and secret ones."""

    plain: dict[str, str] = field(default_factory=dict)
    secret: dict[str, str] = field(default_factory=dict)


class File(_Model):
    """A file placed into the service's container: a config file, or a secret as a file."""

    path: str = Field(description="Absolute path of the file inside the container.")
    content: str | None = Field(
        default=None,
        description="The file's text; may reference ${secrets.NAME} (then the file is kept as a "
        "secret) and ${services.NAME.host}/${services.NAME.port}.",
    )
    source: str | None = Field(
        default=None,
        description="A text file to read the content from instead, relative to the spec's "
        "directory (like config/prometheus.yml).",
    )
    mode: str = Field(
        default="0444",
        description="Permissions of the file in the container, in octal. The file belongs to "
        "root, so a process running as another user reads it only through the last digit "
        "(0444, the default, lets everyone read it).",
    )

    @model_validator(mode="before")
    @classmethod
    def _read_source(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict) or data.get("source") is None:
            return data
        if data.get("content") is not None:
            raise FieldProblem(("source",), "give content or source, not both")
        source = data["source"]
        if not isinstance(source, str) or not source.strip():
            raise FieldProblem(("source",), "must be a file path relative to the spec")
        base = (info.context or {}).get("base_dir")
        if base is None:
            raise FieldProblem(
                ("source",), "a source file needs a spec loaded from a file; use content here"
            )
        rel = Path(source)
        if rel.is_absolute() or ".." in rel.parts:
            raise FieldProblem(
                ("source",),
                f"must be a path inside the spec's directory, without .. (got {source!r})",
            )
        path = Path(base) / rel
        if not path.resolve().is_relative_to(Path(base).resolve()):
            raise FieldProblem(
                ("source",),
                f"{source} leads outside the spec's directory (through a symbolic link); "
                "copy the file in instead",
            )
        try:
            raw = path.read_bytes()
        except OSError as exc:
            reason = "no such file" if isinstance(exc, FileNotFoundError) else "cannot be read"
            raise FieldProblem(("source",), f"{source}: {reason}") from None
        reads = (info.context or {}).get("reads")
        if reads is not None:
            reads.append((path, raw))
        if len(raw) > FILE_LIMIT:
            raise FieldProblem(("source",), _too_big(len(raw)))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FieldProblem(
                ("source",), f"{source} is not UTF-8 text; binary files belong in the image"
            ) from None
        return {**data, "content": text}

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return _container_path(v)

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            # YAML reads 440 as the number 440 and 0440 as 288: neither can be trusted
            raise ValueError(f'must be quoted octal permissions like "0440" (got {v}); quote it')
        if not isinstance(v, str) or not re.match(r"^0?[0-7]{3}\Z", v):
            raise ValueError(f'must be octal permissions like "0444" or "0640" (got {_show(v)})')
        return v.rjust(4, "0")

    @model_validator(mode="after")
    def _shape(self) -> File:
        if self.content is None:
            raise FieldProblem(("content",), "is required: give content, or a source file")
        if len(self.content.encode()) > FILE_LIMIT:
            raise FieldProblem(("content",), _too_big(len(self.content.encode())))
        if "\0" in self.content:
            raise FieldProblem(("content",), "contains a NUL character; files here are text")
        try:
            references(self.content)
        except ValueError as exc:
            raise FieldProblem(("content",), str(exc)) from None
        if int(self.mode, 8) & 0o444 == 0:
            raise FieldProblem(("mode",), f"{self.mode} lets nobody read the file")
        return self

    @property
    def text(self) -> str:
        return self.content or ""

    @property
    def mode_int(self) -> int:
        return int(self.mode, 8)

    @property
    def secret(self) -> bool:
        return bool(_referenced_secrets(self.text))

    @property
    def key(self) -> str:
        """A file-name-safe, unique, stable name for this file (host files, ConfigMap keys)."""
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", self.path.strip("/")).strip(".-")[-40:]
        return f"{stem.strip('.-') or 'file'}-{hashlib.sha256(self.path.encode()).hexdigest()[:8]}"


# Files travel in release documents, Nomad templates and ConfigMaps: config, not data.
FILE_LIMIT = 64 * 1024


def _too_big(size: int) -> str:
    return (
        f"is {size} bytes, and a file here may hold at most {FILE_LIMIT} (64 KiB); "
        "put larger files in the image or on a volume"
    )


def _container_path(v: str) -> str:
    if not re.match(r"^/[A-Za-z0-9._/-]*\Z", v) or "/../" in v + "/" or "/./" in v + "/":
        raise ValueError(
            f"must be an absolute container path of letters, digits and ._/- (got {v!r})"
        )
    if v.endswith("/") or v == "/":
        raise ValueError(f"must name a file, not a directory (got {v!r})")
    return v


class Registry(_Model):
    """Credentials for pulling images from one private registry."""

    username: str = Field(description="User name; plain text or ${secrets.NAME}.")
    password: str = Field(
        description="Password or token, as a reference to a secret: ${secrets.NAME}."
    )

    @field_validator("username")
    @classmethod
    def _username(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        if any(r.kind != "secret" for r in references(v)):
            raise ValueError("may reference secrets (${secrets.NAME}) but not services")
        return v

    @field_validator("password")
    @classmethod
    def _password(cls, v: str) -> str:
        refs = references(v)
        if not refs or any(r.kind != "secret" for r in refs):
            raise ValueError(
                "must come from a secret, written ${secrets.NAME} and set with "
                "`pulumi config set --secret --path 'blueprints:secrets.NAME'`; a password in "
                "the spec would be in git"
            )
        return v


def _some_command(v: list[str]) -> list[str]:
    if not v or not v[0]:
        raise ValueError(
            "must be a command: a program and its arguments, like [./manage.py, migrate]"
        )
    return v


class Task(_Model):
    """A command run once per release, before the rollout (a database migration)."""

    service: str = Field(
        description="Service whose image, entrypoint, env, secrets, files and volumes it runs with."
    )
    command: Argv = Field(
        description="Command and arguments: a list, or a string split by shell rules."
    )
    timeout: LongSeconds = Field(
        default=600, description="How long it may run; past that the release fails (e.g. 10m)."
    )

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str]) -> list[str]:
        return _some_command(v)


class Schedule(_Model):
    """A command run on a schedule with a service's image (a cleanup every 5 minutes)."""

    service: str = Field(
        description="Service whose image, entrypoint, env, secrets, files and volumes it runs with."
    )
    command: Argv = Field(
        description="Command and arguments: a list, or a string split by shell rules."
    )
    cron: str = Field(
        description="When, in UTC: five cron fields (minute hour day-of-month month day-of-week, "
        "like */5 * * * *) or @hourly, @daily, @weekly, @monthly. A run never overlaps the last."
    )
    timeout: LongSeconds = Field(default=3600, description="How long one run may take (e.g. 1h).")

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str]) -> list[str]:
        return _some_command(v)

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from blueprints.cron import CronError, normalise

        try:
            return normalise(v)
        except CronError as exc:
            raise ValueError(str(exc)) from None


class Service(_Model):
    """One containerised process group of the app."""

    image: str = Field(description="Container image reference, ideally pinned by tag or digest.")
    entrypoint: Argv | None = Field(
        default=None,
        description="Program run instead of the image's entrypoint (a list, or a string split by "
        "shell rules); the image's when omitted.",
    )
    command: Argv | None = Field(
        default=None,
        description="Command and arguments (a list, or a string split by shell rules); the "
        "image's default when omitted.",
    )
    ports: list[Port] = Field(default_factory=list, description="Ports the service listens on.")
    env: dict[str, EnvValue] = Field(
        default_factory=dict,
        description="Environment variables. Numbers and booleans are passed as text. A value may "
        "reference ${secrets.NAME} (then the variable is kept as a secret), "
        "${services.NAME.host} and ${services.NAME.port}; $${ is a literal ${.",
    )
    secret_env: list[str] = Field(
        default_factory=list,
        description="Names of environment variables whose values are secrets, set per stack with "
        "`pulumi config set --secret --path 'blueprints:secrets.NAME'`.",
    )
    replicas: int = Field(default=1, ge=1, le=50, description="Number of instances to run.")
    cpu: float = Field(default=0.5, gt=0, le=64, description="CPU limit in cores.")
    memory: MiB = Field(default=256, description="Memory limit, e.g. 256Mi or 1Gi.")
    health: HealthCheck | None = Field(default=None, description="Health check; none if omitted.")
    volumes: list[Mount] = Field(
        default_factory=list,
        description="Data volumes to mount; several services may mount one volume, and then run "
        "on one machine.",
    )
    files: list[File] = Field(
        default_factory=list,
        description="Files placed into the container, read-only: config files, or secrets as "
        "files.",
    )
    depends_on: list[str] = Field(
        default_factory=list, description="Services that must be started (and healthy) first."
    )
    backup: Dump | None = Field(
        default=None,
        description="How a backup copies this service's state while it runs (a database's "
        "dump). Without it, the service's volumes are backed up as files, the service paused "
        "for as long as the file snapshot takes.",
    )

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not IMAGE_REF.match(v):
            raise ValueError(
                "must be a container image reference like nginx:1.27 or ghcr.io/org/app:1.2 "
                f"(got {v!r})"
            )
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not ENV_NAME.match(name):
                raise FieldProblem(
                    (name,), f"{name!r} is not a valid environment variable name {_ENV_RULE}"
                )
            try:
                references(value)
            except ValueError as exc:
                raise FieldProblem((name,), str(exc)) from None
        return v

    @field_validator("secret_env")
    @classmethod
    def _secret_env(cls, v: list[str]) -> list[str]:
        for i, name in enumerate(v):
            if not ENV_NAME.match(name):
                raise FieldProblem(
                    (i,), f"{name!r} is not a valid environment variable name {_ENV_RULE}"
                )
        return v

    @property
    def stateful(self) -> bool:
        return bool(self.volumes)

    @property
    def public_http_ports(self) -> list[Port]:
        return [p for p in self.ports if p.expose == "http"]

    @property
    def public_tcp_ports(self) -> list[Port]:
        return [p for p in self.ports if p.expose == "tcp"]

    @property
    def health_port(self) -> int | None:
        """The container-side port an http or tcp health check probes."""
        if self.health is None or self.health.type == "command":
            return None
        if self.health.port is None:
            return self.ports[0].target if self.ports else None
        for p in self.ports:
            if p.port == self.health.port:
                return p.target
        return self.health.port


class Volume(_Model):
    """A named data volume; its data lives on the cloud volume and survives the VM."""

    size_gb: int = Field(default=10, ge=1, le=10000, description="Size in GB.")


class Backups(_Model):
    """How often data is backed up and how many backups are kept."""

    enabled: bool = Field(default=True, description="Take scheduled backups of the data volume.")
    schedule: Literal["hourly", "daily", "weekly"] = Field(
        default="daily", description="How often to back up."
    )
    at: str = Field(
        default="03:00", description="Time of day (UTC, HH:MM) for daily/weekly backups."
    )
    keep: int = Field(default=7, ge=1, le=1000, description="How many backups to retain.")

    @field_validator("at")
    @classmethod
    def _at(cls, v: str) -> str:
        if not HHMM.match(v):
            raise ValueError(f"must be a time of day as HH:MM in UTC, like 03:00 (got {v!r})")
        return v


class Admin(_Model):
    """Who may administer the machines."""

    ssh_keys: list[str] = Field(
        default_factory=list, description="SSH public keys of the admins (deploy user)."
    )
    cidrs: list[str] = Field(
        default_factory=list,
        description="Networks allowed to reach SSH (port 22); empty closes SSH to everyone.",
    )

    @field_validator("ssh_keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        for i, key in enumerate(v):
            if not SSH_KEY.match(key.strip()):
                raise FieldProblem(
                    (i,),
                    "is not an SSH public key; expected one line starting with ssh-ed25519, "
                    "ssh-rsa or ecdsa-sha2-nistp256",
                )
        return [k.strip() for k in v]

    @field_validator("cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        out = []
        for i, cidr in enumerate(v):
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise FieldProblem(
                    (i,), f"{cidr!r} is not a network in CIDR form like 203.0.113.0/24"
                ) from None
            if net.network_address != ipaddress.ip_address(cidr.split("/")[0]):
                raise FieldProblem((i,), f"{cidr!r} has host bits set; did you mean {net}?")
            out.append(str(net))
        return out


class AppSpec(_Model):
    """The whole application: what it needs, independent of blueprint and cloud."""

    name: str = Field(description="App name, a DNS label; prefixes every cloud resource.")
    domain: str = Field(description="Public DNS name the app is served on (TLS via ACME).")
    acme_email: str = Field(description="E-mail address for the ACME (Let's Encrypt) account.")
    services: dict[str, Service] = Field(description="Services by name (DNS labels).")
    _secret_names: tuple[str, ...] | None = PrivateAttr(default=None)
    _volume_users: dict[str, tuple[str, ...]] | None = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:
        # The same fields make the same spec: a cache (_secret_names, _volume_users) filled on
        # one of two equal specs must not make them differ, as pydantic's comparison of private
        # attributes would.
        if not isinstance(other, AppSpec):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False):
        # A copy with other fields works its caches out again (pydantic copies them as they are).
        copy = super().model_copy(update=update, deep=deep)
        copy._secret_names = None
        copy._volume_users = None
        return copy

    volumes: dict[str, Volume] = Field(
        default_factory=dict, description="Named data volumes by name (DNS labels)."
    )
    tasks: dict[str, Task] = Field(
        default_factory=dict,
        description="Commands run once per release before the rollout, in the order written "
        "(migrations); one that fails stops the release and the previous one keeps serving.",
    )
    schedules: dict[str, Schedule] = Field(
        default_factory=dict, description="Commands run on a cron schedule, by name."
    )
    registries: dict[str, Registry] = Field(
        default_factory=dict,
        description="Credentials for private registries, by host (ghcr.io, registry.gitlab.com, "
        "docker.io).",
    )
    backups: Backups = Field(default_factory=Backups, description="Backup schedule and retention.")
    admin: Admin = Field(default_factory=Admin, description="Admin SSH keys and networks.")

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        if not HOSTNAME.match(v):
            raise ValueError(f"must be a lower-case DNS name like app.example.com (got {v!r})")
        return v

    @field_validator("acme_email")
    @classmethod
    def _email(cls, v: str) -> str:
        if "{" in v or "}" in v:
            raise ValueError(
                "must not contain { or }: the proxy (Caddy) reads {...} in it as a placeholder "
                f"and refuses to start; use an address without braces (got {v!r})"
            )
        if not EMAIL.match(v):
            raise ValueError(f"must be an e-mail address like ops@example.com (got {v!r})")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> AppSpec:
        _check_label(("name",), self.name, "app name")
        if not self.services:
            raise FieldProblem(("services",), "must declare at least one service")
        for vname in self.volumes:
            _check_label(("volumes", vname), vname, "volume name")
        for host in self.registries:
            if not REGISTRY_HOST.match(host):
                raise FieldProblem(
                    ("registries", host),
                    f"{host!r} is not a registry host like ghcr.io or registry.example.com:5000",
                )
        routes: dict[tuple[str, str], str] = {}
        published: dict[int, str] = {}
        for sname, svc in self.services.items():
            base = ("services", sname)
            _check_label(base, sname, "service name")
            seen_ports: set[int] = set()
            for i, p in enumerate(svc.ports):
                if p.port in seen_ports:
                    raise FieldProblem(
                        (*base, "ports", i, "port"),
                        f"port {p.port} is listed twice for this service",
                    )
                seen_ports.add(p.port)
                if p.expose == "http":
                    key = (p.host or self.domain, p.path)
                    if key in routes:
                        raise FieldProblem(
                            (*base, "ports", i, "path"),
                            f"route {key[0]}{key[1]} is already served by {routes[key]}",
                        )
                    routes[key] = f"service {sname} port {p.port}"
                if p.expose == "tcp":
                    if p.published in published:
                        raise FieldProblem(
                            (*base, "ports", i, "public_port"),
                            f"public port {p.published} is already published by "
                            f"{published[p.published]}",
                        )
                    published[p.published] = f"service {sname}"
            health = svc.health
            if health and health.type in ("http", "tcp") and health.port is None and not svc.ports:
                raise FieldProblem(
                    (*base, "health", "port"),
                    f"a {health.type} health check needs a port; declare ports or set health.port",
                )
            overlap = sorted(set(svc.env) & set(svc.secret_env))
            if overlap:
                raise FieldProblem(
                    (*base, "secret_env"),
                    f"{overlap[0]} is also set in env; a variable is either plain or secret",
                )
            paths: set[str] = set()
            for i, m in enumerate(svc.volumes):
                if m.volume not in self.volumes:
                    declared = ", ".join(sorted(self.volumes)) or "none"
                    raise FieldProblem(
                        (*base, "volumes", i, "volume"),
                        f"names undeclared volume {m.volume!r}; declared volumes: {declared}",
                    )
                if m.path in paths:
                    raise FieldProblem((*base, "volumes", i, "path"), f"{m.path} is mounted twice")
                paths.add(m.path)
            for i, f in enumerate(svc.files):
                if f.path in paths:
                    raise FieldProblem(
                        (*base, "files", i, "path"), f"{f.path} is already mounted in this service"
                    )
                paths.add(f.path)
            for i, p in enumerate(svc.ports):
                if (
                    p.container_port is not None
                    and sum(q.target == p.target for q in svc.ports) > 1
                ):
                    raise FieldProblem(
                        (*base, "ports", i, "container_port"),
                        f"container port {p.target} is used by two of this service's ports",
                    )
            if svc.backup is not None:
                for m in svc.volumes:
                    others = [u for u in self.volume_users(m.volume) if u != sname]
                    if others:
                        raise FieldProblem(
                            (*base, "backup"),
                            f"volume {m.volume!r} is also mounted by service {others[0]}, and a "
                            "dump stands in for the volume's files in a backup, so theirs would "
                            "be lost; give the dumped service a volume of its own",
                        )
            if svc.backup is not None and not svc.stateful:
                raise FieldProblem(
                    (*base, "backup"),
                    "a dump copies the state a service keeps on its volumes, and this service "
                    "mounts none; remove backup or mount a volume",
                )
            if svc.stateful and svc.replicas != 1:
                raise FieldProblem(
                    (*base, "replicas"),
                    f"a service with a data volume runs exactly 1 replica (got {svc.replicas})",
                )
            for i, dep in enumerate(svc.depends_on):
                if dep not in self.services:
                    raise FieldProblem(
                        (*base, "depends_on", i),
                        f"names unknown service {dep!r}; "
                        f"services: {', '.join(sorted(self.services))}",
                    )
                if dep == sname:
                    raise FieldProblem(
                        (*base, "depends_on", i), "a service cannot depend on itself"
                    )
        self._check_references()
        self._check_runs()
        cycle = _find_cycle({n: s.depends_on for n, s in self.services.items()})
        if cycle:
            raise FieldProblem(
                ("services", cycle[0], "depends_on"),
                "dependency cycle: " + " -> ".join(cycle),
            )
        return self

    def _check_references(self) -> None:
        """${services.NAME...} names a service (one with a port, for .port)."""

        def check(path: tuple[str | int, ...], text: str) -> None:
            for ref in references(text):
                if ref.kind != "service":
                    continue
                if ref.name not in self.services:
                    raise FieldProblem(
                        path,
                        f"references unknown service {ref.name!r}; "
                        f"services: {', '.join(sorted(self.services))}",
                    )
                if ref.attr == "port" and not self.services[ref.name].ports:
                    raise FieldProblem(
                        path, f"references the port of service {ref.name}, which has no ports"
                    )

        for sname, svc in self.services.items():
            for var, value in svc.env.items():
                check(("services", sname, "env", var), value)
            for i, f in enumerate(svc.files):
                check(("services", sname, "files", i, "content"), f.text)
        for host, reg in self.registries.items():
            check(("registries", host, "username"), reg.username)

    def _check_runs(self) -> None:
        taken = {name: "a service" for name in self.services}
        for kind, runs in (("tasks", self.tasks), ("schedules", self.schedules)):
            for name, run in runs.items():
                _check_label((kind, name), name, f"{kind[:-1]} name")
                if name in taken:
                    raise FieldProblem(
                        (kind, name),
                        f"{name!r} is already the name of {taken[name]}; services, tasks and "
                        "schedules share one set of names",
                    )
                taken[name] = f"a {kind[:-1]}"
                if run.service not in self.services:
                    raise FieldProblem(
                        (kind, name, "service"),
                        f"names unknown service {run.service!r}; "
                        f"services: {', '.join(sorted(self.services))}",
                    )

    # Convenience views used by the renderers; always in a stable order.
    def sorted_services(self) -> list[tuple[str, Service]]:
        return sorted(self.services.items())

    def secret_names(self) -> list[str]:
        """Every secret the app reads: secret_env, and ${secrets.NAME} in env, files, registries.

        Worked out once per spec (the model is frozen): renderers ask for it per service, which
        made a 2,000-service plan quadratic."""
        if self._secret_names is None:
            self._secret_names = tuple(self._find_secret_names())
        return list(self._secret_names)

    def _find_secret_names(self) -> list[str]:
        names: set[str] = set()
        for svc in self.services.values():
            names.update(svc.secret_env)
            for value in svc.env.values():
                names |= _referenced_secrets(value)
            for f in svc.files:
                names |= _referenced_secrets(f.text)
        for reg in self.registries.values():
            names |= _referenced_secrets(reg.username) | _referenced_secrets(reg.password)
        return sorted(names)

    def volume_users(self, volume: str) -> list[str]:
        """The services mounting a volume, by name.

        Worked out once per spec for every volume: the k8s rung and the capacity check ask per
        service and per volume, which made a 500-service plan quadratic."""
        if self._volume_users is None:
            users: dict[str, set[str]] = {}
            for name, svc in self.services.items():
                for mount in svc.volumes:
                    users.setdefault(mount.volume, set()).add(name)
            self._volume_users = {v: tuple(sorted(names)) for v, names in users.items()}
        return list(self._volume_users.get(volume, ()))

    def shared_volumes(self) -> dict[str, list[str]]:
        """Volumes mounted by two or more services, with those services."""
        out = {v: self.volume_users(v) for v in sorted(self.volumes)}
        return {v: users for v, users in out.items() if len(users) > 1}

    def address(self, addressing: Addressing) -> Callable[[str, str], str]:
        """How one service reaches another on a rung (see Addressing)."""

        def resolve(service: str, attr: str) -> str:
            if attr == "host":
                return service
            first = self.services[service].ports[0]
            return str(first.target if addressing == "docker" else first.port)

        return resolve

    def environment(
        self,
        name: str,
        secrets: Mapping[str, str],
        addressing: Addressing | Callable[[str, str], str],
    ) -> Environment:
        """Service name's environment on a rung, references resolved: a variable whose value
        names a secret is secret as a whole. secrets maps every name of secret_names() (a
        placeholder will do where values are not at hand; the split does not depend on them)."""
        svc = self.services[name]
        address = self.address(addressing) if isinstance(addressing, str) else addressing
        plain: dict[str, str] = {}
        secret: dict[str, str] = {}
        for var, value in svc.env.items():
            text = interpolate(value, lambda n: secrets[n], address)
            (secret if _referenced_secrets(value) else plain)[var] = text
        for var in svc.secret_env:
            secret[var] = secrets[var]
        return Environment(dict(sorted(plain.items())), dict(sorted(secret.items())))

    def file_text(
        self,
        file: File,
        secrets: Mapping[str, str],
        addressing: Addressing | Callable[[str, str], str],
    ) -> str:
        """A file's content on a rung, references resolved."""
        address = self.address(addressing) if isinstance(addressing, str) else addressing
        return interpolate(file.text, lambda n: secrets[n], address)

    def registry_for(self, image: str) -> str | None:
        """The registry host image is pulled from, when the spec has credentials for it."""
        host = registry_host(image)
        return host if host in self.registries else None

    def registry_auth(self, secrets: Mapping[str, str]) -> dict[str, tuple[str, str]]:
        """(username, password) per registry host, secrets filled in."""

        def no_service(service: str, attr: str) -> str:  # refused by validation
            raise AssertionError(service)

        return {
            host: (
                interpolate(reg.username, lambda n: secrets[n], no_service),
                interpolate(reg.password, lambda n: secrets[n], no_service),
            )
            for host, reg in sorted(self.registries.items())
        }

    def start_order(self) -> list[str]:
        """Service names with every dependency before its dependents (ties by name)."""
        done: list[str] = []
        finished: set[str] = set()  # the same names, looked up in constant time
        pending = dict(sorted(self.services.items()))
        while pending:
            ready = [n for n, s in pending.items() if all(d in finished for d in s.depends_on)]
            done.extend(ready)
            finished.update(ready)
            for n in ready:
                del pending[n]
        return done

    @property
    def data_size_gb(self) -> int:
        """Size of the one cloud data volume the single-VM rungs use.

        All volumes plus 1 GB for TLS state.
        """
        return sum(v.size_gb for v in self.volumes.values()) + 1


REGISTRY_HOST = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?\Z")


def registry_host(image: str) -> str:
    """The registry an image reference names: its first path part when that looks like a host
    (has a dot or a port, or is localhost), else Docker Hub (docker.io)."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return "docker.io" if first in ("index.docker.io", "registry-1.docker.io") else first
    return "docker.io"


def _check_label(path: tuple[str | int, ...], value: str, what: str) -> None:
    if not DNS_LABEL.match(value):
        raise FieldProblem(
            path,
            f"{what} {value!r} is not a DNS label (lower-case letters, digits and '-', "
            "starting with a letter, not ending with '-', at most 63 characters)",
        )


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, [])):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


def format_path(loc: Iterable[str | int]) -> str:
    """services.web.ports[0].port; a key that is not a plain word is quoted: env['A B']."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(str(part)):
            out += ("." if out else "") + str(part)
        else:
            out += f"[{str(part)!r}]"
    return out or "(top level)"


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML, for the "(got ...)" suffix."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _at(model: type[BaseModel], loc: tuple[str | int, ...]) -> Any:
    """The annotation found by walking loc from model: field names step into a model's field,
    dict keys and list indexes step into the container's value type (so a service named
    `volumes` is not mistaken for the field `volumes`)."""
    current: Any = model
    for part in loc:
        current = _unwrap_optional(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            if not isinstance(part, str) or part not in current.model_fields:
                return None
            current = current.model_fields[part].annotation
        elif get_origin(current) in (dict, list):
            current = get_args(current)[-1]
        else:
            return None
    return _unwrap_optional(current)


def _unwrap_optional(ann: Any) -> Any:
    args = [a for a in get_args(ann) if a is not type(None)] if get_origin(ann) in _UNIONS else []
    return args[0] if len(args) == 1 else ann


def _allowed_keys(model: type[BaseModel], loc: tuple[str | int, ...]) -> list[str]:
    """The field names of the model at loc (the parent of an unknown key)."""
    found = _at(model, loc)
    if isinstance(found, type) and issubclass(found, BaseModel):
        return sorted(found.model_fields)
    return []


def _description(model: type[BaseModel], loc: tuple[str | int, ...]) -> str | None:
    parent = _at(model, loc[:-1])
    if loc and isinstance(parent, type) and issubclass(parent, BaseModel):
        field = parent.model_fields.get(str(loc[-1]))
        if field is not None and field.description:
            text = field.description.rstrip(".")
            return text[0].lower() + text[1:]
    return None


# Plain wording for pydantic's most common complaints; the rest keep pydantic's text.
_PLAIN = {
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
}


def _describe(model: type[BaseModel], err: dict[str, Any]) -> tuple[tuple[str | int, ...], str]:
    loc = tuple(err["loc"])
    etype = err["type"]
    ctx = err.get("ctx") or {}
    problem = ctx.get("error")
    if isinstance(problem, FieldProblem):
        return loc + problem.path, problem.message
    if etype == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        return loc, "unknown key; allowed keys here: " + ", ".join(allowed)
    if etype == "missing":
        what = _description(model, loc)
        return loc, f"is required: {what}" if what else "is required"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        return loc, msg[len("Value error, ") :]
    value = err.get("input")
    if loc and loc[-1] == "[key]":
        # a mapping key YAML did not read as a string (on, no, 123, null, ...)
        return loc[:-2], f"keys must be strings, but YAML read one as {_show(value)}; quote it"
    if etype in _PLAIN:
        msg = _PLAIN[etype]
        if etype == "string_type" and isinstance(value, (int, float)):
            msg += "; put the value in quotes"
    elif etype == "greater_than_equal":
        msg = f"must be at least {ctx['ge']}"
    elif etype == "less_than_equal":
        msg = f"must be at most {ctx['le']}"
    elif etype == "greater_than":
        msg = f"must be greater than {ctx['gt']}"
    elif etype == "literal_error":
        msg = f"must be {ctx['expected']}"
    else:
        msg = msg[0].lower() + msg[1:]
    return loc, f"{msg} (got {_show(value)})"


def problems(model: type[BaseModel], exc: ValidationError) -> list[str]:
    """One line per problem: 'field.path: what is wrong and what is allowed'."""
    lines = []
    for err in exc.errors():
        loc, msg = _describe(model, err)
        lines.append(f"{format_path(loc)}: {msg}")
    return lines


def parse_spec(
    data: Any,
    source: str = "<spec>",
    base_dir: str | Path | None = None,
    reads: list[tuple[Path, bytes]] | None = None,
) -> AppSpec:
    """Validate a spec's data; base_dir is where files' `source` paths start (the spec's
    directory), None when the spec was not read from a file. Each source file read is appended
    to `reads` (path, bytes) when given."""
    keys = "name, domain, acme_email and services"
    if data is None:
        raise SpecError([f"{source}: is empty; an app spec is a YAML mapping with {keys}"])
    if not isinstance(data, dict):
        raise SpecError(
            [f"{source}: the top level must be a YAML mapping with {keys} (got {_show(data)})"]
        )
    try:
        return AppSpec.model_validate(data, context={"base_dir": base_dir, "reads": reads})
    except ValidationError as exc:
        raise SpecError([f"{source}: {line}" for line in problems(AppSpec, exc)]) from None


class _UniqueKeys:
    """Refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # unhashable keys are reported by validation
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is given twice (first on line {first})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


class _UniqueKeyLoader(_UniqueKeys, yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping: PyYAML's own parser, whose
    messages name the character at fault."""


class _FastUniqueKeyLoader(_UniqueKeys, FastLoader):
    """The same with libyaml's parser (about 10x faster; its messages say less)."""


def read_yaml(text: str) -> Any:
    """A spec's text as data, a key given twice refused. libyaml reads it; a text libyaml
    refuses is read again by PyYAML's own parser, so that the error names what is wrong as it
    always did (libyaml's messages leave out the character at fault)."""
    try:
        return yaml.load(text, Loader=_FastUniqueKeyLoader)
    except yaml.YAMLError:
        return yaml.load(text, Loader=_UniqueKeyLoader)


# Specs already read in this process: (resolved path, text) -> the spec and the source files
# read for it. A command reads the same spec for every stack it plans (the planner for the
# secrets, the program, compare's rows); a spec is immutable, so one read serves them all. An
# entry counts only while each source file it read still holds the same bytes.
_LOADED: dict[tuple[str, str], tuple[AppSpec, tuple[tuple[Path, bytes], ...]]] = {}
_LOADED_MAX = 16


def load_spec(path: str | Path) -> AppSpec:
    """Read and validate an app spec YAML file; raise SpecError with one line per problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([f"{p}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([f"{p}: cannot be read ({exc.__class__.__name__})"]) from None
    key = (str(p.resolve()), text)
    hit = _LOADED.get(key)
    if hit is not None and all(_same_bytes(path, raw) for path, raw in hit[1]):
        return hit[0]
    try:
        data = read_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        what = getattr(exc, "problem", None) or "invalid syntax"
        context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and cmark:
            what += f" ({context} from line {cmark.line + 1}, column {cmark.column + 1})"
        if "<block" in what:
            what += "; check the indentation"
        raise SpecError([f"{p}: is not valid YAML at {where}: {what}"]) from None
    reads: list[tuple[Path, bytes]] = []
    app = parse_spec(data, str(p), p.parent, reads)
    if len(_LOADED) >= _LOADED_MAX:
        del _LOADED[next(iter(_LOADED))]
    _LOADED[key] = (app, tuple(reads))
    return app


def _same_bytes(path: Path, raw: bytes) -> bool:
    try:
        return path.read_bytes() == raw
    except OSError:
        return False
