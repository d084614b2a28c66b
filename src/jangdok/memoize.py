"""Memoize: cache a function's results under a key made from its name and its arguments.

    @cache.memoize
    def extract(path: Path, scale: float = 1.0) -> np.ndarray: ...

    @cache.memoize(version="2", source=True, ignore=("verbose",), ttl=86400)
    def train(config: Config, verbose: bool = False) -> Model: ...

An entry's key is ``<module>.<qualname>/<hash>.pkl``, e.g. ``mypkg.features.extract/3f9a…c2.pkl``:
one folder per function, so ``aws s3 ls`` or a file browser shows which function filled the
cache, and removing a function's entries is removing one folder.

How the arguments are keyed (what counts as the same call) is :mod:`jangdok.canonical`.
"""

from __future__ import annotations

import ast
import functools
import inspect
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, overload

import xxhash

from .canonical import SUPPORTED, KeyHasher, Unhashable, module_name
from .errors import BatchError, ConfigError, InvalidKey, InvalidValue, JangdokError
from .location import LOCAL_MAX_NAME_BYTES, normalize_key

if TYPE_CHECKING:
    from .cache import Cache

__all__ = ["memoize", "Memoized"]

log = logging.getLogger("jangdok")

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

# The function's folder is kept well under the 255-byte file name limit, leaving room for
# the fallback folder's layout and for tools that append to names.
_MAX_FOLDER_BYTES = 200
_UNSAFE_IN_NAME = re.compile(r'[\x00-\x1f\x7f<>:"|?*\\/]')


class Memoized(Protocol[P, R_co]):
    """What ``@cache.memoize`` returns: the function, plus ``key()``, ``map()`` and ``cache``.

    Type checkers see the original signature (``ParamSpec``), so a memoized function is
    checked and completed exactly like the function it wraps.
    """

    @property
    def __wrapped__(self) -> Callable[P, R_co]: ...

    @property
    def cache(self) -> Cache: ...

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def key(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """The cache key a call with these arguments reads and writes; nothing is computed."""
        ...

    def map(self, *iterables: Iterable[Any]) -> Sequence[R_co]:
        """The results of calls with arguments taken from ``iterables`` in step, as the builtin
        ``map`` makes them (up to the shortest), as a list in their order.

        The stored results are fetched together (:meth:`Cache.get_many <jangdok.Cache.get_many>`,
        ``concurrency`` at a time); then only the missing calls are computed, one after another,
        each through ``get_or_compute``, so each is computed once across processes. A call
        repeated in ``iterables`` is computed once. As with single calls, the cache never
        breaks the function: keys it could not load are logged at WARNING and tried again
        one by one."""
        ...


# -- keys -------------------------------------------------------------------------------------


def _folder(identity: str) -> str:
    """A readable key segment for a function: ``pkg.mod.outer.inner`` for
    ``pkg.mod.outer.<locals>.inner``, ``pkg.mod.lambda`` for a lambda; valid on every store."""
    text = identity.replace(".<locals>.", ".").replace("<", "").replace(">", "")
    text = _UNSAFE_IN_NAME.sub("-", text)
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) > _MAX_FOLDER_BYTES:  # the full name still goes into the hash
        text = encoded[:_MAX_FOLDER_BYTES].decode("utf-8", "ignore")
    text = text.rstrip(". ") or "_"
    try:
        normalize_key(f"{text}/x.pkl")
    except InvalidKey:  # a device name Windows reserves (a module called 'aux'), a reserved prefix
        text = "_" + text
    return text


def _checked_name(name: str) -> str:
    """A folder given with ``name=``, checked against the key rules (it is the user's to fix)."""
    if not isinstance(name, str) or not name.strip("/"):
        raise ConfigError(f"memoize: name must be a non-empty key folder such as 'features/extract', got {name!r}")
    name = name.strip("/")
    try:
        normalize_key(f"{name}/x.pkl")
    except InvalidKey as exc:
        raise InvalidKey(f"memoize: name={name!r} cannot be a key folder: {exc}") from None
    for part in name.split("/"):
        if len(part.encode("utf-8")) > LOCAL_MAX_NAME_BYTES:
            raise InvalidKey(f"memoize: name={name!r} has a segment longer than {LOCAL_MAX_NAME_BYTES} bytes")
    return name


