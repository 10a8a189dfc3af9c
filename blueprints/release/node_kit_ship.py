"""A node-side script as it is shipped: one file, with node_kit's source inlined.

nomad-node-ready and k3s-node-ready (blueprints/rungs/*/node_ready.py) import what they share
from blueprints.release.node_kit in one block between two marker lines. A node has no
blueprints package, so the text sent to it (install-node-ready's stdin) has that block replaced
by node_kit's source: shipped_source.
"""

from __future__ import annotations

import ast
import functools
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

KIT_MODULE = "blueprints.release.node_kit"
BEGIN = (
    "# --- node_kit: blueprints/release/node_kit.py, inlined here when the script is shipped ---"
)
END = "# --- end node_kit ---"
SHIPPED_BEGIN = "# --- node_kit: inlined from blueprints/release/node_kit.py ---"
SHEBANG = "#!/usr/bin/env python3"
# The nodes' system Python: the shipped text must parse there.
OLDEST_PYTHON = (3, 8)


def kit_source() -> str:
    """node_kit.py without its module docstring and without `from __future__` lines."""
    return _kit_text((resources.files("blueprints.release") / "node_kit.py").read_text("utf-8"))


# A plan ships the same few scripts to many nodes: the parsing below is done once per text.
@functools.lru_cache(maxsize=8)
def _kit_text(text: str) -> str:
    tree = ast.parse(text)
    start = 0
    if tree.body and isinstance(tree.body[0], ast.Expr):
        value = tree.body[0].value
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            start = tree.body[0].end_lineno or 0
    lines = text.splitlines(keepends=True)[start:]
    kept = [line for line in lines if not line.startswith("from __future__")]
    return "".join(kept).strip("\n") + "\n"


def _defined(tree: ast.Module) -> set[str]:
    """The names a module's top level binds: functions, classes, assignments and (but for the
    module names node_kit imports too) imports."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def shipped_source(script_path: Path | Traversable) -> str:
    """The script's text with its node_kit import block replaced by node_kit's source: one
    self-contained file for the node's Python 3.8+. Raises ValueError when the script has no
    such block (exactly one, between BEGIN and END, holding only `from node_kit import ...`),
    imports a name node_kit does not define, or defines a name node_kit defines as well (the
    script's definition would replace the one node_kit's functions call)."""
    return _shipped(f"{script_path}", script_path.read_text(encoding="utf-8"), kit_source())


@functools.lru_cache(maxsize=32)
def _shipped(where: str, text: str, kit: str) -> str:
    lines = text.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.rstrip("\n") == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.rstrip("\n") == END]
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise ValueError(f"{where}: expected one node_kit import block ({BEGIN!r} ... {END!r})")
    begin, end = begins[0], ends[0]
    block = ast.parse("".join(lines[begin + 1 : end]))
    if not block.body or not all(
        isinstance(node, ast.ImportFrom) and node.module == KIT_MODULE and node.level == 0
        for node in block.body
    ):
        raise ValueError(f"{where}: the node_kit block may only import from {KIT_MODULE}")
    imported = {
        alias.name
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    kit_tree = ast.parse(kit)
    kit_names = _defined(kit_tree)
    if unknown := sorted(imported - kit_names):
        raise ValueError(f"{where}: node_kit defines no {', '.join(unknown)}")
    # The modules both import (os, re, ...) are the same modules: no clash.
    kit_modules = {
        a.name.split(".")[0]
        for node in kit_tree.body
        if isinstance(node, ast.Import)
        for a in node.names
        if a.asname is None
    }
    rest = ast.parse("".join(lines[:begin] + lines[end + 1 :]))
    if clashes := sorted((_defined(rest) & kit_names) - kit_modules):
        raise ValueError(
            f"{where}: defines {', '.join(clashes)}, which node_kit defines as well "
            "(once inlined, the script's would replace node_kit's)"
        )
    shipped = "".join(
        [*lines[:begin], SHIPPED_BEGIN, "\n\n", kit, "\n\n", END, "\n", *lines[end + 1 :]]
    )
    if not shipped.startswith(SHEBANG + "\n"):
        raise ValueError(f"{where}: the first line must be {SHEBANG}")
    tree = ast.parse(shipped, feature_version=OLDEST_PYTHON)
    for node in ast.walk(tree):
        modules = []
        if isinstance(node, ast.ImportFrom):
            modules = [node.module or ""]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        if any(m == "blueprints" or m.startswith("blueprints.") for m in modules):
            raise ValueError(f"{where}: the shipped text still imports blueprints")
    return shipped
