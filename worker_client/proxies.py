"""A request's proxies, as the worker decides them: ``proxy=``, ``proxy_auth=``,
``proxy_headers=`` and ``trust_env=`` become a ``shared.specs.ProxyRoute`` that the
request carries encoded (``Request.proxy``); the engine picks each hop's proxy from it.

As aiohttp 3.14: an explicit ``proxy=`` (the request's, else the session's) serves every
hop whatever its scheme, with ``proxy_auth=`` (else the URL's credentials) as its
``Proxy-Authorization``. Without one, ``trust_env=True`` reads the proxies from this
process's environment as ``urllib.request.getproxies_environment`` does (``http_proxy``,
``https_proxy``, ``no_proxy``, either case, lower case first; an ``https://`` proxy there
is ignored with a warning, as aiohttp does), with credentials from the proxy URL or from
``~/.netrc`` (``NETRC``); ``no_proxy`` goes to the engine, which applies it per hop
(``shared.rules.proxy_bypass``). ``trust_env=True`` also gives a request without
credentials the ``.netrc`` entry of its host as ``Authorization``.

Costs: a request without any of these pays a field read; a fixed route (the session's
``proxy=``, or the same request arguments again) is encoded once and kept
(``_ROUTES``: at most 64 routes of at most ``MAX_PROXY_ROUTE`` bytes); ``trust_env`` costs
a look at the environment and a ``stat`` of the netrc file per request, the file being
read again (in a thread) only when it changed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec
from multidict import CIMultiDict
from yarl import URL

from shared.messages import MAX_PROXY_ROUTE
from shared.rules import proxy_header_problem
from shared.specs import ProxyRoute, ProxySpec, decode_proxy, encode_proxy

from .exceptions import InvalidURL
from .helpers import BasicAuth

if TYPE_CHECKING:  # netrc, pathlib and urllib.request: imported with trust_env only
    import netrc
    from pathlib import Path

__all__ = ["EnvProxies", "fixed_route", "netrc_auth"]

log = logging.getLogger("worker_client.proxies")

_SCHEMES = frozenset(("http", "https"))
# A WebSocket's schemes as the http ones its upgrade goes as (ws_connect), and so the
# environment's ws_proxy/wss_proxy stand for http_proxy/https_proxy for it.
WS_SCHEMES = {"ws": "http", "wss": "https"}
_ROUTES: dict[tuple[Any, ...], bytes] = {}
_ROUTES_MAX = 64


def proxy_spec(proxy: Any, proxy_auth: Any, proxy_headers: Any) -> ProxySpec:
    """One proxy as aiohttp takes it; its errors are aiohttp's."""
    try:
        url = proxy if isinstance(proxy, URL) else URL(proxy)
    except (ValueError, TypeError) as exc:
        raise InvalidURL(proxy) from exc
    if proxy_auth and not isinstance(proxy_auth, BasicAuth):
        raise ValueError("proxy_auth must be None or BasicAuth() tuple")
    if url.scheme not in _SCHEMES:
        raise InvalidURL(proxy, "a proxy URL must be http:// or https://")
    if not url.raw_host:
        raise InvalidURL(proxy, "the proxy URL has no host")
    auth = proxy_auth or BasicAuth.from_url(url)
    return ProxySpec(
        url=str(url.origin()),
        authorization=auth.encode() if auth else "",
        headers=_headers(proxy_headers),
    )


def _headers(proxy_headers: Any) -> tuple[tuple[str, str], ...]:
    if not proxy_headers:
        return ()
    items = proxy_headers.items() if isinstance(proxy_headers, Mapping) else proxy_headers
    out = tuple((str(k), str(v)) for k, v in CIMultiDict(items).items())
    for name, value in out:
        problem = proxy_header_problem(name, value)
        if problem is not None:
            raise ValueError(problem)
    return out


def fixed_route(proxy: Any, proxy_auth: Any, proxy_headers: Any) -> bytes:
    """The encoded route of an explicit ``proxy=``: every hop through it. Kept, so the
    same arguments again cost a dict look-up."""
    if proxy_auth and not isinstance(proxy_auth, BasicAuth):
        raise ValueError("proxy_auth must be None or BasicAuth() tuple")
    key = (str(proxy), proxy_auth or None, _headers_key(proxy_headers))
    got = _ROUTES.get(key)
    if got is None:
        spec = proxy_spec(proxy, proxy_auth, proxy_headers)
        got = _encoded(ProxyRoute(http=spec, https=spec))
        if len(_ROUTES) >= _ROUTES_MAX:
            _ROUTES.clear()
        _ROUTES[key] = got
    return got


