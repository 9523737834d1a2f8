"""``--stats``: one log line of counters and rates per endpoint, every N seconds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["StatsReporter"]


class StatsReporter:
    """Log a service's counters, with the rates since the previous report.

    Called with anything that has ``stats()`` in the shape of
    :meth:`Forwarder.stats <greentap.app.forwarder.Forwarder.stats>`.  Rates
    (``rx_pps``, ``tx_pps``, ``rx_bps``, ``tx_bps``) are over the time since
    the previous report of the same endpoint.

    Args:
        log: a structlog-style logger.
        clock: a monotonic clock in seconds.
    """

    def __init__(self, log: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.clock = clock
        # By endpoint name: ports join and leave, so positions move.
        self._previous: dict[str, tuple[float, dict[str, Any]]] = {}

    def __call__(self, service: Any) -> None:
        now = self.clock()
        stats = service.stats()
        previous, self._previous = self._previous, {}
        for port in stats["ports"]:
            rates = {}
            last = previous.get(port["endpoint"])
            if last is not None and now > last[0]:
                dt = now - last[0]
                for side in ("rx", "tx"):
                    packets = port[f"{side}_packets"] - last[1][f"{side}_packets"]
                    octets = port[f"{side}_bytes"] - last[1][f"{side}_bytes"]
                    rates[f"{side}_pps"] = round(packets / dt, 1)
                    rates[f"{side}_bps"] = round(octets * 8 / dt)
            self._previous[port["endpoint"]] = (now, port)
            self.log.info("stats", **port, **rates)
        switch = stats["switch"]
        if switch is not None:
            self.log.info("switch_stats", **switch["mac_table"], runts=switch["runts"])
