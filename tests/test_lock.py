"""requirements.lock holds for every supported Python (offline): each dependency that
pyproject.toml names, in any extra, has exactly one exact pin for each Python of the Makefile's
PYTHONS on each platform `make lock` checks, inside pyproject.toml's range. A dependency added
or a range changed without `make lock` fails here (docs/install.md)."""

from __future__ import annotations

import re
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

MAKEFILE = (REPO_ROOT / "Makefile").read_text()
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
# the markers of the platforms in the Makefile's LOCK_PLATFORMS
PLATFORMS = {
    "x86_64-manylinux_2_28": {"sys_platform": "linux", "platform_system": "Linux",
                              "platform_machine": "x86_64"},
    "aarch64-apple-darwin": {"sys_platform": "darwin", "platform_system": "Darwin",
                             "platform_machine": "arm64"},
}


def make_variable(name: str) -> list[str]:
    found = re.search(rf"^{name} := (.*)$", MAKEFILE, re.MULTILINE)
    assert found, f"the Makefile sets no {name}"
    return found.group(1).split()


PYTHONS = make_variable("PYTHONS")


def environment(python: str, platform: str) -> dict[str, str]:
    return {"python_version": python, "python_full_version": f"{python}.0",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "os_name": "posix", "extra": "", **PLATFORMS[platform]}


def parse_lock(text: str) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [Requirement(line) for line in lines if line]


LOCK = parse_lock((REPO_ROOT / "requirements.lock").read_text())


def pins(lock: list[Requirement], name: str, env: dict[str, str]) -> list[str]:
    """The versions ``lock`` pins for ``name`` where ``env``'s markers hold."""
    return [str(req.specifier).removeprefix("==") for req in lock
            if canonicalize_name(req.name) == canonicalize_name(name)
            and (req.marker is None or req.marker.evaluate(env))]


def declared() -> list[Requirement]:
    """Every requirement of the project and its extras (an extra that names the project's own
    extras, as dev names s3 and ssh, adds nothing of its own: they are listed anyway)."""
    extras = PYPROJECT.get("optional-dependencies", {}).values()
    return [req for group in [PYPROJECT["dependencies"], *extras] for line in group
            if (req := Requirement(line)).name != PYPROJECT["name"]]


def test_the_makefile_locks_for_the_platforms_this_test_knows():
    assert make_variable("LOCK_PLATFORMS") == list(PLATFORMS)


def test_pythons_are_pyprojects_classifiers_from_its_lowest_python():
    classified = [c.rsplit(" :: ", 1)[1] for c in PYPROJECT["classifiers"]
                  if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    assert classified == PYTHONS
    assert PYPROJECT["requires-python"] == f">={PYTHONS[0]}"
    assert sorted(PYTHONS, key=lambda version: tuple(map(int, version.split(".")))) == PYTHONS


def test_every_line_is_one_exact_version():
    assert len(LOCK) > 50
    loose = [str(req) for req in LOCK if not re.fullmatch(r"==[^*,]+", str(req.specifier))]
    assert not loose, f"requirements.lock pins exact versions only: {loose}"


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("python", PYTHONS)
def test_every_dependency_has_one_pin_in_its_range(python, platform):
    env = environment(python, platform)
    problems = []
    for req in declared():
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        versions = pins(LOCK, req.name, env)
        if len(versions) != 1 or versions[0] not in req.specifier:
            problems.append(f"{req}: {versions or 'no pin'}")
    assert not problems, f"run make lock; for Python {python} on {platform}: {problems}"


@pytest.mark.parametrize("python", PYTHONS)
def test_no_package_is_pinned_twice_for_one_python(python):
    for platform in PLATFORMS:
        env = environment(python, platform)
        names = {canonicalize_name(req.name) for req in LOCK}
        twice = {name: found for name in names if len(found := pins(LOCK, name, env)) > 1}
        assert not twice, f"Python {python} on {platform}: {twice}"


def test_a_pin_per_python_is_told_apart_by_its_marker():
    lock = parse_lock("numpy==2.2.6 ; python_full_version < '3.11'\n"
                      "numpy==2.4.6 ; python_full_version >= '3.11'  # newest for 3.11+\n"
                      "pywin32==312 ; sys_platform == 'win32'\n")
    assert pins(lock, "NumPy", environment("3.10", "x86_64-manylinux_2_28")) == ["2.2.6"]
    assert pins(lock, "numpy", environment("3.13", "aarch64-apple-darwin")) == ["2.4.6"]
    assert pins(lock, "pywin32", environment("3.13", "x86_64-manylinux_2_28")) == []
