"""A mutation pass over the guards that matter most, each run against its targeted tests.

    python tools/mutation.py                      # every guard group below
    python tools/mutation.py --group leases       # one group
    python tools/mutation.py --list [--diff]      # the mutants (and their changes), running nothing
    python tools/mutation.py --mutant leases#12   # one mutant (as --list numbers it), all its group's tests

A *mutant* is the source with one small change inside one guard function: a comparison
flipped, a condition forced true or false, ``and`` turned into ``or``, a ``not`` dropped, a
``raise`` or a call statement removed, a returned truth value inverted, a keyword argument
(``version=``, ``IfMatch=``) left out. Each mutant is written into a scratch copy of the
project and the group's tests run against it (``-x``: the first failure kills it). A mutant
the tests do not kill is a *survivor*: either the tests miss a behaviour the guard exists
for, or the change is equivalent (it cannot alter behaviour). Survivors a person has judged
are listed in :data:`JUDGED` with the reason; any other survivor fails the pass (exit 1).

Mutating only named functions, with only the tests written for them, keeps a pass to hours
rather than the days a whole-project tool needs with tests that start real S3 servers.
Two more things keep it short:

- Each group's tests first run once, unmutated, under coverage, one context per test. A
  mutant then runs the tests that executed its line (fastest first, one process, ``-x``) and,
  if they all pass, those that started Python processes of their own (coverage does not see
  into those; on ``--workers`` pytest-xdist workers). Any other test of the group never
  executes the mutated line, and only that line differs, so a survivor has passed every test
  of its group that could have told it apart.
- Every test has a timeout (pytest-timeout, a few times the slowest test of the group's
  unmutated run) and every pytest run a limit, so a mutant that hangs is killed in minutes;
  after each run, any SeaweedFS server still running from the scratch folder is killed.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import difflib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Group:
    """Guard functions (``module path: qualified names``) and the tests that should kill their
    mutants: pytest arguments (files or node ids), narrowed by ``select`` (``-k``) if given."""

    name: str
    functions: dict[str, tuple[str, ...]]
    tests: tuple[str, ...]
    select: str | None = None


GROUPS = [
    # What is unpickled must be vouched for: signatures, the key an entry names, its size, and
    # (with signing) never loading from a memory map another process could write.
    Group("signature", {
        "src/jangdok/entry/format.py": ("decode", "decode_buffer", "verify", "_read_verified", "_signature",
                                        "_check_payload", "_Verifier.matches", "_load_legacy"),
        "src/jangdok/entry/header.py": ("keys_match", "check_key", "check_usable", "check_size"),
        "src/jangdok/entry/signing.py": ("Trust.signing", "Trust.key"),
        "src/jangdok/entries.py": ("Entries.load",),
    }, ("tests/test_trust.py", "tests/test_entry_format.py", "tests/test_entry_properties.py",
        "tests/test_safe_format.py", "tests/test_cache.py", "tests/test_expiry.py", "tests/test_hostile_entries.py")),
    # A header is parsed with checks that cost nothing however much it declares: every count a
    # non-negative integer, every length inside the entry, every buffer inside the payload.
    Group("parsing", {
        "src/jangdok/entry/header.py": ("header_size", "read_header", "header_from", "_is_count", "_count",
                                        "_seconds", "_of", "read_into", "BufferTable.__getitem__"),
        "src/jangdok/entry/format.py": ("_Buffers.__getitem__",),
    }, ("tests/test_entry_format.py", "tests/test_entry_properties.py", "tests/test_safe_format.py",
        "tests/test_bad_inputs.py", "tests/test_codec.py", "tests/test_trust.py", "tests/test_large_values.py",
        "tests/test_hostile_entries.py")),
    # Below a cache root no folder is reached through a link, and a folder that vanishes
    # mid-walk is made again (or reported missing), never followed elsewhere.
    Group("folders", {
        "src/jangdok/folders.py": ("Folder.child", "Folder._open_child", "Folder._not_a_folder", "Folder.entries",
                                   "open_folder"),
    }, ("tests/test_local_store.py", "tests/test_local_tier.py", "tests/test_leases.py", "tests/test_atomic_writes.py",
        "tests/test_expiry.py", "tests/test_cache.py")),
    # Damage is deleted only once confirmed (seen twice in one version), only in the version
    # read, and never when it is distrust, a newer format or another key's entry.
    Group("damage", {
        "src/jangdok/entries.py": ("Entries._verified", "Entries._discard", "Entries.verify"),
    }, ("tests/test_cache.py", "tests/test_trust.py", "tests/test_retries.py", "tests/test_entry_format.py",
        "tests/test_local_tier.py", "tests/test_shared.py",
        "tests/test_cli.py::test_verify_reports_and_deletes_damage")),
    # A versioned delete removes that version or nothing: never an entry written meanwhile.
    Group("conditional-deletes", {
        "src/jangdok/stores/local.py": ("LocalStore.delete", "LocalStore._delete_version", "LocalStore._unlink",
                                        "LocalStore._remove_aside", "LocalStore._put_back"),
        "src/jangdok/stores/s3/store.py": ("S3Store.delete", "S3Store.delete_many", "S3Store.write_if"),
        "src/jangdok/stores/base.py": ("Store.delete_many",),
        "src/jangdok/stores/tiered.py": ("TieredStore.delete",),
    }, ("tests/test_store_conformance.py", "tests/test_local_store.py", "tests/test_s3_consistency.py",
        "tests/test_leases.py", "tests/test_shared.py", "tests/test_local_tier.py", "tests/test_cache.py",
        "tests/test_expiry.py", "tests/test_s3_capabilities.py")),
    # The S3 side of a versioned delete (conditional_delete: honoured, ignored or unknown).
    Group("s3-delete", {
        "src/jangdok/stores/s3/store.py": ("S3Store._delete",),
    }, ("tests/test_store_conformance.py", "tests/test_s3_consistency.py", "tests/test_s3_capabilities.py",
        "tests/test_shared.py", "tests/test_expiry.py", "tests/test_s3_errors.py")),
    # One owner at a time; a renewed lease is never taken over; a dead one is, by one waiter;
    # cleanup judges leases on the server's clock and removes only the version it read.
    Group("leases", {
        "src/jangdok/leases.py": ("_read_lease", "_lifetime", "FileLease._try_acquire", "FileLease.release",
                                  "FileLease.clear_unsaved", "ObjectLease._write_if", "ObjectLease._try_acquire",
                                  "ObjectLease._renew", "ObjectLease.release", "ObjectLease.clear_unsaved",
                                  "_server_now", "_stale_leases", "remove_stale"),
    }, ("tests/test_leases.py", "tests/test_shared.py", "tests/test_s3_capabilities.py", "tests/test_expiry.py")),
]

_WORDING = "the message's wording only (strerror, or the error with its number): nothing a caller acts on"
_LINUX_LINKS = ("reached only where opening a link with O_NOFOLLOW|O_DIRECTORY fails with ELOOP or EMLINK (BSDs, "
                "macOS); Linux says ENOTDIR, and _not_a_folder names the link (tested)")
_MAGIC_FOUND = ("cannot happen: header_size found the magic, so read_header returns a header (kept for the "
                "type checker)")
_NO_THREAD = ("equivalent: entries read whole are at most 256 KiB, less than the smallest MAC piece (1 MiB), so "
              "their verifier never starts a hashing thread to close")
JUDGED: dict[tuple[str, str, str], str] = {
    ("decode", "condition -> True",
     "if size <= _WHOLE_READ:  # one read call, then parsed in memory: small entries are latency"):
        "equivalent: the whole-buffer path verifies the same way; only speed and peak memory differ",
    ("decode", "condition -> False",
     "if size <= _WHOLE_READ:  # one read call, then parsed in memory: small entries are latency"):
        "equivalent: every entry then streams, which verifies the same way; only speed differs",
    ("decode", "LtE -> Gt",
     "if size <= _WHOLE_READ:  # one read call, then parsed in memory: small entries are latency"):
        "equivalent: each size takes the other path, and both verify alike; only speed and memory differ",
    ("header_from", "raise removed",
     'raise ValueError(f"its stream of {stream_length} bytes exceeds its {payload_length}-byte payload")'):
        "equivalent in outcome: the stream's bounds are checked again against the payload as the header "
        "is built, and refused as the same damage",
    ("decode_buffer", "condition -> False",
     "if not isinstance(header, EntryHeader):  # cannot happen: the magic was checked above"):
        _MAGIC_FOUND,
    ("decode_buffer", "raise removed", 'raise CorruptEntry("entry header is unreadable")'):
        _MAGIC_FOUND,
    ("decode_buffer", "condition -> False", "if signature is not None:"):
        _NO_THREAD,
    ("decode_buffer", "call removed", "signature.close()"):
        _NO_THREAD,
    ("_load_legacy", "call removed", 'check_memory(size, "the plain pickle")'):
        "equivalent in outcome: reading a pickle too large for memory raises MemoryError inside the same "
        "try, which is UnsupportedEntry alike; the check only says so before trying",
    ("Entries.load", "condition -> False", "if mapping:"):
        "equivalent: never mapping reads instead, which verifies the same way; only speed differs",
    ("Entries.load", "raise removed", "raise _Rejected(exc, info.version) from exc"):
        "equivalent: the mapped attempt then falls through to reading the entry, which refuses it the "
        "same way (one more read)",
    ("read_header", "condition -> True", "while len(start) < PREFIX.size:"):
        "equivalent: once the prefix is read, the loop's next read asks for 0 bytes, gets none and stops",
    ("read_header", "IsNot -> Is", '+ (f", in an entry of {size} bytes)" if size is not None else ")"))'):
        _WORDING.replace("(strerror, or the error with its number)", "(the entry's size, said or not)"),
    ("Entries._verified", "condition -> False",
     "if not confirmed:  # a different version each time: writers are busy; judge nothing"):
        "needs damage in transit on two reads with a rewrite between them; the versioned delete still "
        "removes only a version that was read",
    ("Entries._verified", "condition -> False", "if confirmed:"):
        "equivalent: one more read, which confirms the same problem in the same version",
    ("Entries.verify", "keyword version= dropped",
     "return dataclasses.replace(again, deleted=self.store.delete(key, version=version))"):
        "needs a write landing between verify's second read and its delete; no test injects one there yet",
    ("Entries._discard", "return False -> True", "return False"):
        "equivalent: a kept or undeletable entry is read once more (the read after a discard), meets the "
        "same problem and is a miss again",
    ("LocalStore._remove_aside", "Or -> And", 'f"({exc.strerror or exc}); cleanup() removes it later") from exc'):
        _WORDING,
    ("LocalStore._put_back", "Or -> And", 'f"({exc.strerror or exc}); rename it to {path}") from exc'): _WORDING,
    ("LocalStore._put_back", "condition -> False",
     "if self._is_folder(folder, aside):  # a folder raced in; link() cannot take folders"):
        "equivalent on Linux: link() refuses a folder with EPERM, which takes the no-hard-links path and "
        "renames it back the same way",
    ("S3Store.delete_many", "condition -> False",
     'if error.get("Code") not in ("PreconditionFailed", *MISSING_CODES):'):
        "a warning only (the keys deleted are returned either way); neither test server refuses a key "
        "of a batch for another reason",
    ("S3Store.delete_many", "IsNot -> Is",
     'self.path(asked) if asked is not None else quoted(error.get("Key"), 120),'): _WORDING,
    ("S3Store.write_if", "IsNot -> Is",
     "if status in (409, 412) or (version is not None and code in MISSING_CODES):"):
        "reached only where a conditional PUT on a missing key answers 404 rather than 412, which neither "
        "test server does",
    ("S3Store._delete", "condition -> True",
     "if version is None or self.capabilities.conditional_delete is not True:"):
        "equivalent: one more HEAD before a delete that still carries If-Match",
    ("S3Store._delete", "And -> Or", "if version is not None and (status == 412 or code in MISSING_CODES):"):
        "equivalent on S3: an unconditional DeleteObject is never answered 412, and succeeds on a missing key",
    ("TieredStore.delete", "condition -> True", "if not is_reserved(key):"):
        "equivalent for the reserved keys jangdok deletes (leases under .jangdok/leases/): they are never "
        "copied into a tier (read and written straight to the remote), so dropping their copy removes nothing",
    ("Folder.child", "condition -> False",
     "if exc.errno in (errno.ELOOP, errno.EMLINK):  # what O_NOFOLLOW says on some systems"):
        _LINUX_LINKS,
    ("Folder.child", "raise removed", "raise _link_error(path) from None"): _LINUX_LINKS,
    ("Folder._open_child", "condition -> True", "if DESCRIPTORS:"):
        "equivalent where the tests run: the by-name path is tested by switching DESCRIPTORS off on a "
        "system that has the descriptor calls, which then still work",
    ("Folder._open_child", "condition -> False", "if _is_link(found):"):
        "equivalent: a link is no folder to lstat either, so NotADirectoryError follows and _not_a_folder "
        "names the link the same way",
    ("Folder._open_child", "raise removed", "raise _link_error(path)"):
        "equivalent: a link is no folder to lstat either, so NotADirectoryError follows and _not_a_folder "
        "names the link the same way",
    ("open_folder", "Or -> And", "if not create or attempt == _ATTEMPTS:"):
        "equivalent: without create, a missing folder is looked for again a few times (nothing is made) "
        "and then reported missing the same way",
    ("FileLease._try_acquire", "And -> Or",
     'where = f" at {exc.filename}" if exc.filename and exc.filename != self.path else ""'): _WORDING,
    ("FileLease._try_acquire", "NotEq -> Eq",
     'where = f" at {exc.filename}" if exc.filename and exc.filename != self.path else ""'): _WORDING,
    ("FileLease._try_acquire", "Or -> And",
     'self.reason = f"the lock file {self.path} cannot be used ({exc.strerror or exc}{where})"'): _WORDING,
    ("FileLease._try_acquire", "Or -> And",
     'raise StoreUnavailable(f"Local error locking {self.path}: {exc.strerror or exc}; check the "'): _WORDING,
}
"""Survivors a person has judged, by (function, change, the mutated line's text): why each
cannot change behaviour, or why no test is worth writing for it."""


@dataclass(frozen=True)
class Mutant:
    group: str
    index: int
    path: str
    function: str
    line: int
    lines: tuple[int, int]
    """The lines the changed node spans (its condition only, for a forced ``if``)."""
    change: str
    text: str
    """The mutated line as the source has it, stripped: what :data:`JUDGED` matches."""
    original: str
    source: str
    """The whole module with the change applied (as ``ast.unparse`` writes it)."""

    @property
    def ident(self) -> str:
        return f"{self.group}#{self.index}"

    def describe(self) -> str:
        return f"{self.ident:24} {self.path}:{self.line} {self.function}: {self.change}"

    def diff(self) -> str:
        return "".join(difflib.unified_diff(self.original.splitlines(True), self.source.splitlines(True),
                                            f"a/{self.path}", f"b/{self.path}", n=2))


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
        compare = copy.deepcopy(node)
        compare.ops = [_SWAPPED[type(node.ops[0])]()]
        yield f"{type(node.ops[0]).__name__} -> {type(compare.ops[0]).__name__}", compare
    if isinstance(node, ast.BoolOp):
        boolean = copy.deepcopy(node)
        boolean.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield f"{type(node.op).__name__} -> {type(boolean.op).__name__}", boolean
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield "not dropped", copy.deepcopy(node.operand)
    if isinstance(node, (ast.If, ast.While)) and not isinstance(node.test, ast.Constant):
        for value in (True, False):
            branch = copy.deepcopy(node)
            branch.test = ast.Constant(value)
            yield f"condition -> {value}", branch
    if isinstance(node, ast.Raise):
        yield "raise removed", ast.Pass()
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and not _is_logging(node.value):
        yield "call removed", ast.Pass()
    if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, bool):
        yield f"return {node.value.value} -> {not node.value.value}", ast.Return(ast.Constant(not node.value.value))
    if isinstance(node, ast.Call):
        for index, keyword in enumerate(node.keywords):
            if keyword.arg in _GUARDING_KEYWORDS:
                call = copy.deepcopy(node)
                del call.keywords[index]
                yield f"keyword {keyword.arg}= dropped", call


def _is_logging(call: ast.Call) -> bool:
    """A log line or a statistic: removing one changes what is said, not what is done."""
    func = call.func
    return isinstance(func, ast.Attribute) and (
        (isinstance(func.value, ast.Name) and func.value.id == "log") or func.attr in ("count", "_count"))


def _span(node: ast.AST) -> tuple[int, int]:
    shown = node.test if isinstance(node, (ast.If, ast.While)) else node
    first = getattr(shown, "lineno", 0)
    return first, getattr(shown, "end_lineno", None) or first


def group_mutants(group: Group) -> list[Mutant]:
    found: list[Mutant] = []
    for path, names in group.functions.items():
        text = (ROOT / path).read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        original = ast.unparse(tree)
        functions = dict(_functions(tree, names))
        missing = sorted(set(names) - set(functions))
        if missing:
            raise SystemExit(f"group {group.name}: {path} has no {', '.join(missing)}; update GROUPS")
        for qualified in names:  # in the order GROUPS names them, so numbers stay put
            function = functions[qualified]
            for target in [node for node in ast.walk(function) if node is not function]:
                for description, replacement in _changes(target):
                    line = getattr(target, "lineno", function.lineno)
                    found.append(Mutant(group.name, len(found) + 1, path, qualified, line, _span(target),
                                        description, lines[line - 1].strip(), original,
                                        ast.unparse(_replace(tree, target, replacement))))
    return found


def _replace(tree: ast.Module, target: ast.AST, replacement: ast.AST) -> ast.Module:
    """A copy of ``tree`` with the one node ``target`` replaced."""

    class Swap(ast.NodeTransformer):
        def visit(self, node: ast.AST) -> ast.AST:
            if node is target:
                return ast.copy_location(replacement, node)
            return self.generic_visit(node)

    copied = copy.deepcopy(tree, {id(target): target})  # the target keeps its identity, to be found
    swapped = Swap().visit(copied)
    assert isinstance(swapped, ast.Module)
    return ast.fix_missing_locations(swapped)


# -- running tests -------------------------------------------------------------------------------

_GRACE_SECONDS = 30.0


@dataclass
class Outcome:
    code: int
    output: str
    seconds: float

    @property
    def failed(self) -> str:
        """The first test that failed or errored, as pytest's summary names it."""
        found = re.search(r"^(?:FAILED|ERROR) (.+?)(?: - |$)", self.output, re.MULTILINE)
        if found:
            return found.group(1)[:160]
        return "collection or import" if self.code in (1, 2) else ""


def _pytest(scratch: Path, arguments: list[str], test_timeout: float, run_timeout: float,
            env: dict[str, str] | None = None, workers: int = 0) -> Outcome:
    """One pytest run in the scratch copy; a run past ``run_timeout`` is interrupted (SIGINT, so
    its fixtures stop their servers), then killed."""
    # The tests in a file (pytest's @file), one a line: a test's parameters can make its id
    # longer than the system allows one argument to be. Options stay on the command line, where
    # pytest looks for -p before it reads such a file.
    tests = [argument for argument in arguments if argument.startswith("tests/")]
    listed = scratch.parent / "tests-to-run"
    listed.write_text("".join(f"{test}\n" for test in tests))
    options = [argument for argument in arguments if argument not in set(tests)]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "mutation", "-n", str(workers),
               "-o", f"timeout={test_timeout:.0f}", "--basetemp", str(scratch.parent / "pytest-tmp"), *options,
               f"@{listed}"]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(scratch / "src"), str(ROOT / "tools")]),
                   **(env or {})}
    started = time.monotonic()
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, cwd=scratch, env=environment, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=_limit_memory)
        try:
            code = process.wait(run_timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            code = -1
        output.seek(0)
        text = output.read().decode(errors="replace")
    _kill_left_behind(scratch.parent)
    return Outcome(code, text, time.monotonic() - started)


_MEMORY_LIMIT = 8 << 30
"""Address space for a mutant's tests: a mutant that drops a bound before an allocation gets a
MemoryError (a failed test), not the machine's out-of-memory killer."""


def _limit_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_LIMIT, _MEMORY_LIMIT))


