"""The broker's cookie file: round trip, coalesced saves, atomic replace, corrupt files."""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import stat

import pytest

from broker.jar_file import CookieFile, parse_document, write_atomically
from broker.jars import JarTable
from shared.messages import JarDone, JarOpen, JarUpdate
from shared.specs import JarSpec
from tests.conftest import wait_until

NOW = 1_700_000_000.0
OWNER, PID = object(), 1
SITE = JarSpec(name="site", treat_as_secure_origin=("http://127.0.0.1:8080",))
OTHER = JarSpec(name="other", unsafe=True, quote_cookie=False)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_doc(path: str) -> dict:
    return json.loads(read_bytes(path))


def set_cookies(table: JarTable, spec: JarSpec, url: str, *pairs: tuple[str, dict]) -> None:
    token = os.urandom(16)
    assert isinstance(table.apply(OWNER, PID, JarOpen(1, token, spec))[0], JarDone)
    records = [(n, {"key": n, "value": v, "coded_value": v, **a}) for n, (v, a) in pairs]
    assert isinstance(table.apply(OWNER, PID, JarUpdate(2, token, url, records))[0], JarDone)


def filled_table(clock=lambda: NOW) -> JarTable:
    table = JarTable(clock=clock)
    set_cookies(
        table, SITE, "http://example.com/a/b",
        ("session", ("s1", {})),
        ("lasting", ("l1", {"max-age": "3600", "secure": True, "httponly": True})),
        ("wide", ("w1", {"domain": "example.com", "path": "/"})),
    )
    set_cookies(table, OTHER, "http://10.0.0.1/", ("ip", ("i1", {})))
    set_cookies(table, JarSpec(), "http://example.com/", ("unnamed", ("u1", {})))
    return table


async def saved(table: JarTable, path: str) -> CookieFile:
    cookie_file = CookieFile(path, table, delay=0.01)
    cookie_file.start()
    cookie_file.changed()
    await cookie_file.close()
    return cookie_file


