"""The C library handle shared by the confinement bindings, and where their return codes become errors.

Every binding in ``workers.confine`` calls libc through a function object made by ``bind``: a fresh ctypes
function (never the handle's cached attribute, so two bindings of the same symbol can name different layers)
whose ``errcheck`` turns the C convention "-1 and errno" into ``SandboxUnavailable`` carrying the layer and
the errno (CONTRIBUTING.md). Bindings are made at import time in the parent, so a confined child never has to
resolve a symbol or import a module after fork.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Sequence
from typing import Any

from sync_format.errors import SandboxUnavailable

#: The process's own C library (already loaded: ``None`` asks the dynamic linker for the global scope).
LIBC = ctypes.CDLL(None, use_errno=True)


def bind(
    symbol: str,
    argtypes: Sequence[Any],
    *,
    layer: str,
    action: str,
    restype: Any = ctypes.c_long,
) -> Callable[..., int]:
    """Make a ctypes function for ``symbol`` whose failures raise ``SandboxUnavailable``.

    Args:
        symbol: The libc symbol (``prctl``, ``syscall``, ``unshare``).
        argtypes: Its argument types.
        layer: The layer named in the error (``no_new_privs``, ``landlock``...).
        action: What the call does, for the error message (``landlock_create_ruleset``).
        restype: Its return type; the call fails when it returns -1.

    Returns:
        The callable; it returns the C result when it is not -1.
    """
    func = LIBC[symbol]
    func.argtypes = list(argtypes)
    func.restype = restype

    def errcheck(result: Any, _func: Any, _args: Any) -> Any:
        if result == -1:
            code = ctypes.get_errno()
            raise SandboxUnavailable(layer, f"{action} failed: {os.strerror(code)}", errno=code)
        return result

    func.errcheck = errcheck
    return func
