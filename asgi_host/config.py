"""Typed settings from a TOML file and environment variables.

::

    class Settings(HostConfig):            # add your own fields
        weights: str = "model.safetensors"

    settings = load_config(Settings, env_prefix="MYAPP_", toml_path=os.environ.get("MYAPP_CONFIG"))
    app = Host(resources=[...], routes=[...], **settings.host_kwargs())

Precedence: defaults < TOML file < environment. Environment names are the
prefix plus the field in upper case (`MYAPP_DRAIN_TIMEOUT_S=10`); nested
settings use `__` (`MYAPP_BATCHING__MAX_WAIT_S=0.005`). `none`/`null` set an
optional value to None. `MYAPP_BATCHING=on|off` switches batching; any
`MYAPP_BATCHING__...` variable or a `[batching]` table turns it on. Unknown
keys in the file and unknown variables with the prefix are errors, and every
value is checked against its constraints, so a typo fails at startup instead
of being silently ignored.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from ._batching import Batching
from ._config import check_constraints
from ._defaults import HostSettings
from ._errors import ConfigError

__all__ = ["HostConfig", "load_config"]

C = TypeVar("C", bound="HostConfig")

_OFF = {"off", "false", "0", "no"}
_ON = {"on", "true", "1", "yes"}
_NONE = {"none", "null"}


class HostConfig(HostSettings, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The host's own settings. Subclass it to add your application's.

    The fields `Host(...)` takes, with their defaults and constraints, are
    `HostSettings`' (asgi_host/_defaults.py); `batching` is for the endpoints.
    """

    batching: Batching | None = None

    def __post_init__(self) -> None:
        check_constraints(self)

    def __repr__(self) -> str:
        values = (
            (f.name, "<hidden>" if f.name == "admin_token" and getattr(self, f.name) is not None else None)
            for f in msgspec.structs.fields(self)
        )
        shown = ", ".join(f"{name}={hidden or repr(getattr(self, name))}" for name, hidden in values)
        return f"{type(self).__name__}({shown})"

    def host_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `Host` these settings fill in: every field of `HostSettings`."""
        return {f.name: getattr(self, f.name) for f in msgspec.structs.fields(HostSettings)}


def load_config(
    cls: type[C],
    *,
    env_prefix: str = "ASGI_HOST_",
    toml_path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> C:
    """Build `cls` from defaults, then the TOML file (if given), then the environment."""
    values: dict[str, Any] = {}
    if toml_path is not None:
        path = Path(toml_path)
        try:
            values = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
    env = os.environ if environ is None else environ
    fields = {f.name: f for f in msgspec.structs.fields(cls)}
    switch: bool | None = None  # an explicit BATCHING=on/off, applied last so it wins
    for name, raw in env.items():
        if not name.startswith(env_prefix) or name == f"{env_prefix}CONFIG":
            continue
        key, _, sub = name[len(env_prefix) :].lower().partition("__")
        if key not in fields:
            known = ", ".join(sorted(f"{env_prefix}{f.upper()}" for f in fields))
            raise ConfigError(f"unknown setting {name}; known: {known}")
        if key == "batching" and not sub:
            switch = _switch(raw, name)
        elif key == "batching":
            current = values.get(key)
            table: dict[str, Any] = current if isinstance(current, dict) else {}
            table[sub] = None if raw.strip().lower() in _NONE else raw
            values[key] = table
        elif sub:
            raise ConfigError(f"{name}: {key} has no sub-settings")
        else:
            values[key] = None if raw.strip().lower() in _NONE else raw
    if switch is False:
        values["batching"] = None
    elif switch is True and not isinstance(values.get("batching"), dict):
        values["batching"] = {}
    if values.get("batching") is False:  # `batching = false` in the file
        values["batching"] = None
    elif values.get("batching") is True:
        values["batching"] = {}
    try:
        return msgspec.convert(values, cls, strict=False)
    except msgspec.ValidationError as exc:
        source = f"{toml_path} and the environment" if toml_path else "the environment"
        raise ConfigError(f"invalid setting in {source} (prefix {env_prefix}): {exc}") from None


def _switch(raw: str, name: str) -> bool:
    word = raw.strip().lower()
    if word in _OFF:
        return False
    if word in _ON:
        return True
    raise ConfigError(f"{name} must be on or off, got {raw!r}")
