"""The ASGI 3 types: the callables, the scopes, and every message sent and received.

Annotate your own apps, middleware and tests with these::

    from asgi_host.types import Receive, Scope, Send

    async def app(scope: Scope, receive: Receive, send: Send) -> None: ...

The boundary types (`Scope`, `Message`, `Receive`, `Send`, `ASGIApp`) are plain
mappings, as in Starlette and asgiref, so apps type-check when mounted in each
other and servers may add keys freely. The TypedDicts say what each scope and
message holds (hypercorn's `hypercorn.typing` is the model, with its names);
use them to build messages (`HTTPResponseStartEvent(type=..., ...)`) or to
narrow one you received. `NotRequired` keys are those the spec gives a default.
"""

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Literal, NotRequired, TypedDict

__all__ = [
    "ASGIApp",
    "ASGIReceiveEvent",
    "ASGISendEvent",
    "ASGIVersions",
    "HTTPDisconnectEvent",
    "HTTPRequestEvent",
    "HTTPResponseBodyEvent",
    "HTTPResponseStartEvent",
    "HTTPScope",
    "Headers",
    "LifespanScope",
    "LifespanShutdownCompleteEvent",
    "LifespanShutdownEvent",
    "LifespanShutdownFailedEvent",
    "LifespanStartupCompleteEvent",
    "LifespanStartupEvent",
    "LifespanStartupFailedEvent",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "State",
    "WebsocketAcceptEvent",
    "WebsocketCloseEvent",
    "WebsocketConnectEvent",
    "WebsocketDisconnectEvent",
    "WebsocketReceiveEvent",
    "WebsocketScope",
    "WebsocketSendEvent",
]

Scope = MutableMapping[str, Any]
"""A connection's scope, as the server built it (`HTTPScope`, `WebsocketScope` or `LifespanScope`)."""
Message = MutableMapping[str, Any]
"""One message, received or sent (an `ASGIReceiveEvent` or an `ASGISendEvent`)."""
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
State = dict[str, Any]
"""The lifespan state: what the app puts there at startup, servers copy into each request scope."""

Headers = Iterable[tuple[bytes, bytes]]
"""Header names (lowercase) and values, as bytes."""


class ASGIVersions(TypedDict):
    version: Literal["2.0", "3.0"]
    spec_version: NotRequired[str]


# Scopes


class HTTPScope(TypedDict):
    type: Literal["http"]
    asgi: ASGIVersions
    http_version: str
    method: str
    scheme: str
    path: str
    raw_path: bytes
    query_string: bytes
    root_path: str
    headers: Headers
    client: tuple[str, int] | None
    server: tuple[str, int | None] | None
    state: NotRequired[State]  # a shallow copy of the lifespan state
    extensions: NotRequired[dict[str, dict[object, object]]]


class WebsocketScope(TypedDict):
    type: Literal["websocket"]
    asgi: ASGIVersions
    http_version: str
    scheme: str
    path: str
    raw_path: bytes
    query_string: bytes
    root_path: str
    headers: Headers
    client: tuple[str, int] | None
    server: tuple[str, int | None] | None
    subprotocols: Iterable[str]
    state: NotRequired[State]
    extensions: NotRequired[dict[str, dict[object, object]]]


class LifespanScope(TypedDict):
    type: Literal["lifespan"]
    asgi: ASGIVersions
    state: NotRequired[State]  # absent with servers from before ASGI 2.3


# HTTP messages


class HTTPRequestEvent(TypedDict):
    """Received: (part of) the request body."""

    type: Literal["http.request"]
    body: NotRequired[bytes]
    more_body: NotRequired[bool]


class HTTPDisconnectEvent(TypedDict):
    """Received: the client went away (or the response is complete)."""

    type: Literal["http.disconnect"]


class HTTPResponseStartEvent(TypedDict):
    """Sent: the status and headers, once, first."""

    type: Literal["http.response.start"]
    status: int
    headers: NotRequired[Headers]
    trailers: NotRequired[bool]


class HTTPResponseBodyEvent(TypedDict):
    """Sent: (part of) the response body; the last one has `more_body` false."""

    type: Literal["http.response.body"]
    body: NotRequired[bytes]
    more_body: NotRequired[bool]


# Websocket messages


class WebsocketConnectEvent(TypedDict):
    type: Literal["websocket.connect"]


class WebsocketAcceptEvent(TypedDict):
    type: Literal["websocket.accept"]
    subprotocol: NotRequired[str | None]
    headers: NotRequired[Headers]


class WebsocketReceiveEvent(TypedDict):
    type: Literal["websocket.receive"]
    bytes: NotRequired[bytes | None]
    text: NotRequired[str | None]


class WebsocketSendEvent(TypedDict):
    type: Literal["websocket.send"]
    bytes: NotRequired[bytes | None]
    text: NotRequired[str | None]


class WebsocketDisconnectEvent(TypedDict):
    type: Literal["websocket.disconnect"]
    code: int


class WebsocketCloseEvent(TypedDict):
    type: Literal["websocket.close"]
    code: NotRequired[int]
    reason: NotRequired[str | None]


# Lifespan messages


class LifespanStartupEvent(TypedDict):
    """Received: load what the app needs, then answer `.complete` or `.failed`."""

    type: Literal["lifespan.startup"]


class LifespanShutdownEvent(TypedDict):
    """Received: release everything, then answer `.complete` or `.failed`."""

    type: Literal["lifespan.shutdown"]


class LifespanStartupCompleteEvent(TypedDict):
    type: Literal["lifespan.startup.complete"]


class LifespanStartupFailedEvent(TypedDict):
    type: Literal["lifespan.startup.failed"]
    message: str


class LifespanShutdownCompleteEvent(TypedDict):
    type: Literal["lifespan.shutdown.complete"]


class LifespanShutdownFailedEvent(TypedDict):
    type: Literal["lifespan.shutdown.failed"]
    message: str


ASGIReceiveEvent = (
    HTTPRequestEvent
    | HTTPDisconnectEvent
    | WebsocketConnectEvent
    | WebsocketReceiveEvent
    | WebsocketDisconnectEvent
    | LifespanStartupEvent
    | LifespanShutdownEvent
)
"""What an app receives."""

ASGISendEvent = (
    HTTPResponseStartEvent
    | HTTPResponseBodyEvent
    | WebsocketAcceptEvent
    | WebsocketSendEvent
    | WebsocketCloseEvent
    | LifespanStartupCompleteEvent
    | LifespanStartupFailedEvent
    | LifespanShutdownCompleteEvent
    | LifespanShutdownFailedEvent
)
"""What an app sends."""
