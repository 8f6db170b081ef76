"""The broker's key=value logs (``broker.logs``)."""

from __future__ import annotations

import logging

import pytest

from broker.logs import KeyValueFormatter, TextFormatter, event, scrub


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "broker.test"]


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> logging.Logger:
    caplog.set_level(logging.DEBUG, logger="broker.test")
    return logging.getLogger("broker.test")


def test_an_event_is_one_key_value_line(log, caplog):
    event(log, logging.INFO, "worker_connected", pid=123, uid=1000, reason="a b", empty="")
    (record,) = records(caplog)
    line = KeyValueFormatter().format(record)
    assert line.startswith("ts=") and line.split(" ", 1)[0].endswith("Z")
    assert line.split(" ", 1)[1] == (
        'level=info logger=broker.test event=worker_connected pid=123 uid=1000 reason="a b" '
        'empty=""'
    )
    assert record.getMessage() == 'worker_connected pid=123 uid=1000 reason="a b" empty=""'


def test_values_are_quoted_and_escaped_so_the_line_splits_back(log, caplog):
    event(log, logging.WARNING, "x", a='say "hi"', b="k=v", c="two\nlines", d=0.25, e=(1, 2))
    line = KeyValueFormatter().format(records(caplog)[0])
    assert "\n" not in line
    assert line.endswith(r'a="say \"hi\"" b="k=v" c="two\nlines" d=0.25 e=1,2')


def test_an_exception_stays_on_the_line(log, caplog):
    try:
        raise ValueError("bad thing")
    except ValueError as exc:
        event(log, logging.ERROR, "frame_failed", pid=1, exc_info=exc)
    line = KeyValueFormatter().format(records(caplog)[0])
    assert "\n" not in line
    assert 'exc="ValueError: bad thing"' in line and 'traceback="Traceback' in line


def test_a_record_of_a_library_is_an_event_log(caplog):
    caplog.set_level(logging.INFO, logger="asyncio.test")
    logging.getLogger("asyncio.test").info("Task was destroyed: %s", "x")
    (record,) = [r for r in caplog.records if r.name == "asyncio.test"]
    line = KeyValueFormatter().format(record)
    assert line.endswith('logger=asyncio.test event=log msg="Task was destroyed: x"')


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://user:pw@host:8080/a/b?token=x#frag tail", "http://host:8080/a/b tail"),
        ("url=https://u@example.com?q=1", "url=https://example.com"),
        ('"http://p:s@127.0.0.1:3128" and ws://h/p?x', '"http://127.0.0.1:3128" and ws://h/p'),
        ("no url here: a@b?c", "no url here: a@b?c"),
        # what yarl leaves unencoded: an apostrophe (a sub-delim) in userinfo, path, query
        ("http://us:pa'ss@h/x", "http://h/x"),
        ("http://h/it's?token=s3cret", "http://h/it's"),
        ("http://h/p?q=it's&token=s3cret#f'", "http://h/p"),
        # a raw '@' in a password: everything up to the last '@' of the authority goes
        ("http://u:p@ss@h/x", "http://h/x"),
    ],
)
def test_scrub_takes_credentials_and_queries_out_of_urls(text, expected):
    assert scrub(text) == expected


def test_urls_are_scrubbed_in_fields_messages_and_exceptions(log, caplog):
    event(log, logging.INFO, "request_failed", url="http://u:secret1@h/p?token=secret2")
    logging.getLogger("broker.test").warning("plain http://u:secret3@h/?k=secret4")
    try:
        raise OSError("cannot reach http://u:secret5@h/")
    except OSError as exc:
        event(log, logging.ERROR, "x", exc_info=exc)
    for fmt in (KeyValueFormatter(), TextFormatter()):
        text = "\n".join(fmt.format(r) for r in records(caplog))
        assert "secret" not in text, text
        assert "http://h/p" in text
    assert "secret" not in records(caplog)[0].getMessage()


def test_a_quoted_url_in_a_quoted_value_keeps_the_line_splittable(log, caplog):
    """A message's or an exception's quotes are escaped (``\\"``) before the line is
    scrubbed: the scrub must not take the backslash of an escaped quote after a URL."""
    try:
        raise ValueError('bad url "http://u:pw@h/p?token=s3cret" here')
    except ValueError as exc:
        event(log, logging.WARNING, "x", exc_info=exc)
    logging.getLogger("broker.test").warning('got "http://h/q#frag"')
    kv = KeyValueFormatter()
    line, plain = (kv.format(r) for r in records(caplog))
    assert "s3cret" not in line and "pw@" not in line
    assert r'exc="ValueError: bad url \"http://h/p\" here"' in line
    assert plain.endswith(r'event=log msg="got \"http://h/q\""')
