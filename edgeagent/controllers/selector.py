"""Kubernetes label selectors, matched in the host.

The host shares one watch per kind among controllers with different selectors, so it filters events itself,
with the API server's syntax: ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``, ``a notin (x,y)``,
comma-separated and all required.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s+\(([^)]*)\)\s*$")
_CMP = re.compile(rf"^\s*({_KEY})\s*(==|!=|=)\s*({_VALUE})\s*$")
_EXISTS = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")
_VALUE_RE = re.compile(rf"^{_VALUE}$")


@dataclasses.dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "in":
            return self.key in labels and labels[self.key] in self.values
        return self.key not in labels or labels[self.key] not in self.values


def _split(text: str) -> list[str]:
    """Splits at commas outside parentheses."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


@dataclasses.dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()
    text: str = ""

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        """Raises ValueError naming the first requirement that does not parse."""
        reqs: list[Requirement] = []
        if not text.strip():
            return cls((), "")
        for part in _split(text):
            if m := _SET.match(part):
                values = [v.strip() for v in m.group(4).split(",") if v.strip()]
                if not values or not all(_VALUE_RE.match(v) for v in values):
                    raise ValueError(f"bad value list in {part.strip()!r}")
                reqs.append(Requirement(m.group(1), m.group(3), frozenset(values)))
            elif m := _CMP.match(part):
                op = "notin" if m.group(3) == "!=" else "in"
                reqs.append(Requirement(m.group(1), op, frozenset([m.group(4)])))
            elif m := _EXISTS.match(part):
                reqs.append(Requirement(m.group(2), "!exists" if m.group(1) else "exists"))
            else:
                raise ValueError(f"cannot parse requirement {part.strip()!r}")
        return cls(tuple(reqs), text.strip())

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        return self.text
