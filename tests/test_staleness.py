"""mlonas.staleness: which stages' code changed since an artifact's recorded commit."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers import REPO

from mlonas.staleness import code_changes, stage_files

MODULES = {
    "mlonas/__init__.py": "",
    "mlonas/cli.py": "import mlonas.config\n",
    "mlonas/config.py": "X = 1\n",
    "mlonas/io.py": '"""IO."""\n\ndef write(x):\n    """Write."""\n    return x\n',
    "mlonas/data/__init__.py": "",
    "mlonas/data/splits.py": "from mlonas import io\n\ndef split():\n    return io.write(1)\n",
    "mlonas/search/__init__.py": "",
    "mlonas/search/loop.py": "def run():\n    from mlonas.data.splits import split\n    return 2\n",
}


def git(repo: Path, *args: str) -> str:
    cmd = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


def checkout(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "repo"
    for rel, text in MODULES.items():
        path = repo / "src" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(repo.parent, "init", "-q", str(repo))
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "first")
    return repo, git(repo, "rev-parse", "HEAD")


def edit(repo: Path, rel: str, old: str, new: str) -> None:
    path = repo / "src" / rel
    path.write_text(path.read_text().replace(old, new))


def test_stage_code_is_the_import_closure_of_its_entry(tmp_path: Path) -> None:
    repo, _ = checkout(tmp_path)
    names = {p.relative_to(repo / "src").as_posix() for p in stage_files("search", repo / "src")}
    # lazy imports inside functions count; io comes through splits
    assert names == set(MODULES)
    split = {p.relative_to(repo / "src").as_posix() for p in stage_files("split", repo / "src")}
    assert "mlonas/search/loop.py" not in split and "mlonas/io.py" in split


def test_only_behaviour_changes_of_a_stages_code_are_reported(tmp_path: Path) -> None:
    repo, commit = checkout(tmp_path)
    code = {"git_commit": commit, "git_dirty": False}
    assert code_changes(code, "split", repo) == []
    # docstrings, comments and formatting do not change what a stage computes
    edit(repo, "mlonas/io.py", '"""Write."""', '"""Write it, atomically."""\n    # why')
    edit(repo, "mlonas/data/splits.py", "io.write(1)", "io.write( 1 )")
    git(repo, "commit", "-qam", "docs")
    assert code_changes(code, "split", repo) == []
    # a change of the search's own code is the search's, not the split's
    edit(repo, "mlonas/search/loop.py", "return 2", "return 3")
    assert code_changes(code, "split", repo) == []
    assert code_changes(code, "search", repo) == [
        f"src/mlonas/search/loop.py changed since {commit[:12]}"
    ]
    # ... while a module both import concerns both (uncommitted edits count: a rerun runs them)
    edit(repo, "mlonas/io.py", "return x", "return x + 1")
    assert code_changes(code, "split", repo) == [f"src/mlonas/io.py changed since {commit[:12]}"]
    assert len(code_changes(code, "search", repo)) == 2


def test_unknown_or_unrecorded_commits_are_said(tmp_path: Path) -> None:
    repo, commit = checkout(tmp_path)
    assert code_changes({"git_commit": None}, "split", repo)[0].startswith("no git commit")
    assert "not in the repository" in code_changes({"git_commit": "0" * 40}, "split", repo)[-1]
    notes = code_changes({"git_commit": commit, "git_dirty": True}, "split", repo)
    assert notes == [f"made from a checkout of {commit[:12]} with local changes"]


def test_every_stage_of_the_cli_has_an_entry_in_this_repository() -> None:
    for stage in ("split", "search", "export", "train-cifar", "train-imagenet", "table"):
        files = stage_files(stage, REPO / "src")
        assert REPO / "src" / "mlonas" / "cli.py" in files, stage
        assert len(files) > 3, stage
