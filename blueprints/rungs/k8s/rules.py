"""What an app spec must satisfy on the k8s rung, beyond the spec's own rules."""

from __future__ import annotations

from blueprints.spec import AppSpec, format_path

Problem = tuple[tuple[str | int, ...], str]

# Namespaces the cluster itself uses; the app's namespace is its name.
RESERVED_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease", "cert-manager")

NUL_MESSAGE = "contains a NUL character, which no process can receive"


def check_app(app: AppSpec) -> list[Problem]:
    """Rules of the k8s blueprint on top of the spec's own, as (field path, message)."""
    problems: list[Problem] = []
    if app.name in RESERVED_NAMESPACES:
        problems.append(
            (
                ("name",),
                f"{app.name!r} is the name of a namespace the cluster uses itself, and the app "
                "runs in a namespace named after it; choose another name",
            )
        )
    for name, svc in app.sorted_services():
        base: tuple[str | int, ...] = ("services", name)
        public = f"{name}-public"
        if svc.public_tcp_ports and public in app.services:
            problems.append(
                (
                    (*base, "ports"),
                    f"its expose: tcp ports become a Service named {public}, which is also the "
                    "name of another service; rename one of them",
                )
            )
        for var, value in sorted(svc.env.items()):
            if "\0" in value:
                problems.append(((*base, "env", var), NUL_MESSAGE))
        for i, arg in enumerate(svc.command or []):
            if "\0" in arg:
                problems.append(((*base, "command", i), NUL_MESSAGE))
        if svc.health is not None:
            for i, arg in enumerate(svc.health.command or []):
                if "\0" in arg:
                    problems.append(((*base, "health", "command", i), NUL_MESSAGE))
            if "\0" in svc.health.path:
                problems.append(((*base, "health", "path"), NUL_MESSAGE))
    return problems


def require_valid(app: AppSpec) -> None:
    problems = check_app(app)
    if problems:
        raise ValueError("\n".join(f"{format_path(path)}: {msg}" for path, msg in problems))
