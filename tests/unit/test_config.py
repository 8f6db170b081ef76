"""The standalone broker's configuration file (``broker.config``)."""

from __future__ import annotations

import os

import pytest

from broker.config import (
    Config,
    ConfigError,
    changes,
    keep_restart_only,
    load,
    parse,
    with_overrides,
)
from shared.specs import DEFAULT_TIMEOUT, ClientTimeout

from ..conftest import ROOT

EXAMPLE = os.path.join(ROOT, "examples", "broker.toml")


def write(tmp_path, text: str) -> str:
    path = tmp_path / "broker.toml"
    path.write_text(text)
    return str(path)


def test_the_example_file_loads():
    config = load(EXAMPLE)
    assert config.broker.socket == "/run/http-broker/broker.sock"
    assert config.broker.socket_mode == 0o660
    assert config.broker.allowed_uids == (1001, 1002)
    assert config.timeouts.client_timeout() == DEFAULT_TIMEOUT
    assert config.log.level == "warning" and config.log.format == "kv"


def test_an_empty_file_is_the_defaults(tmp_path):
    assert load(write(tmp_path, "")) == Config()
    assert Config().broker.socket_mode == 0o600 and Config().broker.max_workers == 0


def test_relative_paths_are_taken_from_the_files_directory(tmp_path, monkeypatch):
    monkeypatch.chdir("/")  # as under systemd
    path = write(tmp_path, "[broker]\nsocket = 'run/b.sock'\ncookie_file = 'jars.json'\n")
    config = load(path)
    assert config.broker.socket == str(tmp_path / "run" / "b.sock")
    assert config.broker.cookie_file == str(tmp_path / "jars.json")
    absolute = load(write(tmp_path, "[broker]\nsocket = '/tmp/x.sock'\n"))
    assert absolute.broker.socket == "/tmp/x.sock" and absolute.broker.cookie_file == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[broker]\nsoket = '/x'\n", "unknown key 'soket' (in [broker])"),
        ("sockets = 1\n", "unknown key 'sockets' (at the top level)"),
        ("[timeouts]\nread = 1\n", "unknown key 'read' (in [timeouts])"),
        ("[logs]\nlevel = 'info'\n", "unknown key 'logs' (at the top level)"),
    ],
)
def test_an_unknown_key_is_named_with_its_table_and_the_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == f"{path}: {message}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[broker]\nmax_workers = 'many'\n",
         "key 'max_workers' (in [broker]): expected `int`, got `str`"),
        ("[timeouts]\nconnect = true\n",
         "key 'connect' (in [timeouts]): expected `float`, got `bool`"),
        ("[timeouts]\ntotal = 5\n", "unknown key 'total' (in [timeouts])"),
        ("[log]\nlevel = 'loud'\n", "key 'level' (in [log]): invalid enum value 'loud'"),
        ("broker = 3\n", "[broker]: expected `object`, got `int`"),
        ("[broker]\nsocket_mode = 0o666\n", "socket_mode 0o666 lets every user connect"),
        ("[broker]\nmax_connections = -1\n", "max_connections must be >= 0"),
    ],
)
def test_a_wrong_value_is_named(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="^" + path) as info:
        load(path)
    assert message in str(info.value)


def test_not_toml_and_no_file_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(write(tmp_path, "[broker\n"))
    with pytest.raises(ConfigError, match="No such file"):
        load(str(tmp_path / "none.toml"))


def test_a_file_not_in_utf8_is_a_clear_error(tmp_path):
    """TOML is UTF-8: tomllib raises UnicodeDecodeError, not TOMLDecodeError, for other
    bytes (serve died with a traceback; a SIGHUP logged no reload_refused)."""
    path = tmp_path / "broker.toml"
    path.write_bytes(b"[broker]\nsocket = '/run/hb/\xff.sock'\n")
    with pytest.raises(ConfigError, match=r"broker\.toml: not valid TOML: not UTF-8"):
        load(str(path))


def test_the_command_line_overrides_the_file():
    config = with_overrides(load(EXAMPLE), {
        "broker.socket": "/tmp/b.sock", "broker.max_workers": 4, "log.level": "debug",
        "broker.cookie_file": None,  # not given: the file's stays
    })
    assert config.broker.socket == "/tmp/b.sock" and config.broker.max_workers == 4
    assert config.log.level == "debug"
    assert config.broker.cookie_file == "/var/lib/http-broker/cookies.json"
    with pytest.raises(ConfigError, match="the command line: key 'level' .in .log.."):
        with_overrides(Config(), {"log.level": "loud"})


def test_timeouts_of_zero_are_none():
    config = parse({"timeouts": {"sock_connect": 0, "sock_read": 2.5}})
    assert config.timeouts.client_timeout() == ClientTimeout(total=300, sock_read=2.5)


def test_changes_split_what_applies_from_what_needs_a_restart():
    old = Config()
    new = parse({"broker": {"socket": "/y", "max_workers": 3}, "log": {"level": "info"}})
    applied, restart = changes(old, new)
    assert applied == ["broker.max_workers", "log.level"]
    assert restart == ["broker.socket"]
    kept = keep_restart_only(old, new)
    assert kept.broker.socket == "" and kept.broker.max_workers == 3
    assert changes(kept, new) == ([], ["broker.socket"])  # still not in force
