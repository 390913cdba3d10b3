"""Temporary git copies of this repository, driven through the real ``dvc`` CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class DvcRepo:
    """A throwaway clone of the project: the committed files plus any uncommitted changes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        venv_bin = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
            "DVC_NO_ANALYTICS": "1",
            "DVC_SITE_CACHE_DIR": str(root.parent / f"{root.name}-site-cache"),
            "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
            "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
            "TQDM_DISABLE": "1",
        }

    @classmethod
    def copy_of_project(cls, root: Path) -> DvcRepo:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO_ROOT, check=True, capture_output=True, text=True).stdout
        for name in filter(None, listed.split("\0")):
            source = REPO_ROOT / name
            if source.is_file():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, root / name)
        repo = cls(root)
        repo.git("init", "-q", "-b", "main")
        repo.commit("copy of the project")
        return repo

    @classmethod
    def clone_of(cls, source: str, root: Path) -> DvcRepo:
        """``git clone source root``: what another machine would have."""
        subprocess.run(["git", "clone", "-q", source, str(root)], check=True)
        return cls(root)

    def clone(self, root: Path) -> DvcRepo:
        return self.clone_of(str(self.root), root)

    def run(self, *args: str, check: bool = True, timeout: float = 600,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(args, cwd=cwd or self.root, env=self.env, capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}\n"
                                 f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}")
        return result

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("dvc", *args, check=check)

    def git(self, *args: str) -> subprocess.CompletedProcess:
        return self.run("git", *args)

    def commit(self, message: str) -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)

    def set_params(self, **sections: dict) -> None:
        """Change keys of params.yaml, e.g. ``set_params(train={"epochs": 1})``, one line
        each, as ``dvc exp run -S`` would."""
        path = self.root / "params.yaml"
        lines = path.read_text().splitlines(keepends=True)
        section = None
        for index, line in enumerate(lines):
            if line[:1].isalpha():
                section = line.split(":")[0]
            key = line.strip().split(":")[0]
            if line.startswith("  ") and key in sections.get(section, {}):
                value = json.dumps(sections[section][key])
                lines[index] = f"  {key}: {value}\n"
        path.write_text("".join(lines))
