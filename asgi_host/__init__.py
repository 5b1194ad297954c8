"""asgi_host: a hand-written ASGI 3 host that runs the lifespan protocol itself.

Load models and other resources on `lifespan.startup`, release them (and CUDA
memory) on `lifespan.shutdown`, serve a few routes and mount sub-apps, with no
web framework. The PyTorch pieces live in `asgi_host.model` (extra `torch`);
the protocol test kit in `asgi_host.testing`.

Every public error is exported here, and only here.
"""

from ._batching import Batcher, Batching
from ._driver import AppTimeout, DriverError, LifespanFailed, LifespanUnsupported, ProtocolViolation
from ._errors import (
    AsgiHostError,
    ClientDisconnect,
    ConfigError,
    HTTPError,
    LifespanError,
    LifespanProtocolError,
    ModelLoadError,
    ModelTooLarge,
    OpenAIError,
    OutOfMemory,
    PoolFull,
    ReloadError,
    ReloadInProgress,
    ReplicaUnhealthy,
    ShutdownError,
    StartupError,
    SubAppLifespanError,
)
from ._health import Readiness
from ._host import Host
from ._http import ErrorFormat, Request, Response, error_response
from ._lifespan import LifespanPhase
from ._reload import Reloadable, ReloadResult, Replacement
from ._request_ids import RequestContextFilter, current_request_id, current_trace_id
from ._resources import Progress, Resource
from ._routing import Adapter, Mount, Route
from ._rows import Rows
from ._streaming import Event, EventStream
from ._structured import StructEndpoint
from ._version import __version__ as __version__
from ._view import HostView

__all__ = [
    "Adapter",
    "AppTimeout",
    "AsgiHostError",
    "Batcher",
    "Batching",
    "ClientDisconnect",
    "ConfigError",
    "DriverError",
    "ErrorFormat",
    "Event",
    "EventStream",
    "HTTPError",
    "Host",
    "HostView",
    "LifespanError",
    "LifespanFailed",
    "LifespanPhase",
    "LifespanProtocolError",
    "LifespanUnsupported",
    "ModelLoadError",
    "ModelTooLarge",
    "Mount",
    "OpenAIError",
    "OutOfMemory",
    "PoolFull",
    "Progress",
    "ProtocolViolation",
    "Readiness",
    "ReloadError",
    "ReloadInProgress",
    "ReloadResult",
    "Reloadable",
    "Replacement",
    "ReplicaUnhealthy",
    "Request",
    "RequestContextFilter",
    "Resource",
    "Response",
    "Route",
    "Rows",
    "ShutdownError",
    "StartupError",
    "StructEndpoint",
    "SubAppLifespanError",
    "current_request_id",
    "current_trace_id",
    "error_response",
]
