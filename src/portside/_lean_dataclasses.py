"""``dataclasses`` without its import-time cost, and dataclass methods compiled on first use.

Start-up is a feature of portside's commands, and defining dataclasses costs twice: the
``dataclasses`` module imports ``inspect`` (and with it ``ast``, ``dis``, ``tokenize``) and
``copy``, and every class compiles the source of each method it generates. Here:

* ``dataclasses`` is imported with stand-ins for ``inspect``, ``copy`` and ``re``: it
  needs ``inspect`` only to write a docstring for a class that has none, ``copy`` only in
  ``asdict``/``astuple``, and ``re`` for one pattern (matched here in Python); each is
  imported for real the first time anything else is asked of it.
* :class:`methods_compiled_on_first_use` defers compiling every generated method but
  ``__init__`` to its first call.
* The code dataclasses compiles is kept (:data:`compiled_code`): from the second run on,
  each method's source is looked up, not compiled (``exec`` of the code object, which is
  what ``exec`` of the source would have made). The code lives in a cache file of the
  user's (:mod:`portside._usercache`), read on the first compile of a run and written by
  :func:`save_compiled_code` (the CLI calls it as a command ends) when something new
  was compiled; a library that imports portside compiles as before unless a cache is
  there.

Use ``from portside._lean_dataclasses import dataclasses`` where a module on a command's
start-up path defines dataclasses. Apart from that cache, this module does no I/O.
"""

from __future__ import annotations