def _kill_left_behind(folder: Path) -> None:
    """Kill any process still working in ``folder`` (a server whose pytest was killed before
    its fixtures stopped it: SeaweedFS runs in a session of its own, which a killed process
    group does not reach). Only processes this pass started work there."""
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd.is_relative_to(folder):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass


@dataclass
class Baseline:
    """What a group's tests did unmutated: which tests ran each line, which started Python
    processes of their own (their lines are not seen), and how long each took."""

    covering: dict[str, dict[int, list[str]]]
    spawning: list[str]
    durations: dict[str, float]
    seconds: float

    def _fastest_first(self, tests: set[str]) -> list[str]:
        return sorted(tests, key=lambda test: (self.durations.get(test, 0.0), test))

    def tests_for(self, mutant: Mutant) -> list[str]:
        """The tests that ran the mutated line, fastest first."""
        lines = self.covering.get(mutant.path, {})
        return self._fastest_first({test for line in range(mutant.lines[0], mutant.lines[1] + 1)
                                    for test in lines.get(line, ())})

    def others_for(self, mutant: Mutant) -> list[str]:
        """The tests that did not run the mutated line themselves but started processes that
        may have."""
        return self._fastest_first(set(self.spawning) - set(self.tests_for(mutant)))

    @property
    def test_timeout(self) -> float:
        return max(60.0, 4 * max(self.durations.values(), default=0.0))

    @property
    def run_timeout(self) -> float:
        return 3 * self.seconds + 120

    def run_timeout_for(self, tests: list[str]) -> float:
        """A limit for one run of ``tests``: a hang the per-test timeout cannot interrupt (one in
        a C call, or a loop that swallows the timeout's exception) costs minutes, not the pass."""
        return min(self.run_timeout, self.test_timeout + 3 * sum(self.durations.get(test, 0.0) for test in tests) + 60)