def _source_hash(fn: Callable[..., Any], identity: str) -> str:
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError) as exc:
        problem = f"which is not available ({exc})"
    else:
        if _defines(source, fn):
            # Line endings follow the checkout (git on Windows may write CRLF); the code does not.
            return xxhash.xxh3_128_hexdigest("\n".join(source.splitlines()).encode("utf-8", "surrogatepass"))
        first_line = next(iter(source.splitlines()), "").strip()
        problem = f"but the text found for it is not its definition ({first_line[:80]!r}...)"
    raise ConfigError(
        f"memoize: source=True needs the source of {identity}, {problem}; functions made by exec() "
        "have none: use version= to invalidate its entries instead"
    )


def _defines(source: str, fn: Callable[..., Any]) -> bool:
    """Whether ``source`` is the definition of ``fn``: its name, and its parameters by name.

    inspect.getsource finds text by file name and line number and never checks it: for code
    compiled from a string, the "file" is a name such as ``<string>``, and whatever linecache
    holds under that name is returned (Python 3.13 puts the ``python -c`` program there, so a
    function made by exec() in such a process "has" that program's first line as its source).
    """
    target = inspect.unwrap(fn)  # as getsource does
    target = getattr(target, "__func__", target)  # a bound method's function
    statements = _statements(source)
    if not statements:
        return False
    if inspect.isclass(target):
        return len(statements) == 1 and isinstance(statements[0], ast.ClassDef) \
            and statements[0].name == target.__name__
    code = getattr(target, "__code__", None)
    if code is None:
        return False
    nodes: list[ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda]
    if code.co_name == "<lambda>":  # the lines holding it, which may hold other code too
        nodes = [node for statement in statements for node in ast.walk(statement) if isinstance(node, ast.Lambda)]
    elif len(statements) == 1 and isinstance(statements[0], (ast.FunctionDef, ast.AsyncFunctionDef)) \
            and statements[0].name == code.co_name:
        nodes = [statements[0]]
    else:
        return False
    return any(_parameter_names(node.args) == _code_parameter_names(code) for node in nodes)


def _statements(source: str) -> list[ast.stmt] | None:
    """The statements of a definition's text; None if it does not parse."""
    # An indented definition (a method) parses inside a block; dedenting instead would fail on
    # a string literal whose lines start at column 0.
    indented = source[:1].isspace()
    try:
        module = ast.parse("if 1:\n" + source if indented else source)
    except (SyntaxError, ValueError):
        return None
    if not indented:
        return module.body
    block = module.body[0]
    return block.body if isinstance(block, ast.If) else None


