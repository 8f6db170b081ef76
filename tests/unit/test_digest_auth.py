"""The digest computation and challenge handling of ``DigestAuthMiddleware`` (pure),
against RFC 7616's and RFC 2617's worked examples and aiohttp's own test cases."""

from __future__ import annotations

import hashlib
import re

import pytest
from yarl import URL

from worker_client import ClientError, DigestAuthMiddleware
from worker_client.digest_auth import digest_response, parse_header_pairs

# RFC 7616 section 3.9.1.
RFC7616 = dict(
    username="Mufasa",
    password="Circle of Life",
    realm="http-auth@example.org",
    nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    method="GET",
    uri="/dir/index.html",
    qop="auth",
    nc="00000001",
    cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
)


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_examples(algorithm, expected):
    assert digest_response(algorithm=algorithm, **RFC7616) == expected


def test_rfc2617_example():
    assert (
        digest_response(
            username="Mufasa", password="Circle Of Life", realm="testrealm@host.com",
            nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", method="GET",
            uri="/dir/index.html", qop="auth", nc="00000001", cnonce="0a4f113b",
        )
        == "6629fae49393a05397450978507c4ef1"
    )


@pytest.mark.parametrize(
    ("algorithm", "fn"), [("MD5-sess", hashlib.md5), ("SHA-256-SESS", hashlib.sha256)]
)
def test_session_algorithms(algorithm, fn):
    def h(s: str) -> str:
        return fn(s.encode()).hexdigest()

    p = RFC7616
    secret = h(":".join((p["username"], p["realm"], p["password"])))
    ha1 = h(":".join((secret, p["nonce"], p["cnonce"])))
    ha2 = h("GET:" + p["uri"])
    expected = h(":".join((ha1, p["nonce"], p["nc"], p["cnonce"], "auth", ha2)))
    assert digest_response(algorithm=algorithm, **p) == expected


def test_no_qop_and_auth_int():
    h = lambda s: hashlib.md5(s).hexdigest()  # noqa: E731
    ha1, ha2 = h(b"u:r:p"), h(b"POST:/x")
    plain = digest_response(username="u", password="p", realm="r", nonce="n",
                            method="post", uri="/x")
    assert plain == h(f"{ha1}:n:{ha2}".encode())
    ha2_int = h(f"POST:/x:{h(b'body')}".encode())
    with_int = digest_response(username="u", password="p", realm="r", nonce="n",
                               method="POST", uri="/x", qop="auth-int", nc="00000001",
                               cnonce="c", entity=b"body")
    assert with_int == h(f"{ha1}:n:00000001:c:auth-int:{ha2_int}".encode())


def _params(header: str) -> dict[str, str]:
    return {k: q or t for k, q, t in re.findall(r'(\w+)=(?:"([^"]*)"|([^\s,]+))', header)}


async def test_encode_answers_the_challenge_and_counts_nonces():
    mw = DigestAuthMiddleware("Mufasa", "Circle of Life")
    mw._challenge = {
        "realm": RFC7616["realm"], "nonce": RFC7616["nonce"], "qop": "auth, auth-int",
        "algorithm": "sha-256", "opaque": "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
    }
    url = URL("http://www.example.org/dir/a%2Fb?q=%20", encoded=True)
    first = _params(await mw._encode("GET", url, b""))
    second = _params(await mw._encode("GET", url, b""))
    assert first["algorithm"] == "sha-256"  # the server's spelling, as aiohttp
    assert first["qop"] == "auth-int"  # preferred when offered, as aiohttp
    assert first["uri"] == "/dir/a%2Fb?q=%20"  # the target as sent
    assert first["opaque"] == mw._challenge["opaque"]
    assert (first["nc"], second["nc"]) == ("00000001", "00000002")
    assert first["cnonce"] != second["cnonce"]
    assert first["response"] == digest_response(
        username="Mufasa", password="Circle of Life", realm=RFC7616["realm"],
        nonce=RFC7616["nonce"], method="GET", uri=first["uri"], algorithm="SHA-256",
        qop="auth-int", nc="00000001", cnonce=first["cnonce"],
    )
    mw._challenge["nonce"] = "fresh"  # a new nonce (stale=true) starts counting again
    assert _params(await mw._encode("GET", url, b""))["nc"] == "00000001"


