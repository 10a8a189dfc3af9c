"""The node-side scripts as shipped: node_kit inlined, one self-contained file for Python 3.8."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

from blueprints.backup import backup_source
from blueprints.release import node_kit_ship
from blueprints.release.node_kit_ship import BEGIN, END, shipped_source
from blueprints.rungs.k8s import bootstrap as k8s_bootstrap
from blueprints.rungs.nomad import bootstrap as nomad_bootstrap

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "nomad": ROOT / "blueprints/rungs/nomad/node_ready.py",
    "k8s": ROOT / "blueprints/rungs/k8s/node_ready.py",
    "backup": ROOT / "blueprints/backup/node_backup.py",
}
PYTHON38 = Path("/root/.pyenv/versions/3.8.18/bin/python3.8")


@pytest.mark.parametrize("rung", sorted(SCRIPTS))
def test_the_shipped_script_is_one_self_contained_file(rung):
    text = shipped_source(SCRIPTS[rung])

    assert text.startswith("#!/usr/bin/env python3\n")
    compile(text, f"{rung}-node-ready", "exec")
    assert BEGIN not in text
    assert text.count(END) == 1
    assert "from __future__" not in text
    assert '"""node_kit:' not in text  # node_kit's module docstring stays behind
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("blueprints"), node.module
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("blueprints") for a in node.names)
    assert "blueprints." not in "\n".join(
        line for line in text.splitlines() if line.lstrip().startswith(("import ", "from "))
    )


@pytest.mark.parametrize("rung", sorted(SCRIPTS))
def test_shipped_source_is_deterministic_and_what_the_bootstrap_sends(rung):
    sources = {
        "nomad": nomad_bootstrap.node_ready_source,
        "k8s": k8s_bootstrap.node_ready_source,
        "backup": backup_source,
    }

    assert shipped_source(SCRIPTS[rung]) == shipped_source(SCRIPTS[rung])
    assert sources[rung]() == shipped_source(SCRIPTS[rung])


@pytest.mark.skipif(not PYTHON38.exists(), reason=f"no {PYTHON38}")
@pytest.mark.parametrize("rung", sorted(SCRIPTS))
def test_the_shipped_script_compiles_on_python_3_8(rung, tmp_path):
    path = tmp_path / f"{rung}-node-ready.py"
    path.write_text(shipped_source(SCRIPTS[rung]), encoding="utf-8")

    result = subprocess.run(
        [str(PYTHON38), "-m", "py_compile", str(path)], capture_output=True, check=False
    )

    assert result.returncode == 0, result.stderr.decode()


def _script(tmp_path, body: str) -> Path:
    path = tmp_path / "script.py"
    path.write_text(f"#!/usr/bin/env python3\nimport os\n\n{BEGIN}\n{body}{END}\n\nX = 1\n")
    return path


def test_a_script_may_not_define_what_node_kit_defines(tmp_path):
    path = _script(tmp_path, "from blueprints.release.node_kit import say\n")
    path.write_text(path.read_text() + "\n\ndef shorten(text):\n    return text\n")

    with pytest.raises(ValueError, match="defines shorten, which node_kit defines as well"):
        shipped_source(path)


def test_the_block_imports_only_what_node_kit_has(tmp_path):
    with pytest.raises(ValueError, match="node_kit defines no nothing_here"):
        shipped_source(_script(tmp_path, "from blueprints.release.node_kit import nothing_here\n"))
    with pytest.raises(ValueError, match="may only import from"):
        shipped_source(_script(tmp_path, "import json\n"))
    path = tmp_path / "plain.py"
    path.write_text("#!/usr/bin/env python3\nX = 1\n")
    with pytest.raises(ValueError, match="expected one node_kit import block"):
        shipped_source(path)


def test_node_kit_source_has_no_docstring_and_no_future_import():
    source = node_kit_ship.kit_source()

    assert source.startswith("import ")
    assert "from __future__" not in source
