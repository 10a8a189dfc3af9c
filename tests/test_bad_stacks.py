"""Bad stack files and settings, through the real CLI: each problem is one line naming the stack
file, the line and the key, and what is allowed; exit status 2; no traceback.

The corpus is tests/bad_stacks/*.yaml. Each file starts with one `# expect: ` line per problem,
`{file}` standing for the stack file's path as shown (stacks/Pulumi.<stack>.yaml); a line ending
in `...` is matched up to there (a list of allowed keys that grows with the settings). The files
are planned as the stacks of a baked project (its own Pulumi project name, its own program.py),
where a key without a namespace is not a `blueprints:` key.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import random
import re
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from blueprints.cli import app
from blueprints.compare import compare, hcloud_location
from blueprints.costs import shipped_tables
from blueprints.plan import PlanError, plan_stack
from blueprints.settings import (
    DEFAULT_SERVER_TYPE,
    HCLOUD_LOCATIONS,
    StackSettings,
    config_text,
    load_stack_file,
    parse_settings,
    read_stack_settings,
    server_problems,
    stack_file_problems,
    using_price_tables,
)
from blueprints.spec import SpecError
from blueprints.targets import userdata

ROOT = Path(__file__).resolve().parent.parent
CASES_DIR = ROOT / "tests/bad_stacks"
CASES = sorted(CASES_DIR.glob("*.yaml"))
EXPECT = "# expect: "
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


def stack_name(case: Path) -> str:
    return case.stem.replace("_", "-")


def make_project(where: Path, name: str = "myapp") -> Path:
    """A baked project: Pulumi.yaml (its own name), program.py, the example spec, no stacks."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "stacks").mkdir()
    (where / "examples").mkdir()
    shutil.copy(ROOT / "examples/app.yaml", where / "examples/app.yaml")
    (where / "Pulumi.yaml").write_text(
        f"name: {name}\nruntime: python\nmain: program.py\nstackConfigDir: stacks\n"
    )
    (where / "program.py").write_text("from blueprints.stack import deploy\n\ndeploy()\n")
    return where


def add_stack(project: Path, stack: str, text: str) -> None:
    (project / "stacks" / f"Pulumi.{stack}.yaml").write_text(text)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = make_project(tmp_path_factory.mktemp("bad") / "infra")
    for case in CASES:
        shutil.copy(case, root / "stacks" / f"Pulumi.{stack_name(case)}.yaml")
    return root


def expected_lines(case: Path) -> list[str]:
    head = [line for line in case.read_text().splitlines() if line.startswith(EXPECT)]
    assert head, f"{case.name} must start with '{EXPECT}<message>' lines"
    shown = f"stacks/Pulumi.{stack_name(case)}.yaml"
    return [line[len(EXPECT) :].replace("{file}", shown) for line in head]


def error_lines(result) -> list[str]:
    """The `error: ` lines a command wrote, without the prefix."""
    text = result.stderr
    assert "Traceback" not in text and "Traceback" not in result.stdout
    return [line[len("error: ") :] for line in text.splitlines() if line.startswith("error: ")]


def matches(got: str, want: str) -> bool:
    return got.startswith(want[:-3]) if want.endswith("...") else got == want


def plan_cli(project: Path, *args: str):
    return CliRunner().invoke(app, ["plan", *args, "-C", str(project)], env=ENV)


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 15


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_bad_stack_gives_its_lines_and_exit_2(project, case):
    res = plan_cli(project, stack_name(case))
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit)
    got, want = error_lines(res), expected_lines(case)
    assert len(got) == len(want), got
    for line, expected in zip(got, want, strict=True):
        assert matches(line, expected), f"\n got: {line}\nwant: {expected}"


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_each_line_names_the_file_and_a_line_or_key(case):
    """The corpus itself: every expected line starts with the file, then a line number unless
    the problem is a key that is not there (a required one) or the whole file."""
    for line in expected_lines(case):
        shown = f"stacks/Pulumi.{stack_name(case)}.yaml"
        assert line.startswith(shown)
        rest = line[len(shown) :]
        assert re.match(r":[0-9]+: \S", rest) or rest.startswith(
            (": is empty", ": blueprints:target: is required")
        ), line