def _selection(group: Group) -> list[str]:
    return [*group.tests, *(["-k", group.select] if group.select else [])]


def _baseline(group: Group, scratch: Path) -> Baseline:
    report = scratch.parent / f"coverage-{group.name}.json"
    files = [str(scratch / path) for path in group.functions]
    done = _pytest(scratch, _selection(group), 180, 3600,
                   {_COVERAGE_OUT: str(report), _COVERAGE_FILES: os.pathsep.join(files)})
    if done.code != 0:
        raise SystemExit(f"group {group.name}: its tests fail without any mutant:\n{done.output[-3000:]}")
    data = json.loads(report.read_text())
    covering = {path: {int(line): tests for line, tests in data["lines"].get(str(scratch / path), {}).items()}
                for path in group.functions}
    return Baseline(covering, data["spawning"], data["durations"], done.seconds)


def _run(mutant: Mutant, group: Group, scratch: Path, baseline: Baseline | None,
         workers: int, quick: bool = False) -> tuple[str, str]:
    """(verdict, the test that killed it) for one mutant: the tests that ran its line first,
    then the rest of those that could fail (or, without a baseline, the whole group)."""
    target = scratch / mutant.path
    original = target.read_text()
    target.write_text(mutant.source)
    try:
        if baseline is None:
            phases = [_selection(group)]
        else:
            first = baseline.tests_for(mutant)
            phases = [first] if quick else [first, baseline.others_for(mutant)]
        test_timeout = baseline.test_timeout if baseline else 120.0
        for number, arguments in enumerate(filter(None, phases)):
            run_timeout = baseline.run_timeout_for(arguments) if baseline else 3600.0
            parallel = workers if baseline is None or (number > 0 and len(arguments) > 4) else 0
            done = _pytest(scratch, ["-x", *arguments], test_timeout, run_timeout, workers=parallel)
            if done.code == -1:
                return "killed (hang)", f"the whole run, past {run_timeout:.0f} s"
            if done.code in (1, 2):
                timed_out = re.search(r"Failed: Timeout|\+{5} Timeout \+{5}", done.output) is not None
                return ("killed (timeout)" if timed_out else "killed"), done.failed
            if done.code < 0:  # a signal: the out-of-memory killer, say, after a bound was removed
                return "killed (signal)", f"pytest ended by signal {-done.code}"
            if done.code != 0:
                raise SystemExit(f"{mutant.ident}: pytest could not run (exit {done.code}):\n{done.output[-3000:]}")
        return "survived", ""
    finally:
        target.write_text(original)


