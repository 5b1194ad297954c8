"""asgi_host: a hand-written ASGI 3 host that runs the lifespan protocol itself.

Load models and other resources on `lifespan.startup`, release them (and CUDA
memory) on `lifespan.shutdown`, serve a few routes and mount sub-apps, with no
web framework. The PyTorch pieces live in `asgi_host.model` (extra `torch`);
the protocol test kit in `asgi_host.testing`.
"""

from ._batching import Batcher, Batching
from ._errors import (
    AsgiHostError,
    ClientDisconnect,
    HTTPError,
    LifespanError,
    LifespanProtocolError,
    OutOfMemory,
    ShutdownError,
    StartupError,
)
from ._health import Readiness
from ._host import Host
from ._http import Request, Response
from ._lifespan import LifespanPhase
from ._reload import Reloadable, ReloadError, ReloadInProgress, ReloadResult, Replacement
from ._resources import Progress, Resource
from ._routing import Mount, Route
from ._structured import StructEndpoint
from ._version import __version__ as __version__

__all__ = [
    "AsgiHostError",
    "Batcher",
    "Batching",
    "ClientDisconnect",
    "HTTPError",
    "Host",
    "LifespanError",
    "LifespanPhase",
    "LifespanProtocolError",
    "Mount",
    "OutOfMemory",
    "Progress",
    "Readiness",
    "ReloadError",
    "ReloadInProgress",
    "ReloadResult",
    "Reloadable",
    "Replacement",
    "Request",
    "Resource",
    "Response",
    "Route",
    "ShutdownError",
    "StartupError",
    "StructEndpoint",
]