import builtins
import sys
import types

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class _ImportedOnUse(types.ModuleType):
    """Stands in for a module while ``dataclasses`` is imported; the first attribute asked
    for imports the real module (and the stand-in leaves ``sys.modules``)."""

    def __getattr__(self, name: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        real = __import__(self.__name__)
        return getattr(real, name)


class _InspectStandIn(_ImportedOnUse):
    """``inspect`` for dataclasses: all it asks for is ``str(signature(cls))``, to write
    the docstring of a dataclass that has none (``Service(*, name: 'str')``). That text is
    written here for the plain case (the generated ``__init__`` of a class without a
    metaclass, ``__new__`` or ``__signature__`` of its own, annotations that are strings,
    classes or None), exactly as inspect writes it; anything else asks the real module."""

    def signature(self, obj: Any) -> Any:
        text = _plain_signature(obj)
        if text is None:
            return self.__getattr__("signature")(obj)
        return text


def _plain_signature(cls: Any) -> str | None:
    """``str(inspect.signature(cls))`` for the plain case described above, else None."""
    if type(cls) is not type or getattr(cls, "__new__", None) is not object.__new__:
        return None
    init: Any = cls.__dict__.get("__init__")
    if not isinstance(init, types.FunctionType):
        return None
    if id(getattr(cls, "__init__", None)) != id(init):  # not inherited, not replaced
        return None
    for name in ("__signature__", "__wrapped__", "_partialmethod"):
        if hasattr(cls, name) or hasattr(init, name):
            return None
    if getattr(init, "__text_signature__", None):
        return None
    code = init.__code__
    if code.co_posonlyargcount or code.co_flags & 0x0C or code.co_argcount < 1:
        return None  # positional-only, *args or **kwargs: not a dataclass __init__
    names = code.co_varnames
    positional = names[1 : code.co_argcount]  # without self
    keyword_only = names[code.co_argcount : code.co_argcount + code.co_kwonlyargcount]
    annotations = init.__annotations__
    defaults = init.__defaults__ or ()
    kwdefaults = init.__kwdefaults__ or {}
    parts: list[str] = []
    first_default = len(positional) - len(defaults)
    if first_default < 0:
        return None
    for index, name in enumerate(positional):
        part = _plain_parameter(
            name, annotations, index >= first_default, defaults, index - first_default
        )
        if part is None:
            return None
        parts.append(part)
    if keyword_only:
        parts.append("*")
        for name in keyword_only:
            part = _plain_parameter(name, annotations, name in kwdefaults, kwdefaults, name)
            if part is None:
                return None
            parts.append(part)
    text = f"({', '.join(parts)})"
    if "return" in annotations:
        returned = _plain_annotation(annotations["return"])
        if returned is None:
            return None
        text += f" -> {returned}"
    return text


def _plain_parameter(
    name: str, annotations: dict[str, Any], has_default: bool, defaults: Any, key: Any
) -> str | None:
    text = name
    annotated = name in annotations
    if annotated:
        annotation = _plain_annotation(annotations[name])
        if annotation is None:
            return None
        text = f"{name}: {annotation}"
    if has_default:
        text += f" = {defaults[key]!r}" if annotated else f"={defaults[key]!r}"
    return text


def _plain_annotation(annotation: Any) -> str | None:
    """inspect.formatannotation for a str, None or a class (None: anything else)."""
    if type(annotation) is str or annotation is None:
        return repr(annotation)
    if type(annotation) is type and annotation.__module__ != "typing":
        if annotation.__module__ == "builtins":
            return annotation.__qualname__
        return f"{annotation.__module__}.{annotation.__qualname__}"
    return None


#: The one pattern dataclasses compiles at import (``_MODULE_IDENTIFIER_RE``): it matches
#: the string annotations of every field, looking for ``ClassVar``/``InitVar``.
_MODULE_IDENTIFIER = r"^(?:\s*(\w+)\s*\.)?\s*(\w+)"


class _ReStandIn(_ImportedOnUse):
    """``re`` for dataclasses, whose only use of it is :data:`_MODULE_IDENTIFIER`; that
    pattern is matched here in Python, anything else asks the real module."""

    def compile(self, pattern: Any, flags: Any = 0) -> Any:
        if pattern == _MODULE_IDENTIFIER and not flags:
            return _ModuleIdentifierPattern()
        return self.__getattr__("compile")(pattern, flags)


class _ModuleIdentifierMatch:
    """What dataclasses reads of a match: ``group(1)``, ``group(2)``."""

    __slots__ = ("_groups",)

    def __init__(self, module: str | None, name: str) -> None:
        self._groups = (None, module, name)

    def group(self, index: int) -> str | None:
        return self._groups[index]


class _ModuleIdentifierPattern:
    """``re.compile(_MODULE_IDENTIFIER)``: an optional ``module.`` and a name at the
    start, spaces allowed around both (``\\w`` and ``\\s`` as re has them for text)."""

    __slots__ = ()

    def match(self, text: str) -> _ModuleIdentifierMatch | None:
        start = _skip_spaces(text, 0)
        end = _skip_word(text, start)
        if end == start:
            return None
        dot = _skip_spaces(text, end)
        if dot < len(text) and text[dot] == ".":
            name_start = _skip_spaces(text, dot + 1)
            name_end = _skip_word(text, name_start)
            if name_end > name_start:
                return _ModuleIdentifierMatch(text[start:end], text[name_start:name_end])
        return _ModuleIdentifierMatch(None, text[start:end])


def _skip_spaces(text: str, index: int) -> int:
    while index < len(text) and text[index].isspace():
        index += 1
    return index


def _skip_word(text: str, index: int) -> int:
    while index < len(text) and (text[index].isalnum() or text[index] == "_"):
        index += 1
    return index


def _import_dataclasses() -> types.ModuleType:
    if "dataclasses" in sys.modules:
        return sys.modules["dataclasses"]
    standins: dict[str, types.ModuleType] = {}
    if "inspect" not in sys.modules:
        standins["inspect"] = _InspectStandIn("inspect")
    if "copy" not in sys.modules:
        standins["copy"] = _ImportedOnUse("copy")
    if "re" not in sys.modules:
        standins["re"] = _ReStandIn("re")
    sys.modules.update(standins)
    try:
        import dataclasses
    finally:
        for name, standin in standins.items():
            if sys.modules.get(name) is standin:
                del sys.modules[name]
    return dataclasses


if TYPE_CHECKING:
    import dataclasses as dataclasses
else:
    dataclasses = _import_dataclasses()


class methods_compiled_on_first_use:
    """Inside this block, ``@dataclasses.dataclass`` compiles a class's ``__init__`` at
    once and its other methods (``__repr__``, ``__eq__``, ``__hash__``, the frozen
    ``__setattr__``/``__delattr__``) the first time each is called.

    Compiling the source dataclasses writes for each method is most of what defining a
    dataclass costs (about 0.4 ms a class, a dozen classes on the path of every command),
    and most of those methods are never called by a command that lists sockets and
    exits. The methods, once compiled, are the very functions dataclasses makes; before
    that, each is a stand-in that compiles it, puts it in its place and calls it.
    Where this dataclasses has no ``_create_fn`` (other Python versions) the block
    changes nothing.
    """

    def __enter__(self) -> None:
        self.saved = getattr(dataclasses, "_create_fn", None)
        if _LAZY_SUPPORTED:
            dataclasses._create_fn = _create_fn_on_first_use  # type: ignore[attr-defined]

    def __exit__(self, *_exc: object) -> None:
        if _LAZY_SUPPORTED:
            dataclasses._create_fn = self.saved  # type: ignore[attr-defined]


def _lazy_supported() -> bool:
    create = getattr(dataclasses, "_create_fn", None)
    code = getattr(create, "__code__", None)
    return code is not None and code.co_varnames[: code.co_argcount + code.co_kwonlyargcount] == (
        "name",
        "args",
        "body",
        "globals",
        "locals",
        "return_type",
    )


_LAZY_SUPPORTED = _lazy_supported()
_create_fn: Any = getattr(dataclasses, "_create_fn", None)


def _create_fn_on_first_use(
    name: str,
    args: Any,
    body: Any,
    *,
    globals: Any = None,  # noqa: A002 -- dataclasses' own parameter names
    locals: Any = None,  # noqa: A002
    return_type: Any = dataclasses.MISSING,
) -> Any:
    def compile_now() -> Any:
        return _create_fn(name, args, body, globals=globals, locals=locals, return_type=return_type)

    if name == "__init__":
        return compile_now()  # the signature is the class's: always the real one
    compiled: Any = None

    def method(*arguments: Any, **keywords: Any) -> Any:
        nonlocal compiled
        if compiled is None:
            compiled = compile_now()
            compiled.__qualname__ = method.__qualname__
            if arguments:  # put the compiled method in the stand-in's place
                for owner in type(arguments[0]).__mro__:
                    if owner.__dict__.get(name) is method:
                        type.__setattr__(owner, name, compiled)
                        break
        return compiled(*arguments, **keywords)

    method.__name__ = name
    return method


# -- the compiled code, kept between runs ---------------------------------------------------

#: At most this many methods are kept per module: past it, a run that adds one keeps only
#: those it used (the code of earlier portside versions goes).
_MAX_KEPT = 256


class _CompiledCode:
    """What dataclasses calls as ``exec``: ``exec`` itself, given the code compiled
    before for the same source text when there is some (see the module's docstring).
    Only portside's own records are kept, one cache file per module (a command reads only
    the files of the modules it imports): other modules' dataclasses (a library's, a
    test's) are compiled as usual."""

    PREFIX = f"dataclass-code-{sys.implementation.cache_tag}-"

    def __init__(self) -> None:
        self.codes: dict[str, dict[str, types.CodeType]] = {}
        self.used: dict[str, set[str]] = {}
        self.added: set[str] = set()

    def file(self, module: str) -> str:
        """The cache file that keeps the code of ``module``'s records."""
        return self.PREFIX + module

    def exec(
        self,
        source: Any,
        globals: Any = None,  # noqa: A002 -- exec's own parameter names
        locals: Any = None,  # noqa: A002
        /,
    ) -> None:
        if type(source) is str:
            module = _portside_module(globals)
            codes = self.loaded(module) if module else {}
            code = codes.get(source)
            if code is None:
                # As exec(source) compiles it in dataclasses: without the __future__ flags
                # of this module, which exec would otherwise pass on (string annotations).
                code = compile(source, "<string>", "exec", dont_inherit=True)
                if module:
                    codes[source] = code
                    self.added.add(module)
            if module:
                self.used.setdefault(module, set()).add(source)
            source = code
        builtins.exec(source, globals, locals)  # noqa: S102 -- dataclasses' own exec

    def loaded(self, module: str) -> dict[str, types.CodeType]:
        """The kept code of ``module``'s records by source text (read from its cache file
        the first time)."""
        codes = self.codes.get(module)
        if codes is None:
            import marshal

            from portside._usercache import read

            data = read(self.file(module))
            codes = {}
            if data:
                try:
                    found = marshal.loads(data)  # noqa: S302 -- our own file, checked by _usercache
                except (EOFError, ValueError, TypeError):
                    found = None
                if isinstance(found, dict) and all(
                    type(key) is str and type(value) is types.CodeType
                    for key, value in found.items()
                ):
                    codes = found
            self.codes[module] = codes
        return codes

    def save(self) -> None:
        """Write the cache files of the modules this run compiled something new for."""
        if self.added:
            import marshal

            from portside._usercache import write

            for module in sorted(self.added):
                codes = self.codes[module]
                if len(codes) > _MAX_KEPT:
                    used = self.used.get(module, set())
                    codes = self.codes[module] = {
                        source: code for source, code in codes.items() if source in used
                    }
                write(self.file(module), marshal.dumps(codes))
            self.added.clear()


def _portside_module(namespace: Any) -> str:
    """The name of the portside module whose globals ``namespace`` is (dataclasses
    compiles a method in its class's module's), or "" for any other namespace."""
    name = namespace.get("__name__", "") if type(namespace) is dict else ""
    if type(name) is str and (name == "portside" or name.startswith("portside.")):
        return name
    return ""


compiled_code = _CompiledCode()


def _keeps_code() -> bool:
    """Whether this dataclasses compiles methods with ``exec`` of source text, in
    ``_create_fn`` (3.11, 3.12), so that giving it :data:`compiled_code` as ``exec`` is
    all it takes."""
    create = getattr(dataclasses, "_create_fn", None)
    code = getattr(create, "__code__", None)
    return code is not None and "exec" in code.co_names and "exec" not in vars(dataclasses)


if _keeps_code():
    dataclasses.exec = compiled_code.exec  # type: ignore[attr-defined]


def save_compiled_code() -> None:
    """Keep what this run compiled for the next (see the module's docstring)."""
    compiled_code.save()
