"""The ASGI boundary, typed, for the host's own modules.

The types themselves are public, in `asgi_host.types`. What this module adds
is `send_message`: the messages the host itself sends are Literal-tagged
TypedDicts passed through it, so a typo in a message type is a type error,
not a hung server.
"""

from __future__ import annotations

from typing import cast

from .types import ASGIApp, ASGISendEvent, Message, Receive, Scope, Send, State

__all__ = ["ASGIApp", "Message", "Receive", "Scope", "Send", "State", "send_message"]


async def send_message(send: Send, message: ASGISendEvent) -> None:
    """Send one of the host's own messages; exceptions from `send` propagate."""
    await send(cast(Message, message))
