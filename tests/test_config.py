"""Typed settings: defaults, TOML, environment, and every way to get them wrong."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import msgspec
import pytest

from asgi_host import Batcher, Batching, ConfigError, Host
from asgi_host._admin import MIN_TOKEN_LENGTH
from asgi_host._defaults import HostSettings
from asgi_host.config import HostConfig, load_config
from examples.app import IrisConfig, make_app

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_match_the_host() -> None:
    config = load_config(HostConfig, environ={})
    assert config == HostConfig()
    assert config.batching is None
    assert config.host_kwargs()["startup_timeout_s"] == 60.0


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "app.toml"
    toml.write_text("drain_timeout_s = 5.0\nbackground_startup = true\n[batching]\nmax_wait_s = 0.01\n")
    env = {"APP_DRAIN_TIMEOUT_S": "7", "APP_BATCHING__MAX_BATCH_ROWS": "8", "APP_STARTUP_TIMEOUT_S": "none"}
    config = load_config(HostConfig, env_prefix="APP_", toml_path=toml, environ=env)
    assert config.drain_timeout_s == 7.0
    assert config.background_startup is True
    assert config.startup_timeout_s is None
    assert config.batching == Batching(max_wait_s=0.01, max_batch_rows=8)


@pytest.mark.parametrize(
    ("env", "batching"),
    [
        ({"APP_BATCHING": "on"}, Batching()),
        ({"APP_BATCHING": "on", "APP_BATCHING__MAX_WAIT_S": "1"}, Batching(max_wait_s=1.0)),
        ({"APP_BATCHING__MAX_WAIT_S": "1", "APP_BATCHING": "on"}, Batching(max_wait_s=1.0)),
        ({"APP_BATCHING": "off", "APP_BATCHING__MAX_WAIT_S": "1"}, None),
        ({"APP_BATCHING__MAX_WAIT_S": "0"}, Batching(max_wait_s=0.0)),
        ({}, None),
    ],
)
def test_batching_switch(env: dict[str, str], batching: Batching | None) -> None:
    assert load_config(HostConfig, env_prefix="APP_", environ=env).batching == batching


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"APP_DRAIN_TIMEOUT": "5"},
            "unknown setting APP_DRAIN_TIMEOUT; known: APP_ACCESS_LOG, APP_ADMIN_TOKEN, APP_BACKGROUND",
        ),
        ({"APP_DRAIN_TIMEOUT_S": "-1"}, "Expected `float` >= 0.0 - at `$.drain_timeout_s`"),
        ({"APP_MAX_BODY_BYTES": "lots"}, "Expected `int | null`, got `str` - at `$.max_body_bytes`"),
        ({"APP_BATCHING": "maybe"}, "APP_BATCHING must be on or off"),
        ({"APP_BATCHING__MAX_BATCH_ROWS": "0"}, "Expected `int` >= 1 - at `$.batching.max_batch_rows`"),
        ({"APP_BATCHING__FOO": "1"}, "Object contains unknown field `foo` - at `$.batching`"),
        ({"APP_LIVEZ_PATH": "livez"}, "matching regex '^/' - at `$.livez_path`"),
        ({"APP_DRAIN_TIMEOUT_S__X": "1"}, "drain_timeout_s has no sub-settings"),
    ],
)
def test_bad_settings_are_errors_that_name_them(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(HostConfig, env_prefix="APP_", environ=env)
    assert message in str(raised.value)


def test_batching_false_in_the_file_is_off(tmp_path: Path) -> None:
    toml = tmp_path / "app.toml"
    toml.write_text("batching = false\n")
    assert load_config(HostConfig, toml_path=toml, environ={}).batching is None
    assert (
        load_config(HostConfig, toml_path=toml, environ={"ASGI_HOST_BATCHING": "on"}).batching == Batching()
    )


def test_unknown_key_in_the_file_is_an_error(tmp_path: Path) -> None:
    toml = tmp_path / "app.toml"
    toml.write_text("drain_timeout = 5\n")
    with pytest.raises(ConfigError, match="Object contains unknown field `drain_timeout`"):
        load_config(HostConfig, toml_path=toml, environ={})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(HostConfig, toml_path=tmp_path / "missing.toml", environ={})


def test_settings_built_in_python_are_checked_too() -> None:
    with pytest.raises(Exception, match=r"Expected `float` >= 0\.0"):
        HostConfig(drain_timeout_s=-1)


def test_the_shipped_example_config_loads_and_turns_batching_on() -> None:
    config = load_config(
        IrisConfig, env_prefix="IRIS_", toml_path=ROOT / "examples" / "iris.toml", environ={}
    )
    assert config.batching == Batching()
    app = make_app(config)
    assert [type(r) for r in app.resources][-1] is Batcher
    off = load_config(
        IrisConfig,
        env_prefix="IRIS_",
        toml_path=ROOT / "examples" / "iris.toml",
        environ={"IRIS_BATCHING": "off"},
    )
    resources = make_app(off).resources
    assert [r.name for r in resources][:2] == ["model", "model output check"]
    assert Batcher not in [type(r) for r in resources]


def test_lazy_start_setting() -> None:
    assert (
        load_config(HostConfig, environ={"ASGI_HOST_LAZY_START": "wait"}).host_kwargs()["lazy_start"]
        == "wait"
    )
    with pytest.raises(ConfigError, match=r"Invalid enum value 'soon' - at `\$\.lazy_start`"):
        load_config(HostConfig, environ={"ASGI_HOST_LAZY_START": "soon"})


# Host parameters no config file or environment variable can set: objects, not values.
NOT_SETTINGS = {"resources", "routes", "metrics", "on_background_failure"}


def host_parameters() -> dict[str, inspect.Parameter]:
    parameters = inspect.signature(Host.__init__).parameters
    return {name: p for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def test_every_host_setting_is_a_config_field_with_the_same_default_and_type() -> None:
    parameters = host_parameters()
    assert set(parameters) >= NOT_SETTINGS, "an exception above is no longer a Host parameter"
    settable = {name: p for name, p in parameters.items() if name not in NOT_SETTINGS}
    fields = {f.name: f for f in msgspec.structs.fields(HostConfig)}
    missing = sorted(set(settable) - set(fields))
    assert not missing, f"Host parameters that HostConfig cannot set: {missing}"
    # The fields that fill Host's parameters are exactly HostSettings'.
    assert {f.name for f in msgspec.structs.fields(HostSettings)} == set(settable)
    hints = typing.get_type_hints(Host.__init__)
    field_hints = typing.get_type_hints(HostConfig)  # Annotated constraints stripped
    for name, parameter in settable.items():
        default = fields[name].default
        assert (type(parameter.default), parameter.default) == (type(default), default), name
        assert hints[name] == field_hints[name], name


def test_host_kwargs_fill_every_host_setting() -> None:
    settable = set(host_parameters()) - NOT_SETTINGS
    config = HostConfig(
        startup_timeout_s=5.0,
        shutdown_timeout_s=6.0,
        drain_timeout_s=0.0,
        max_body_bytes=7,
        body_timeout_s=8.0,
        livez_path="/live",
        readyz_path=None,
        openapi_path="/spec.json",
        docs_path=None,
        background_startup=True,
        lazy_start="unavailable",
        admin_token="t" * MIN_TOKEN_LENGTH,
        access_log="json",
        gc_freeze=False,
    )
    kwargs = config.host_kwargs()
    assert set(kwargs) == settable
    defaults = HostConfig()
    # Each value above differs from its default, so each one is seen to come through.
    assert [name for name in settable if kwargs[name] == getattr(defaults, name)] == []
    assert kwargs == {name: getattr(config, name) for name in settable}
    host = Host(**kwargs)
    assert (host.max_body_bytes, host.drain_timeout_s, host.lazy_start) == (7, 0.0, "unavailable")
    assert HostConfig().host_kwargs() == {name: host_parameters()[name].default for name in settable}


def test_the_config_and_the_host_ask_the_same_admin_token_length() -> None:
    HostConfig(admin_token="t" * MIN_TOKEN_LENGTH)
    Host(admin_token="t" * MIN_TOKEN_LENGTH)
    with pytest.raises(Exception, match=f"Expected `str` of length >= {MIN_TOKEN_LENGTH}"):
        HostConfig(admin_token="t" * (MIN_TOKEN_LENGTH - 1))
    with pytest.raises(ValueError, match=f"at least {MIN_TOKEN_LENGTH} characters"):
        Host(admin_token="t" * (MIN_TOKEN_LENGTH - 1))
