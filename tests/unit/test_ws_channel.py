"""``worker_client.ws_channel``: the WebSocket's bytes both ways, with a fake stream.

The stream handle is faked (it only counts acknowledgements); the codec is the real one,
and the "server" is a ``WebSocketReader(client=False)`` / unmasked ``WebSocketWriter``.
"""

from __future__ import annotations

import asyncio
import zlib

import pytest

from shared.websocket import (
    WebSocketError,
    WebSocketReader,
    WebSocketWriter,
    WSCloseCode,
    WSMsgType,
)
from worker_client.exceptions import ClientConnectionResetError
from worker_client.ws_channel import OUTGOING_LIMIT, Outgoing, StreamChannel


class FakeHandle:
    id = 7

    def __init__(self) -> None:
        self.acked = 0
        self.done = False  # StreamHandle's: the stream ended

    def _consumed(self, size: int) -> None:
        self.acked += size


def make(compress: int = 0, max_msg_size: int = 1 << 20) -> tuple[StreamChannel, Outgoing, FakeHandle, list[str]]:
    handle = FakeHandle()
    out = Outgoing()
    drops: list[str] = []
    channel = StreamChannel(
        handle,  # type: ignore[arg-type]
        out,
        lambda: drops.append("drop"),
        max_msg_size=max_msg_size,
        compress=compress,
        notakeover=False,
        decode_text=True,
        extra={"peername": ("127.0.0.1", 1)},
    )
    return channel, out, handle, drops


server = WebSocketWriter()


async def test_outgoing_joins_what_was_written_and_ends_after_it() -> None:
    out = Outgoing()
    out.write(b"ab")
    out.write(b"cd")
    assert await out.__anext__() == b"abcd"
    assert out.size == 0
    out.write(b"e")
    out.end()
    assert await out.__anext__() == b"e"
    with pytest.raises(StopAsyncIteration):
        await out.__anext__()
    with pytest.raises(ClientConnectionResetError):
        out.write(b"late")


async def test_outgoing_consumer_waits_for_a_write() -> None:
    out = Outgoing()
    task = asyncio.ensure_future(out.__anext__())
    await asyncio.sleep(0)
    assert not task.done()
    out.write(b"x")
    assert await task == b"x"


async def test_drain_waits_over_the_limit_until_the_consumer_takes_it() -> None:
    out = Outgoing()
    out.write(b"x" * (OUTGOING_LIMIT + 1))
    drain = asyncio.ensure_future(out.drain())
    await asyncio.sleep(0)
    assert not drain.done()
    await out.__anext__()
    await drain  # room again


async def test_end_with_an_error_drops_the_held_bytes_and_fails_a_waiting_writer() -> None:
    out = Outgoing()
    out.write(b"x" * (OUTGOING_LIMIT + 1))
    drain = asyncio.ensure_future(out.drain())
    await asyncio.sleep(0)
    out.end(ClientConnectionResetError("gone"))
    with pytest.raises(ClientConnectionResetError):
        await drain
    with pytest.raises(StopAsyncIteration):
        await out.__anext__()


async def test_send_writes_masked_frames_the_server_reads() -> None:
    channel, out, _, _ = make()
    await channel.send(b"hello", WSMsgType.TEXT)
    await channel.send(b"\x00\x01", WSMsgType.BINARY)
    await channel.send(b"p", WSMsgType.PING)
    data = await out.__anext__()
    assert data[1] & 0x80  # masked
    got = WebSocketReader(client=False).feed(data)
    assert [(m.type, m.data) for m in got] == [
        (WSMsgType.TEXT, "hello"),
        (WSMsgType.BINARY, b"\x00\x01"),
        (WSMsgType.PING, b"p"),
    ]


async def test_agreed_compression_is_used_and_read_back() -> None:
    channel, out, _, _ = make(compress=15)
    await channel.send(b"a" * 1000, WSMsgType.TEXT)
    data = await out.__anext__()
    assert data[0] & 0x40  # RSV1: compressed
    assert len(data) < 100
    got = WebSocketReader(client=False, compress=True).feed(data)
    assert got[0].data == "a" * 1000
    # and the server's compressed frames are inflated
    deflating = WebSocketWriter(compress=15)
    channel.feed_data(deflating.frame(WSMsgType.TEXT, b"b" * 1000, mask=False, compress=True))
    message = await channel.incoming.read()
    assert message.data == "b" * 1000


