"""A mutation pass over the guards that matter most, each run against its targeted tests.

    python tools/mutation.py                 # every guard group below
    python tools/mutation.py --group leases  # one group
    python tools/mutation.py --list          # the mutants, without running anything

A *mutant* is the source with one small change inside one guard function: a comparison
flipped, a condition forced true or false, ``and`` turned into ``or``, a ``not`` dropped, a
``raise`` or a call statement removed, a returned truth value inverted, a keyword argument
(``version=``, ``IfMatch=``) left out. Each mutant is written into a scratch copy of the
project and the group's tests run against it (``-x``: the first failure kills it). A mutant
the tests do not kill is a *survivor*: either the tests miss a behaviour the guard exists
for, or the change is equivalent (it cannot alter behaviour). The report lists survivors
with their line, for a person to judge.

Mutating only named functions, with only the tests written for them, keeps a pass to minutes
rather than the hours a whole-project tool needs with tests that start real S3 servers.
"""

from __future__ import annotations

import argparse
import ast
import copy
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Group:
    """Guard functions (``module path: qualified names``) and the tests that should kill their mutants."""

    name: str
    functions: dict[str, tuple[str, ...]]
    tests: tuple[str, ...]


GROUPS = [
    Group("signature", {
        "src/jangdok/entry/format.py": ("_signature", "_check_payload", "_load_legacy", "decode", "decode_buffer"),
        "src/jangdok/entry/header.py": ("check_key", "check_size"),
    }, ("tests/test_trust.py",)),
    Group("damage", {
        "src/jangdok/entries.py": ("Entries._verified", "Entries._discard", "Entries.verify"),
    }, ("tests/test_cache.py", "tests/test_entry_format.py", "tests/test_retries.py")),
    Group("conditional-deletes", {
        "src/jangdok/stores/local.py": ("LocalStore.delete", "LocalStore._put_back"),
        "src/jangdok/stores/s3/store.py": ("S3Store.delete", "S3Store.delete_many", "S3Store.write_if"),
    }, ("tests/test_store_conformance.py", "tests/test_local_store.py", "tests/test_s3_consistency.py")),
    Group("leases", {
        "src/jangdok/leases.py": ("ObjectLease._try_acquire", "ObjectLease._write_if", "ObjectLease._renew",
                                  "ObjectLease.release", "FileLease._try_acquire", "_stale_leases", "remove_stale"),
    }, ("tests/test_leases.py", "tests/test_shared.py")),
]


@dataclass(frozen=True)
class Mutant:
    path: str
    function: str
    line: int
    change: str
    source: str
    """The whole module with the change applied."""


_SWAPPED = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE,
            ast.LtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_GUARDING_KEYWORDS = {"version", "IfMatch", "IfNoneMatch", "if_match", "trust", "key"}


def _functions(tree: ast.Module, names: tuple[str, ...]) -> Iterator[tuple[str, ast.FunctionDef]]:
    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.FunctionDef]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                qualified = prefix + child.name
                if qualified in names:
                    yield qualified, child  # type: ignore[misc]
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, prefix + child.name + ".")

    yield from walk(tree, "")


def _changes(node: ast.AST) -> Iterator[tuple[str, ast.AST]]:
    """Each single change of ``node`` itself: (description, replacement node)."""
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _SWAPPED:
        changed = copy.deepcopy(node)
        changed.ops = [_SWAPPED[type(node.ops[0])]()]
        yield f"{type(node.ops[0]).__name__} -> {type(changed.ops[0]).__name__}", changed
    if isinstance(node, ast.BoolOp):
        changed = copy.deepcopy(node)
        changed.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield f"{type(node.op).__name__} -> {type(changed.op).__name__}", changed
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield "not dropped", copy.deepcopy(node.operand)
    if isinstance(node, (ast.If, ast.While)) and not isinstance(node.test, ast.Constant):
        for value in (True, False):
            changed = copy.deepcopy(node)
            changed.test = ast.Constant(value)
            yield f"condition -> {value}", changed
    if isinstance(node, ast.Raise):
        yield "raise removed", ast.Pass()
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and not _is_logging(node.value):
        yield "call removed", ast.Pass()
    if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, bool):
        yield f"return {node.value.value} -> {not node.value.value}", ast.Return(ast.Constant(not node.value.value))
    if isinstance(node, ast.Call):
        for index, keyword in enumerate(node.keywords):
            if keyword.arg in _GUARDING_KEYWORDS:
                changed = copy.deepcopy(node)
                del changed.keywords[index]
                yield f"keyword {keyword.arg}= dropped", changed


