"""constraints.txt pins every dependency pyproject.toml declares, at a release its range allows.

``make venv``, CI's clean clone and the image install through it, so that a release nobody ran ``make test``
with never reaches them by surprise; these checks keep it in step with pyproject.toml when either changes.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


def _pins(text: str) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line)
        assert match, f"constraints.txt line {number} is not an exact pin: {line!r}"
        name = _normalized(match.group(1))
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = Version(match.group(2))
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        declared += extra
    return [Requirement(text) for text in declared]


def _problems(pins: dict[str, Version], declared: list[Requirement]) -> list[str]:
    problems = []
    for requirement in declared:
        if requirement.name.lower() in {"setuptools", "wheel"}:  # build tools: pip freeze leaves them out
            continue
        pinned = pins.get(_normalized(requirement.name))
        if pinned is None:
            problems.append(f"{requirement.name} is not pinned")
        elif not requirement.specifier.contains(pinned, prereleases=True):
            problems.append(f"{requirement.name}=={pinned} is outside {requirement.specifier}")
    return problems


def test_every_declared_dependency_is_pinned_within_its_range() -> None:
    pins = _pins((ROOT / "constraints.txt").read_text())
    assert _problems(pins, _declared()) == []


def test_a_missing_or_out_of_range_pin_is_reported() -> None:
    """The check above can fail: a pin below a range, and a dependency without a pin, are both named."""
    declared = [Requirement("redis>=8.1.0"), Requirement("wsgidav>=4.4.0")]
    assert _problems(_pins("redis==8.0.9\n"), declared) == [
        "redis==8.0.9 is outside >=8.1.0",
        "wsgidav is not pinned",
    ]