async def test_a_per_message_compress_without_agreement() -> None:
    channel, out, _, _ = make()
    await channel.send(b"c" * 500, WSMsgType.BINARY, compress=9)
    data = await out.__anext__()
    assert data[0] & 0x40
    got = WebSocketReader(client=False, compress=True).feed(data)
    assert got[0].data == b"c" * 500
    assert zlib.MAX_WBITS >= 9


async def test_incoming_bytes_become_messages_and_are_acknowledged() -> None:
    channel, _, handle, _ = make()
    frames = server.frame(WSMsgType.TEXT, b"hi", mask=False) + server.frame(
        WSMsgType.BINARY, b"\x01", mask=False
    )
    channel.feed_data(frames[:3])  # any split
    channel.feed_data(frames[3:])
    assert handle.acked == len(frames)
    first = await channel.incoming.read()
    second = await channel.incoming.read()
    assert (first.type, first.data) == (WSMsgType.TEXT, "hi")
    assert (second.type, second.data) == (WSMsgType.BINARY, b"\x01")


async def test_early_bytes_are_parsed_but_not_acknowledged_again() -> None:
    channel, _, handle, _ = make()
    channel.feed_early(server.frame(WSMsgType.TEXT, b"early", mask=False))
    assert handle.acked == 0
    assert (await channel.incoming.read()).data == "early"


async def test_a_paused_channel_holds_its_acknowledgements_until_read() -> None:
    channel, _, handle, _ = make()
    big = server.frame(WSMsgType.BINARY, b"x" * (3 * 2**16), mask=False)
    channel.feed_data(big)  # over 2 * 64 KiB: it pauses the channel, and is held
    more = server.frame(WSMsgType.BINARY, b"y" * 10, mask=False)
    channel.feed_data(more)
    assert handle.acked == 0  # held while paused: the broker's window stops it
    await channel.incoming.read()  # below the limit again: resumed
    assert handle.acked == len(big) + len(more)


async def test_a_protocol_error_reaches_the_reader_as_websocket_error() -> None:
    channel, _, _, _ = make(max_msg_size=10)
    channel.feed_data(server.frame(WSMsgType.TEXT, b"ok", mask=False))
    channel.feed_data(server.frame(WSMsgType.BINARY, b"z" * 100, mask=False))
    assert (await channel.incoming.read()).data == "ok"
    with pytest.raises(WebSocketError) as info:
        await channel.incoming.read()
    assert type(info.value) is WebSocketError  # aiohttp's own type, not a subclass
    assert info.value.code == WSCloseCode.MESSAGE_TOO_BIG


async def test_close_ends_the_outgoing_bytes_and_drops_the_stream_once() -> None:
    """As aiohttp's transport.close(): what was written still goes, then the end; the
    stream is dropped once it ended (at once if it had)."""
    channel, out, handle, drops = make()
    await channel.send(b"bye", WSMsgType.TEXT)
    channel.close()
    channel.close()
    assert drops == []
    with pytest.raises(ClientConnectionResetError):
        await channel.send(b"late", WSMsgType.TEXT)
    got = WebSocketReader(client=False).feed(await out.__anext__())
    assert [(m.type, m.data) for m in got] == [(WSMsgType.TEXT, "bye")]
    with pytest.raises(StopAsyncIteration):
        await out.__anext__()
    channel.feed_eof()  # the broker closed the connection after the worker's End
    assert drops == ["drop"]
    assert channel.get_extra_info("peername") == ("127.0.0.1", 1)
    assert channel.get_extra_info("nothing", 5) == 5

    channel, out, handle, drops = make()
    handle.done = True  # the stream ended before the WebSocket closed
    channel.close()
    channel.close()
    assert drops == ["drop"]
