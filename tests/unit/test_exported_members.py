"""``worker_client.__all__`` is a contract: aiohttp's client names, kept in step.

Every aiohttp name is either exported by us (and then is the same kind of thing) or
listed below as not built yet. A new aiohttp name, or one of ours that appears or goes,
fails this test until the lists are updated on purpose.
"""

from __future__ import annotations

import inspect

import aiohttp

import worker_client

# aiohttp names we do not have yet, by the feature that will bring them.
NOT_YET = {
    "server side and internals (not a client's API here)": {
        "AddrInfoType", "ChainMapProxy", "DataQueue", "ETag", "EofStream",
        "FlowControlDataQueue", "GunicornUVLoopWebWorker", "GunicornWebWorker",
        "NamedPipeConnector", "SocketFactoryType", "hdrs",
        "set_zlib_backend",
    },
}

OURS_ONLY = {
    "AbstractCookieJar",  # aiohttp's lives in aiohttp.abc
    "AbstractResolver",  # aiohttp's lives in aiohttp.abc
    "BrokerConnectionError",
    "BrokerProtocolError",
    "PreparedRequest",
    "SyncResponse",  # aiohttp has no sync API (worker_client.sync)
    "SyncSession",
    "create_default_context",  # records what is loaded into it (worker_client.tls)
    "UnixClientConnectorError",  # in aiohttp.client_exceptions, not in aiohttp.__all__
}


def test_every_export_exists():
    for name in worker_client.__all__:
        assert hasattr(worker_client, name), name
    assert len(worker_client.__all__) == len(set(worker_client.__all__))


def test_exports_follow_aiohttp():
    not_yet = set().union(*NOT_YET.values())
    ours = set(worker_client.__all__)
    theirs = set(aiohttp.__all__)
    assert not (not_yet & ours), "built now: take it off NOT_YET"
    assert theirs - ours == not_yet
    assert ours - theirs == OURS_ONLY


def test_shared_names_are_the_same_kind_of_thing():
    for name in set(worker_client.__all__) & set(aiohttp.__all__):
        ours, theirs = getattr(worker_client, name), getattr(aiohttp, name)
        assert inspect.isclass(ours) == inspect.isclass(theirs), name
        assert callable(ours) == callable(theirs), name
        if inspect.isclass(theirs) and issubclass(theirs, BaseException):
            assert issubclass(ours, BaseException), name
