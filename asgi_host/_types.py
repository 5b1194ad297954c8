"""The ASGI boundary, typed.

Scopes and messages stay plain mappings at the boundary (servers add keys
freely, and Starlette, asgiref and hypercorn all type them this way, so apps
type-check when mounted in each other). The messages the host itself sends are
Literal-tagged TypedDicts passed through `send_message`, so a typo in a
message type is a type error, not a hung server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal, NotRequired, TypedDict, cast

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
State = dict[str, Any]


class LifespanStartupEvent(TypedDict):
    type: Literal["lifespan.startup"]


class LifespanShutdownEvent(TypedDict):
    type: Literal["lifespan.shutdown"]


class LifespanStartupComplete(TypedDict):
    type: Literal["lifespan.startup.complete"]


class LifespanStartupFailed(TypedDict):
    type: Literal["lifespan.startup.failed"]
    message: str


class LifespanShutdownComplete(TypedDict):
    type: Literal["lifespan.shutdown.complete"]


class LifespanShutdownFailed(TypedDict):
    type: Literal["lifespan.shutdown.failed"]
    message: str


class HTTPRequestEvent(TypedDict):
    type: Literal["http.request"]
    body: NotRequired[bytes]
    more_body: NotRequired[bool]


class HTTPDisconnectEvent(TypedDict):
    type: Literal["http.disconnect"]


class HTTPResponseStart(TypedDict):
    type: Literal["http.response.start"]
    status: int
    headers: list[tuple[bytes, bytes]]


class HTTPResponseBody(TypedDict):
    type: Literal["http.response.body"]
    body: bytes
    more_body: NotRequired[bool]


class WebsocketClose(TypedDict):
    type: Literal["websocket.close"]
    code: int
    reason: NotRequired[str]


SentMessage = (
    LifespanStartupComplete
    | LifespanStartupFailed
    | LifespanShutdownComplete
    | LifespanShutdownFailed
    | HTTPResponseStart
    | HTTPResponseBody
    | WebsocketClose
)


async def send_message(send: Send, message: SentMessage) -> None:
    """Send one of the host's own messages; exceptions from `send` propagate."""
    await send(cast(Message, message))