async def test_round_trip_keeps_named_jars_session_cookies_included(tmp_path):
    path = str(tmp_path / "cookies.json")
    table = filled_table()
    await saved(table, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    doc = read_doc(path)
    assert doc["version"] == 1
    assert {jar["name"] for jar in doc["jars"]} == {"site", "other"}  # not the unnamed one

    again = JarTable(clock=lambda: NOW)
    CookieFile(path, again).load()
    assert again.named.keys() == {SITE, OTHER}
    assert again.named_contents() == table.named_contents()
    sent = again.named[SITE].filter_cookies("https://www.example.com/a/c")
    assert {n: m.value for n, m in sent.items()} == {"wide": "w1"}
    sent = again.named[SITE].filter_cookies("https://example.com/a/c")
    assert {n: m.value for n, m in sent.items()} == {"wide": "w1", "session": "s1", "lasting": "l1"}
    assert again.named[SITE].filter_cookies("https://example.com/a/c")["lasting"]  # its flags
    assert [m["httponly"] for m in again.named[SITE] if m.key == "lasting"] == [True]


async def test_expired_cookies_are_not_restored(tmp_path):
    path = str(tmp_path / "cookies.json")
    await saved(filled_table(), path)
    later = JarTable(clock=lambda: NOW + 7200)
    CookieFile(path, later).load()
    assert sorted(m.key for m in later.named[SITE]) == ["session", "wide"]


async def test_changes_are_saved_soon_and_coalesced(tmp_path):
    path = str(tmp_path / "cookies.json")
    table = JarTable(clock=lambda: NOW)
    cookie_file = CookieFile(path, table, delay=0.05)
    cookie_file.start()
    for i in range(20):
        set_cookies(table, SITE, "http://example.com/", (f"c{i}", ("v", {})))
    assert not os.path.exists(path)  # not at once: later, in one save
    await wait_until(lambda: cookie_file.saves >= 1, what="a save")
    assert cookie_file.saves == 1
    assert len(read_doc(path)["jars"][0]["cookies"]["example.com|"]) == 20
    set_cookies(table, SITE, "http://example.com/", ("late", ("v", {})))
    await cookie_file.close()  # the last change is saved on close
    assert "late" in read_doc(path)["jars"][0]["cookies"]["example.com|"]
    assert cookie_file.saves == 2
    set_cookies(table, SITE, "http://example.com/", ("after", ("v", {})))
    assert cookie_file.saves == 2  # closed: no more saves


async def test_reading_a_jar_schedules_no_save(tmp_path):
    path = str(tmp_path / "cookies.json")
    table = filled_table()
    cookie_file = CookieFile(path, table, delay=0.01)
    cookie_file.start()
    table.named[SITE].filter_cookies("http://example.com/")
    await cookie_file.close()
    assert cookie_file.saves == 0 and not os.path.exists(path)


@pytest.fixture
def small_file_limit():
    """Writes past 64 KiB fail with EFBIG (a real failing write, as a full disk makes)."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_a_failed_write_leaves_the_old_file(tmp_path, small_file_limit):
    path = str(tmp_path / "cookies.json")
    write_atomically(path, b"old contents")
    with pytest.raises(OSError):
        write_atomically(path, b"x" * (200 * 1024))
    assert read_bytes(path) == b"old contents"
    assert os.listdir(tmp_path) == ["cookies.json"]  # no temporary file left behind


async def test_a_failed_save_is_logged_and_tried_again_on_close(tmp_path, caplog):
    path = str(tmp_path / "cookies.json")
    table = filled_table()
    await saved(table, path)
    before = read_bytes(path)
    set_cookies(table, SITE, "http://example.com/", ("big", ("v" * 4000, {})))
    cookie_file = CookieFile(path, table, delay=0.01)
    cookie_file.start()
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, old_limit[1]))
    try:
        cookie_file.changed()
        await wait_until(
            lambda: "cookie_file_save_failed" in caplog.text, what="the logged failure"
        )
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert read_bytes(path) == before
    await cookie_file.close()
    assert "big" in read_doc(path)["jars"][0]["cookies"]["example.com|"]


async def test_a_failed_save_is_tried_again_without_another_change(tmp_path, caplog):
    # The directory goes away, a cookie is set, the directory comes back: the cookie
    # reaches the file by itself (a SIGKILL then must not lose it).
    directory = tmp_path / "d"
    directory.mkdir()
    path = str(directory / "cookies.json")
    table = filled_table()
    cookie_file = CookieFile(path, table, delay=0.01)
    cookie_file.start()
    directory.rename(tmp_path / "away")
    set_cookies(table, SITE, "http://example.com/", ("login", ("yes", {})))
    await wait_until(lambda: "cookie_file_save_failed" in caplog.text, what="the logged failure")
    (tmp_path / "away").rename(directory)
    await wait_until(lambda: os.path.exists(path), timeout=10, what="the retried save")
    assert "login" in read_doc(path)["jars"][0]["cookies"]["example.com|"]
    assert caplog.text.count("cookie_file_save_failed") == 1  # once per run of failures
    await cookie_file.close()


def corrupt_documents() -> dict[str, bytes]:
    good = {"version": 1, "jars": [{"name": "site", "unsafe": False, "quote_cookie": True,
                                    "treat_as_secure_origin": [], "cookies": {}}]}
    bad_record = json.loads(json.dumps(good))
    bad_record["jars"][0]["cookies"] = {"example.com|/": {"a": {"key": "a", "value": 1}}}
    text = json.dumps(good).encode()
    return {
        "truncated": text[: len(text) // 2],
        "not json": b"\x00\xffnot json",
        "wrong version": json.dumps({**good, "version": 2}).encode(),
        "jars not a list": json.dumps({"version": 1, "jars": {}}).encode(),
        "bad spec": json.dumps({"version": 1, "jars": [{"name": ""}]}).encode(),
        "bad cookie record": json.dumps(bad_record).encode(),
        "deeply nested": b"[" * 100_000,
    }


@pytest.mark.parametrize("kind", corrupt_documents())
def test_a_corrupt_file_is_moved_aside_and_logged(tmp_path, caplog, kind):
    path = tmp_path / "cookies.json"
    content = corrupt_documents()[kind]
    path.write_bytes(content)
    table = JarTable()
    with caplog.at_level(logging.ERROR, logger="broker.jar_file"):
        CookieFile(str(path), table).load()
    assert table.named == {}
    assert not path.exists()
    (aside,) = tmp_path.glob("cookies.json.corrupt-*")
    assert aside.read_bytes() == content
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "corrupt" in record.getMessage() and str(aside) in record.getMessage()


def test_no_file_is_an_empty_start(tmp_path, caplog):
    table = JarTable()
    CookieFile(str(tmp_path / "none.json"), table).load()
    assert table.named == {} and not caplog.records


def test_parse_document_checks_the_structure():
    with pytest.raises(ValueError, match="version"):
        parse_document([])
    with pytest.raises(ValueError, match="treat_as_secure_origin"):
        parse_document({"version": 1, "jars": [
            {"name": "a", "unsafe": False, "quote_cookie": True,
             "treat_as_secure_origin": "x", "cookies": {}}]})


def test_a_cookie_file_in_a_missing_directory_is_refused_at_start(tmp_path):
    with pytest.raises(OSError, match="does not exist"):
        CookieFile(str(tmp_path / "none" / "cookies.json"), JarTable()).load()