def test_a_line_number_points_at_the_key():
    """Not an off-by-one: the line named holds the key named."""
    checked = 0
    for case in CASES:
        lines = case.read_text().splitlines()
        for line in expected_lines(case):
            found = re.match(r"stacks/\S+?\.yaml:([0-9]+): (.+?): ", line)
            if not found or " " in found.group(2).removeprefix("config key "):
                continue  # the whole file (not valid YAML, not a mapping)
            key = found.group(2).removeprefix("config key ")
            if "." in key:  # a key inside a mapping value: the line holds its last part
                key = key.rsplit(".", 1)[1]
            assert key in lines[int(found.group(1)) - 1], (case.name, line)
            checked += 1
    assert checked >= 20


def test_several_bad_stacks_each_say_why(project):
    stacks = [stack_name(c) for c in CASES[:3]]
    res = plan_cli(project, *stacks)
    assert res.exit_code == 2
    lines = error_lines(res)
    for case in CASES[:3]:
        for want in expected_lines(case):
            assert any(want[: -3 if want.endswith("...") else None] in got for got in lines), want


# --- what passes: the shipped stacks, secrets where secrets belong, warnings as notes ----------


@pytest.mark.parametrize("stack", sorted(p.name for p in (ROOT / "stacks").glob("Pulumi.*.yaml")))
def test_shipped_stacks_are_clean(stack):
    path = ROOT / "stacks" / stack
    settings, warnings = read_stack_settings(path, f"stacks/{stack}")
    assert warnings == []
    assert settings.size in shipped_tables()[settings.cloud].server_types


def test_every_default_server_type_and_location_is_priced():
    tables = shipped_tables()
    for (_blueprint, cloud), size in DEFAULT_SERVER_TYPE.items():
        assert size in tables[cloud].server_types
    assert StackSettings.model_fields["location"].default in tables["hcloud"].places
    assert StackSettings.model_fields["region"].default in tables["aws"].places
    assert set(tables["hcloud"].places) <= set(HCLOUD_LOCATIONS)


def test_secrets_may_be_encrypted_and_provider_keys_pass(tmp_path):
    text = """\
config:
  blueprints:blueprint: compose
  blueprints:target: hcloud
  blueprints:secrets:
    DATABASE_PASSWORD:
      secure: v1:AAAA
  blueprints:backupSecretKey:
    secure: v1:AAAA
  hcloud:token:
    secure: v1:AAAA
  hcloud:pollInterval: 1s
  pulumi:disable-default-providers: ["kubernetes"]
"""
    path = tmp_path / "Pulumi.x.yaml"
    path.write_text(text)
    stack = load_stack_file(path, "stacks/Pulumi.x.yaml")
    assert stack_file_problems(stack) == []
    assert stack.lines["blueprints:secrets.DATABASE_PASSWORD"] == 5
    assert stack.lines["hcloud:pollInterval"] == 11


def test_aws_region_may_match_the_stack_region(tmp_path):
    path = tmp_path / "Pulumi.x.yaml"
    path.write_text(
        "config:\n  blueprints:blueprint: k8s\n  blueprints:target: aws\n"
        "  blueprints:region: us-east-1\n  aws:region: us-east-1\n"
    )
    settings, warnings = read_stack_settings(path, "stacks/Pulumi.x.yaml")
    assert settings.region == "us-east-1"
    # The table prices eu-central-1 only: a warning, not an error.
    assert warnings == [
        "blueprints:region us-east-1: the price table has AWS prices for eu-central-1 only, "
        "so this stack's costs are not known here"
    ]


def test_an_aws_type_outside_the_table_is_a_note_and_plans(project):
    add_stack(
        project,
        "compose-m7i",
        "config:\n  blueprints:blueprint: compose\n  blueprints:target: localstack\n"
        "  blueprints:serverType: m7i.large\n",
    )
    plan = plan_stack("compose-m7i", project)
    [instance] = plan.of_type("aws:ec2/instance:Instance")
    assert instance.inputs["instanceType"] == "m7i.large"
    assert any(
        n.startswith("blueprints:serverType m7i.large is not in the price table")
        for n in plan.notes
    )
    res = plan_cli(project, "compose-m7i")
    assert res.exit_code == 0, res.output
    assert "note: blueprints:serverType m7i.large is not in the price table" in res.stdout


