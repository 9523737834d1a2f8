"""How --workers adds up its workers' counters (pure data, no processes)."""

from greentap.app.supervisor import _without_gauges, combine


def snapshot(rx, tx, drops=None, entries=None, failed=None):
    ports = [
        {"endpoint": "a", "kind": "tap", "rx_packets": rx, "tx_packets": tx,
         "drops": drops or {}, "failed": failed},
        {"endpoint": "b", "kind": "tap", "rx_packets": tx, "tx_packets": rx,
         "drops": {}, "failed": None},
    ]  # fmt: skip
    switch = None
    if entries is not None:
        switch = {"flooded": 1, "mac_table": {"entries": entries, "max_entries": 8, "refused": 2}}
    return {"mode": "wire" if switch is None else "switch", "ports": ports, "switch": switch}


def test_counters_and_drops_are_summed_per_endpoint():
    """Each endpoint's counters and drop reasons are the sum over the workers."""
    total = combine([snapshot(5, 7, {"rx_rate_limited": 1}), None, snapshot(10, 1, {"x": 2})])
    a, b = total["ports"]
    assert (a["endpoint"], a["rx_packets"], a["tx_packets"]) == ("a", 15, 8)
    assert a["drops"] == {"rx_rate_limited": 1, "x": 2}
    assert (b["rx_packets"], b["tx_packets"]) == (8, 15)
    assert total["mode"] == "wire"


def test_a_failure_in_any_worker_shows():
    """An endpoint failed in one worker is reported failed."""
    total = combine([snapshot(1, 1), snapshot(1, 1, failed="gone")])
    assert total["ports"][0]["failed"] == "gone"


def test_a_dead_workers_table_size_is_not_counted_but_its_counters_are():
    """When a worker is replaced, its learned/refused counters stay in the totals,
    its table size does not (the new worker starts empty)."""
    retired = _without_gauges(snapshot(3, 3, entries=5))
    total = combine([retired, snapshot(1, 1, entries=2)])
    table = total["switch"]["mac_table"]
    assert table["entries"] == 2 and table["refused"] == 4
    assert total["switch"]["flooded"] == 2


def test_nothing_to_combine():
    """No report yet: None."""
    assert combine([None, None]) is None
