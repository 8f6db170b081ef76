"""The jar protocol end to end: ``BrokerJar`` over the jar channel against real brokers,
jars shared and kept apart between processes, the cookie file across a SIGKILL, bad jar
frames, the caps."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from http.cookies import Morsel, SimpleCookie

import pytest
from yarl import URL

import broker
from broker.blocking import BlockingPeer
from broker.cookie_store import CookieStore
from broker.jars import UNKNOWN_JAR
from broker.peercred import trusted_broker_uids
from broker.stats import fetch_stats
from shared.errors import ErrorCode
from shared.messages import (
    Failure,
    Head,
    JarClose,
    JarCount,
    JarDone,
    JarFailed,
    JarFilter,
    JarLoad,
    JarOpen,
    JarUpdate,
    Request,
    Stats,
    StatsRequest,
)
from shared.specs import JarSpec
from worker_client.exceptions import BrokerConnectionError
from worker_client.jar_channel import BrokerJar, channel

from ..conftest import ROOT, wait_until
from . import _workers
from .apps import text_app
from .raw_worker import RawWorker, raw_workers  # noqa: F401  (the fixture)

TRUSTED = trusted_broker_uids()
SITE = URL("http://example.com/a/b")


def morsels(*pairs: tuple[str, str], **attrs: str | bool) -> list[tuple[str, Morsel[str]]]:
    jar: SimpleCookie = SimpleCookie()
    for name, value in pairs:
        jar[name] = value
        for attr, attr_value in attrs.items():
            jar[name][attr.replace("_", "-")] = attr_value
    return list(jar.items())


def sent(jar: BrokerJar, url: URL | str) -> dict[str, str]:
    return {name: m.value for name, m in jar.filter(URL(url)).items()}


def unique_name() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def jar_figures(path: str) -> list[dict]:
    return fetch_stats(path).jars


# -- spawned processes (importable under spawn) ------------------------------------------------


def set_in_named_jar(path: str, name: str, cookie: str, value: str) -> int:
    jar = BrokerJar(path, trusted_broker_uids(), JarSpec(name=name))
    jar.update(morsels((cookie, value)), URL("http://example.com/"))
    return jar.count()


def read_named_jar(path: str, name: str) -> dict[str, str]:
    return sent(BrokerJar(path, trusted_broker_uids(), JarSpec(name=name)), "http://example.com/")


def use_anothers_token(path: str, token: bytes, url: str) -> tuple[str, str]:
    """From another process: a jar call and a request naming ``token``."""
    try:
        channel(path, trusted_broker_uids()).call([JarCount(0, token)])
    except RuntimeError as exc:
        call_error = str(exc)
    else:
        call_error = "no error"
    with BlockingPeer(path) as peer:
        peer.handshake()
        peer.send(Request(1, "GET", url, jar=token))
        reply = peer.receive()
    assert isinstance(reply, Failure), reply
    return call_error, f"{reply.code}: {reply.message}"


# -- every call ----------------------------------------------------------------------------------


def test_every_call_through_broker_jar(broker_process):
    path = broker_process.socket_path
    jar = BrokerJar(path, TRUSTED, JarSpec())
    assert len(jar.token) == 16
    jar.update(morsels(("a", "1"), ("b", "2 3")), SITE)
    jar.update(morsels(("d", "4"), domain="example.com", path="/", secure=True), SITE)
    jar.update(morsels(("x", "9")), URL("http://other.org/"))
    assert jar.count() == 4
    assert sent(jar, "http://example.com/a/c") == {"a": "1", "b": "2 3"}
    assert sent(jar, "https://www.example.com/") == {"d": "4"}
    assert jar.filter(URL("http://example.com/a/"))["b"].coded_value == '"2 3"'

    dumped = jar.dump()
    assert dumped["example.com|/a"]["a"]["host_only"] is True
    assert dumped["example.com|"]["d"]["secure"] is True
    other = BrokerJar(path, TRUSTED, JarSpec())
    assert other.count() == 0
    other.load(dumped)
    assert other.dump() == dumped

    jar.delete([("example.com", "/a", "a"), ("other.org", "/", "x")])
    assert sent(jar, "http://example.com/a/c") == {"b": "2 3"}
    assert jar.count() == 2
    jar.delete(None)
    assert jar.count() == 0 and jar.dump() == {}
    assert other.count() == 4  # apart from the first

    before = next(f for f in jar_figures(path) if f["name"] is None)["jars"]
    jar.close()
    other.close()
    assert BrokerJar(path, TRUSTED, JarSpec()).count() == 0  # a call sends the closes
    assert next(f for f in jar_figures(path) if f["name"] is None)["jars"] == before - 1


def test_bad_data_is_a_value_error_and_a_refusal_a_runtime_error(broker_process):
    path = broker_process.socket_path
    jar = BrokerJar(path, TRUSTED, JarSpec())
    jar.update(morsels(("keep", "1")), SITE)
    for bad in ({"no bar": {}}, {"example.com|": {"a": {"key": "a"}}}, {"a|": {"b": [1]}}, 3):
        with pytest.raises(ValueError):
            jar.load(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        jar.filter(URL("http://[::1"))  # not a URL the broker takes
    assert jar.count() == 1  # nothing changed, and the channel lives on
    refused = BrokerJar(path, TRUSTED, JarSpec(treat_as_secure_origin=("",)))
    with pytest.raises(ValueError, match="treat_as_secure_origin"):
        refused.count()  # opened in front of its first call
    assert refused.token not in channel(path, TRUSTED).specs
    jar.close()
    channel(path, TRUSTED).call([])  # sends the close
    with pytest.raises(RuntimeError, match="no cookie jar"):
        jar.count()


def test_big_updates_and_loads_go_in_frames_below_the_cap(broker_process):
    path = broker_process.socket_path
    jar = BrokerJar(path, TRUSTED, JarSpec())
    value = "v" * 4000
    for d in range(20):  # 20 domains x 150 cookies of 4 KB: 12 MB in all
        jar.update(morsels(*[(f"c{i}", value) for i in range(150)]), URL(f"http://d{d}.org/"))
    assert jar.count() == 3000
    dumped = jar.dump()
    copy = BrokerJar(path, TRUSTED, JarSpec())
    copy.load(dumped)
    assert copy.count() == 3000
    assert copy.dump() == dumped
    # one update of 1.2 MB goes in two frames; the broker's caps apply as in-process
    big = BrokerJar(path, TRUSTED, JarSpec())
    cookies = morsels(*[(f"k{i}", value) for i in range(300)])
    big.update(cookies, URL("http://one.org/"))
    local = CookieStore()
    local.update_cookies(cookies, URL("http://one.org/"))
    assert big.dump() == local.dump()
    assert 0 < big.count() <= 180
    copy.delete([(f"d{d}.org", "/", f"c{i}") for d in range(20) for i in range(150)])
    assert copy.count() == 0
    # many small cookies: split by count too (a frame holds MAX_JAR_RECORDS at most)
    small = morsels(*[(f"s{i}", "1") for i in range(5000)])
    copy.update(small, URL("http://many.org/"))
    alone = CookieStore()
    alone.update_cookies(small, URL("http://many.org/"))
    assert copy.count() == len(alone) > 0


def test_calls_from_many_threads(broker_process):
    jar = BrokerJar(broker_process.socket_path, TRUSTED, JarSpec())
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(30):
                jar.update(morsels((f"t{n}-{i}", str(i))), SITE)
                assert sent(jar, SITE)[f"t{n}-{i}"] == str(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert jar.count() == 180


# -- processes -----------------------------------------------------------------------------------


def test_two_processes_share_a_named_jar(broker_process):
    path, name = broker_process.socket_path, unique_name()
    (count,) = _workers.run_in_processes(set_in_named_jar, [(path, name, "login", "s3cr3t")])
    assert count == 1
    (seen,) = _workers.run_in_processes(read_named_jar, [(path, name)])
    assert seen == {"login": "s3cr3t"}
    here = BrokerJar(path, TRUSTED, JarSpec(name=name))
    assert sent(here, "http://example.com/") == {"login": "s3cr3t"}
    other_settings = BrokerJar(path, TRUSTED, JarSpec(name=name, unsafe=True))
    assert sent(other_settings, "http://example.com/") == {}


async def test_an_unnamed_jar_is_refused_to_another_process(
    broker_process, serve_app, raw_workers  # noqa: F811
):
    path = broker_process.socket_path
    url = await serve_app(text_app("hello")) + "/"
    jar = BrokerJar(path, TRUSTED, JarSpec())
    jar.update(morsels(("mine", "1")), SITE)
    (result,) = _workers.run_in_processes(use_anothers_token, [(path, jar.token, url)])
    call_error, failure = result
    assert call_error == UNKNOWN_JAR
    assert failure == f"{ErrorCode.PROTOCOL}: {UNKNOWN_JAR}"
    assert jar.count() == 1  # untouched
    # this process may name it in a request (on a connection other than the channel's)
    worker = await RawWorker.connect(path)
    worker.send(Request(1, "GET", url, jar=jar.token))
    assert isinstance(await worker.next(), Head)


def test_a_forked_child_gets_jars_of_its_own(broker_process):
    # The child's jar objects open new tokens (the parent's are the parent's): a named
    # jar is the group's there too, an unnamed one starts empty; and the parent's jars
    # are not opened again by the child (a parent with many jars would fill the child's
    # share of the broker's cap).
    name = unique_name()
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {ROOT!r})
        from yarl import URL
        from worker_client import CookieJar
        from worker_client.jar_channel import channel
        from broker.peercred import trusted_broker_uids
        path = sys.argv[1]
        named = CookieJar(name={name!r}, broker=path)
        mine = CookieJar(broker=path)
        extra = [CookieJar(broker=path) for _ in range(300)]
        for jar in (named, mine, *extra):
            jar.update_cookies({{"p": "parent"}}, URL("http://example.com/"))
        pid = os.fork()
        if pid == 0:
            ok = len(named) == 1 and len(mine) == 0
            mine.update_cookies({{"c": "child"}}, URL("http://example.com/"))
            ok = ok and len(mine) == 1 and len(channel(path, trusted_broker_uids()).specs) == 2
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert [m.key for m in mine] == ["p"] and len(named) == 1
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script, broker_process.socket_path],
        capture_output=True, timeout=30,
    )
    assert done.stdout == b"ok\n", done.stderr.decode()
    assert done.stderr == b""  # no ResourceWarning at exit either


# -- durability ------------------------------------------------------------------------------


def _file_has(path: str, value: str) -> bool:
    try:
        with open(path, "rb") as f:
            return value.encode() in f.read()
    except FileNotFoundError:
        return False


async def test_a_named_jar_survives_a_sigkill(tmp_path):
    sock, cookie_file = str(tmp_path / "b.sock"), str(tmp_path / "cookies.json")
    name = unique_name()
    with broker.start(sock, export=False, cookie_file=cookie_file) as proc:
        jar = BrokerJar(sock, TRUSTED, JarSpec(name=name))
        unnamed = BrokerJar(sock, TRUSTED, JarSpec())
        jar.update(morsels(("session", "s1")), SITE)  # no expiry: kept all the same
        jar.update(morsels(("lasting", "l1"), max_age="3600"), SITE)
        unnamed.update(morsels(("gone", "1")), SITE)
        await wait_until(  # another process's file: no event to wait on
            lambda: _file_has(cookie_file, "s1") and _file_has(cookie_file, "l1"),
            what="the cookie file's save",
        )
        proc.process.send_signal(signal.SIGKILL)
        proc.process.wait()
    with broker.start(sock, export=False, cookie_file=cookie_file):
        # the same objects: the channel finds its connection gone, reconnects, reopens
        assert sent(jar, "http://example.com/a/") == {"session": "s1", "lasting": "l1"}
        assert unnamed.count() == 0  # an unnamed jar lives as long as its broker
        again = BrokerJar(sock, TRUSTED, JarSpec(name=name))
        assert again.count() == 2


def test_a_lost_broker_is_a_broker_connection_error(tmp_path):
    sock = str(tmp_path / "b.sock")
    with broker.start(sock, export=False) as proc:
        jar = BrokerJar(sock, TRUSTED, JarSpec())
        proc.process.send_signal(signal.SIGKILL)
        proc.process.wait()
    with pytest.raises(BrokerConnectionError):
        jar.count()
    with pytest.raises(BrokerConnectionError):
        BrokerJar(sock, TRUSTED, JarSpec()).count()


def test_a_truncated_cookie_file_is_moved_aside_and_the_broker_starts(tmp_path, capfd):
    sock, cookie_file = str(tmp_path / "b.sock"), tmp_path / "cookies.json"
    doc = {"version": 1, "jars": [{"name": "site", "unsafe": False, "quote_cookie": True,
                                   "treat_as_secure_origin": [], "cookies": {}}]}
    text = json.dumps(doc).encode()
    cookie_file.write_bytes(text[:-10])
    with broker.start(sock, export=False, cookie_file=cookie_file):
        jar = BrokerJar(sock, TRUSTED, JarSpec(name="site"))
        assert jar.count() == 0
        jar.update(morsels(("new", "1")), SITE)
    (aside,) = tmp_path.glob("cookies.json.corrupt-*")
    assert aside.read_bytes() == text[:-10]
    err = capfd.readouterr().err
    assert "level=error" in err and "corrupt" in err and str(aside) in err
    assert _file_has(str(cookie_file), '"new"')  # the final save at stop


# -- bad frames and caps ----------------------------------------------------------------------


async def test_bad_jar_frames_get_jar_failed_and_the_broker_lives(
    broker_process, raw_workers  # noqa: F811
):
    path = broker_process.socket_path
    w = await RawWorker.connect(path)
    token = os.urandom(16)
    w.send(JarCount(1, token))
    assert await w.next() == JarFailed(1, UNKNOWN_JAR)
    w.send(JarOpen(2, token, JarSpec()))
    assert await w.next() == JarDone(2, 0)
    bad_calls = [
        JarUpdate(3, token, "http://example.com/", [("a", {"key": "a"})]),
        JarUpdate(4, token, "http://example.com/", [("a", {"key": "a", "value": "1",
                                                            "coded_value": "1", "path": 1.5})]),
        JarUpdate(5, token, "http://[bad", []),
        JarLoad(6, token, {"x": {}}),
        JarLoad(7, token, {"x|": {"a": {"key": "a", "value": "1", "coded_value": "1",
                                        "expires_timestamp": float("nan")}}}),
        JarFilter(8, token, "http://[bad"),
    ]
    w.send(*bad_calls)
    for msg in bad_calls:
        reply = await w.next()
        assert isinstance(reply, JarFailed) and reply.call == msg.call and reply.invalid, reply
    w.send(JarCount(9, token), StatsRequest())
    assert await w.next() == JarDone(9, 0)
    assert isinstance(await w.next(), Stats)
    # a frame that does not decode closes that connection only
    w.send(JarOpen(10, b"short", JarSpec()))
    assert (await w.until(lambda m: False))[-1].code == "protocol"
    other = await RawWorker.connect(path)
    other.send(StatsRequest())
    assert isinstance(await other.next(), Stats)


async def test_the_jar_caps(tmp_path, raw_workers):  # noqa: F811
    sock = str(tmp_path / "b.sock")
    with broker.start(sock, export=False):
        w = await RawWorker.connect(sock)
        tokens = [os.urandom(16) for _ in range(1024)]
        w.send(*[JarOpen(i, t, JarSpec()) for i, t in enumerate(tokens)])
        replies = [await w.next() for _ in tokens]
        assert all(isinstance(r, JarDone) for r in replies)
        # the cap is the process's: another connection of this process shares it
        other = await RawWorker.connect(sock)
        other.send(JarOpen(2000, os.urandom(16), JarSpec()))
        over = await other.next()
        assert isinstance(over, JarFailed) and "max_jars" in over.message
        # closed from either connection, a token makes room
        other.send(*[JarClose(t) for t in tokens[:65]])
        # named jars: 64 for the broker's life, whoever asks
        named = [JarOpen(3000 + i, os.urandom(16), JarSpec(name=f"n{i}")) for i in range(64)]
        other.send(*named)
        assert all(isinstance(r, JarDone) for r in [await other.next() for _ in named])
        other.send(JarOpen(4000, os.urandom(16), JarSpec(name="one too many")))
        over = await other.next()
        assert isinstance(over, JarFailed) and "named cookie jars" in over.message
        figures = fetch_stats(sock).jars
        assert len(figures) == 65 and figures[-1] == {"name": None, "jars": 959, "cookies": 0}


def test_http_broker_stats_shows_the_jars(broker_process):
    path, name = broker_process.socket_path, unique_name()
    jar = BrokerJar(path, TRUSTED, JarSpec(name=name))
    jar.update(morsels(("a", "1"), ("b", "2")), SITE)
    out = subprocess.run(
        [sys.executable, "-m", "broker", "stats", "--socket", path, "--json"],
        capture_output=True, check=True, timeout=30,
    ).stdout
    (figure,) = [f for f in json.loads(out)["jars"] if f["name"] == name]
    assert figure["cookies"] == 2 and figure["open"] == 1


def test_a_silent_broker_is_a_timeout_and_the_next_call_reconnects(tmp_path, monkeypatch):
    """A listener that greets and then answers nothing: each call waits its own
    deadline, and a call after a timeout starts on a new connection."""
    from shared.framing import FrameReader, encode
    from shared.messages import PROTOCOL_VERSION, Welcome
    from worker_client import jar_channel

    monkeypatch.setattr(jar_channel, "CALL_TIMEOUT", 0.3)
    path = str(tmp_path / "silent.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    listener.settimeout(10)
    accepted: list[socket.socket] = []

    def serve() -> None:
        while len(accepted) < 2:
            conn, _ = listener.accept()
            accepted.append(conn)
            FrameReader().feed(conn.recv(1 << 16))  # the Hello
            conn.sendall(encode(Welcome(PROTOCOL_VERSION, os.getpid())))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        started = time.monotonic()
        jar = BrokerJar(path, TRUSTED, JarSpec())
        with pytest.raises(BrokerConnectionError, match="in time"):
            jar.count()
        assert 0.25 < time.monotonic() - started < 3
        with pytest.raises(BrokerConnectionError, match="in time"):
            jar.count()
        server.join(5)
        assert len(accepted) == 2
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
        channel(path, TRUSTED).close()