def test_a_graviton_type_with_its_own_ami_plans(project):
    add_stack(
        project,
        "compose-graviton",
        "config:\n  blueprints:blueprint: compose\n  blueprints:target: localstack\n"
        "  blueprints:serverType: t4g.medium\n  blueprints:ami: ami-0123456789abcdef0\n",
    )
    [instance] = plan_stack("compose-graviton", project).of_type("aws:ec2/instance:Instance")
    assert instance.inputs["ami"] == "ami-0123456789abcdef0"


@pytest.mark.parametrize(
    ("size", "error"),
    [
        ("t3.small", None),
        ("m7i.large", None),
        ("i3.metal", None),
        ("i3.large", "Xen-based"),
        ("x1e.xlarge", "Xen-based"),
        ("f1.2xlarge", "Xen-based"),
        ("g3s.xlarge", "Xen-based"),
        ("i3en.large", None),
        ("p3dn.24xlarge", None),
        ("c7gn.large", "Arm64 (Graviton)"),
        ("im4gn.large", "Arm64 (Graviton)"),
        ("a1.large", "Arm64 (Graviton)"),
        ("g4dn.xlarge", None),
        ("t3", "not an EC2 instance type"),
        ("cx23", "a Hetzner type"),
    ],
)
def test_aws_types(size, error):
    settings = parse_settings(
        {"blueprint": "compose", "target": "aws", "serverType": size}, "stacks/x.yaml"
    )
    errors, _ = server_problems(settings)
    if error is None:
        assert errors == []
    else:
        [(key, message)] = errors
        assert key == "serverType" and error in message and size in message


def test_hetzner_arm_types_boot_the_arm_build_of_the_image(project):
    """cax types are in the table; Hetzner picks the image's arm64 build for an arm server type
    by name, so the stack keeps its image name; the plan says what arm64 asks of the app."""
    add_stack(
        project,
        "single-vm-arm",
        "config:\n  blueprints:blueprint: single-vm\n  blueprints:target: hcloud\n"
        "  blueprints:serverType: cax21\n",
    )
    plan = plan_stack("single-vm-arm", project)
    servers = plan.of_type("hcloud:index/server:Server")
    assert {s.inputs["serverType"] for s in servers} == {"cax21"}
    assert {s.inputs["image"] for s in servers} == {"ubuntu-24.04"}
    assert any("cax21 is an Arm64 (Ampere) server" in n and "linux/arm64" in n for n in plan.notes)
    # The bootstrap installs nothing built for one architecture only.
    for server in servers:
        text = userdata.decode(server.plain_inputs()["userData"])
        for word in ("amd64", "x86_64"):
            assert word not in text or "arm64" in text or "aarch64" in text


def test_overrides_that_differ_from_the_file_name_no_line():
    """A value given as an override (as `blueprints compare` and the failover do) is not the
    file's: the message names the file, not a line holding another value."""
    with pytest.raises(PlanError) as exc:
        plan_stack("single-vm-hcloud", ROOT, {"blueprints:serverType": "cx99"})
    assert str(exc.value).startswith(
        "stacks/Pulumi.single-vm-hcloud.yaml: blueprints:serverType: cx99 is not a Hetzner "
        "server type of the price table"
    )


def test_a_bad_value_in_the_file_names_its_line(tmp_path):
    root = make_project(tmp_path / "infra")
    text = (ROOT / "stacks/Pulumi.single-vm-hcloud.yaml").read_text()
    add_stack(root, "single-vm-hcloud", text.replace("serverType: cx23", "serverType: cx99"))
    number = next(
        i for i, line in enumerate(text.splitlines(), 1) if "blueprints:serverType:" in line
    )
    with pytest.raises(PlanError) as exc:
        plan_stack("single-vm-hcloud", root)
    assert str(exc.value).startswith(
        f"stacks/Pulumi.single-vm-hcloud.yaml:{number}: blueprints:serverType: cx99 "
    )


# --- compare and diff read stack files through the same checks --------------------------------


