"""The event schemas a topology declares: now (from its validated model), and in a previous
version of the project (a directory, or a git revision), read from the topology file and its
schema files as they were there."""
from __future__ import annotations

import json
import posixpath
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from edm_runner.errors import EdmError
from edm_runner.language.model import BusinessTopology, Pos, Topology

PARTS = ("key", "value")


class HistoryError(EdmError):
    """A previous version cannot be read (a broken lock file, an unknown git revision, a
    previous schema that is not JSON): a broken input, exit 2 like a usage error."""

    exit_code = 2


@dataclass(frozen=True, order=True)
class Subject:
    """What a schema is the schema of: a service's key or value of a topic."""

    service: str
    topic: str
    part: str

    def __str__(self) -> str:
        return f"{self.service}/{self.topic}-{self.part}"


@dataclass(frozen=True)
class Declared:
    """A JSON key or value of a stream as the current topology declares it. ``schema`` None:
    no schema (any value). ``file``: the schema file; ``at``: the stream in the topology."""

    subject: Subject
    stream: str
    mode: str
    schema: Any
    file: Path | None
    at: Pos


def current(model: Topology | BusinessTopology) -> list[Declared]:
    """Every JSON key and value of every stream of the (validated) model, with its schema."""
    services = model.services if isinstance(model, BusinessTopology) else [model]
    out = []
    for service in services:
        for name, stream in service.streams.items():
            for part in PARTS:
                serde = getattr(stream, part)
                if serde.format != "json":
                    continue
                schema = None
                if serde.schema is not None:
                    schema = json.loads(Path(serde.schema).read_text(encoding="utf-8"))
                out.append(Declared(Subject(service.name, stream.topic, part), name, stream.compatibility,
                                    schema, serde.schema, stream.pos))
    return out


class Tree(Protocol):
    """A previous version of the project's files. ``label`` names it in messages."""

    label: str

    def read(self, path: str) -> str | None:
        """The text of ``path`` (relative, '/'-separated), None when there is no such file."""


class DirTree:
    """A directory holding a previous version of the directory edm runs from."""

    def __init__(self, root: Path):
        if not root.is_dir():
            raise HistoryError(f"--against {root}: not a directory")
        self.root = root
        self.label = f"the schema in {root}"

    def read(self, path: str) -> str | None:
        file = self.root / path
        try:
            return file.read_text(encoding="utf-8") if file.is_file() else None
        except (OSError, UnicodeDecodeError) as e:
            raise HistoryError(f"cannot read {file}: {e}") from None


class GitTree:
    """The files of git revision ``rev`` of the repository at ``top`` (``git show``)."""

    def __init__(self, top: Path, rev: str):
        self.top, self.rev = top, rev
        self.label = f"the schema at {rev}"
        if _git(top, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}") is None:
            raise HistoryError(f"--against git:{rev}: no such revision in the repository at {top}; "
                               "in CI, fetch it first (e.g. `git fetch origin main` and use git:origin/main)")

    def read(self, path: str) -> str | None:
        return _git(self.top, "show", f"{self.rev}:{path}")


def _git(cwd: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise HistoryError("--against git:...: git is not installed") from None
    return proc.stdout if proc.returncode == 0 else None


def git_tree(topology: Path, rev: str) -> tuple[GitTree, str]:
    """The revision's tree and the topology's path in it."""
    top = _git(topology.resolve().parent, "rev-parse", "--show-toplevel")
    if top is None:
        raise HistoryError(f"--against git:{rev}: {topology} is not in a git repository")
    root = Path(top.strip()).resolve()
    return GitTree(root, rev), topology.resolve().relative_to(root).as_posix()


def dir_tree(topology: Path, root: Path, cwd: Path) -> tuple[DirTree, str]:
    """The directory's tree and the topology's path in it: the same as from ``cwd``."""
    try:
        relative = topology.resolve().relative_to(cwd.resolve()).as_posix()
    except ValueError:
        raise HistoryError(f"--against {root}: the directory stands for the current directory ({cwd}), "
                           f"which does not contain {topology}; run edm from a directory that does") from None
    return DirTree(root), relative


def previous(tree: Tree, topology: str) -> dict[Subject, tuple[str, Any]] | None:
    """Subject -> (stream, schema) of the topology at ``topology`` in ``tree`` (None: no such
    file there, e.g. a topology added since). Schemas a previous version no longer has are left out."""
    data = _yaml(tree, topology)
    if data is None:
        return None
    out: dict[Subject, tuple[str, Any]] = {}
    files = [topology]
    if data.get("kind") == "business":
        files = [_join(topology, s) for s in data.get("services") or [] if isinstance(s, str)]
    for file in files:
        service = data if file == topology else _yaml(tree, file)
        if not isinstance(service, dict) or not isinstance(service.get("streams"), dict):
            continue
        for name, cfg in service["streams"].items():
            cfg = cfg if isinstance(cfg, dict) else {}
            for part in PARTS:
                serde = cfg.get(part)
                if not isinstance(serde, dict) or not isinstance(serde.get("schema"), str):
                    continue
                text = tree.read(_join(file, serde["schema"]))
                if text is None:
                    continue
                try:
                    schema = json.loads(text)
                except ValueError as e:
                    raise HistoryError(f"{tree.label}: {_join(file, serde['schema'])} is not JSON: {e}") from None
                out[Subject(str(service.get("name")), str(cfg.get("topic", name)), part)] = (name, schema)
    return out


def _join(base: str, relative: str) -> str:
    return posixpath.normpath(posixpath.join(posixpath.dirname(base), relative))


def _yaml(tree: Tree, path: str) -> Any:
    text = tree.read(path)
    if text is None:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise HistoryError(f"{tree.label}: {path} is not YAML: {e}") from None