def _parameter_names(args: ast.arguments) -> list[str]:
    """Parameter names in the order a code object lists them: positional, keyword-only, *, **."""
    names = [arg.arg for arg in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    return names + [arg.arg for arg in (args.vararg, args.kwarg) if arg is not None]


def _code_parameter_names(code: Any) -> list[str]:
    count = code.co_argcount + code.co_kwonlyargcount
    count += bool(code.co_flags & inspect.CO_VARARGS) + bool(code.co_flags & inspect.CO_VARKEYWORDS)
    return list(code.co_varnames[:count])


class _Memo(Generic[P, R]):
    """Everything fixed at decoration time: the function's identity, signature and options.

    Pickled (with a memoized function that travels by value: cloudpickle, Dask) as its cache
    (its settings: see :class:`~jangdok.cache.Cache`), the function, its options and the
    identity and source hash made at decoration, not made again where it arrives: the keys
    there are the keys here, even where the function has another module name or no source.
    """

    def __init__(self, cache: Cache, fn: Callable[P, R], identity: str, folder: str, version: str | int | None,
                 source: str | None, ignored: Iterable[str], ttl: float | None) -> None:
        self.cache = cache
        self.fn = fn
        self.identity = identity
        self.folder = folder
        try:
            self.signature = inspect.signature(fn)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"memoize: the signature of {identity} cannot be read ({exc})") from None
        self.ignored = frozenset(ignored)
        self.version = version
        self.source = source
        self.ttl = ttl
        self.metadata = {"function": identity, "version": version}

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.cache, self.fn, self.identity, self.folder, self.version, self.source,
                            tuple(sorted(self.ignored)), self.ttl)

    @classmethod
    def decorating(cls, cache: Cache, fn: Callable[P, R], version: str | int | None, source: bool,
                   ignore: str | Iterable[str], ttl: float | None, name: str | None) -> _Memo[P, R]:
        """The memo of ``fn`` decorated with these options, checked."""
        identity = cls._identity(fn, name)
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
            raise ConfigError(
                f"memoize: {identity} is a coroutine or generator function; what it returns "
                "(a coroutine or a generator) cannot be cached: memoize a function that returns the result"
            )
        if version is not None and not isinstance(version, (str, int)):
            raise ConfigError(f"memoize: version must be a str or an int, got {version!r}")
        if ttl is not None and not (isinstance(ttl, (int, float)) and 0 < ttl < math.inf):
            raise ConfigError(f"memoize: ttl must be a positive number of seconds or None, got {ttl!r}")
        ignored = (ignore,) if isinstance(ignore, str) else tuple(ignore)
        folder = _checked_name(name) if name is not None else _folder(identity)
        memo = cls(cache, fn, identity, folder, version, None, ignored, ttl)
        unknown = [item for item in ignored if item not in memo.signature.parameters]
        if unknown:
            raise ConfigError(
                f"memoize: ignore= names {', '.join(map(repr, unknown))}, which "
                f"{'is' if len(unknown) == 1 else 'are'} not a parameter of {identity}{memo.signature}"
            )
        memo.source = _source_hash(fn, identity) if source else None
        return memo

    @staticmethod
    def _identity(fn: Callable[..., Any], name: str | None) -> str:
        """The name that, with the arguments, tells this function's entries from all others:
        its module (the main script's is ``__main__``, however it was started: see
        :func:`~jangdok.canonical.module_name`) and qualified name."""
        if name is not None:
            return _checked_name(name)
        qualname = getattr(fn, "__qualname__", None)
        if not isinstance(qualname, str):
            raise ConfigError(f"memoize: {fn!r} has no __qualname__ to name its entries by; pass name='...'")
        if qualname.rpartition(".")[2] == "<lambda>":
            # Every lambda of a module has the same name, so they would share entries.
            raise ConfigError(f"memoize: lambdas all share the name {qualname!r}, so their entries would "
                              "mix; give it a name with def, or pass name='...'")
        return f"{module_name(getattr(fn, '__module__', None))}.{qualname}"

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        # Bound and defaulted, so f(1, 2), f(1, b=2) and f(a=1, b=2) are one call, and so is
        # f(1) when b defaults to 2. (A default changed in the code changes the key with it.)
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = [(name, value) for name, value in bound.arguments.items() if name not in self.ignored]
        hasher = KeyHasher()
        # The full name goes in too: folders of functions whose names differ only in what
        # _folder() drops or truncates never share an entry.
        for header in (self.identity, self.version, self.source, len(arguments)):
            hasher.add(header, "key")
        for name, value in arguments:
            hasher.add(name, name)
            try:
                hasher.add(value, name)
            except Unhashable as problem:
                raise self._refusal(name, problem) from None
            except RecursionError:
                raise InvalidValue(f"memoize: argument {name!r} of {self.identity} is nested too deeply "
                                   f"to hash; pass ignore=({name!r},) or flatten it") from None
        digest = hasher.hexdigest()
        return normalize_key(f"{self.folder}/{digest}.pkl")

    def _refusal(self, name: str, problem: Unhashable) -> InvalidValue:
        hint = (" (for a method, ignore=('self',) leaves the instance out of the key)"
                if name in ("self", "cls") and problem.path == name else "")
        return InvalidValue(
            f"memoize: argument {name!r} of {self.identity} {problem.where(name)} cannot be hashed "
            f"stably{problem.because()}; pass ignore=({name!r},) or give it a stable form "
            f"(a dataclass, tuple, ...){hint}. Supported: {SUPPORTED}"
        )

    def map(self, iterables: tuple[Iterable[Any], ...]) -> list[R]:
        if not iterables:
            raise TypeError(f"{self.identity}.map() needs at least one iterable of arguments")
        calls = list(zip(*iterables, strict=False))  # up to the shortest, as map() does
        keys = [self.key(args, {}) for args in calls]  # an unhashable argument raises before any request
        try:
            found = self.cache.get_many(keys)
            failed: set[str] = set()
        except BatchError as exc:
            found, failed = exc.results, set(exc.errors)
            key, first = next(iter(exc.errors.items()))
            log.warning("memoize: could not load %d of %d entries of %s together (the first: %s); trying them "
                        "one by one", len(failed), len(set(keys)), self.identity, first,
                        extra={"jangdok_event": "memoize_load_failed", "jangdok_path": key})
        except JangdokError as exc:
            found, failed = {}, set(keys)
            log.warning("memoize: cache unusable for %s.map (%s); trying each call alone", self.identity, exc,
                        extra={"jangdok_event": "memoize_load_failed", "jangdok_path": self.folder})
        results = []
        for args, key in zip(calls, keys, strict=True):
            if key not in found:  # later repeats of this call get the same value
                found[key] = self.call(args, {}, key, missed=key not in failed)
            results.append(found[key])
        return results

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any], key: str | None = None,
             missed: bool = False) -> R:
        """The call's result, from the cache or computed; ``key``: the call's, if already made;
        ``missed``: the caller has just missed it (see ``Cache.get_or_compute``)."""
        key = self.key(args, kwargs) if key is None else key
        state: dict[str, Any] = {}

        def compute() -> R:
            state["started"] = True
            state["result"] = result = self.fn(*args, **kwargs)
            return result

        try:
            return self.cache.get_or_compute(key, compute, metadata=self.metadata, ttl=self.ttl, missed=missed)
        except JangdokError as exc:
            if "result" in state:
                # The value is good and the caller needs it; the cache is only an optimisation.
                log.warning("memoize: %s computed but not saved under %s: %s", self.identity, key, exc,
                            extra={"jangdok_event": "memoize_save_failed", "jangdok_path": key})
                return state["result"]
            if "started" in state:
                raise  # from the function itself: its errors are the caller's business
            log.warning("memoize: cache unusable for %s (%s), computing without it: %s", self.identity, key, exc,
                        extra={"jangdok_event": "memoize_load_failed", "jangdok_path": key})
        return self.fn(*args, **kwargs)


