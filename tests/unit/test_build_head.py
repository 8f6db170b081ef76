from yarl import URL

from broker.exchange import build_head


def test_get_adds_host_and_no_length():
    head = build_head("GET", URL("http://example.com:8080/a?b=1"), [("Accept", "*/*")],
                      None, False, False)
    assert head == (
        b"GET /a?b=1 HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\n\r\n"
    )


def test_default_port_and_ipv6_host():
    assert b"Host: example.com\r\n" in build_head(
        "GET", URL("http://example.com:80/"), [], None, False, False
    )
    assert b"Host: [::1]:81\r\n" in build_head(
        "GET", URL("http://[::1]:81/"), [], None, False, False
    )


def test_body_length_replaces_user_framing_headers():
    head = build_head(
        "POST", URL("http://h/"),
        [("Content-Length", "999"), ("Transfer-Encoding", "chunked")], 3, False, False
    )
    assert head.count(b"Content-Length") == 1 and b"Content-Length: 3\r\n" in head
    assert b"Transfer-Encoding" not in head


def test_streamed_body_is_chunked_unless_a_length_is_given():
    assert b"Transfer-Encoding: chunked\r\n" in build_head(
        "POST", URL("http://h/"), [], None, True, False
    )
    head = build_head("POST", URL("http://h/"), [("Content-Length", "10")], None, True, False)
    assert b"Content-Length: 10\r\n" in head and b"chunked" not in head


def test_post_without_body_sends_zero_length_and_user_host_wins():
    head = build_head("POST", URL("http://h/"), [("Host", "other")], None, False, False)
    assert b"Content-Length: 0\r\n" in head
    assert b"Host: other\r\n" in head and b"Host: h" not in head


def test_skip_host():
    assert b"Host" not in build_head("GET", URL("http://h/"), [], None, False, True)


def test_http10_asks_for_keep_alive_except_for_a_chunked_body():
    url = URL("http://h/p")
    plain = build_head("POST", url, [], 3, False, False, (1, 0))
    assert b"Connection: keep-alive\r\n" in plain
    # HTTP/1.0 has no chunked framing: the connection must end with this exchange
    chunked = build_head("POST", url, [], None, True, False, (1, 0))
    assert b"Transfer-Encoding: chunked\r\n" in chunked
    assert b"keep-alive" not in chunked
    assert b"keep-alive" not in build_head("GET", url, [], None, False, False, (1, 0), True)