def _scratch_copy(scratch: Path) -> None:
    """The working tree as git sees it (tracked and new files, nothing ignored)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, scratch / name)


# -- the coverage plugin: loaded into the baseline run with ``-p mutation`` -----------------------

_COVERAGE_OUT = "MUTATION_COVERAGE_OUT"
_COVERAGE_FILES = "MUTATION_COVERAGE_FILES"
_measuring: dict[str, Any] = {}
_SHARED_SERVER = "MUTATION_SEAWEED"


def pytest_load_initial_conftests(early_config: Any) -> None:
    """Before the tests' conftest imports it: the session's SeaweedFS server is the one this
    pass started once (starting and stopping one costs more than most mutants' tests take).
    Each test works under a fresh prefix, so runs sharing the server do not meet."""
    if _SHARED_SERVER not in os.environ:
        return
    from botocore.exceptions import ClientError

    import jangdok.server as server

    endpoint, workdir = json.loads(os.environ[_SHARED_SERVER])

    class Shared(server.SeaweedServer):
        def client(self, identity: tuple[str, str] | None = None, **config: Any) -> Any:
            made = super().client(identity, **config)
            create = made.create_bucket

            def create_bucket(**request: Any) -> Any:  # the fixture makes the bucket each session
                try:
                    return create(**request)
                except ClientError as exc:
                    if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyExists",
                                                                          "BucketAlreadyOwnedByYou"):
                        raise
                    return {}

            made.create_bucket = create_bucket
            return made

        def stop(self, grace: float = 0.0) -> None:  # the pass stops it
            pass

    def shared(*args: Any, **options: Any) -> server.SeaweedServer:
        return Shared(endpoint, subprocess.Popen(["true"]), Path(workdir))

    server.start_seaweed = shared


def pytest_configure(config: Any) -> None:
    if _COVERAGE_OUT not in os.environ:
        return
    import multiprocessing.util

    import coverage

    measure = coverage.Coverage(data_file=None, include=os.environ[_COVERAGE_FILES].split(os.pathsep))
    _measuring.update(coverage=measure, durations={}, spawning=set(), test="")

    def spawned() -> None:
        if _measuring["test"]:
            _measuring["spawning"].add(_measuring["test"])

    def python(arguments: Any) -> bool:
        words = [arguments] if isinstance(arguments, (str, bytes, os.PathLike)) else list(arguments)
        return any(str(word) == sys.executable or os.path.basename(str(word)).startswith("python") for word in words)

    popen, spawnv = subprocess.Popen.__init__, multiprocessing.util.spawnv_passfds

    def recording_popen(self: Any, args: Any, *more: Any, **options: Any) -> None:
        if python(args):
            spawned()
        popen(self, args, *more, **options)

    def recording_spawnv(path: Any, args: Any, passfds: Any) -> Any:
        spawned()
        return spawnv(path, args, passfds)

    subprocess.Popen.__init__ = recording_popen  # type: ignore[method-assign]
    multiprocessing.util.spawnv_passfds = recording_spawnv
    os.register_at_fork(before=spawned)
    measure.start()


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    if _measuring:
        _measuring["test"] = nodeid
        _measuring["coverage"].switch_context(nodeid)


def pytest_runtest_logreport(report: Any) -> None:
    if _measuring:
        durations = _measuring["durations"]
        durations[report.nodeid] = durations.get(report.nodeid, 0.0) + report.duration


def pytest_unconfigure(config: Any) -> None:
    if not _measuring:
        return
    measure = _measuring["coverage"]
    measure.stop()
    data = measure.get_data()
    lines = {name: {line: sorted(test for test in tests if test)
                    for line, tests in data.contexts_by_lineno(name).items()}
             for name in data.measured_files()}
    Path(os.environ[_COVERAGE_OUT]).write_text(json.dumps(
        {"lines": lines, "spawning": sorted(_measuring["spawning"]), "durations": _measuring["durations"]}))


# -- the pass --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _shared_server(listing: bool) -> Iterator[str]:
    """One SeaweedFS server for every pytest run of the pass (outside the scratch folder, whose
    leftover processes are killed after each run): its endpoint and folder, as JSON."""
    if listing:
        yield ""
        return
    sys.path.insert(0, str(ROOT / "src"))
    from jangdok.server import start_seaweed

    with tempfile.TemporaryDirectory(prefix="jangdok-mutation-seaweed-") as folder:
        server = start_seaweed(folder)
        try:
            yield json.dumps([server.endpoint, folder])
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--group", action="append", help="a group to run (default: all)")
    parser.add_argument("--mutant", action="append", help="one mutant, as --list numbers it (group#N)")
    parser.add_argument("--resume", action="append", help="start a group at this mutant (group#N)")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--diff", action="store_true", help="with each mutant listed or run, show its change")
    parser.add_argument("--workers", type=int, default=2,
                        help="pytest-xdist workers for the runs after a mutant's own tests (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help="only the tests that ran a mutant's line (not those that started processes): "
                             "a survivor may then be killed by a full run (--mutant)")
    parser.add_argument("--no-coverage", action="store_true",
                        help="run every test of the group for each mutant (slower; checks the shortcut)")
    args = parser.parse_args(argv)
    wanted = set(args.mutant or ())
    named = list(dict.fromkeys([*(args.group or ()), *(ident.partition("#")[0] for ident in args.mutant or ())]))
    by_name = {group.name: group for group in GROUPS}
    groups = [by_name[name] for name in named if name in by_name] if named else GROUPS  # in the order asked
    unknown = set(named) - set(by_name)
    if unknown:
        parser.error(f"no group {', '.join(sorted(unknown))}; the groups: {', '.join(g.name for g in GROUPS)}")
    started = time.monotonic()
    survivors: list[tuple[Mutant, str]] = []
    totals: list[str] = []
    with tempfile.TemporaryDirectory(prefix="jangdok-mutation-") as folder, _shared_server(args.list) as shared:
        if shared:
            os.environ[_SHARED_SERVER] = shared
        scratch = Path(folder).resolve() / "project"
        if not args.list:
            _scratch_copy(scratch)
        for group in groups:
            found = group_mutants(group)
            if wanted:
                found = [mutant for mutant in found if mutant.ident in wanted]
            resume = dict(ident.partition("#")[::2] for ident in args.resume or ())
            if group.name in resume:  # a pass cut short: the mutants from this one on
                found = [mutant for mutant in found if mutant.index >= int(resume[group.name])]
            print(f"== {group.name}: {len(found)} mutants, tests {' '.join(_selection(group))}", flush=True)
            if args.list:
                for mutant in found:
                    print(f"   {mutant.describe()}")
                    if args.diff:
                        print(mutant.diff())
                continue
            baseline = None
            if not args.no_coverage and not wanted:
                baseline = _baseline(group, scratch)
                print(f"   unmutated: {len(baseline.durations)} tests in {baseline.seconds:.0f} s; per-test "
                      f"timeout {baseline.test_timeout:.0f} s", flush=True)
            killed = judged = 0
            group_started = time.monotonic()
            for mutant in found:
                verdict, by = _run(mutant, group, scratch, baseline, args.workers, args.quick)
                reason = JUDGED.get((mutant.function, mutant.change, mutant.text))
                if verdict == "survived":
                    survivors.append((mutant, reason or ""))
                    judged += reason is not None
                else:
                    killed += 1
                shown = f"  by {by}" if by else (f"  ({reason})" if reason else "")
                print(f"   {verdict:16} {mutant.describe()}{shown}", flush=True)
                if args.diff:
                    print(mutant.diff())
            totals.append(f"{group.name}: {len(found)} mutants, {killed} killed, {len(found) - killed} survived "
                          f"({judged} judged) in {(time.monotonic() - group_started) / 60:.0f} min")
            print(f"   {totals[-1]}", flush=True)
    if totals:
        print("\n" + "\n".join(totals) + f"\nwhole pass: {(time.monotonic() - started) / 60:.0f} min")
    open_survivors = [mutant for mutant, reason in survivors if not reason]
    if survivors:
        print("\nSurvivors:")
        for mutant, reason in survivors:
            print(f"  {mutant.describe()}\n      {mutant.text}\n      -> {reason or 'NOT JUDGED'}")
    return 1 if open_survivors else 0


if __name__ == "__main__":
    raise SystemExit(main())