def _headers_key(proxy_headers: Any) -> Any:
    if not proxy_headers:
        return ()
    items = proxy_headers.items() if isinstance(proxy_headers, Mapping) else proxy_headers
    return tuple((str(k), str(v)) for k, v in items)


def _encoded(route: ProxyRoute) -> bytes:
    data = encode_proxy(route)
    try:  # what the engine will decode: the bounds of ProxyRoute's fields
        decode_proxy(data)
    except msgspec.ValidationError as exc:
        raise ValueError(f"proxy settings out of bounds: {exc}") from None
    if len(data) > MAX_PROXY_ROUTE:
        raise ValueError(f"the proxy settings are over {MAX_PROXY_ROUTE} bytes encoded")
    return data


# -- the environment (trust_env=True) -----------------------------------------------------


def _netrc_path() -> Path | None:
    from pathlib import Path

    env = os.environ.get("NETRC")
    if env is not None:
        return Path(env)
    try:
        return Path.home() / ".netrc"
    except RuntimeError:
        return None


def _stat_key(path: Path | None) -> tuple[Any, ...]:
    if path is None:
        return (None,)
    try:
        st = path.stat()
    except OSError:
        return (str(path), None)
    return (str(path), st.st_mtime_ns, st.st_size, st.st_ino)


def _read_netrc(path: Path | None) -> netrc.netrc | None:
    """aiohttp's ``netrc_from_env``: None (and a logged warning) if it cannot be read."""
    import netrc

    if path is None:
        return None
    try:
        return netrc.netrc(str(path))
    except netrc.NetrcParseError as exc:
        log.warning("Could not parse .netrc file: %s", exc)
    except OSError as exc:
        if os.environ.get("NETRC") is not None or path.is_file():
            log.warning("Could not read .netrc file: %s", exc)
    return None


def _from_netrc(obj: netrc.netrc | None, host: str | None) -> BasicAuth | None:
    """aiohttp's ``basicauth_from_netrc``, None for no entry."""
    if obj is None or host is None:
        return None
    entry = obj.authenticators(host)
    if entry is None:
        return None
    login, account, password = entry
    username = login if (login or account is None) else account
    return BasicAuth(username, password or "")


class EnvProxies:
    """This process's proxy settings and netrc, read again when they change."""

    def __init__(self) -> None:
        self._netrc_key: tuple[Any, ...] | None = None
        self._netrc: netrc.netrc | None = None
        self._route_key: tuple[Any, ...] | None = None
        self._route = b""

    async def netrc(self) -> netrc.netrc | None:
        path = _netrc_path()
        key = _stat_key(path)
        if key != self._netrc_key:
            self._netrc = await asyncio.to_thread(_read_netrc, path)
            self._netrc_key = key
        return self._netrc

    async def route(self, websocket: bool = False) -> bytes:
        """The environment's route, encoded (b"": no proxy in the environment). For a
        WebSocket's upgrade (``websocket``), ``ws_proxy`` and ``wss_proxy`` stand for
        ``http_proxy`` and ``https_proxy``, as aiohttp reads them for ws:// and wss://."""
        import urllib.request

        proxies = urllib.request.getproxies_environment()
        if websocket:
            wanted = {WS_SCHEMES[k]: v for k, v in proxies.items() if k in WS_SCHEMES}
        else:
            wanted = {k: v for k, v in proxies.items() if k in _SCHEMES}
        if not wanted:
            return b""
        obj = await self.netrc()
        key = (tuple(sorted(wanted.items())), proxies.get("no"), self._netrc_key)
        if key != self._route_key:
            self._route = _encoded(_env_route(wanted, proxies.get("no"), obj))
            self._route_key = key
        return self._route


def _env_route(
    wanted: dict[str, str], no_proxy: str | None, obj: netrc.netrc | None
) -> ProxyRoute:
    specs: dict[str, ProxySpec] = {}
    for scheme, value in wanted.items():
        url = URL(value)
        if url.scheme == "https":
            log.warning("HTTPS proxies %s are not supported, ignoring", url.with_user(None))
            continue
        auth = BasicAuth.from_url(url)  # aiohttp's strip_auth_from_url
        if auth is not None:
            url = url.with_user(None)
        # a value such as "host:port" (no scheme, no host) is InvalidURL, as in aiohttp
        specs[scheme] = proxy_spec(url, auth or _from_netrc(obj, url.host), None)
    return ProxyRoute(
        http=specs.get("http"),
        https=specs.get("https"),
        no_proxy=tuple(no_proxy.split(",")) if no_proxy else (),
    )


async def netrc_auth(env: EnvProxies, host: str | None) -> BasicAuth | None:
    """trust_env: the netrc entry for ``host``, as aiohttp's ``_get_netrc_auth``."""
    return _from_netrc(await env.netrc(), host)