def test_compare_refuses_a_bad_stack_with_the_same_line(tmp_path):
    root = make_project(tmp_path / "infra")
    shutil.copy(ROOT / "stacks/Pulumi.compose-hcloud.yaml", root / "stacks")
    case = CASES_DIR / "server_type_cx99.yaml"
    shutil.copy(case, root / "stacks" / f"Pulumi.{stack_name(case)}.yaml")
    res = CliRunner().invoke(app, ["compare", "-t", "hcloud", "-C", str(root)], env=ENV)
    assert res.exit_code == 2, res.output
    [want] = expected_lines(case)
    assert any(want in line for line in error_lines(res)), res.stderr


def test_diff_refuses_a_bad_stack_with_the_same_line(tmp_path):
    from baked_repo import baked_git_repo, commit_all, edit, run_diff

    repo = baked_git_repo(tmp_path, ["compose-hcloud"])
    edit(repo, "stacks/Pulumi.compose-hcloud.yaml", "config:\n", "config:\n  serverType: cx33\n")
    commit_all(repo, "a key without its namespace")
    number = 1 + next(
        i
        for i, line in enumerate(
            (repo / "stacks/Pulumi.compose-hcloud.yaml").read_text().split("\n")
        )
        if line == "  serverType: cx33"
    )
    res = run_diff(repo, ["compose-hcloud"])
    assert res.exit_code != 0, res.output
    # (this repository's project is named blueprints: see the test of that case)
    want = (
        f"stacks/Pulumi.compose-hcloud.yaml:{number}: serverType: has no namespace; write "
        "blueprints:serverType"
    )
    assert want in res.output, res.output
    assert "Traceback" not in res.output


# --- user data over the cloud's limit ---------------------------------------------------------


def volumes_spec(count: int) -> dict:
    """An app whose one service mounts `count` volumes with long random names: each name is
    written into the data node's bootstrap, and random text does not compress."""
    rnd = random.Random(22)
    alphabet = string.ascii_lowercase + string.digits
    names = sorted({"v" + "".join(rnd.choice(alphabet) for _ in range(60)) for _ in range(count)})
    return {
        "name": "big",
        "domain": "big.example.com",
        "acme_email": "ops@example.com",
        "admin": {"cidrs": ["198.51.100.0/24"]},
        "services": {
            "web": {
                "image": "nginx:1.27",
                "ports": [{"port": 8080, "expose": "http"}],
                "volumes": [{"volume": v, "path": f"/data/{i}"} for i, v in enumerate(names)],
            }
        },
        "volumes": {v: {"size_gb": 1} for v in names},
    }


def test_user_data_over_the_limit_is_refused_with_the_numbers(tmp_path):
    root = make_project(tmp_path / "infra")
    (root / "big.yaml").write_text(yaml.safe_dump(volumes_spec(150)))
    add_stack(
        root,
        "nomad-big",
        "config:\n  blueprints:blueprint: nomad\n  blueprints:target: localstack\n"
        "  blueprints:spec: big.yaml\n",
    )
    for command in (["plan", "nomad-big"], ["render", "nomad-big", "-o", str(tmp_path / "r")]):
        res = CliRunner().invoke(app, [*command, "-C", str(root)], env=ENV)
        assert res.exit_code == 2, res.output
        [line] = error_lines(res)
        found = re.fullmatch(
            r"big-nomad-big-node-1: user data is ([0-9]+) bytes, ([0-9]+) bytes "
            r"gzip-compressed, over AWS's limit of 16384 bytes; AWS would refuse the server\. "
            + re.escape(userdata.ADVICE),
            line,
        )
        assert found, line
        raw, packed = int(found.group(1)), int(found.group(2))
        assert raw > packed > 16384
    assert not (tmp_path / "r").exists()
    # The refusal is said once: the futures left holding it print nothing (asyncio's "Future
    # exception was never retrieved" and a traceback, hundreds of times) when they are collected
    # in a process that goes on to plan another stack.
    add_stack(root, "cx99", (CASES_DIR / "server_type_cx99.yaml").read_text())
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from blueprints.cli import app\n"
        "for stack in ('nomad-big', 'cx99', 'nomad-big', 'cx99'):\n"
        "    res = CliRunner().invoke(app, ['plan', stack, '-C', sys.argv[1]])\n"
        "    print(stack, res.exit_code)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script, str(root)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.stdout.split() == ["nomad-big", "2", "cx99", "2", "nomad-big", "2", "cx99", "2"]
    assert "never retrieved" not in res.stderr and "Traceback" not in res.stderr, res.stderr[:2000]


