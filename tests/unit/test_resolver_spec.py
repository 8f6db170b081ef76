import socket

import aiohttp.abc
import msgspec
import pytest

from shared.specs import DEFAULT_RESOLVER, PoolSpec, ResolverSpec
from worker_client.resolver import (
    AbstractResolver,
    AsyncResolver,
    DefaultResolver,
    ThreadedResolver,
    resolver_spec,
)


def test_default_is_threaded():
    assert DefaultResolver is ThreadedResolver
    assert resolver_spec(None) == DEFAULT_RESOLVER == ThreadedResolver().spec
    assert ThreadedResolver().spec.kind == "threaded"


def test_equal_arguments_equal_spec():
    a = AsyncResolver(nameservers=["127.0.0.1", "10.0.0.1:5353"], timeout=1, tries=2)
    b = AsyncResolver(("127.0.0.1", "10.0.0.1:5353"), tries=2, timeout=1)
    assert a is not b
    assert a.spec == b.spec and hash(a.spec) == hash(b.spec)
    assert len({a.spec, b.spec, ThreadedResolver().spec}) == 2
    assert a.spec == ResolverSpec(
        kind="async",
        nameservers=("127.0.0.1", "10.0.0.1:5353"),
        options=(("timeout", 1), ("tries", 2)),
    )


def test_none_option_is_the_default():
    assert AsyncResolver(timeout=None, udp_port=None).spec == AsyncResolver().spec


def test_spec_differs_by_kind_servers_order_and_options():
    specs = {
        ThreadedResolver().spec,
        AsyncResolver().spec,
        AsyncResolver(["127.0.0.1"]).spec,
        AsyncResolver(["127.0.0.1", "::1"]).spec,
        AsyncResolver(["::1", "127.0.0.1"]).spec,
        AsyncResolver(["127.0.0.1"], udp_port=5353).spec,
    }
    assert len(specs) == 6


def test_spec_crosses_the_wire():
    spec = AsyncResolver(["[::1]:5353"], timeout=0.5, rotate=True, lookups="b").spec
    pool = PoolSpec(resolver=spec)
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(pool), type=PoolSpec)
    assert decoded == pool and decoded.resolver == spec


def test_loop_argument_is_accepted_and_ignored():
    assert ThreadedResolver(loop=None).spec == DEFAULT_RESOLVER
    assert AsyncResolver(loop=None).spec == AsyncResolver().spec


class AiohttpStyleResolver(aiohttp.abc.AbstractResolver):
    async def resolve(self, host, port=0, family=socket.AF_INET):
        return []

    async def close(self):
        pass


class OwnAbstract(AbstractResolver):
    async def resolve(self, host, port=0, family=socket.AF_INET):
        return []

    async def close(self):
        pass


class Overriding(AsyncResolver):
    async def resolve(self, host, port=0, family=socket.AF_INET):
        return []


class Harmless(ThreadedResolver):
    """A subclass that changes nothing about resolution still has a spec."""


@pytest.mark.parametrize(
    "resolver",
    [AiohttpStyleResolver(), OwnAbstract(), Overriding(), object(), "8.8.8.8"],
    ids=["aiohttp-subclass", "own-abstract", "overrides-resolve", "object", "str"],
)
def test_foreign_resolver_is_refused(resolver):
    with pytest.raises(TypeError) as info:
        resolver_spec(resolver)
    message = str(info.value)
    assert type(resolver).__qualname__ in message
    assert "broker" in message and "cannot cross the process boundary" in message
    assert "ThreadedResolver()" in message and "AsyncResolver(nameservers=[...]" in message


def test_subclass_that_keeps_resolve_is_accepted():
    assert resolver_spec(Harmless()) == DEFAULT_RESOLVER
    assert resolver_spec(AsyncResolver(["127.0.0.1"])).nameservers == ("127.0.0.1",)


def test_unknown_options_are_named():
    with pytest.raises(TypeError, match="bogus, wat"):
        AsyncResolver(wat=1, bogus=2, timeout=1)


@pytest.mark.parametrize("name", ["servers", "domains", "sock_state_cb"])
def test_non_plain_pycares_options_are_refused(name):
    with pytest.raises(TypeError, match=name):
        AsyncResolver(**{name: ["x"]})


@pytest.mark.parametrize(
    "options",
    [{"tries": "3"}, {"tries": True}, {"timeout": "1"}, {"rotate": 1}, {"lookups": b"fb"}],
)
def test_option_types_are_checked(options):
    with pytest.raises(TypeError, match=next(iter(options))):
        AsyncResolver(**options)


@pytest.mark.parametrize(
    "options", [{"timeout": -1}, {"udp_port": 0}, {"tcp_port": 70000}, {"ndots": -2}]
)
def test_option_values_are_checked(options):
    with pytest.raises(ValueError, match=next(iter(options))):
        AsyncResolver(**options)


def test_nameservers_must_be_a_list_of_addresses():
    with pytest.raises(TypeError, match="not one string"):
        AsyncResolver(nameservers="127.0.0.1")
    with pytest.raises(TypeError, match="must be a str"):
        AsyncResolver(nameservers=[b"127.0.0.1"])
    bad_forms = ("dns.google", "127.0.0.1:0", "127.0.0.1:x", "[::1", "[::1]5353", "[::1]:", "1.2.3")
    for bad in bad_forms + ("[fe80::1%lo]:53",):
        with pytest.raises(ValueError, match="not an IP address"):
            AsyncResolver(nameservers=[bad])
    good = ["127.0.0.1", "127.0.0.1:5353", "::1", "[::1]:53", "fe80::1%lo", "[fe80::1]:53%lo"]
    assert AsyncResolver(nameservers=good).spec.nameservers == tuple(good)
