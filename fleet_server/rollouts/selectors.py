"""Device selectors: `site=berlin,camera=dock` (tags, all must match), `camera!=lobby`,
`device=cam-1|cam-2` (explicit ids), `all`."""

from __future__ import annotations

import re
from dataclasses import dataclass

_TERM = re.compile(r"^(?P<key>[A-Za-z0-9_.-]{1,64})\s*(?P<op>!=|=)\s*(?P<value>[^,=!]{1,256})$")


class SelectorError(ValueError):
    pass


@dataclass(frozen=True)
class Term:
    key: str
    op: str
    values: tuple[str, ...]

    def matches(self, device_id: str, tags: dict[str, str]) -> bool:
        actual = device_id if self.key == "device" else tags.get(self.key)
        hit = actual in self.values
        return hit if self.op == "=" else not hit


@dataclass(frozen=True)
class Selector:
    text: str
    terms: tuple[Term, ...]

    def matches(self, device_id: str, tags: dict[str, str]) -> bool:
        return all(t.matches(device_id, tags) for t in self.terms)


def parse_selector(text: str) -> Selector:
    text = text.strip()
    if not text:
        raise SelectorError("empty selector: use `all`, tags like site=berlin,camera=dock, or device=ID|ID")
    if text in ("all", "*"):
        return Selector(text, ())
    terms = []
    for part in text.split(","):
        m = _TERM.match(part.strip())
        if not m:
            raise SelectorError(f"cannot read selector term {part.strip()!r}: expected key=value or key!=value")
        values = tuple(v.strip() for v in m["value"].split("|") if v.strip())
        terms.append(Term(m["key"], m["op"], values))
    return Selector(text, tuple(terms))


def parse_tags(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not re.match(r"^[A-Za-z0-9_.-]{1,64}$", k) or not v or len(v) > 256 or "," in v or "|" in v:
            raise SelectorError(f"tag {p!r}: expected key=value (key: letters, digits, _ . -; value without , or |)")
        if k == "device":
            raise SelectorError("`device` is reserved for device ids in selectors")
        out[k] = v
    return out