def _is_logging(call: ast.Call) -> bool:
    """A log line or a statistic: removing one changes what is said, not what is done."""
    func = call.func
    return isinstance(func, ast.Attribute) and (
        (isinstance(func.value, ast.Name) and func.value.id == "log") or func.attr in ("count", "_count"))


def mutants(path: str, names: tuple[str, ...]) -> Iterator[Mutant]:
    text = (ROOT / path).read_text()
    tree = ast.parse(text)
    for qualified, function in _functions(tree, names):
        targets = [node for node in ast.walk(function) if node is not function]
        for target in targets:
            for description, replacement in _changes(target):
                mutated = _replace(tree, target, replacement)
                yield Mutant(path, qualified, getattr(target, "lineno", function.lineno), description,
                             ast.unparse(mutated))


def _replace(tree: ast.Module, target: ast.AST, replacement: ast.AST) -> ast.Module:
    """A copy of ``tree`` with the one node ``target`` replaced."""

    class Swap(ast.NodeTransformer):
        def visit(self, node: ast.AST) -> ast.AST:
            if node is target:
                return ast.copy_location(replacement, node)
            return self.generic_visit(node)

    copied = copy.deepcopy(tree, {id(target): target})  # the target keeps its identity, to be found
    return ast.fix_missing_locations(Swap().visit(copied))


def _run(mutant: Mutant, group: Group, scratch: Path, timeout: float) -> str:
    target = scratch / mutant.path
    original = target.read_text()
    target.write_text(mutant.source)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-n", "0", *group.tests],
            cwd=scratch, env={**os.environ, "PYTHONPATH": str(scratch / "src")}, capture_output=True,
            timeout=timeout)
    except subprocess.TimeoutExpired:
        return "killed (hang)"
    finally:
        target.write_text(original)
    return "survived" if done.returncode == 0 else "killed"


def _baseline(group: Group, scratch: Path) -> float:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", *group.tests],
                          cwd=scratch, env={**os.environ, "PYTHONPATH": str(scratch / "src")},
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"group {group.name}: its tests fail without any mutant:\n{done.stdout[-3000:]}")
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", action="append", help="a group to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    args = parser.parse_args(argv)
    groups = [group for group in GROUPS if not args.group or group.name in args.group]
    survivors: list[tuple[Group, Mutant]] = []
    with tempfile.TemporaryDirectory(prefix="jangdok-mutation-") as folder:
        scratch = Path(folder)
        for part in ("src", "tests", "pyproject.toml", "main.py", "config.py", "chapter_generator", "s3_utils.py",
                     "test_s3_cache.py"):
            source = ROOT / part
            if source.is_dir():
                shutil.copytree(source, scratch / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            elif source.exists():
                shutil.copy2(source, scratch / part)
        for group in groups:
            found = [mutant for path, names in group.functions.items() for mutant in mutants(path, names)]
            print(f"== {group.name}: {len(found)} mutants of {sum(map(len, group.functions.values()))} functions, "
                  f"tests {' '.join(group.tests)}", flush=True)
            if args.list:
                for mutant in found:
                    print(f"   {mutant.path}:{mutant.line} {mutant.function}: {mutant.change}")
                continue
            timeout = max(60.0, 3 * _baseline(group, scratch))
            killed = 0
            for mutant in found:
                verdict = _run(mutant, group, scratch, timeout)
                killed += verdict.startswith("killed")
                if verdict == "survived":
                    survivors.append((group, mutant))
                print(f"   {verdict:14} {mutant.path}:{mutant.line} {mutant.function}: {mutant.change}", flush=True)
            print(f"   {killed} of {len(found)} killed", flush=True)
    if survivors:
        print("\nSurvivors (a behaviour the tests miss, or an equivalent change):")
        for group, mutant in survivors:
            print(f"  [{group.name}] {mutant.path}:{mutant.line} {mutant.function}: {mutant.change}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
