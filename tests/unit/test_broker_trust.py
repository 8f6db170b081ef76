"""Which broker uids a worker talks to: ``broker_uid=``, ``HTTP_BROKER_UID``, the check."""

from __future__ import annotations

import os

import pytest

from worker_client import BrokerConnectionError
from worker_client.transport import check_broker_uid, trusted_broker_uids

OWN = os.getuid()


def test_by_default_only_our_own_uid(monkeypatch):
    monkeypatch.delenv("HTTP_BROKER_UID", raising=False)
    assert trusted_broker_uids() == {OWN}


def test_the_environment_lists_more(monkeypatch):
    monkeypatch.setenv("HTTP_BROKER_UID", " 1001, 0 1002 ")
    assert trusted_broker_uids() == {OWN, 0, 1001, 1002}


def test_the_argument_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("HTTP_BROKER_UID", "1001")
    assert trusted_broker_uids(1002) == {OWN, 1002}
    assert trusted_broker_uids([1003, 1004]) == {OWN, 1003, 1004}
    assert trusted_broker_uids(()) == {OWN}


@pytest.mark.parametrize("raw", ["root", "1001;1002", "-1", "1e3", "١٢"])
def test_a_bad_environment_value_is_a_clear_error(monkeypatch, raw):
    monkeypatch.setenv("HTTP_BROKER_UID", raw)
    with pytest.raises(ValueError, match="HTTP_BROKER_UID must be numeric uids"):
        trusted_broker_uids()


@pytest.mark.parametrize("bad", [-1, True, "1001", 1.0, [1001, None]])
def test_a_bad_argument_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="broker_uid must be uids"):
        trusted_broker_uids(bad)


def test_the_check_names_the_uid_and_how_to_trust_it():
    check_broker_uid("/x.sock", OWN, frozenset({OWN}))
    other = OWN + 1
    with pytest.raises(BrokerConnectionError) as info:
        check_broker_uid("/x.sock", other, frozenset({OWN}))
    message = str(info.value)
    assert f"/x.sock is served by uid {other}" in message
    assert f"ClientSession(broker_uid={other})" in message
    assert f"HTTP_BROKER_UID={other}" in message


def test_root_is_not_special():
    """A root broker is trusted only when listed, as any uid not ours."""
    with pytest.raises(BrokerConnectionError, match="served by uid 0"):
        check_broker_uid("/x.sock", 0, frozenset({1000}))
    check_broker_uid("/x.sock", 0, frozenset({1000, 0}))


def test_a_broker_whose_uid_cannot_be_told_is_not_trusted():
    with pytest.raises(BrokerConnectionError, match="cannot tell which user"):
        check_broker_uid("/run/b.sock", None, frozenset({os.getuid()}))
