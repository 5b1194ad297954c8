"""Schemathesis hooks (SCHEMATHESIS_HOOKS=tests._schemathesis_hooks): MessagePack both ways.

With them the fuzzer sends MessagePack bodies too, and checks MessagePack answers against the
document like JSON ones.
"""

from __future__ import annotations

from typing import Any

import msgspec
import schemathesis

MSGPACK = ("application/msgpack", "application/x-msgpack")


def _fits(value: Any) -> Any:
    """MessagePack has no integers past 64 bits: those the fuzzer makes up go as floats."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return float(value)
    if isinstance(value, list):
        return [_fits(v) for v in value]
    if isinstance(value, dict):
        return {k: _fits(v) for k, v in value.items()}
    return value


@schemathesis.serializer(*MSGPACK)
def _to_msgpack(ctx: Any, value: Any) -> bytes:
    return msgspec.msgpack.encode(_fits(value))


@schemathesis.deserializer(*MSGPACK)
def _from_msgpack(ctx: Any, response: Any) -> Any:
    return msgspec.msgpack.decode(response.content)