async def test_quotes_in_values_are_escaped():
    mw = DigestAuthMiddleware('a"b\\c', "p")
    mw._challenge = {"realm": 'r"ealm', "nonce": "n"}
    header = await mw._encode("GET", URL("http://h/"), b"")
    assert 'username="a\\"b\\\\c"' in header and 'realm="r\\"ealm"' in header
    assert "qop=" not in header and "nc=" not in header


@pytest.mark.parametrize(
    ("challenge", "message"),
    [
        ({"nonce": "n"}, "Missing 'realm'"),
        ({"realm": "r"}, "Missing 'nonce'"),
        ({"realm": "r", "nonce": ""}, "empty 'nonce'"),
        ({"realm": "r", "nonce": "n", "algorithm": "MD4"}, "Unsupported hash algorithm"),
        ({"realm": "r", "nonce": "n", "qop": "auth-conf"}, "Quality of Protection"),
    ],
)
async def test_bad_challenges(challenge, message):
    mw = DigestAuthMiddleware("u", "p")
    mw._challenge = challenge
    with pytest.raises(ClientError, match=message):
        await mw._encode("GET", URL("http://h/"), b"")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('realm="example.com", nonce="12345", qop="auth"',
         {"realm": "example.com", "nonce": "12345", "qop": "auth"}),
        ("realm=example.com, nonce=12345, qop=auth",
         {"realm": "example.com", "nonce": "12345", "qop": "auth"}),
        ('realm="ex,ample", nonce=12345, qop="auth", domain="/test"',
         {"realm": "ex,ample", "nonce": "12345", "qop": "auth", "domain": "/test"}),
        ('Digest realm="example.com", nonce="12345", qop="auth"',
         {"realm": "example.com", "nonce": "12345", "qop": "auth"}),
        ('realm="test",nonce="123",qop="auth"', {"realm": "test", "nonce": "123", "qop": "auth"}),
        ('realm  =  "test"  ,  nonce  =  "123"', {"realm": "test", "nonce": "123"}),
        ('realm="test\\"realm", nonce="123"', {"realm": 'test"realm', "nonce": "123"}),
        ("realm='test', nonce=123", {"realm": "'test'", "nonce": "123"}),
        ("", {}),
        ('realm="protected", nonce="n1", qop="auth", Basic realm="other"',
         {"realm": "protected", "nonce": "n1", "qop": "auth"}),
        ('Digest realm="protected", nonce="n1", Basic realm="other"',
         {"realm": "protected", "nonce": "n1"}),
    ],
)
def test_parse_header_pairs(header, expected):
    """aiohttp's cases for ``parse_header_pairs``."""
    assert parse_header_pairs(header) == expected


@pytest.mark.parametrize(
    ("login", "password", "message"),
    [(None, "p", "None is not allowed as login"), ("u", None, "None is not allowed as password"),
     ("u:x", "p", 'A ":" is not allowed')],
)
def test_bad_credentials(login, password, message):
    with pytest.raises(ValueError, match=message):
        DigestAuthMiddleware(login, password)


def test_protection_space():
    mw = DigestAuthMiddleware("u", "p")
    mw._protection_space = ["http://h/api", "http://h/docs/"]
    assert mw._in_protection_space(URL("http://h/api"))
    assert mw._in_protection_space(URL("http://h/api/users"))
    assert not mw._in_protection_space(URL("http://h/apiv2"))
    assert mw._in_protection_space(URL("http://h/docs/x"))
    assert not mw._in_protection_space(URL("http://other/api"))
