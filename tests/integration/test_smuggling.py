"""One worker tries every smuggling shape of issue 6 on a connection it shares with another.

The attacker is a worker that speaks frames by hand (so none of ``worker_client``'s own
checks stand in its way); the victim is a ``ClientSession`` on its own connection to the
same broker. Both use one pool of a single upstream connection, so whatever the attacker
leaves on that connection, the victim's next request meets. After each shape: the victim
gets the answer to its own request, and the upstream has parsed no request line that
nobody asked for.
"""

from __future__ import annotations

import pytest

import broker
from shared.messages import Cancel, Data, End, Failure, Request
from shared.specs import encode_pool
from worker_client import ClientSession, ClientTimeout, TCPConnector

from .raw_worker import RawWorker, raw_workers  # noqa: F401  (the fixture)
from .test_isolation import SMUGGLED, RecordingServer

pytestmark = pytest.mark.usefixtures("raw_workers")

SPEC = TCPConnector(limit=1, name="shared-by-two").spec
CL = "Content-Length"


@pytest.fixture(scope="module")
def shared_broker():
    with broker.start(export=False, drain_timeout=1) as proc:
        yield proc


def _post(stream: int, url: str, length: int | None) -> Request:
    headers = [(CL, str(length))] if length is not None else []
    return Request(stream, "POST", url, headers=headers, streamed=True, pool=encode_pool(SPEC))


async def longer_than_declared(a: RawWorker, base: str, server: RecordingServer) -> None:
    a.send(_post(1, base + "/a1", 5), Data(1, b"hello" + SMUGGLED), End(1))
    await a.until_end_of(1)


async def longer_after_the_length(a: RawWorker, base: str, server: RecordingServer) -> None:
    a.send(_post(1, base + "/a2", 5), Data(1, b"hello"), Data(1, SMUGGLED), End(1))
    await a.until_end_of(1)


async def shorter_than_declared(a: RawWorker, base: str, server: RecordingServer) -> None:
    a.send(_post(1, base + "/a3", 100), Data(1, b"abc"), End(1))
    await a.until_end_of(1)


async def chunked_body_carrying_a_request(a: RawWorker, base: str, server: RecordingServer) -> None:
    """Without a length the broker frames the body itself: the bytes stay body."""
    a.send(_post(1, base + "/a4", None), Data(1, b"0\r\n\r\n" + SMUGGLED), End(1))
    await a.until_end_of(1)


async def cancelled_after_the_answer(a: RawWorker, base: str, server: RecordingServer) -> None:
    """The server answers before the body; the attacker cancels with the body unsent."""
    a.send(_post(1, base + "/a5", 1000), Data(1, b"x" * 10))
    await server.got_body.wait()  # answered, and part of the body is in
    a.send(Cancel(1))


async def gone_mid_upload(a: RawWorker, base: str, server: RecordingServer) -> None:
    a.send(_post(1, base + "/a6", 1000), Data(1, b"y" * 10))
    await server.got_body.wait()
    a.close()


async def hostile_targets(a: RawWorker, base: str, server: RecordingServer) -> None:
    urls = [
        base + "/a\x00b",
        base + "/a?b= HTTP/1.0 HTTP/1.1",
        base + "/x HTTP/1.1\r\nHost: y\r\n\r\nGET /smuggled",
        base + "/sp ace",
    ]
    for i, url in enumerate(urls):
        a.send(Request(2 * i + 1, "GET", url, pool=encode_pool(SPEC)))
    for i in range(len(urls)):
        (msg,) = await a.until_end_of(2 * i + 1)
        assert isinstance(msg, Failure) and msg.code == "invalid_url", msg


async def hostile_heads(a: RawWorker, base: str, server: RecordingServer) -> None:
    bad = [
        ("GET", [("Host", "h\r\nX-Smuggled: 1")]),
        ("GET", [("Host", "h /smuggled")]),
        ("GET", [("X-A", "1\r\n\r\nGET /smuggled HTTP/1.1")]),
        ("GET /smuggled HTTP/1.1\r\n", []),
    ]
    for i, (method, headers) in enumerate(bad):
        a.send(Request(2 * i + 1, method, base + "/ok", headers=headers, pool=encode_pool(SPEC)))
    for i in range(len(bad)):
        (msg,) = await a.until_end_of(2 * i + 1)
        assert isinstance(msg, Failure), msg


async def hostile_cookies(a: RawWorker, base: str, server: RecordingServer) -> None:
    # A request's own cookies= go into its Cookie header as they are: checked like headers.
    bad = [
        [("c", "1\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: victim")],
        [("c\r\nX-Smuggled", "1")],
        [("ok", "1"), ("bad name", "2")],
        [("a\n", "b: c")],  # a bare LF at the end of a name
    ]
    for i, cookies in enumerate(bad):
        a.send(Request(2 * i + 1, "GET", base + "/ok", cookies=cookies, pool=encode_pool(SPEC)))
    for i in range(len(bad)):
        (msg,) = await a.until_end_of(2 * i + 1)
        assert isinstance(msg, Failure) and msg.code == "protocol", msg


async def chunked_inline_with_a_length(a: RawWorker, base: str, server: RecordingServer) -> None:
    # A body the broker frames chunked must not go out under the worker's own length.
    req = Request(
        1, "POST", base + "/a1", headers=[(CL, "4")],
        body=b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", chunked=True,
        pool=encode_pool(SPEC),
    )
    a.send(req)
    (msg,) = await a.until_end_of(1)
    assert isinstance(msg, Failure) and msg.code == "protocol", msg


SHAPES = [
    longer_than_declared,
    longer_after_the_length,
    shorter_than_declared,
    chunked_body_carrying_a_request,
    cancelled_after_the_answer,
    gone_mid_upload,
    hostile_targets,
    hostile_heads,
    hostile_cookies,
    chunked_inline_with_a_length,
]


@pytest.mark.parametrize("shape", SHAPES, ids=[s.__name__ for s in SHAPES])
async def test_no_other_worker_meets_what_one_worker_sends(shared_broker, raw_server, shape):
    server = RecordingServer(answer_first=shape in (cancelled_after_the_answer, gone_mid_upload))
    base = await raw_server(server.handler)
    attacker = await RawWorker.connect(shared_broker.socket_path)
    async with ClientSession(
        broker=shared_broker.socket_path, connector=TCPConnector(limit=1, name="shared-by-two")
    ) as victim:
        try:
            await shape(attacker, base, server)
        finally:
            attacker.close()
        for i in range(3):
            async with victim.get(f"{base}/victim-{i}", timeout=ClientTimeout(total=5)) as resp:
                assert resp.status == 200
                assert await resp.read() == f"/victim-{i}".encode()
    seen = [line for _, line in server.lines]
    asked = {f"GET /victim-{i} HTTP/1.1" for i in range(3)} | {
        f"POST /a{n} HTTP/1.1" for n in range(1, 7)
    }
    assert set(seen) <= asked, seen
    assert seen[-3:] == [f"GET /victim-{i} HTTP/1.1" for i in range(3)]
