"""Which source files a stage runs: its module and the ``stages`` modules it imports.

dvc.yaml declares exactly these as each stage's code deps (tests/test_dvc_yaml.py), and the
train stage's resume fingerprint hashes them, so an edit to another module neither reruns
the stage nor discards its unfinished run.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def imported_modules(module: str) -> set[str]:
    """``module`` and every ``stages.*`` module it imports, transitively (names without the
    package, e.g. ``{"train", "params", ...}``)."""
    seen: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse((PACKAGE_DIR / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "stages":
                pending.extend(alias.name for alias in node.names)  # from stages import x
            elif isinstance(node, ast.ImportFrom) and node.module \
                    and node.module.startswith("stages."):
                pending.append(node.module.removeprefix("stages."))
            elif isinstance(node, ast.Import):
                pending.extend(alias.name.removeprefix("stages.") for alias in node.names
                               if alias.name.startswith("stages."))
    return seen


def code_digest(module: str) -> str:
    """sha256 over the source of ``module`` and of every module it imports."""
    digest = hashlib.sha256()
    for name in sorted(imported_modules(module)):
        digest.update(name.encode() + b"\0" + (PACKAGE_DIR / f"{name}.py").read_bytes())
    return digest.hexdigest()
