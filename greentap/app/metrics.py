"""Prometheus metrics for a forwarder: its plain-data stats as metric families.

Nothing here opens a socket but :func:`serve_metrics`: :func:`make_registry`
builds a ``prometheus_client`` registry whose collector reads
:meth:`Forwarder.stats` at scrape time, and :func:`make_wsgi_app` turns it
into a WSGI app (served on the forwarder's own hub by :func:`serve_metrics`,
through :meth:`Service.serve_wsgi`).  prometheus_client is used
rather than hand-written exposition: it gets the text format, escaping,
``_total``/``_created`` conventions and the process metrics right.

Metrics, all labelled ``endpoint`` and ``kind``::

    greentap_rx_packets_total, greentap_rx_bytes_total
    greentap_tx_packets_total, greentap_tx_bytes_total
    greentap_rx_dropped_total{reason=...}   unusable input (wrong_vni, unknown_sender, ...)
                                            or policed (rate_limited)
    greentap_tx_dropped_total{reason=...}   backpressure, link_down, error, too_big, ...
    greentap_endpoint_up                    0 once an endpoint has failed

and for the switch ``greentap_mac_table_entries``, ``greentap_mac_table_max_entries``,
``greentap_mac_table_refused_total``, ``greentap_mac_table_learned_total``,
``greentap_frames_flooded_total`` and, with VLAN ports,
``greentap_vlan_frames_total{vlan=...}``; plus ``greentap_info`` and the standard
``process_*`` and ``python_info`` metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from greentap._version import __version__
from greentap.errors import EndpointUnavailable

__all__ = ["ForwarderCollector", "drop_reasons", "make_registry", "make_wsgi_app", "serve_metrics"]

_LABELS = ["endpoint", "kind"]


def drop_reasons(port: dict[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    """Split one port's stats into ``(rx_reasons, tx_reasons)`` dicts.

    Ports that name their reasons (tunnels, pcap) report them; for the others
    (TAPs) the reasons follow from the counters.
    """
    drops = port.get("drops") or {}
    rx = {k[3:]: v for k, v in drops.items() if k.startswith("rx_")}
    tx = {k[3:]: v for k, v in drops.items() if k.startswith("tx_")}
    # Policed frames and VLAN drops are not errors; every other named rx reason is
    # counted in rx_errors.
    unexplained = port["rx_errors"] - sum(
        v for k, v in rx.items() if k != "rate_limited" and not k.startswith("vlan_")
    )
    if unexplained > 0:
        rx["invalid"] = unexplained
    if not tx:
        tx = {
            "backpressure": port["tx_dropped"],
            "link_down": port["tx_link_down"],
            "error": port["tx_errors"],
        }
    return rx, tx


class ForwarderCollector:
    """A prometheus_client collector reading a forwarder's stats at scrape time."""

    def __init__(self, forwarder: Any) -> None:
        self.forwarder = forwarder

    def collect(self) -> Iterator[Metric]:
        stats = self.forwarder.stats()
        families = {
            name: CounterMetricFamily(f"greentap_{name}", text, labels=_LABELS)
            for name, text in (
                ("rx_packets", "Frames received from the endpoint."),
                ("rx_bytes", "Bytes received from the endpoint."),
                ("tx_packets", "Frames (or datagrams) sent to the endpoint."),
                ("tx_bytes", "Bytes sent to the endpoint."),
            )
        }
        rx_dropped = CounterMetricFamily(
            "greentap_rx_dropped",
            "Input dropped as unusable, by reason.",
            labels=[*_LABELS, "reason"],
        )
        tx_dropped = CounterMetricFamily(
            "greentap_tx_dropped",
            "Frames not delivered to the endpoint, by reason.",
            labels=[*_LABELS, "reason"],
        )
        up = GaugeMetricFamily(
            "greentap_endpoint_up", "1 while the endpoint works.", labels=_LABELS
        )
        for port in stats["ports"]:
            labels = [port["endpoint"], port["kind"]]
            for name, family in families.items():
                family.add_metric(labels, port[name])
            rx, tx = drop_reasons(port)
            for reason, value in sorted(rx.items()):
                rx_dropped.add_metric([*labels, reason], value)
            for reason, value in sorted(tx.items()):
                tx_dropped.add_metric([*labels, reason], value)
            up.add_metric(labels, 0 if port.get("failed") else 1)
        yield from families.values()
        yield rx_dropped
        yield tx_dropped
        yield up
        switch = stats["switch"]
        if switch is not None:
            table = switch["mac_table"]
            yield GaugeMetricFamily(
                "greentap_mac_table_entries", "Learned MAC addresses.", value=table["size"]
            )
            yield GaugeMetricFamily(
                "greentap_mac_table_max_entries",
                "Bound of the MAC table.",
                value=table["max_entries"],
            )
            for name, text in (
                ("refused", "New MAC addresses not learned because the table was full."),
                ("learned", "MAC addresses learned."),
                ("moved", "MAC addresses that moved to another endpoint."),
                ("expired", "MAC addresses forgotten after the aging time."),
            ):
                yield CounterMetricFamily(f"greentap_mac_table_{name}", text, value=table[name])
            yield CounterMetricFamily(
                "greentap_frames_flooded", "Frames flooded to every other endpoint.",
                value=switch["flooded"],
            )  # fmt: skip
            vlans = switch.get("vlans")
            if vlans is not None:
                per_vlan = CounterMetricFamily(
                    "greentap_vlan_frames", "Frames switched within each 802.1Q VLAN.",
                    labels=["vlan"],
                )  # fmt: skip
                for vlan, frames in vlans.items():
                    per_vlan.add_metric([str(vlan)], frames)
                yield per_vlan
        info = GaugeMetricFamily(
            "greentap_info", "greentap version and forwarding mode.", labels=["version", "mode"]
        )
        info.add_metric([__version__, stats["mode"]], 1)
        yield info


def make_registry(forwarder: Any) -> prometheus_client.CollectorRegistry:
    """Return a registry with the forwarder's metrics and the process metrics."""
    registry = prometheus_client.CollectorRegistry()
    registry.register(ForwarderCollector(forwarder))
    prometheus_client.ProcessCollector(registry=registry)
    prometheus_client.PlatformCollector(registry=registry)
    return registry


def make_wsgi_app(forwarder: Any) -> Callable[..., Any]:
    """Return a WSGI app serving the forwarder's metrics in Prometheus text format."""
    return prometheus_client.make_wsgi_app(make_registry(forwarder))


def serve_metrics(service: Any, address: tuple[str, int], log: Any) -> tuple[str, int]:
    """Serve a service's Prometheus metrics on ``address`` (on its own hub).

    Args:
        service: a :class:`~greentap.app.service.Service` with ``stats()``.
        address: ``(host, port)``; port 0 picks one.
        log: where ``metrics_listening`` is logged.

    Returns:
        The address bound.

    Raises:
        EndpointUnavailable: the address cannot be bound.
    """
    try:
        host, port = service.serve_wsgi(make_wsgi_app(service), address)
    except OSError as exc:
        where = "[{}]:{}".format(*address) if ":" in address[0] else "{}:{}".format(*address)
        raise EndpointUnavailable.from_errno(
            exc.errno or 0, f"cannot serve --metrics on {where}"
        ) from exc
    log.info("metrics_listening", url=f"http://{host}:{port}/metrics")
    return host, port