def test_user_data_limits_per_cloud():
    text = "#cloud-config\n" + "".join(
        f"# {random.Random(i).getrandbits(256):064x}\n" for i in range(1200)
    )
    raw = len(text.encode())
    # Hetzner: the text sent counts; compressed user data is sent base64-encoded.
    with pytest.raises(userdata.UserDataTooLarge) as exc:
        userdata.encode(text, 32 * 1024, base64_always=False, what="srv", cloud="Hetzner Cloud")
    sent = len(base64.b64encode(gzip.compress(text.encode(), 9, mtime=0)))
    assert str(exc.value).startswith(
        f"srv: user data is {raw} bytes, {sent} bytes gzip-compressed and base64-encoded, over "
        "Hetzner Cloud's limit of 32768 bytes"
    )
    # AWS: the decoded bytes count.
    with pytest.raises(userdata.UserDataTooLarge, match="over AWS's limit of 16384 bytes"):
        userdata.encode(text, 16 * 1024, base64_always=True, what="srv", cloud="AWS")
    # What fits compressed is sent compressed and reads back the same.
    small = "#cloud-config\n" + "# the same line again\n" * 3000
    packed = userdata.encode(small, 16 * 1024, base64_always=True, what="srv", cloud="AWS")
    assert userdata.decode(packed, base64_always=True) == small
    assert userdata.encode("#cloud-config\n", 100, base64_always=False, what="s", cloud="x") == (
        "#cloud-config\n"
    )


# --- the reader itself ------------------------------------------------------------------------


def test_stack_file_reader_keeps_values_and_lines(tmp_path):
    path = tmp_path / "Pulumi.s.yaml"
    path.write_text(
        "# a comment\nconfig:\n  blueprints:blueprint: nomad\n  blueprints:target: hcloud\n"
        "  blueprints:deployerNetworks:\n    - 198.51.100.7/32\n  blueprints:protectData: false\n"
    )
    stack = load_stack_file(path, "stacks/Pulumi.s.yaml")
    assert stack.config["blueprints:deployerNetworks"] == ["198.51.100.7/32"]
    # As Pulumi hands it to the program: text.
    assert stack.config["blueprints:protectData"] == "false"
    assert stack.lines["blueprints:blueprint"] == 3
    assert stack.lines["blueprints:protectData"] == 7
    assert stack.at("blueprints:target") == "stacks/Pulumi.s.yaml:4"
    assert stack.at("blueprints:spec") == "stacks/Pulumi.s.yaml"


def test_a_file_that_cannot_be_decoded(tmp_path):
    path = tmp_path / "Pulumi.s.yaml"
    path.write_bytes(b"config:\n  blueprints:target: \xff\xfe\n")
    with pytest.raises(SpecError) as exc:
        load_stack_file(path, "stacks/Pulumi.s.yaml")
    assert exc.value.lines == ["stacks/Pulumi.s.yaml: cannot be read (UnicodeDecodeError)"]


# --- values as Pulumi reads them (Go's yaml.v3, then text) -------------------------------------


