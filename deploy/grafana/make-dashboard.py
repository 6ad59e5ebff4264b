#!/usr/bin/env python3
"""Writes chatgate.json, the Grafana dashboard for chatgate's /metrics.

Run it after changing a panel: python3 deploy/grafana/make-dashboard.py
`tests/metrics.rs` checks that every metric the dashboard queries exists.
"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
panels = []


def sel(metric, extra=""):
    return metric + '{instance=~"$instance"' + extra + "}"


def add(panel, x, y, w, h):
    panel["id"] = len(panels) + 1
    panel["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
    panels.append(panel)


def row(title, y):
    add({"type": "row", "title": title, "collapsed": False, "panels": []}, 0, y, 24, 1)


def series(title, exprs, x, y, w=8, h=8, unit="short"):
    targets = [{"datasource": DS, "expr": e, "legendFormat": l, "refId": chr(65 + i)} for i, (e, l) in enumerate(exprs)]
    add({"type": "timeseries", "title": title, "datasource": DS,
         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
         "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
         "targets": targets}, x, y, w, h)


def stat(title, expr, x, y, unit="short"):
    add({"type": "stat", "title": title, "datasource": DS,
         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
         "options": {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"},
         "targets": [{"datasource": DS, "expr": expr, "refId": "A"}]}, x, y, 4, 4)


def quantile(q, metric):
    return f"histogram_quantile({q}, sum by (le) (rate({sel(metric + '_bucket')}[5m])))"


def mean(metric):
    return f"sum(rate({sel(metric + '_sum')}[5m])) / sum(rate({sel(metric + '_count')}[5m]))"


def rate(metric, by=None, extra="", window="1m"):
    inner = f"rate({sel(metric, extra)}[{window}])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


y = 0
row("Overview", y)
y += 1
stat("Connections open", f"sum({sel('chatgate_connections')})", 0, y)
stat("Messages in /s", rate("chatgate_frames_received_total", extra=',type=~"once|group"'), 4, y, "ops")
stat("Deliveries /s", rate("chatgate_messages_delivered_total"), 8, y, "ops")
stat("Routing p99", quantile(0.99, "chatgate_routing_latency_seconds"), 12, y, "s")
stat("Unavailable /s", rate("chatgate_unavailable_answers_total"), 16, y, "ops")
stat("Uptime (youngest node)", f"min({sel('chatgate_uptime_seconds')})", 20, y, "s")
y += 4
row("Connections", y)
y += 1
series("Connections open", [(sel("chatgate_connections"), "{{instance}}")], 0, y)
series("Upgrades /s", [(rate("chatgate_connections_accepted_total", "instance"), "accepted {{instance}}"),
                       (rate("chatgate_connections_refused_total", "reason"), "refused: {{reason}}")], 8, y, unit="ops")
series("Disconnects /s", [(rate("chatgate_disconnects_total", "code"), "close {{code}}"),
                          (rate("chatgate_slow_consumer_closes_total"), "slow consumers"),
                          (rate("chatgate_close_linger_timeouts_total"), "close never finished")], 16, y, unit="ops")
y += 8
row("Messages", y)
y += 1
series("Client frames by type /s", [(rate("chatgate_frames_received_total", "type"), "{{type}}")], 0, y, unit="ops")
series("Deliveries and acks /s", [(rate("chatgate_messages_delivered_total"), "delivered"),
                                  (rate("chatgate_acks_total", "status"), "ack {{status}}"),
                                  (rate("chatgate_unavailable_answers_total"), "unavailable")], 8, y, unit="ops")
series("Errors by code /s", [(rate("chatgate_errors_total", "code"), "{{code}}")], 16, y, unit="ops")
y += 8
series("Routing latency (read → every local outbox, or broker confirm)",
       [(quantile(q, "chatgate_routing_latency_seconds"), f"p{q * 100:g}") for q in (0.5, 0.9, 0.99, 0.999)],
       0, y, w=12, unit="s")
series("Bytes queued in client outboxes", [(sel("chatgate_outbox_queued_bytes"), "{{instance}}")], 12, y, w=12,
       unit="bytes")
y += 8
row("Broker (RabbitMQ)", y)
y += 1
series("AMQP messages /s", [(rate("chatgate_broker_published_total", "instance"), "published {{instance}}"),
                            (rate("chatgate_broker_consumed_total", "instance"), "consumed {{instance}}"),
                            (rate("chatgate_broker_duplicates_total", "instance"), "redelivered, dropped {{instance}}")],
       0, y, unit="ops")
series("Chat frames per AMQP message", [(mean("chatgate_broker_frames_per_message"), "mean"),
                                        (quantile(0.99, "chatgate_broker_frames_per_message"), "p99")], 8, y)
series("Publish → confirm", [(quantile(q, "chatgate_broker_confirm_latency_seconds"), f"p{q * 100:g}")
                             for q in (0.5, 0.99)], 16, y, unit="s")
y += 8
series("Outage buffer", [(sel("chatgate_broker_buffer_bytes"), "{{instance}}")], 0, y, w=12, unit="bytes")
series("Broker reconnects (5 min)",
       [(f"sum by (link) (increase({sel('chatgate_broker_reconnects_total')}[5m]))", "{{link}}")], 12, y, w=12)
y += 8
row("Presence (Redis)", y)
y += 1
series("Presence round trips /s", [(rate("chatgate_presence_operations_total", "op"), "{{op}}")], 0, y, unit="ops")
series("Presence latency and pipelines", [(quantile(0.99, "chatgate_presence_latency_seconds"), "p99 round trip (s)"),
                                          (mean("chatgate_presence_pipeline_size"), "writes per pipeline")], 8, y)
series("Sweeps and re-syncs (5 min)",
       [(f"sum(increase({sel('chatgate_presence_nodes_swept_total')}[5m]))", "dead nodes swept"),
        (f"sum(increase({sel('chatgate_presence_resyncs_total')}[5m]))", "re-syncs after data loss")], 16, y)

dashboard = {
    "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource", "pluginId": "prometheus",
                  "pluginName": "Prometheus"}],
    "title": "chatgate", "uid": "chatgate", "editable": True, "schemaVersion": 39, "version": 1,
    "tags": ["chatgate"], "time": {"from": "now-1h", "to": "now"}, "refresh": "10s",
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
        {"name": "instance", "type": "query", "datasource": DS, "label": "Node",
         "query": "label_values(chatgate_build_info, instance)", "includeAll": True, "multi": True,
         "allValue": ".*", "refresh": 2, "current": {"text": "All", "value": "$__all"}},
    ]},
    "panels": panels,
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chatgate.json")
with open(out, "w") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")
