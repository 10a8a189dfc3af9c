"""YAML that every reader gets back as written: the one base for each dumper the project uses.

PyYAML writes a string without quotes whenever its own resolver (a subset of YAML 1.1) would read
it back as a string. The readers of what this project writes are stricter or different: k3s and
kubectl read manifests with Go's yaml.v2 (sigs.k8s.io/yaml), Compose and Pulumi with yaml.v3,
cloud-init with PyYAML. PyYAML would write `n`, `y`, `1e3`, `0o17`, `+.5` or `2001-1-2` plain,
and Go reads them as a bool, a number or a timestamp, so an env value `n` fails a Deployment and
`1e3` becomes 1000 in a compose file.

So the dumpers here also resolve, for deciding on quotes only, everything in the union of:
- the YAML 1.1 type table (yaml.org/type: bool, int, float, null, timestamp, merge, value), every
  letter case of its words;
- YAML 1.2's core schema (0o17, 1e3);
- go-yaml v2/v3: a scalar that starts with a digit or a sign and parses as a Go integer once its
  underscores are dropped (0X1F, 0B101, 1_, 08 as a float), or as a float of the form
  `[-+]?(\\.N|N(\\.N?)?)([eE][-+]?N)?`; a date `YYYY-M-D` with or without a time.
A string the union reads as anything but a string is written in single quotes; every other string
keeps the style it had (plain stays plain, so rendered files do not churn). A dumper built here
never writes non-string values differently: PyYAML's own resolvers are asked first.

One line of the 1.1 table is taken as its parsers implement it: the page's base-10 float allows
any number of dots after the first (`[0-9.]*`), which would make 10.0.1.13 a float; no parser
reads it so (PyYAML, SnakeYAML and go-yaml allow one dot), so addresses and versions stay plain.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import yaml

# Words YAML 1.1 or go-yaml read as a bool or a null, in any letter case (1.1 lists y, Y, yes,
# Yes, YES...; lower-casing covers those and the odd mixes a hand-written reader might accept).
_BOOL_WORDS = frozenset({"y", "yes", "n", "no", "true", "false", "on", "off"})
_NULL_WORDS = frozenset({"", "~", "null"})

# Numbers, matched on the text without its underscores (1.1 allows them between digits, go-yaml
# drops every one before parsing). Case-insensitive: Go accepts 0X, 0B, 0O and E.
_INT = re.compile(
    r"""[-+]?(?:
        0b[01]+                         # binary (1.1, Go)
      | 0o[0-7]+                        # octal (1.2, Go)
      | 0x[0-9a-f]+                     # hexadecimal
      | [0-9]+                          # decimal, 1.1 octal 017; Go reads 08 as a float
      | [1-9][0-9]*(?::[0-5]?[0-9])+    # sexagesimal (1.1): 1:20, 190:20:30
    )\Z""",
    re.IGNORECASE | re.VERBOSE,
)
_FLOAT = re.compile(
    r"""[-+]?(?:
        [0-9]*\.[0-9]*(?:e[-+]?[0-9]+)?      # 1., .5, 6.8523015e+5, 1.0e3 (1.1: even .)
      | [0-9]+e[-+]?[0-9]+                   # 1.2 core and Go: 1e3, 1E+3
      | [0-9]+(?::[0-5]?[0-9])+\.[0-9]*      # sexagesimal (1.1): 190:20:30.15
      | \.(?:inf|nan)                        # .inf, -.Inf, .NaN
    )\Z""",
    re.IGNORECASE | re.VERBOSE,
)
# 1.1's timestamp, widened to what go-yaml parses (one-digit month and day without a time).
_TIMESTAMP = re.compile(
    r"""[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}
    (?:(?:[Tt]|[ \t]+)[0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2}(?:\.[0-9]*)?
       (?:[ \t]*(?:Z|[-+][0-9]{1,2}(?::[0-9]{2})?))?)?\Z""",
    re.VERBOSE,
)

BOOL = "tag:yaml.org,2002:bool"
NULL = "tag:yaml.org,2002:null"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
TIMESTAMP = "tag:yaml.org,2002:timestamp"
MERGE = "tag:yaml.org,2002:merge"
VALUE = "tag:yaml.org,2002:value"


@lru_cache(maxsize=8192)
def implicit_type(text: str) -> str | None:
    """The tag some YAML reader (1.1, 1.2 core, go-yaml) gives `text` written as a plain
    scalar, or None when every one of them reads it as a string."""
    word = text.lower()
    if word in _BOOL_WORDS:
        return BOOL
    if word in _NULL_WORDS:
        return NULL
    if text == "<<":
        return MERGE
    if text == "=":
        return VALUE
    if text[0] in "0123456789+-.":
        number = text.replace("_", "")
        if _INT.match(number):
            return INT
        if _FLOAT.match(number):
            return FLOAT
        if _TIMESTAMP.match(text):
            return TIMESTAMP
    return None


class _Reads:
    """An implicit resolver's `regexp`: PyYAML only calls its match(value)."""

    def __init__(self, tag: str):
        self.tag = tag

    def match(self, value: str) -> bool:
        return implicit_type(value) == self.tag


def quoting(cls: type) -> type:
    """Make a PyYAML dumper class quote every string `implicit_type` reads as another type.

    The resolvers are added after PyYAML's own (and only consulted when those found nothing),
    so an int, float, bool or None is written exactly as before; a string they claim is no
    longer "implicit" as plain text, which makes PyYAML (and libyaml) pick single quotes."""
    for tag in (BOOL, NULL, INT, FLOAT, TIMESTAMP, MERGE, VALUE):
        cls.add_implicit_resolver(tag, _Reads(tag), None)
    return cls


@quoting
class SafeDumper(yaml.SafeDumper):
    """yaml.SafeDumper (pure Python) quoting what another reader would not read as a string."""


# libyaml's emitter is several times faster than PyYAML's pure-Python one and writes the same
# bytes for what we dump; PyPI wheels always ship it.
_CBase: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

# libyaml's loader: the values yaml.safe_load gives, an order of magnitude sooner (planned user
# data and releases run to megabytes at hundreds of services). For texts whose readers need no
# node marks and no PyYAML error wording.
FastLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def fast_load(text: str) -> Any:
    """yaml.safe_load(text), with libyaml."""
    return yaml.load(text, Loader=FastLoader)


@quoting
class FastDumper(_CBase):  # type: ignore[misc, valid-type]
    """yaml.CSafeDumper (libyaml's emitter) quoting what another reader would not read as a
    string."""
