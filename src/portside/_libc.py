"""libc functions called from Python, made from ``_ctypes`` alone.

``ctypes`` costs about 6 ms to import (its ``__init__`` defines every C type); its C half,
``_ctypes``, under one. The few libc calls portside needs on a command's start-up path
(``setns``, ``syscall`` for ``bpf``) are made here from ``_ctypes`` directly, as
``ctypes.CDLL(None, use_errno=True)`` would give them. Linux and other POSIX systems.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

_FUNCTIONS: dict[str, Callable[..., int]] = {}
_TYPES: dict[str, type] = {}


def _c_type(code: str) -> type:
    """The C scalar type with the struct-module ``code`` (``"i"`` int, ``"l"`` long), as
    ``ctypes.c_int``/``ctypes.c_long`` are."""
    made = _TYPES.get(code)
    if made is None:
        import _ctypes

        made = _TYPES[code] = type(f"c_{code}", (_ctypes._SimpleCData,), {"_type_": code})
    return made


def libc_function(name: str, result: str, arguments: str) -> Callable[..., int]:
    """libc's function ``name``, returning the C type coded ``result`` and taking one
    argument per code in ``arguments``; it sets errno for :func:`last_errno`. Raises
    AttributeError when libc has no such function."""
    key = f"{name}:{result}:{arguments}"
    function = _FUNCTIONS.get(key)
    if function is None:
        import _ctypes

        prototype = type(
            f"{name}_function",
            (_ctypes.CFuncPtr,),
            {
                "_flags_": _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO,
                "_restype_": _c_type(result),
                "_argtypes_": tuple(_c_type(code) for code in arguments),
            },
        )
        program = _ctypes.dlopen(None, _ctypes.RTLD_LOCAL)  # type: ignore[arg-type]  # the program
        function = _FUNCTIONS[key] = prototype(_ctypes.dlsym(program, name))
    return function


def last_errno() -> int:
    """errno as the last call of a :func:`libc_function` left it."""
    import _ctypes

    return int(_ctypes.get_errno())
