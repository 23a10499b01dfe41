"""Metrics added up in-process are exported exactly once, in the right buckets."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from picscale.observability.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.exposition()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_requests_and_latency_are_flushed_into_prometheus_metrics() -> None:
    m = Metrics()
    m.observe_request("GET", "/x", 200, 0.0004)
    m.observe_request("GET", "/x", 200, 0.003)
    m.observe_request("GET", "/x", 404, 20.0)
    m.count_query("read", "replica", "db2:5432")
    m.cache_event("hit", 3)
    got = samples(m)  # exposition flushes first
    req = "picscale_http_requests_total"
    assert got[(req, (("method", "GET"), ("route", "/x"), ("status", "200")))] == 2
    assert got[(req, (("method", "GET"), ("route", "/x"), ("status", "404")))] == 1
    bucket = "picscale_http_request_duration_seconds_bucket"
    labels = (("method", "GET"), ("route", "/x"))
    assert got[(bucket, (("le", "0.001"), *labels))] == 1
    assert got[(bucket, (("le", "0.005"), *labels))] == 2  # cumulative
    assert got[(bucket, (("le", "10.0"), *labels))] == 2
    assert got[(bucket, (("le", "+Inf"), *labels))] == 3
    assert abs(got[("picscale_http_request_duration_seconds_sum", labels)] - 20.0034) < 1e-9
    queries = (("host", "db2:5432"), ("intent", "read"), ("role", "replica"))
    assert got[("picscale_db_queries_total", queries)] == 1
    assert got[("picscale_cache_events_total", (("event", "hit"),))] == 3

    # a second flush adds only what came since
    m.observe_request("GET", "/x", 200, 0.0004)
    again = samples(m)
    assert again[(req, (("method", "GET"), ("route", "/x"), ("status", "200")))] == 3
    assert again[(bucket, (("le", "+Inf"), *labels))] == 4


def test_cache_hit_ratio_load_time_and_store_figures_are_exported() -> None:
    m = Metrics()
    assert samples(m)[("picscale_cache_hit_ratio", ())] == 0.0  # nothing read yet
    m.cache_event("hit", 3)
    m.cache_event("miss", 1)
    m.cache_event("load", 1)
    m.cache_load(0.02)
    m.cache_store_figures({"evictions": 7.0, "memory_bytes": 1024.0})
    got = samples(m)
    assert got[("picscale_cache_hit_ratio", ())] == 0.75
    assert got[("picscale_cache_load_seconds_count", ())] == 1
    assert got[("picscale_cache_load_seconds_bucket", (("le", "0.01"),))] == 0
    assert got[("picscale_cache_load_seconds_bucket", (("le", "0.025"),))] == 1
    assert got[("picscale_cache_store", (("figure", "evictions"),))] == 7
