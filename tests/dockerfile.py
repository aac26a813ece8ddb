"""Just enough of a Dockerfile parser for the image tests (no Docker engine runs here): instructions with their
continuation lines joined, WORKDIR, ENV (``ENV A=1 B=2`` and the legacy ``ENV A 1``) and ARG values with ``$VAR`` /
``${VAR}`` substitution, and where each build-context file lands in the image under Docker's COPY rules."""

from __future__ import annotations

import dataclasses
import fnmatch
import posixpath
import re
import shlex
from pathlib import Path

VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclasses.dataclass
class Dockerfile:
    context: Path  # the build context (the repository root)
    instructions: list[tuple[str, str]]  # (KEYWORD, arguments) in file order, continuations joined
    env: dict[str, str]  # the final image's ENV values
    files: dict[str, Path]  # image path -> build-context file, for every COPY from the context

    def run_lines(self) -> list[str]:
        return [args for keyword, args in self.instructions if keyword == "RUN"]

    def under(self, folder: str) -> dict[str, Path]:
        """The copied files whose image path lies anywhere below ``folder``."""
        prefix = folder.rstrip("/") + "/"
        return {path: source for path, source in self.files.items() if path.startswith(prefix)}


def instructions(text: str) -> list[tuple[str, str]]:
    joined, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    if current:
        joined.append(current)
    result = []
    for line in joined:
        keyword, _, args = line.strip().partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def substitute(value: str, variables: dict[str, str]) -> str:
    return VARIABLE.sub(lambda m: variables.get(m.group(1) or m.group(2), ""), value)


def assignments(args: str, variables: dict[str, str]) -> dict[str, str]:
    """``A=1 B="two words"`` (or the legacy single ``A value``) -> {name: value}."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: substitute(" ".join(words[1:]), variables)}
    return {name: substitute(value, variables) for name, _, value in (word.partition("=") for word in words)}


def ignored(context: Path) -> list[str]:
    path = context / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    return [line.strip().removeprefix("**/") for line in lines if line.strip() and not line.startswith("#")]


def context_files(context: Path, source: str, patterns: list[str]) -> list[tuple[str, Path]]:
    """(path relative to the copied source, file) for a COPY source: a file, or a folder's whole content."""
    path = context / source
    candidates = [(path.name, path)] if path.is_file() else \
        [(str(f.relative_to(path)), f) for f in sorted(path.rglob("*")) if f.is_file()]
    return [(rel, f) for rel, f in candidates
            if not any(fnmatch.fnmatch(part, p) or fnmatch.fnmatch(str(f.relative_to(context)), p)
                       for p in patterns for part in f.relative_to(context).parts)]


def parse(path: Path) -> Dockerfile:
    context = path.parent
    patterns = ignored(context)
    steps = instructions(path.read_text())
    variables: dict[str, str] = {}
    env: dict[str, str] = {}
    files: dict[str, Path] = {}
    workdir = "/"
    for keyword, args in steps:
        if keyword == "FROM":
            variables, env, files, workdir = {}, {}, {}, "/"  # a new stage (only the last one is the image)
        elif keyword == "WORKDIR":
            workdir = posixpath.normpath(posixpath.join(workdir, substitute(args, variables)))
        elif keyword in ("ENV", "ARG"):
            values = assignments(args, variables)
            variables.update(values)
            if keyword == "ENV":
                env.update(values)
        elif keyword in ("COPY", "ADD"):
            words = shlex.split(args)
            if any(word.startswith("--from") for word in words):
                continue  # from another image, not from the repository
            *sources, dest = [word for word in words if not word.startswith("--")]
            dest = posixpath.join(workdir, substitute(dest, variables))
            into_folder = dest.endswith("/") or len(sources) > 1 or (context / sources[0]).is_dir()
            for source in sources:
                for rel, file in context_files(context, source, patterns):
                    target = posixpath.join(dest, rel) if into_folder else dest
                    files[posixpath.normpath(target)] = file
    return Dockerfile(context, steps, env, files)
