"""The AWS target names pulumi-aws's resources and look-ups by type token and property name
(blueprints/targets/aws.py: AwsResource, _invoke), not through the generated classes. Here every
resource and look-up the four rungs make on AWS is checked against those classes' metadata:
the token, each input name (nested objects too), the required inputs, the outputs read, the
aliases pulumi-aws gives the type, the look-ups' argument and result names. A typo here would
otherwise reach only a real `pulumi up`."""

from __future__ import annotations

import importlib
import inspect
import re
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path

import pulumi
import pytest
from pulumi import _types
from spec_plans import copy_project

from blueprints.plan import plan_stack
from blueprints.targets import aws

ROOT = Path(__file__).resolve().parent.parent

# Every AWS stack of the example, and the variants that reach the rest of the target: the warm
# spare (its current address, looked up), real AWS (the Ubuntu image, looked up).
PLANS = [
    ("single-vm-localstack", {}),
    ("single-vm-localstack", {"blueprints:spareMode": "warm"}),
    ("compose-localstack", {}),
    ("nomad-localstack", {}),
    ("k8s-localstack", {}),
    ("single-vm-aws", {}),
]


class Made(typing.NamedTuple):
    token: str
    inputs: dict
    outputs: tuple[str, ...]
    aliases: tuple[str, ...]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[list[Made], list[tuple[str, dict]]]:
    """What the plans above create and look up through the target (in a copy of the project
    with a stack on real AWS)."""
    project = copy_project(tmp_path_factory.mktemp("aws"))
    (project / "stacks/Pulumi.single-vm-aws.yaml").write_text(
        "config:\n  blueprints:blueprint: single-vm\n  blueprints:target: aws\n"
        "  blueprints:region: eu-west-1\n"
    )
    resources: list[Made] = []
    lookups: list[tuple[str, dict]] = []
    real_init, real_invoke, real_output = aws.AwsResource.__init__, aws._invoke, aws._invoke_output

    def init(self, token, name, inputs, opts, *, outputs=(), aliases=()):
        resources.append(Made(token, dict(inputs), tuple(outputs), tuple(aliases)))
        real_init(self, token, name, inputs, opts, outputs=outputs, aliases=aliases)

    def invoke(token, args, opts):
        lookups.append((token, dict(args)))
        return real_invoke(token, args, opts)

    def invoke_output(token, args, opts):
        lookups.append((token, dict(args)))
        return real_output(token, args, opts)

    patch = pytest.MonkeyPatch()
    patch.setattr(aws.AwsResource, "__init__", init)
    patch.setattr(aws, "_invoke", invoke)
    patch.setattr(aws, "_invoke_output", invoke_output)
    try:
        for stack, overrides in PLANS:
            plan_stack(stack, project, overrides)
    finally:
        patch.undo()
    return resources, lookups


def _generated(token: str) -> tuple[typing.Any, str]:
    """The pulumi-aws module and the name a token's generated class or function has there:
    aws:ec2/getAmi:getAmi -> (pulumi_aws.ec2, getAmi)."""
    _, module, name = token.split(":")
    return importlib.import_module(f"pulumi_aws.{module.split('/')[0]}"), name


def _input_class(hint: typing.Any) -> type | None:
    """The input type (a generated *Args class) inside a property's annotation, if any:
    through Optional, Input, Union, Sequence and Mapping."""
    hint = _types.unwrap_type(hint)
    if isinstance(hint, type) and _types.is_input_type(hint):
        return hint
    for arg in typing.get_args(hint):
        if isinstance(arg, type) and _types.is_input_type(arg):
            return arg
        found = _input_class(arg) if typing.get_args(arg) else None
        if found is not None:
            return found
    return None


def _check_inputs(where: str, args_cls: type, value: Mapping, problems: list[str]) -> None:
    """Each key of `value` a property of `args_cls`, its required ones present; nested objects
    against their own input types."""
    types = _types.input_type_types(args_cls)
    for key, item in value.items():
        if key not in types:
            problems.append(f"{where}: {key!r} is no input of {args_cls.__name__}")
            continue
        nested = _input_class(types[key])
        if nested is None or isinstance(item, pulumi.Output):
            continue
        items = item if isinstance(item, Sequence) and not isinstance(item, str) else [item]
        for i, one in enumerate(items):
            if isinstance(one, Mapping):
                _check_inputs(f"{where}.{key}[{i}]", nested, one, problems)
    for key in sorted(_types._required_property_names(args_cls) - set(value)):
        problems.append(f"{where}: the required input {key!r} is missing")


