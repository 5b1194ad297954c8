"""Settings as msgspec Structs whose constraints hold however they are built."""

from __future__ import annotations

from contextvars import ContextVar

import msgspec

__all__ = ["check_constraints"]

_checking: ContextVar[bool] = ContextVar("asgi_host_checking", default=False)


def check_constraints(settings: msgspec.Struct) -> None:
    """Validate `Meta` constraints of a Struct built in Python (msgspec checks them only when decoding).

    Call it from `__post_init__`. It round-trips through `msgspec.convert`,
    which builds the Struct again and so calls `__post_init__` again: the
    context variable stops that recursion.
    """
    if _checking.get():
        return
    token = _checking.set(True)
    try:
        msgspec.convert(msgspec.to_builtins(settings), type(settings))
    finally:
        _checking.reset(token)
