"""`blueprints import`: a Docker Compose file turned into an app spec.

`import_compose(path, options)` reads a compose file (safe YAML), maps what the spec can carry,
and returns the spec's text together with one note per compose field it dropped or guessed, and
the secrets the spec references. A secret's value never reaches the spec: environment values
whose name looks secret, compose `secrets:`, `env_file` contents and passwords inside URLs become
`secret_env` or `${secrets.NAME}` references, set per stack with `pulumi config set --secret`.

Problems the user must fix (not a compose file, a service without an image, a question with no
terminal to ask it on) raise ImportProblem: one sentence naming the field or the flag.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from blueprints.spec import (
    DNS_LABEL,
    EMAIL,
    ENV_NAME,
    FILE_LIMIT,
    HOSTNAME,
    IMAGE_REF,
    SpecError,
    format_path,
    parse_spec,
)
from blueprints.yaml_text import SafeDumper

DEFAULT_VOLUME_GB = 10
# Ports the blueprints keep for SSH and the reverse proxy: never a service's port.
RESERVED = (22, 80, 443)
SECRET_WORDS = re.compile(
    r"PASSWORD|PASSWD|PASSPHRASE|(^|_)PWD($|_)|(^|_)PASS($|_)|SECRET|TOKEN|KEY|CREDENTIAL|"
    r"PRIVATE|SALT|(^|_)AUTH($|_)|API_?KEY|(^|_)DSN($|_)"
)
# A variable whose value is a path to a secret, not the secret itself.
NOT_SECRET = re.compile(r"_(FILE|PATH|DIR|ID|USER|USERNAME|NAME|URL|HOST|PORT)$")
_COMPOSE_VAR = re.compile(r"\$\$|\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_URL_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@/\s]+)(?=@)")
_GO_DURATION = re.compile(r"([0-9]*\.?[0-9]+)(h|ms|us|µs|ns|m|s)")
_COMPOSE_MEMORY = re.compile(r"^([0-9]*\.?[0-9]+)\s*([bkmgt]?)(i?b)?$", re.IGNORECASE)

# Service keys and why they are dropped.
DROPPED = {
    "restart": "the blueprints restart a failed service always",
    "networks": "every service of an app shares one private network",
    "network_mode": "every service of an app shares one private network",
    "labels": "labels have no counterpart in the spec",
    "container_name": "names come from the service name",
    "hostname": "a service is reached by its name",
    "domainname": "a service is reached by its name",
    "ulimits": "the blueprints keep the runtime's limits",
    "logging": "logs go to the node's journal (or the cluster's log)",
    "stop_grace_period": "the blueprints use the runtime's stop timeout",
    "stop_signal": "the blueprints use the runtime's stop signal",
    "privileged": "the blueprints do not run privileged containers",
    "cap_add": "the blueprints keep the runtime's default capabilities",
    "cap_drop": "the blueprints keep the runtime's default capabilities",
    "security_opt": "the blueprints keep the runtime's default security options",
    "user": "the image's user runs the process; set USER in the image",
    "working_dir": "the image's working directory is used; set WORKDIR in the image",
    "extra_hosts": "services find each other by name",
    "dns": "the runtime's resolver is used",
    "tmpfs": "temporary file systems are not part of the spec",
    "shm_size": "the runtime's default is used",
    "sysctls": "the runtime's defaults are used",
    "devices": "host devices are not part of the spec",
    "profiles": "every service of the spec runs",
    "pull_policy": "the image is pulled by reference on every release",
    "init": "the image's entrypoint runs as given",
    "tty": "services run without a terminal",
    "stdin_open": "services run without a terminal",
    "platform": "the node's platform is used",
    "links": "services find each other by name",
    "external_links": "services find each other by name",
    "pid": "services keep their own process namespace",
    "ipc": "services keep their own IPC namespace",
    "build": "the image is pulled by reference; build and push it, then name it in image",
}
DEPLOY_DROPPED = {
    "placement": "placement is decided by the blueprint",
    "restart_policy": "the blueprints restart a failed service always",
    "update_config": "each blueprint rolls a release out its own way",
    "rollback_config": "each blueprint rolls a failed release back its own way",
    "mode": "a service runs replicas instances",
    "labels": "labels have no counterpart in the spec",
    "endpoint_mode": "services are reached by name",
}


class ImportProblem(Exception):
    """The compose file (or a flag) cannot be imported; one sentence."""


@dataclass
class Options:
    output: Path
    name: str | None = None
    domain: str | None = None
    acme_email: str | None = None
    http: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    env_file: Path | None = None
    # typer.prompt-like callable when a terminal can answer questions, else None.
    ask: Callable[[str], str] | None = None


@dataclass
class Imported:
    text: str  # the spec file to write
    data: dict[str, Any]
    notes: list[str]  # one line per compose field dropped or guessed
    secrets: dict[str, str]  # secret name -> where its value is in the compose project

    def config_lines(self) -> list[str]:
        return [
            f"pulumi config set --secret --path 'blueprints:secrets.{name}'  # {where}"
            for name, where in sorted(self.secrets.items())
        ]


def dns_label(text: str) -> str:
    out = re.sub(r"[^a-z0-9-]+", "-", text.lower().replace("_", "-")).strip("-")
    out = re.sub(r"-{2,}", "-", out)
    if out and not out[0].isalpha():
        out = "s-" + out
    return out[:63].rstrip("-")


def secret_name(text: str) -> str:
    out = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_").upper()
    return out if out and not out[0].isdigit() else f"S_{out}"


def _unset(name: str) -> str:
    """Why a value with ${name} cannot be written into the spec."""
    if looks_secret(name):
        return (
            f"${{{name}}} is a secret, and this field would hold its value in clear; give the "
            f"service secret_env: [{name}] and read it from the environment, as "
            f"sh -c '... \"${name}\"'"
        )
    return f"${{{name}}} is set when compose runs; give --env-file"


def looks_secret(name: str) -> bool:
    upper = name.upper()
    return bool(SECRET_WORDS.search(upper)) and not NOT_SECRET.search(upper)


def go_seconds(value: Any) -> int | None:
    """Whole seconds (rounded up, at least 1... or 0) of a compose duration: 30, "1m30s", "1.5s"."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return math.ceil(value)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if re.fullmatch(r"[0-9]+", text):
        return int(text)
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    pos, total = 0, 0.0
    for m in _GO_DURATION.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * scale[m.group(2)]
        pos = m.end()
    if pos != len(text):
        return None
    return math.ceil(total - 1e-9)