def test_every_resource_is_named_as_pulumi_aws_names_it(made):
    resources, _ = made
    problems: list[str] = []
    for res in resources:
        module, name = _generated(res.token)
        cls = getattr(module, name, None)
        if cls is None:
            problems.append(f"{res.token}: pulumi_aws.{module.__name__} has no {name}")
            continue
        source = inspect.getsource(cls)
        sent = re.search(r"super\(\w+, __self__\)\.__init__\(\s*'([^']+)'", source)
        if sent is None or sent.group(1) != res.token:
            problems.append(f"{res.token}: {cls.__name__} sends {sent and sent.group(1)}")
        _check_inputs(res.token, getattr(module, f"{name}Args"), res.inputs, problems)
        outputs = _types.resource_pulumi_to_py_names(cls)
        problems += [f"{res.token}: no output {o!r}" for o in res.outputs if o not in outputs]
        aliases = set(re.findall(r'Alias\(type_="([^"]+)"\)', source))
        if aliases != set(res.aliases):
            problems.append(f"{res.token}: aliases {sorted(res.aliases)}, not {sorted(aliases)}")
    assert sorted(set(problems)) == []


def test_every_look_up_is_named_as_pulumi_aws_names_it(made):
    _, lookups = made
    problems: list[str] = []
    for token, args in lookups:
        module, name = _generated(token)
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
        function = getattr(module, snake, None)
        if function is None:
            problems.append(f"{token}: pulumi_aws.{module.__name__} has no {snake}")
            continue
        source = inspect.getsource(function)
        if f"invoke('{token}'" not in source:
            problems.append(f"{token}: {snake} invokes another token")
        known = set(re.findall(r"__args__\['(\w+)'\]", source))
        problems += [f"{token}: {k!r} is no argument of {snake}" for k in args if k not in known]
        hints = typing.get_type_hints(function)
        for key, value in args.items():
            py = re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()
            nested = _input_class(hints.get(py)) if py in hints else None
            if nested is not None and isinstance(value, list):
                for i, one in enumerate(value):
                    _check_inputs(f"{token}.{key}[{i}]", nested, one, problems)
    assert sorted(set(problems)) == []


# What the target reads of each look-up's result (aws.py), by token.
RESULTS_READ = {
    "aws:ec2/getAmi:getAmi": {"id"},
    "aws:ec2/getInstance:getInstance": {"publicIp"},
    "aws:ebs/getEbsVolumes:getEbsVolumes": {"ids"},
    "aws:ec2/getEips:getEips": {"publicIps"},
    "aws:ec2/getInstances:getInstances": {"ids"},
    "aws:ec2/getKeyPair:getKeyPair": {"tags"},
}


def test_the_results_read_are_named_as_pulumi_aws_names_them():
    problems = []
    for token, read in RESULTS_READ.items():
        module, name = _generated(token)
        result = getattr(module, f"{name[0].upper()}{name[1:]}Result")
        names = set(_types.output_type_types(result))
        problems += [f"{token}: no result {r!r}" for r in sorted(read - names)]
    assert sorted(set(problems)) == []


def test_every_token_of_the_target_is_planned_here(made):
    """The plans above reach every resource and look-up aws.py names (no token left
    unchecked), and RESULTS_READ names every look-up."""
    resources, lookups = made
    source = Path(aws.__file__).read_text()
    named = set(re.findall(r'"(aws:[a-z0-9]+/\w+:\w+)"', source))
    named -= {a for r in resources for a in r.aliases}
    seen = {r.token for r in resources} | {t for t, _ in lookups}
    assert len(named) > 20 and named - seen == set()
    assert {t for t in named if "/get" in t} == set(RESULTS_READ)


def test_a_misnamed_input_is_caught():
    """The checks see a wrong name, a missing required input and a wrong nested name."""
    import pulumi_aws

    problems: list[str] = []
    _check_inputs("x", pulumi_aws.ec2.SubnetArgs, {"vpc_id": "v"}, problems)
    _check_inputs(
        "y",
        pulumi_aws.ec2.InstanceArgs,
        {"metadataOptions": {"httpToken": "required"}},
        problems,
    )
    assert problems == [
        "x: 'vpc_id' is no input of SubnetArgs",
        "x: the required input 'vpcId' is missing",
        "y.metadataOptions[0]: 'httpToken' is no input of InstanceMetadataOptionsArgs",
    ]
