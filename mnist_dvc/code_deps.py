"""Which source files a stage runs: its own module and every project module it imports.

dvc.yaml declares exactly these files as each stage's code deps (tests/test_dvc_yaml.py
checks it), and the train stage's resume fingerprint hashes them: an edit to a module a
stage does not import neither reruns the stage nor discards its unfinished run.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("stages", "mnist_dvc")  # the project's own code; everything else is a library


def module_file(module: str, root: Path = REPO_ROOT) -> Path:
    """``mnist_dvc.data.idx`` -> ``<root>/mnist_dvc/data/idx.py`` (or a package's
    ``__init__.py``)."""
    path = root.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_modules(module: str, root: Path = REPO_ROOT) -> set[str]:
    """``module`` and every project module it imports, transitively, as dotted names.

    A package's ``__init__`` counts only when it is imported by name; the project's
    ``__init__`` files hold no code.
    """
    seen: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse(module_file(name, root).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and _ours(node.module):
                for alias in node.names:  # `from pkg import module` names a module
                    child = f"{node.module}.{alias.name}"
                    is_module = module_file(child, root).is_file() or \
                        (root.joinpath(*child.split(".")) / "__init__.py").is_file()
                    pending.append(child if is_module else node.module)
            elif isinstance(node, ast.Import):
                pending.extend(alias.name for alias in node.names if _ours(alias.name))
    return {name for name in seen if module_file(name, root).is_file()}


def code_files(module: str, root: Path = REPO_ROOT) -> list[str]:
    """The source files of ``module`` and its imports, relative to ``root``, sorted: the
    code deps dvc.yaml declares for the stage ``module``. Empty ``__init__.py`` files are
    left out."""
    files = (module_file(name, root) for name in imported_modules(module, root))
    return sorted(str(path.relative_to(root)) for path in files
                  if not (path.name == "__init__.py" and not path.read_text().strip()))


def code_digest(module: str, root: Path = REPO_ROOT) -> str:
    """sha256 over the source of ``module`` and of every project module it imports."""
    digest = hashlib.sha256()
    for name in code_files(module, root):
        digest.update(name.encode() + b"\0" + (root / name).read_bytes())
    return digest.hexdigest()


def _ours(module: str) -> bool:
    return module.split(".")[0] in PACKAGES
