from broker.dns_cache import DNSCache


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


ADDR = [{"host": "127.0.0.1", "port": 80, "family": 2}]


def test_ttl_expiry():
    clock = Clock()
    c = DNSCache(ttl=10, clock=clock)
    assert c.get("h") is None
    c.put("h", ADDR)
    clock.now = 9.9
    assert c.get("h") == ADDR
    clock.now = 10.0
    assert c.get("h") is None
    assert (c.hits, c.misses) == (1, 2)


def test_no_ttl_keeps_forever():
    clock = Clock()
    c = DNSCache(ttl=None, clock=clock)
    c.put("h", ADDR)
    clock.now = 1e9
    assert c.get("h") == ADDR


def test_size_cap_evicts_least_recently_used():
    c = DNSCache(ttl=None, max_size=2)
    c.put("a", ADDR)
    c.put("b", ADDR)
    c.get("a")
    c.put("c", ADDR)
    assert c.get("b") is None
    assert c.get("a") == ADDR and c.get("c") == ADDR
    assert len(c) == 2


def test_clear_one_or_all():
    c = DNSCache()
    c.put("a", ADDR)
    c.put("b", ADDR)
    c.clear("a")
    assert c.get("a") is None and c.get("b") == ADDR
    c.clear()
    assert len(c) == 0