@pytest.mark.parametrize(
    ("written", "handed_over"),
    [
        # YAML 1.1 would make these a bool, a date, a sexagesimal int; yaml.v3 keeps the text.
        ("yes", "yes"),
        ("on", "on"),
        ("n", "n"),
        ("2024-01-01", "2024-01-01"),
        ("2001-12-14t21:59:43.10-05:00", "2001-12-14t21:59:43.10-05:00"),
        ("1:30", "1:30"),
        ("cx33", "cx33"),
        ("'1.10'", "1.10"),
        ('"010"', "010"),
        ("!!str 1.10", "1.10"),
        ("! 12", "12"),
        ("!!binary aGVsbG8=", "hello"),
        # Words yaml.v3 reads as a bool or null, in its three spellings only.
        ("True", "true"),
        ("FALSE", "false"),
        ("~", ""),
        ("", ""),
        ("Yes", "Yes"),
        ("NO", "NO"),
        # Numbers, as Go spells them when Pulumi writes them back.
        ("7", "7"),
        ("-3", "-3"),
        ("1.5", "1.5"),
        ("!!float 2", "2"),
        ("0.0001", "0.0001"),
        ("18446744073709551615", "18446744073709551615"),
    ],
)
def test_a_value_is_handed_over_as_pulumi_reads_it(tmp_path, written, handed_over):
    path = tmp_path / "Pulumi.s.yaml"
    path.write_text(f"config:\n  blueprints:blueprint: compose\n  blueprints:image: {written}\n")
    stack = load_stack_file(path, "stacks/Pulumi.s.yaml")
    assert stack.config["blueprints:image"] == handed_over


@pytest.mark.parametrize(
    ("written", "go"),
    [
        ("1.10", "1.1"),
        ("010", "8"),
        ("08", "8"),
        ("0x1F", "31"),
        ("0o17", "15"),
        ("0b101", "5"),
        ("1_000", "1000"),
        ("+1", "1"),
        ("1e3", "1000"),
        ("1e6", "1e+06"),
        ("0.00001", "1e-05"),
        (".5", "0.5"),
        ("1.0", "1"),
        ("123456789012345678901234567890", "1.2345678901234568e+29"),
    ],
)
def test_a_number_pulumi_spells_otherwise_is_refused(tmp_path, written, go):
    path = tmp_path / "Pulumi.s.yaml"
    path.write_text(f"config:\n  blueprints:blueprint: compose\n  blueprints:image: {written}\n")
    with pytest.raises(SpecError) as exc:
        load_stack_file(path, "stacks/Pulumi.s.yaml")
    assert exc.value.lines == [
        f"stacks/Pulumi.s.yaml:3: blueprints:image: Pulumi reads the unquoted {written} as the "
        f"number {go} and passes '{go}' on; write {go}, or quote it ('{written}') to keep the "
        "text"
    ]


def test_objects_are_handed_over_as_json_of_go_values(tmp_path):
    path = tmp_path / "Pulumi.s.yaml"
    path.write_text(
        "config:\n  blueprints:blueprint: compose\n"
        "  blueprints:deployerNetworks: [198.51.100.7/32, 2001-01-01, yes, 1.0, 0x10, ~]\n"
    )
    stack = load_stack_file(path, "stacks/Pulumi.s.yaml")
    value = stack.config["blueprints:deployerNetworks"]
    assert value == ["198.51.100.7/32", "2001-01-01", "yes", 1, 16, None]
    assert config_text(value) == '["198.51.100.7/32", "2001-01-01", "yes", 1, 16, null]'


def test_values_yaml_11_reads_as_other_types_plan_as_text(tmp_path):
    """A date-like image name, text given as !!binary, yes for a boolean, a quoted number: all
    valid, planned as Pulumi hands them over (text; no JSON of a date, no crash)."""
    root = make_project(tmp_path / "infra")
    add_stack(
        root,
        "dated",
        "config:\n  blueprints:blueprint: single-vm\n  blueprints:target: hcloud\n"
        "  blueprints:image: 2024-01-01\n  blueprints:protectData: yes\n"
        "  blueprints:watchInterval: '7'\n  blueprints:spareMode: !!binary Y29sZA==\n",
    )
    settings, _ = read_stack_settings(root / "stacks/Pulumi.dated.yaml", "stacks/x.yaml")
    assert (settings.image, settings.protect_data, settings.watch_interval) == (
        "2024-01-01",
        True,
        7,
    )
    assert settings.spare_mode == "cold"
    plan = plan_stack("dated", root)
    servers = plan.of_type("hcloud:index/server:Server")
    assert {s.inputs["image"] for s in servers} == {"2024-01-01"}
    res = plan_cli(root, "dated")
    assert res.exit_code == 0, res.output