def show_seconds(seconds: int) -> str:
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{n}{u}" for n, u in ((h, "h"), (m, "m"), (s, "s")) if n) or "0s"


def memory_mib(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return math.ceil(value / 2**20)
    m = _COMPOSE_MEMORY.match(str(value).strip())
    if not m:
        return None
    power = {"": 0, "b": 0, "k": 1, "m": 2, "g": 3, "t": 4}[m.group(2).lower()]
    return math.ceil(float(m.group(1)) * 1024**power / 2**20)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a dotenv file (comments, blank lines and `export ` skipped)."""
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not ENV_NAME.match(key):
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key] = value
    return out


class _Importer:
    def __init__(self, path: Path, compose: dict[str, Any], opts: Options):
        self.path = path
        self.base = path.parent
        self.compose = compose
        self.opts = opts
        self.notes: list[str] = []
        self.secrets: dict[str, str] = {}  # name -> where the value was
        self.secret_values: dict[str, str] = {}  # value -> secret name (for sharing)
        self.env_file: dict[str, str] = {}
        self.renames: dict[str, str] = {}
        self.volumes: dict[str, dict[str, Any]] = {}
        self.volume_renames: dict[str, str] = {}

    def note(self, path: str, text: str) -> None:
        self.notes.append(f"{path}: {text}")

    # --- top level ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        c = self.compose
        if self.opts.env_file is not None:
            try:
                self.env_file = read_env_file(self.opts.env_file)
            except FileNotFoundError:
                raise ImportProblem(f"--env-file: {self.opts.env_file}: no such file") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ImportProblem(
                    f"--env-file: {self.opts.env_file}: cannot be read ({exc.__class__.__name__})"
                ) from None
        for key in sorted(c, key=str):
            if key in ("services", "volumes", "secrets", "configs", "name"):
                continue
            reason = {
                "version": "obsolete; compose ignores it too",
                "networks": "every service of an app shares one private network",
                "include": "included files are not followed; import each one",
            }.get(str(key), "has no counterpart in the spec")
            if str(key).startswith("x-"):
                reason = "extension fields are for compose itself (anchors are already applied)"
            self.note(str(key), f"dropped ({reason})")

        services = c["services"]
        for sname in services:
            new = dns_label(str(sname))
            if not new:
                raise ImportProblem(f"services.{sname}: cannot be made a DNS label; rename it")
            if new in self.renames.values():
                raise ImportProblem(
                    f"services.{sname}: becomes {new!r} as a DNS label, like another service; "
                    "rename one of them"
                )
            self.renames[str(sname)] = new
            if new != sname:
                self.note(f"services.{sname}", f"renamed {new} (service names are DNS labels)")
        self._declared_volumes()
        images = self._image_flags()
        out_services: dict[str, Any] = {}
        for sname in sorted(services, key=str):
            svc = services[sname]
            base = f"services.{sname}"
            if svc is None:
                svc = {}
            if not isinstance(svc, dict):
                raise ImportProblem(f"{base}: must be a mapping (got {type(svc).__name__})")
            out_services[self.renames[str(sname)]] = self._service(
                str(sname), svc, base, images.pop(str(sname), None)
            )
        if images:
            raise ImportProblem(
                f"--image: no service named {sorted(images)[0]!r}; "
                f"services: {', '.join(sorted(map(str, services)))}"
            )
        self._http_ports(out_services)
        needed = {d for s in out_services.values() for d in s.get("depends_on", [])}
        for sname in sorted(needed):
            if not out_services[sname].get("ports"):
                self.note(
                    f"services.{self._compose_name(sname)}.ports",
                    "none given (compose sees the image's EXPOSE, the spec does not); add the "
                    "port the services depending on it connect to",
                )
        used = {m["volume"] for s in out_services.values() for m in s.get("volumes", [])}
        volumes = {}
        for vname in sorted(self.volumes):
            if vname in used:
                volumes[vname] = {"size_gb": DEFAULT_VOLUME_GB}
                self.note(
                    f"volumes.{self.volumes[vname]['compose']}",
                    f"guessed size_gb: {DEFAULT_VOLUME_GB} (compose does not size volumes)",
                )
        for sname, svc in out_services.items():
            if svc.get("volumes") and svc.get("replicas", 1) != 1:
                self.note(
                    f"services.{self._compose_name(sname)}.deploy.replicas",
                    f"dropped ({svc['replicas']} replicas; a service with a data volume runs one)",
                )
                del svc["replicas"]
        order = ["image", "entrypoint", "command", "ports", "env", "secret_env", "files"]
        order += ["volumes", "depends_on", "replicas", "cpu", "memory", "health"]
        for sname, svc in out_services.items():
            out_services[sname] = {k: svc[k] for k in order if k in svc}
        data: dict[str, Any] = {
            "name": self._app_name(),
            "domain": self._domain(),
            "acme_email": self._email(),
            "services": out_services,
        }
        if volumes:
            data["volumes"] = volumes
        return data

    def _compose_name(self, new: str) -> str:
        return next((old for old, n in self.renames.items() if n == new), new)

    def _app_name(self) -> str:
        given = self.opts.name
        if given is not None:
            if not DNS_LABEL.match(given):
                raise ImportProblem(
                    f"--name: {given!r} is not a DNS label (lower-case letters, digits and '-', "
                    "starting with a letter)"
                )
            return given
        raw = self.compose.get("name")
        source = "name" if isinstance(raw, str) and raw else None
        if source is None:
            raw = self.base.resolve().name
        name = dns_label(str(raw)) or "app"
        why = "" if source else ", from the compose file's directory"
        self.note("name", f"guessed app name {name}{why} (pass --name to choose)")
        return name

    def _question(self, flag: str, what: str, value: str | None, check: re.Pattern[str]) -> str:
        if value is None:
            if self.opts.ask is None:
                raise ImportProblem(
                    f"compose does not say {what}, and there is no terminal to ask; pass {flag}"
                )
            value = str(self.opts.ask(what[0].upper() + what[1:])).strip()
        if not check.match(value):
            raise ImportProblem(f"{flag}: {value!r} is not {what}")
        return value

    def _domain(self) -> str:
        return self._question(
            "--domain",
            "the public DNS name the app is served on (like app.example.com)",
            self.opts.domain,
            HOSTNAME,
        )

    def _email(self) -> str:
        return self._question(
            "--acme-email",
            "an e-mail address for the ACME (Let's Encrypt) account",
            self.opts.acme_email,
            EMAIL,
        )

    def _image_flags(self) -> dict[str, str]:
        out = {}
        for item in self.opts.images:
            name, sep, ref = item.partition("=")
            if not sep or not name or not ref:
                raise ImportProblem(f"--image: {item!r} must be SERVICE=IMAGE, like web=nginx:1.27")
            if not IMAGE_REF.match(ref):
                raise ImportProblem(f"--image: {ref!r} is not an image reference like nginx:1.27")
            out[name] = ref
        return out

    def _declared_volumes(self) -> None:
        declared = self.compose.get("volumes") or {}
        if not isinstance(declared, dict):
            raise ImportProblem("volumes: must be a mapping of volume names")
        for vname, conf in declared.items():
            new = dns_label(str(vname))
            if not new:
                raise ImportProblem(f"volumes.{vname}: cannot be made a DNS label; rename it")
            self.volumes[new] = {"compose": str(vname)}
            self.volume_renames[str(vname)] = new
            if new != vname:
                self.note(f"volumes.{vname}", f"renamed {new} (volume names are DNS labels)")
            for key in sorted(conf or {}, key=str) if isinstance(conf, dict) else []:
                self.note(
                    f"volumes.{vname}.{key}",
                    "dropped (the blueprint provides the volume on its data disk)",
                )

    # --- one service ----------------------------------------------------------------------------

    def _service(self, sname: str, svc: dict[str, Any], base: str, image: str | None) -> dict:
        out: dict[str, Any] = {}
        if image is not None:
            out["image"] = image
            if "image" in svc:
                self.note(f"{base}.image", f"replaced by --image {sname}={image}")
        elif isinstance(svc.get("image"), str):
            ref = self._plain_value(f"{base}.image", svc["image"])
            if ref is None or not IMAGE_REF.match(ref):
                raise ImportProblem(
                    f"{base}.image: {svc['image']!r} is not an image reference the spec accepts; "
                    f"pass --image {sname}=REF"
                )
            out["image"] = ref
        elif "build" in svc:
            raise ImportProblem(
                f"{base}: is built from source (build:) and names no image; build and push it, "
                f"then pass --image {sname}=REF"
            )
        else:
            raise ImportProblem(f"{base}: names no image; pass --image {sname}=REF")
        handled = {"image", "environment", "env_file", "ports", "expose", "volumes", "secrets"}
        handled |= {"configs", "depends_on", "healthcheck", "deploy", "command", "entrypoint"}
        handled |= {"mem_limit", "cpus"}
        for key in sorted(svc, key=str):
            if key in handled:
                continue
            if key == "build" and image is not None:
                self.note(f"{base}.build", f"dropped (the image {image} given by --image is used)")
                continue
            self.note(
                f"{base}.{key}",
                f"dropped ({DROPPED.get(str(key), 'has no counterpart in the spec')})",
            )
        for key in ("entrypoint", "command"):
            if svc.get(key) is not None:
                argv = self._argv(f"{base}.{key}", svc[key])
                if argv:
                    out[key] = argv
        ports = self._ports(base, svc)
        if ports:
            out["ports"] = ports
        env, secret_env = self._environment(sname, base, svc)
        if env:
            out["env"] = env
        if secret_env:
            out["secret_env"] = sorted(secret_env)
        files, mounts = self._volumes(base, svc)
        files += self._secret_files(base, svc)
        files += self._config_files(base, svc)
        if files:
            out["files"] = sorted(files, key=lambda f: f["path"])
        if mounts:
            out["volumes"] = mounts
        deps = self._depends_on(base, svc.get("depends_on"))
        if deps:
            out["depends_on"] = deps
        self._deploy(base, svc, out)
        health = self._health(base, svc.get("healthcheck"))
        if health:
            out["health"] = health
        return out

    def _plain_value(self, path: str, value: Any) -> str | None:
        """A compose value with its `${VAR}` resolved from --env-file (or its default); None,
        reported, when compose would take it from the shell."""
        text, _, missing = self._interpolate(path, str(value), allow_secrets=False)
        if missing:
            self.note(path, f"dropped ({_unset(missing)})")
            return None
        return text

    def _interpolate(
        self, path: str, text: str, allow_secrets: bool
    ) -> tuple[str, list[str], str | None]:
        """(spec text, secret names referenced, first unresolved variable)."""
        secrets: list[str] = []
        missing: str | None = None

        def one(m: re.Match[str]) -> str:
            nonlocal missing
            whole = m.group(0)
            if whole == "$$":
                return "$"
            expr = m.group(1) if m.group(1) is not None else m.group(2)
            var = re.match(r"[A-Za-z_][A-Za-z0-9_]*", expr)
            name = var.group(0) if var else expr
            rest = expr[len(name) :]
            if allow_secrets and looks_secret(name):
                ref = secret_name(name)
                secrets.append(ref)
                self._secret(ref, f"${{{name}}} in {path}")
                return f"${{secrets.{ref}}}"
            if looks_secret(name):
                # Here (a command, a health check) a value would be written out in clear: the
                # field is dropped, whatever --env-file holds.
                missing = missing or name
                return whole
            if name in self.env_file:
                value = self.env_file[name]
                if rest.startswith(":-") and not value:
                    return rest[2:]
                return value
            if rest.startswith((":-", "-")):
                default = rest[2:] if rest.startswith(":-") else rest[1:]
                self.note(path, f"guessed ${{{name}}} = {default!r}, its default in compose")
                return default
            missing = missing or name
            return whole

        out = _COMPOSE_VAR.sub(one, text)
        return out, secrets, missing

    def _argv(self, path: str, value: Any) -> list[str] | None:
        if isinstance(value, str):
            try:
                words = shlex.split(value)
            except ValueError:
                self.note(path, "dropped (cannot be split into words by shell rules)")
                return None
        elif isinstance(value, list):
            words = [str(w) for w in value]
        else:
            self.note(path, "dropped (neither a string nor a list)")
            return None
        out = []
        for w in words:
            text = self._plain_value(path, w)
            if text is None:
                return None
            out.append(text)
        return out

    # --- environment ------------------------------------------------------------------------------

    def _secret(self, name: str, where: str) -> None:
        self.secrets.setdefault(name, where)

    def _environment(self, sname: str, base: str, svc: dict) -> tuple[dict[str, str], list[str]]:
        env: dict[str, str] = {}
        secret_env: list[str] = []
        given: dict[str, Any] = {}
        raw = svc.get("environment")
        if isinstance(raw, list):
            for item in raw:
                key, sep, value = str(item).partition("=")
                given[key.strip()] = value if sep else None
        elif isinstance(raw, dict):
            given = {str(k): v for k, v in raw.items()}
        elif raw is not None:
            self.note(f"{base}.environment", "dropped (neither a list nor a mapping)")
        from_file = self._env_files(base, svc.get("env_file"))
        for var in sorted(from_file):
            if var in given:
                continue
            if not ENV_NAME.match(var):
                self.note(f"{base}.env_file", f"dropped {var!r} (not an environment variable name)")
                continue
            secret_env.append(var)
            self._secret(var, f"{var} in {from_file[var]}")
            self.note(
                f"{base}.env_file",
                f"{var} becomes secret_env (values from env files stay out of the spec)",
            )
        for var in sorted(given):
            path = f"{base}.environment.{var}"
            value = given[var]
            if not ENV_NAME.match(var):
                self.note(path, "dropped (not an environment variable name)")
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            if value is None:
                if looks_secret(var):
                    secret_env.append(var)
                    self._secret(var, f"{var} in the shell that runs compose")
                    self.note(path, "no value in compose (it comes from the shell): secret_env")
                elif var in self.env_file:
                    env[var] = self._escape(self.env_file[var])
                else:
                    self.note(
                        path, "dropped (no value: compose takes it from the shell; --env-file)"
                    )
                continue
            text = str(value)
            if looks_secret(var):
                self._secret_var(var, text, path, env, secret_env)
                continue
            resolved, _, missing = self._interpolate(path, text, allow_secrets=True)
            if missing:
                self.note(
                    path, f"dropped (${{{missing}}} is set when compose runs; give --env-file)"
                )
                continue
            resolved = self._escape_keep_refs(resolved)
            resolved = self._url_password(var, resolved, path)
            resolved = self._renamed_hosts(resolved, path)
            env[var] = resolved
        return env, secret_env

    def _secret_var(
        self, var: str, text: str, path: str, env: dict[str, str], secret_env: list[str]
    ) -> None:
        whole = re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", text)
        if whole:
            name = secret_name(whole.group(1) or whole.group(2))
            self._secret(name, f"${{{name}}} in {path}")
        elif text in self.secret_values and text:
            name = self.secret_values[text]
            if name != var:
                self.note(path, f"guessed secret {name} (the same value as {self.secrets[name]})")
        else:
            name = var
            if name in self.secrets and self.secrets[name] != path:
                name = secret_name(f"{path.split('.')[1]}_{var}")
            self._secret(name, path)
            if text:
                self.secret_values.setdefault(text, name)
        if name == var:
            secret_env.append(var)
        else:
            env[var] = f"${{secrets.{name}}}"

    def _escape(self, text: str) -> str:
        return text.replace("${", "$${")

    def _escape_keep_refs(self, text: str) -> str:
        """Escape `${` except the references this importer wrote."""
        return re.sub(r"\$\{(?!secrets\.[A-Za-z_][A-Za-z0-9_]*\})", "$${", text)

    def _url_password(self, var: str, text: str, path: str) -> str:
        m = _URL_PASSWORD.match(text)
        if not m or m.group("pw").startswith("${secrets."):
            return text
        pw = m.group("pw")
        name = self.secret_values.get(pw)
        if name is None:
            name = secret_name(f"{var}_PASSWORD")
            self._secret(name, f"the password in {path}")
            self.secret_values[pw] = name
            self.note(path, f"the password in the URL becomes secret {name}")
        else:
            self.note(
                path,
                f"the password in the URL becomes ${{secrets.{name}}} "
                f"(the same value as {self.secrets[name]})",
            )
        return m.group("head") + f"${{secrets.{name}}}" + text[m.end() :]

    def _renamed_hosts(self, text: str, path: str) -> str:
        for old, new in self.renames.items():
            if old == new:
                continue
            pattern = re.compile(rf"((?<=@)|(?<=//)|^){re.escape(old)}(?=[:/?]|$)")
            if pattern.search(text):
                text = pattern.sub(new, text)
                self.note(path, f"guessed host {old} is service {new} (renamed)")
        return text

    def _env_files(self, base: str, raw: Any) -> dict[str, str]:
        if raw is None:
            return {}
        items = raw if isinstance(raw, list) else [raw]
        out: dict[str, str] = {}
        for i, item in enumerate(items):
            path = f"{base}.env_file" + (f"[{i}]" if isinstance(raw, list) else "")
            required = True
            if isinstance(item, dict):
                required = item.get("required", True) is not False
                item = item.get("path")
            if not isinstance(item, str):
                self.note(path, "dropped (not a file path)")
                continue
            try:
                names = read_env_file(self.base / item)
            except (OSError, UnicodeDecodeError):
                why = "missing" if required else "missing, and optional"
                self.note(path, f"dropped ({item} is {why}; add its variables by hand)")
                continue
            for name in names:
                out.setdefault(name, item)
        return out

    # --- ports --------------------------------------------------------------------------------

    def _ports(self, base: str, svc: dict) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        seen: set[int] = set()

        def add(path: str, port: int, target: int, published: int | None) -> None:
            if port in seen and any(p["port"] == port for p in out):
                return
            seen.add(port)
            entry: dict[str, Any] = {"port": port}
            if target != port:
                entry["container_port"] = target
            if published:
                entry["_published"], entry["_from"] = path, published
            out.append(entry)

        for i, item in enumerate(svc.get("ports") or []):
            path = f"{base}.ports[{i}]"
            parsed = self._port(path, item)
            if parsed is not None:
                add(path, *parsed)
        for i, item in enumerate(svc.get("expose") or []):
            path = f"{base}.expose[{i}]"
            text = str(item)
            m = re.fullmatch(r"([0-9]+)(/tcp)?", text)
            if not m or not 1 <= int(m.group(1)) <= 65535:
                self.note(path, "dropped (only single tcp ports are supported)")
                continue
            add(path, int(m.group(1)), int(m.group(1)), None)
        return out

    def _port(self, path: str, item: Any) -> tuple[int, int, int | None] | None:
        if isinstance(item, dict):
            target, published = item.get("target"), item.get("published")
            protocol = str(item.get("protocol", "tcp"))
            host_ip = item.get("host_ip")
        else:
            text = str(item)
            text, _, protocol = text.partition("/")
            protocol = protocol or "tcp"
            parts = text.rsplit(":", 2) if text.count(":") <= 2 else None
            if parts is None:
                self.note(path, "dropped (an IPv6 host address is not supported)")
                return None
            target = parts[-1]
            published = parts[-2] if len(parts) >= 2 else None
            host_ip = parts[0] if len(parts) == 3 else None
        if protocol != "tcp":
            self.note(path, f"dropped ({protocol} ports are not supported; the spec has tcp only)")
            return None
        try:
            target = int(target)
            published = int(published) if published not in (None, "") else None
        except (TypeError, ValueError):
            self.note(path, "dropped (port ranges and variables are not supported)")
            return None
        if not 1 <= target <= 65535 or (published is not None and not 1 <= published <= 65535):
            self.note(path, "dropped (not a port from 1 to 65535)")
            return None
        if published is None:
            return target, target, None
        if host_ip not in (None, "", "0.0.0.0", "::"):
            self.note(path, f"kept private (published on {host_ip} only)")
            return target, target, None
        if published in RESERVED:
            port = target if target not in RESERVED else 8000 + target
            self.note(
                path,
                f"guessed port {port} for published port {published} ({published} is the "
                "reverse proxy's or SSH's on every blueprint)",
            )
            return port, target, published
        return published, target, published

    def _http_ports(self, services: dict[str, dict[str, Any]]) -> None:
        """Decide which port is routed by the proxy (http); the other published ones stay
        private, with a note."""
        published = [
            (sname, p)
            for sname, svc in services.items()
            for p in svc.get("ports", [])
            if "_published" in p
        ]
        chosen: list[tuple[str, int, str]] = []
        flags = list(self.opts.http)
        if not flags and published:
            web = [(s, p) for s, p in published if p["_from"] in (80, 443)]
            if len(published) == 1:
                web = published
            if len(web) == 1:
                s, p = web[0]
                self.note(p["_published"], f"guessed expose: http for published port {p['_from']}")
                chosen.append((s, p["port"], "/"))
            elif self.opts.ask is not None:
                shown = ", ".join(f"{s}:{p['port']}" for s, p in published)
                answer = str(
                    self.opts.ask(f"Which published port serves the web (one of {shown}, or none)")
                ).strip()
                flags = [] if answer.lower() in ("", "none") else [answer]
            else:
                shown = ", ".join(f"{s}:{p['port']}" for s, p in published)
                raise ImportProblem(
                    f"compose does not say which published port ({shown}) serves http, and there "
                    "is no terminal to ask; pass --http SERVICE:PORT (or --http none)"
                )
        for flag in flags:
            if flag == "none":
                continue
            m = re.fullmatch(r"([A-Za-z0-9_.-]+):([0-9]{1,5})(/[A-Za-z0-9._~/-]*)?", flag)
            if not m:
                raise ImportProblem(f"--http: {flag!r} must be SERVICE:PORT, like web:8000")
            sname = self.renames.get(m.group(1), m.group(1))
            if sname not in services:
                raise ImportProblem(
                    f"--http: no service named {m.group(1)!r}; "
                    f"services: {', '.join(sorted(self.renames))}"
                )
            chosen.append((sname, int(m.group(2)), m.group(3) or "/"))
        routes: set[str] = set()
        for sname, port, route in chosen:
            if route in routes:
                raise ImportProblem(
                    f"--http: two ports are routed at {route}; give the second a path, like "
                    f"{sname}:{port}/api"
                )
            routes.add(route)
            ports = services[sname].setdefault("ports", [])
            match = [p for p in ports if port in (p["port"], p.get("container_port"))]
            if match:
                entry = match[0]
            else:
                entry = {"port": port}
                ports.append(entry)
                self.note(
                    f"services.{self._compose_name(sname)}.ports",
                    f"added port {port} from --http (compose does not publish it)",
                )
            entry["expose"] = "http"
            if route != "/":
                entry["path"] = route
        for sname, svc in services.items():
            for p in svc.get("ports", []):
                where = p.pop("_published", None)
                p.pop("_from", None)
                if where and p.get("expose") != "http":
                    self.note(
                        where,
                        f"published port {p['port']} kept private (route it with --http "
                        f"{self._compose_name(sname)}:{p['port']}, or write expose: tcp)",
                    )
            if "ports" in svc and not svc["ports"]:
                del svc["ports"]

    # --- volumes, files, secrets, configs -----------------------------------------------------

    def _volumes(self, base: str, svc: dict) -> tuple[list[dict], list[dict]]:
        files: list[dict] = []
        mounts: list[dict] = []
        for i, item in enumerate(svc.get("volumes") or []):
            path = f"{base}.volumes[{i}]"
            if isinstance(item, dict):
                kind = item.get("type", "volume")
                source, target = item.get("source"), item.get("target")
                read_only = bool(item.get("read_only"))
            else:
                parts = str(item).split(":")
                if len(parts) == 1:
                    kind, source, target, read_only = "volume", None, parts[0], False
                else:
                    source, target = parts[0], parts[1]
                    opts = parts[2].split(",") if len(parts) > 2 else []
                    read_only = "ro" in opts
                    kind = "bind" if source.startswith((".", "/", "~", "$")) else "volume"
            if not isinstance(target, str) or not target.startswith("/"):
                self.note(path, "dropped (no absolute container path)")
                continue
            if kind == "volume" and not source:
                self.note(path, "dropped (an anonymous volume holds nothing worth keeping)")
            elif kind == "volume":
                name = self.volume_renames.get(str(source))
                if name is None:
                    self.note(path, f"dropped (volume {source} is not declared under volumes)")
                    continue
                mount: dict[str, Any] = {"volume": name, "path": target}
                if read_only:
                    mount["read_only"] = True
                mounts.append(mount)
            elif kind == "bind":
                entry = self._host_file(path, str(source), target)
                if entry is not None:
                    files.append(entry)
            else:
                self.note(path, f"dropped ({kind} mounts are not part of the spec)")
        return files, mounts

    def _host_file(self, path: str, source: str, target: str) -> dict | None:
        if source.startswith(("~", "$")) or (
            source.startswith("/") and not source.startswith("./")
        ):
            self.note(path, f"dropped ({source} is a path on the docker host, not in the project)")
            return None
        host = (self.base / source).resolve()
        if host.is_dir():
            self.note(
                path,
                f"dropped ({source} is a directory; put it in the image, or list its files "
                "under files by hand)",
            )
            return None
        if not host.is_file():
            self.note(
                path,
                f"dropped ({source} is not beside the compose file, so docker would make it a "
                "directory; keep data on a volume instead)",
            )
            return None
        return self._file_entry(path, host, target, "0444")

    def _file_entry(self, path: str, host: Path, target: str, mode: str) -> dict | None:
        raw = host.read_bytes()
        if len(raw) > FILE_LIMIT:
            self.note(path, f"dropped ({host.name} is over 64 KiB; put it in the image)")
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.note(path, f"dropped ({host.name} is not UTF-8 text; put it in the image)")
            return None
        entry: dict[str, Any] = {"path": target}
        out_dir = self.opts.output.resolve().parent
        if looks_secret(host.name) or host.suffix in (".pem", ".key", ".p12", ".pfx"):
            self.note(
                path,
                f"dropped ({host.name} looks secret, and a spec file travels in clear; make it "
                f"a compose secret, or a file whose content is ${{secrets.NAME}})",
            )
            return None
        if "${" in text:
            # A spec file's ${ starts a reference: the content goes inline, escaped.
            entry["content"] = self._escape(text)
            self.note(path, f"content of {host.name} written inline, its ${{ escaped as $${{")
        elif host.is_relative_to(out_dir):
            entry["source"] = host.relative_to(out_dir).as_posix()
        else:
            entry["content"] = self._escape(text)
            self.note(
                path, f"content of {host.name} written inline (it is outside the spec's directory)"
            )
        if mode != "0444":
            entry["mode"] = mode
        return entry

    def _top_level(self, kind: str, name: str) -> dict | None:
        entries = self.compose.get(kind) or {}
        conf = entries.get(name) if isinstance(entries, dict) else None
        return conf if isinstance(conf, dict) else None

    def _mode(self, value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:o}".rjust(4, "0")
        text = str(value)
        return text.rjust(4, "0") if re.fullmatch(r"0?[0-7]{3}", text) else "0444"

    def _secret_files(self, base: str, svc: dict) -> list[dict]:
        out = []
        for i, item in enumerate(svc.get("secrets") or []):
            path = f"{base}.secrets[{i}]"
            source = item.get("source") if isinstance(item, dict) else item
            target = item.get("target") if isinstance(item, dict) else None
            mode = item.get("mode") if isinstance(item, dict) else None
            if not isinstance(source, str):
                self.note(path, "dropped (no secret name)")
                continue
            target = target or source
            target = target if str(target).startswith("/") else f"/run/secrets/{target}"
            name = secret_name(source)
            conf = self._top_level("secrets", source)
            if conf is None:
                where = f"secret {source} (not declared under secrets)"
            elif "file" in conf:
                where = f"the file {conf['file']} of secrets.{source}"
            elif "environment" in conf:
                where = f"${conf['environment']} of secrets.{source}"
            else:
                where = f"secrets.{source} (external)"
            self._secret(name, where)
            entry = {"path": target, "content": f"${{secrets.{name}}}"}
            if mode is not None:
                entry["mode"] = self._mode(mode)
            out.append(entry)
            self.note(path, f"becomes a file at {target} holding secret {name}")
        return out

    def _config_files(self, base: str, svc: dict) -> list[dict]:
        out = []
        for i, item in enumerate(svc.get("configs") or []):
            path = f"{base}.configs[{i}]"
            source = item.get("source") if isinstance(item, dict) else item
            target = item.get("target") if isinstance(item, dict) else None
            mode = self._mode(item.get("mode", "0444")) if isinstance(item, dict) else "0444"
            if not isinstance(source, str):
                self.note(path, "dropped (no config name)")
                continue
            target = str(target or f"/{source}")
            conf = self._top_level("configs", source)
            if conf is None:
                self.note(path, f"dropped (config {source} is not declared under configs)")
            elif "file" in conf:
                host = (self.base / str(conf["file"])).resolve()
                if not host.is_file():
                    self.note(
                        path, f"dropped ({conf['file']} does not exist beside the compose file)"
                    )
                    continue
                entry = self._file_entry(path, host, target, mode)
                if entry is not None:
                    out.append(entry)
            elif "content" in conf:
                entry = {"path": target, "content": self._escape(str(conf["content"]))}
                if mode != "0444":
                    entry["mode"] = mode
                out.append(entry)
            else:
                self.note(path, f"dropped (config {source} is external or from the environment)")
        return out

    # --- the rest ---------------------------------------------------------------------------------

    def _depends_on(self, base: str, raw: Any) -> list[str]:
        if raw is None:
            return []
        names = list(raw) if isinstance(raw, (list, dict)) else []
        out = []
        for name in names:
            if str(name) not in self.renames:
                self.note(f"{base}.depends_on", f"dropped {name} (no such service)")
                continue
            if isinstance(raw, dict) and isinstance(raw[name], dict):
                cond = raw[name].get("condition")
                if cond == "service_completed_successfully":
                    self.note(
                        f"{base}.depends_on.{name}.condition",
                        "guessed service_started (a one-off job before start is a task in the "
                        "spec: see tasks)",
                    )
            out.append(self.renames[str(name)])
        return sorted(set(out))

    def _deploy(self, base: str, svc: dict, out: dict) -> None:
        deploy = svc.get("deploy") or {}
        if not isinstance(deploy, dict):
            deploy = {}
        for key in sorted(deploy, key=str):
            if key in ("replicas", "resources"):
                continue
            reason = DEPLOY_DROPPED.get(str(key), "has no counterpart in the spec")
            self.note(f"{base}.deploy.{key}", f"dropped ({reason})")
        if deploy.get("replicas") is not None:
            try:
                n = int(deploy["replicas"])
            except (TypeError, ValueError):
                n = 1
            if not 1 <= n <= 50:
                self.note(f"{base}.deploy.replicas", f"guessed 1 ({n} is outside 1 to 50)")
            elif n != 1:
                out["replicas"] = n
        resources = deploy.get("resources") or {}
        limits = resources.get("limits") or {} if isinstance(resources, dict) else {}
        for key in sorted(resources, key=str) if isinstance(resources, dict) else []:
            if key != "limits":
                self.note(
                    f"{base}.deploy.resources.{key}",
                    "dropped (the spec sets limits; requests follow)",
                )
        cpus = limits.get("cpus", svc.get("cpus"))
        where_cpu = f"{base}.deploy.resources.limits.cpus" if "cpus" in limits else f"{base}.cpus"
        if cpus is not None:
            try:
                value = float(cpus)
                if not 0 < value <= 64:
                    raise ValueError
                out["cpu"] = int(value) if value.is_integer() else value
            except (TypeError, ValueError):
                self.note(where_cpu, "dropped (not a number of cores from 0 to 64)")
        memory = limits.get("memory", svc.get("mem_limit"))
        where_mem = (
            f"{base}.deploy.resources.limits.memory" if "memory" in limits else f"{base}.mem_limit"
        )
        if memory is not None:
            mib = memory_mib(memory)
            if mib is None:
                self.note(where_mem, "dropped (not a memory size like 512M)")
            else:
                clamped = min(max(mib, 16), 262144)
                if clamped != mib:
                    self.note(where_mem, f"guessed {clamped}Mi ({mib}Mi is outside 16Mi to 256Gi)")
                out["memory"] = f"{clamped // 1024}Gi" if clamped % 1024 == 0 else f"{clamped}Mi"
        for key in sorted(limits, key=str):
            if key not in ("cpus", "memory"):
                self.note(f"{base}.deploy.resources.limits.{key}", "dropped (not in the spec)")

    def _health(self, base: str, raw: Any) -> dict | None:
        if raw is None:
            return None
        path = f"{base}.healthcheck"
        if not isinstance(raw, dict):
            self.note(path, "dropped (not a mapping)")
            return None
        if raw.get("disable"):
            self.note(path, "dropped (disabled)")
            return None
        test = raw.get("test")
        if isinstance(test, str):
            test = ["CMD-SHELL", test]
        if not isinstance(test, list) or not test:
            self.note(path, "dropped (no test)")
            return None
        kind, args = str(test[0]), [str(a) for a in test[1:]]
        if kind == "NONE":
            self.note(f"{path}.test", "dropped (NONE: the image's health check is disabled)")
            return None
        if kind == "CMD" and args:
            command = args
        elif kind == "CMD-SHELL" and args:
            command = ["/bin/sh", "-c", " ".join(args)]
        else:
            self.note(
                f"{path}.test", f"dropped (a test starts with CMD, CMD-SHELL or NONE, not {kind})"
            )
            return None
        words = []
        for w in command:
            text, _, missing = self._interpolate(f"{path}.test", w, allow_secrets=False)
            if missing:
                self.note(f"{path}.test", f"dropped ({_unset(missing)})")
                return None
            words.append(text)
        out: dict[str, Any] = {"type": "command", "command": words}
        limits = {"interval": (1, 3600), "timeout": (1, 3600), "start_period": (1, 3600)}
        seconds: dict[str, int] = {}
        for key, (low, high) in limits.items():
            if raw.get(key) is None:
                continue
            s = go_seconds(raw[key])
            if s is None:
                self.note(f"{path}.{key}", f"dropped ({raw[key]!r} is not a duration)")
                continue
            if not low <= s <= high:
                clamped = min(max(s, low), high)
                self.note(
                    f"{path}.{key}", f"guessed {show_seconds(clamped)} (the spec allows 1s to 1h)"
                )
                s = clamped
            seconds[key] = s
        if (
            "timeout" in seconds
            and "interval" in seconds
            and seconds["timeout"] > seconds["interval"]
        ):
            self.note(
                f"{path}.timeout",
                f"guessed {show_seconds(seconds['interval'])} (no longer than the interval)",
            )
            seconds["timeout"] = seconds["interval"]
        if "timeout" in seconds and "interval" not in seconds and seconds["timeout"] > 10:
            self.note(
                f"{path}.interval",
                f"guessed {show_seconds(seconds['timeout'])} (the spec's 10s is below the timeout)",
            )
            seconds["interval"] = seconds["timeout"]
        for key in ("interval", "timeout"):
            if key in seconds:
                out[key] = show_seconds(seconds[key])
        if raw.get("retries") is not None:
            try:
                out["retries"] = min(max(int(raw["retries"]), 1), 100)
            except (TypeError, ValueError):
                self.note(f"{path}.retries", "dropped (not a whole number)")
        if "start_period" in seconds:
            out["start_period"] = show_seconds(seconds["start_period"])
        for key in sorted(raw, key=str):
            if key not in ("test", "interval", "timeout", "retries", "start_period", "disable"):
                self.note(f"{path}.{key}", "dropped (not in the spec)")
        return out


def read_compose(path: Path) -> dict[str, Any]:
    """The compose file's data, or ImportProblem saying why it is not a compose file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ImportProblem(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImportProblem(f"{path}: is a directory; give the compose file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportProblem(f"{path}: cannot be read ({exc.__class__.__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ImportProblem(f"{path}: is not valid YAML{where}, so not a compose file") from None
    if not isinstance(data, dict):
        raise ImportProblem(
            f"{path}: is not a compose file (its top level is not a mapping with services)"
        )
    services = data.get("services")
    if not isinstance(services, dict) or not services:
        raise ImportProblem(
            f"{path}: is not a compose file (it has no services mapping naming at least one "
            "service)"
        )
    return data


HEADER = """\
# Imported by `blueprints import` from {source}
# Check the lines it printed: each names a compose field it dropped or guessed. Secrets are
# references; set each per stack: pulumi config set --secret --path 'blueprints:secrets.NAME'
"""


def render(data: dict[str, Any], source: str) -> str:
    # Quoted where another YAML reader would take a string for a bool, number, null or date.
    body = yaml.dump(
        data,
        Dumper=SafeDumper,
        sort_keys=False,
        default_flow_style=False,
        width=100,
        allow_unicode=True,
    )
    return HEADER.format(source=source) + body


def import_compose(path: Path, options: Options) -> Imported:
    compose = read_compose(path)
    importer = _Importer(path, compose, options)
    data = importer.run()
    try:
        shown = path.relative_to(options.output.resolve().parent)
    except ValueError:
        shown = path
    text = render(data, shown.as_posix() if isinstance(shown, Path) else str(shown))
    try:
        parse_spec(yaml.safe_load(text), str(options.output), options.output.resolve().parent)
    except SpecError as exc:
        first = exc.lines[0].split(": ", 1)[-1]
        raise ImportProblem(
            f"the imported spec does not validate ({first}); import with fewer services or fix "
            "the compose file"
        ) from None
    return Imported(text=text, data=data, notes=importer.notes, secrets=dict(importer.secrets))


__all__ = ["ImportProblem", "Imported", "Options", "format_path", "import_compose"]
