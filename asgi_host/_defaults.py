"""The host's settings, once: their names, types, constraints and defaults.

`HostSettings` is the base of `asgi_host.config.HostConfig` (which adds
loading from TOML and the environment, and settings that are not the host's,
like `batching`), and `Host.__init__`'s parameters of the same names default
to `DEFAULTS`. A new host setting is a field here and a parameter of `Host`
defaulting to `DEFAULTS.<field>`; tests/test_config.py fails if the two
disagree or if one is missing. Every field is a keyword parameter of `Host`,
so `HostConfig.host_kwargs()` is all of them.

This module imports no other module of the package, so both `_host.py` and
`config.py` can import it without a cycle.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = ["DEFAULTS", "HostSettings"]


class HostSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The settings `Host(...)` takes as keyword parameters, with their defaults and constraints."""

    startup_timeout_s: Annotated[float, msgspec.Meta(gt=0)] | None = 60.0
    shutdown_timeout_s: Annotated[float, msgspec.Meta(gt=0)] | None = 30.0
    drain_timeout_s: Annotated[float, msgspec.Meta(ge=0)] | None = 30.0
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1)] | None = 1024 * 1024
    body_timeout_s: Annotated[float, msgspec.Meta(gt=0)] | None = 10.0
    livez_path: Annotated[str, msgspec.Meta(pattern="^/")] | None = "/livez"
    readyz_path: Annotated[str, msgspec.Meta(pattern="^/")] | None = "/readyz"
    openapi_path: Annotated[str, msgspec.Meta(pattern="^/")] | None = "/openapi.json"
    docs_path: Annotated[str, msgspec.Meta(pattern="^/")] | None = "/docs"
    background_startup: bool = False
    lazy_start: Literal["wait", "unavailable"] | None = None
    # Turns on POST /admin/models/{name}/reload (Authorization: Bearer <token>); None: no admin route.
    # Never shown: HostConfig's repr() hides it, and it appears in no log or error message.
    # 16 is the host's MIN_TOKEN_LENGTH (_reload.py); a test checks they agree.
    admin_token: Annotated[str, msgspec.Meta(min_length=16)] | None = None
    # One JSON line per request on the `asgi_host.access` logger (_access_log.py), or "off".
    access_log: Literal["json", "off"] = "off"
    # gc.freeze() once the resources started: full collections skip what startup made (_gc.py).
    gc_freeze: bool = True


# What `Host(...)` uses for a setting it is not given.
DEFAULTS = HostSettings()