def test_a_key_without_namespace_in_a_project_named_blueprints(tmp_path):
    """This repository's project is named blueprints, so Pulumi does read `serverType` as
    blueprints:serverType here; it is still refused, without claiming nothing reads it."""
    root = make_project(tmp_path / "infra", name="blueprints")
    add_stack(root, "nons", (CASES_DIR / "no_namespace.yaml").read_text())
    res = plan_cli(root, "nons")
    assert res.exit_code == 2
    assert error_lines(res) == [
        "stacks/Pulumi.nons.yaml:5: serverType: has no namespace; write blueprints:serverType "
        "(Pulumi puts a key without one in the project's namespace, blueprints here, but a "
        "project baked from this one has a name of its own)"
    ]


def test_plan_each_turns_an_unexpected_error_into_that_stacks_line(project, monkeypatch):
    """A bug in one stack's plan is that stack's failure, named by its type and place; the
    other stacks still plan."""
    import blueprints.plan as plan_module

    real = plan_module.plan_stack

    def flaky(stack, *args, **kwargs):
        if stack == "broken":
            return {}["no such key"]
        return real(stack, *args, **kwargs)

    add_stack(project, "broken", "config:\n  blueprints:blueprint: compose\n")
    add_stack(
        project,
        "fine",
        "config:\n  blueprints:blueprint: compose\n  blueprints:target: localstack\n",
    )
    monkeypatch.setattr(plan_module, "plan_stack", flaky)
    outcome = plan_module.plan_each(["broken", "fine"], project)
    assert [p.stack for p in outcome.plans] == ["fine"]
    assert re.fullmatch(
        r"unexpected KeyError at test_bad_stacks\.py:[0-9]+: 'no such key' \(a bug in "
        r"blueprints: please report it with this line\)",
        outcome.failed["broken"],
    ), outcome.failed["broken"]
    res = plan_cli(project, "broken", "fine")
    assert res.exit_code == 2
    assert any(line.startswith("broken: unexpected KeyError") for line in error_lines(res))


# --- live prices: the server type and place are checked against the table compare read ---------


def live_table(location: str, types: dict[str, tuple[int, str, str]]):
    from decimal import Decimal

    from blueprints.costs import ServerType

    shipped = shipped_tables()["hcloud"]
    return dataclasses.replace(
        shipped,
        as_of="live",
        source=f"Hetzner Cloud API /pricing, net, location {location}",
        places=(location,),
        server_types={
            name: ServerType(vcpu, Decimal(mem), Decimal(price))
            for name, (vcpu, mem, price) in types.items()
        },
    )


def test_live_prices_check_against_hetzners_list(tmp_path):
    root = make_project(tmp_path / "infra")
    add_stack(
        root,
        "ash",
        "config:\n  blueprints:blueprint: compose\n  blueprints:target: hcloud\n"
        "  blueprints:location: ash\n  blueprints:serverType: cpx41\n",
    )
    # The shipped table: neither the location nor the type.
    with pytest.raises(PlanError) as exc:
        plan_stack("ash", root)
    assert "ash is not covered by the price table" in str(exc.value)
    assert "cpx41 is not a Hetzner server type of the price table" in str(exc.value)
    assert "blueprints compare --live-prices" in str(exc.value)
    # `compare --live-prices` reads Hetzner's list for the stacks' location, unpriced or not.
    assert hcloud_location(root, "hcloud") == "ash"
    # Hetzner's list for ash, as `compare --live-prices` reads it: both known, the stack plans.
    live = {**shipped_tables(), "hcloud": live_table("ash", {"cpx41": (8, "16", "30.49")})}
    with using_price_tables(live):
        plan = plan_stack("ash", root)
    assert {s.inputs["serverType"] for s in plan.of_type("hcloud:index/server:Server")} == {"cpx41"}
    # ... and compare prices it with that list.
    result = compare("hcloud", project_dir=root, tables=live)
    assert [r.stack for r in result.rows] == ["ash"] and not result.failed
    # A type the live list lacks is refused with what the list has.
    settings = parse_settings(
        {"blueprint": "compose", "target": "hcloud", "location": "ash", "serverType": "cx23"},
        "stacks/x.yaml",
    )
    errors, _ = server_problems(settings, live)
    assert errors == [
        (
            "serverType",
            "cx23 is not a server type Hetzner's live price list has for ash; allowed: cpx41",
        )
    ]