# -- the decorator ----------------------------------------------------------------------------


@overload
def memoize(cache: Cache, fn: Callable[P, R], /, *, version: str | int | None = None, source: bool = False,
            ignore: str | Iterable[str] = (), ttl: float | None = None, name: str | None = None) -> Memoized[P, R]: ...


@overload
def memoize(cache: Cache, fn: None = None, /, *, version: str | int | None = None, source: bool = False,
            ignore: str | Iterable[str] = (), ttl: float | None = None,
            name: str | None = None) -> Callable[[Callable[P, R]], Memoized[P, R]]: ...


def memoize(cache: Cache, fn: Callable[P, R] | None = None, /, *, version: str | int | None = None,
            source: bool = False, ignore: str | Iterable[str] = (), ttl: float | None = None,
            name: str | None = None) -> Memoized[P, R] | Callable[[Callable[P, R]], Memoized[P, R]]:
    """Cache ``fn``'s results in ``cache``, keyed by its name and its arguments.

    Usable bare (``memoize(cache, fn)``, ``@cache.memoize``) or with options
    (``@cache.memoize(version="2")``):

    - ``version``: part of every key; change it when the function's results change meaning.
    - ``source``: also hash the function's source text, so editing the function starts new
      entries. Off by default because it also invalidates on comments and formatting, and
      still misses edits to the functions it calls.
    - ``ignore``: names of parameters left out of the key (a verbosity flag, a logger, a
      client object): calls differing only there share an entry.
    - ``ttl``: seconds after which an entry stops being a hit (default: the cache's setting).
    - ``name``: the key folder instead of ``<module>.<qualname>``: keeps entries across a
      rename or a move, and tells apart functions of different ``__main__`` scripts.

    The key is the function's name and its arguments, nothing else: arguments are hashed by
    value (see :func:`stable_hash` and the module's notes), a path by its name (not the file's
    contents), an enum member by its class and value, a ``datetime`` or ``time`` with its time
    zone (the same instant in UTC and in Europe/London is two keys; a zone is named by its
    ``zoneinfo`` key or its ``datetime.timezone`` offset and name, and any other ``tzinfo`` is
    refused). Globals, and the variables a nested function reads from its enclosing function,
    are not part of it (they may be mutable, and would change the key as they change). So
    ``make(2).f(1)`` and ``make(3).f(1)``, closures of one nested ``f``, share an entry: pass
    such values as arguments. An argument of an unsupported type raises
    :class:`~jangdok.errors.InvalidValue` naming it. The cache never breaks the function: a
    save that fails, or a store that cannot be reached, is logged at WARNING and the
    function's own result returned; the function's own exceptions propagate unchanged and
    nothing is stored for them.

    **One key in every process.** A function, and a class of its arguments (a dataclass, an
    enum, a namedtuple), defined in the main script is named ``__main__.<qualname>`` however
    the script was started (``python script.py``, ``python -m pkg.mod``, ``runpy``, a notebook,
    whose ``__main__`` has no file) and wherever it runs: in the program, in its fork,
    forkserver and spawn workers (which import the script again as ``__mp_main__``), and in a
    Dask worker that received it by value (whose own ``__main__`` is another program). That is
    the name such functions always had, so caches made before keep their entries; under
    ``python -m pkg.mod`` it is not ``pkg.mod``, which would have changed them. Two main scripts
    that define a function of one name share its entries: give one of them ``name=``. Argument
    classes belong at the script's top level: cloudpickle sends a class nested in another or
    made in a function without its outer names (``Outer.Params`` arrives as ``Params``), so on a
    Dask worker its arguments key apart from the parent's, and two such classes of one name
    key alike (enums keep theirs).

    **Sending it to workers.** The memoized function pickles. With ``pickle`` it goes by
    reference (its module and name; ``pool.map(fn, ...)`` under spawn imports the script or
    module again, and the cache it was made with there). With cloudpickle (Dask), a function
    that cannot be imported where it goes (defined in ``__main__``, or nested) goes by value,
    with its cache (its settings, without secrets: see :class:`~jangdok.cache.Cache`), its
    options and the identity and source hash made here, so the worker's keys are these.
    """
    if fn is not None and not callable(fn):
        raise TypeError(f"memoize: expected a function, got {fn!r}; options are keywords: version={fn!r}")

    def decorate(fn: Callable[P, R]) -> Memoized[P, R]:
        memo = _Memo.decorating(cache, fn, version, source, ignore, ttl, name)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            return memo.call(args, kwargs)

        def key(*args: P.args, **kwargs: P.kwargs) -> str:
            return memo.key(args, kwargs)

        def map_calls(*iterables: Iterable[Any]) -> list[R]:
            return memo.map(iterables)

        wrapper.key = key  # type: ignore[attr-defined]
        wrapper.map = map_calls  # type: ignore[attr-defined]
        wrapper.cache = cache  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate if fn is None else decorate(fn)

