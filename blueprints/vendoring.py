"""The wheel of the running blueprints, and the versions it runs with: what a baked project
carries so that it installs without a package index and the same way on every machine.

`blueprints new` puts the wheel into the project's vendor/ and points the project's dependency
at it (pyproject.toml, [tool.uv.sources]); the versions of blueprints' dependencies installed
here become the project's uv constraints. Two ways to the wheel, whichever this blueprints is:

- imported from a source checkout (an editable install, `make setup`): the checkout is built
  with `uv build --wheel` (hatchling, offline first; reproducible: fixed SOURCE_DATE_EPOCH);
- installed from a wheel: its installed files, as listed in the distribution's RECORD, are
  packed again into the wheel they came from (each file checked against RECORD's hash first).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import io
import os
import re
import shutil
import site
import subprocess
import tempfile
import tomllib
import zipfile
from collections.abc import Iterable
from pathlib import Path

DIST = "blueprints"
# Hatchling's own default SOURCE_DATE_EPOCH (2020-02-02): a wheel built from the same files is
# the same bytes, whatever the clock or the caller's environment says.
SOURCE_DATE_EPOCH = 1580601600
_ZIP_TIME = (2020, 2, 2, 0, 0, 0)
# Written by the installer, not part of the wheel.
_INSTALLER_FILES = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD", "uv_cache.json"}
_WHEEL_NAME = re.compile(r"(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl")


class VendorError(ValueError):
    """The wheel cannot be made; the message is one sentence saying why and what to do."""


def checkout_root() -> Path | None:
    """The source checkout the running package is imported from, or None when it is installed
    (a checkout: the package's parent holds the pyproject.toml of the `blueprints` project)."""
    root = Path(__file__).resolve().parent.parent
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return root if project.get("project", {}).get("name") == DIST else None


def wheel_version(wheel: Path) -> str:
    match = _WHEEL_NAME.fullmatch(wheel.name)
    if not match or match["name"] != DIST:
        raise VendorError(f"{wheel.name}: is not the file name of a {DIST} wheel")
    return match["version"]


def build_wheel(out_dir: Path) -> Path:
    """Write the wheel of the running blueprints into out_dir; return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    root = checkout_root()
    if root is not None:
        return _build_checkout(root, out_dir)
    return _repack_installed(out_dir)


# -- from a checkout ------------------------------------------------------------------------------


def _uv_of_this_python() -> str | None:
    """The uv binary of the `uv` package installed for this Python (`python -m uv` runs it),
    when there is one."""
    if importlib.util.find_spec("uv") is None:
        return None
    try:
        import uv

        return str(uv.find_uv_bin())
    except Exception:  # a broken or partial install of the package: look elsewhere
        return None


def uv_candidates() -> list[str]:
    """Where uv may be, in the order looked: the one running us (`uv run` sets UV), on PATH,
    the `uv` package of this Python, where uv's installer puts it (~/.local/bin), and the bin
    directory of the user's site (`pip install --user uv`, as scripts/bootstrap does;
    ~/Library/Python/X.Y/bin on macOS)."""
    candidates = [
        os.environ.get("UV"),
        shutil.which("uv"),
        _uv_of_this_python(),
        str(Path.home() / ".local" / "bin" / "uv"),
        str(Path(site.getuserbase()) / "bin" / "uv"),
    ]
    return list(dict.fromkeys(c for c in candidates if c))


def find_uv() -> str | None:
    """The first of `uv_candidates` that is an executable file, or None."""
    for candidate in uv_candidates():
        if os.access(candidate, os.X_OK) and Path(candidate).is_file():
            return candidate
    return None


def _build_checkout(root: Path, out_dir: Path) -> Path:
    uv = find_uv()
    if uv is None:
        raise VendorError(
            f"building the {DIST} wheel from the checkout {root} needs uv, found neither on "
            "PATH, nor as this Python's uv package, nor in ~/.local/bin or the user site's bin; "
            "install it (scripts/bootstrap does) or set UV to its path"
        )
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}
    with tempfile.TemporaryDirectory(prefix=".blueprints-wheel-") as tmp:
        cmd = [uv, "build", "--wheel", "--quiet", "--out-dir", tmp, str(root)]
        # Offline first: the build backend (hatchling) is in uv's cache after any sync, and the
        # same cached backend builds the same bytes. Only if it is not, ask the index.
        proc = subprocess.run(
            [*cmd[:2], "--offline", *cmd[2:]], capture_output=True, text=True, env=env
        )
        if proc.returncode != 0 and os.environ.get("UV_OFFLINE") not in ("1", "true"):
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
            errors = [line.removeprefix("error: ") for line in lines if line.startswith("error:")]
            why = (errors or lines or [f"exit status {proc.returncode}"])[0]
            raise VendorError(f"`uv build --wheel {root}` failed: {why}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise VendorError(f"`uv build --wheel {root}` left {len(wheels)} wheels, not one")
        wheel_version(wheels[0])
        target = out_dir / wheels[0].name
        shutil.move(str(wheels[0]), target)
        return target


# -- from an installed wheel ---------------------------------------------------------------------


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _repack_installed(out_dir: Path) -> Path:
    try:
        dist = importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        raise VendorError(f"{DIST} is not installed as a package, so it has no wheel") from None
    files = dist.files
    if not files:
        raise VendorError(f"the installed {DIST} lists no files (no RECORD); reinstall it")
    here = Path(__file__).resolve()
    if not any(Path(str(dist.locate_file(f))).resolve() == here for f in files):
        raise VendorError(
            f"the running {DIST} ({here.parent}) is not the installed distribution "
            f"{DIST} {dist.version}; run the {DIST} you mean to vendor"
        )
    info = next((f.parts[0] for f in files if f.parts[0].endswith(".dist-info")), None)
    if info is None:
        raise VendorError(f"the installed {DIST} has no .dist-info directory; reinstall it")
    # Scripts the installer made from entry points: ../../../bin/NAME in an environment,
    # bin/NAME under `pip install --target`.
    scripts = {e.name for e in dist.entry_points if e.group in ("console_scripts", "gui_scripts")}
    members: dict[str, bytes] = {}
    for f in files:
        parts = f.parts
        if parts[0] == ".." or "__pycache__" in parts or f.suffix in (".pyc", ".pyo"):
            continue  # scripts, bytecode
        if len(parts) == 2 and parts[0] in ("bin", "Scripts") and f.stem in scripts:
            continue
        if parts[0] == info and parts[-1] in _INSTALLER_FILES:
            continue
        if parts[0].endswith(".pth"):
            continue
        data = Path(str(dist.locate_file(f))).read_bytes()
        if f.hash is not None and (f.hash.mode != "sha256" or f.hash.value != _digest(data)):
            raise VendorError(
                f"{dist.locate_file(f)}: changed since {DIST} was installed (its hash differs "
                "from RECORD); reinstall it"
            )
        members["/".join(parts)] = data
    tags = re.findall(r"(?m)^Tag:\s*(\S+)\s*$", members.get(f"{info}/WHEEL", b"").decode())
    if len(tags) != 1:
        raise VendorError(f"the installed {DIST} has no single wheel tag in {info}/WHEEL")
    name = f"{DIST}-{dist.version}-{tags[0]}.whl"
    target = out_dir / name
    target.write_bytes(pack(members, info))
    return target


def pack(members: dict[str, bytes], info: str) -> bytes:
    """A wheel (zip) of these files, the same bytes for the same files: package files sorted,
    then the .dist-info files, RECORD (written here) last; fixed times and modes."""
    record_name = f"{info}/RECORD"
    order = sorted(members, key=lambda n: (n.startswith(f"{info}/"), n))
    record = "".join(f"{n},sha256={_digest(members[n])},{len(members[n])}\n" for n in order)
    record += f"{record_name},,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n, data in [*((n, members[n]) for n in order), (record_name, record.encode())]:
            zi = zipfile.ZipInfo(n, date_time=_ZIP_TIME)
            zi.external_attr = 0o100644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
    return buf.getvalue()


# -- the versions it runs with --------------------------------------------------------------------


def installed_pins(requirements: Iterable[str]) -> list[str]:
    """`name==version` of every installed distribution these requirements need, recursively
    (markers evaluated for this Python and platform), by name: what a baked project is
    constrained to, so that it resolves to what this blueprints runs with. A requirement this
    environment does not satisfy (not installed, or another version) is left unpinned."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    def parse(text: str) -> Requirement | None:
        try:
            return Requirement(text)
        except InvalidRequirement:
            return None

    pins: dict[str, str] = {}
    todo = [(req, "") for req in map(parse, requirements) if req is not None]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if not req.specifier.contains(dist.version, prereleases=True):
            continue
        pins[key[0]] = dist.version
        for text in dist.requires or ():
            sub = parse(text)
            if sub is None:
                continue
            # A dependency wanted for an extra counts once per extra asked for.
            for extra_asked in sorted(req.extras) or [""]:
                todo.append((sub, extra_asked))
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


__all__ = [
    "SOURCE_DATE_EPOCH",
    "VendorError",
    "build_wheel",
    "checkout_root",
    "find_uv",
    "installed_pins",
    "pack",
    "wheel_version",
]
