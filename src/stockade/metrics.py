"""Prometheus metrics, in a registry owned by one app (no process-global state).

Services receive the ``Metrics`` object and record what they do; ``/metrics`` and the
``--metrics-port`` listener expose the same registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from stockade.version import __version__

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "stockade_http_requests",
            "HTTP requests served, by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "stockade_http_request_duration_seconds",
            "Time from request start to the end of the response.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "stockade_rate_limited_requests",
            "Requests refused with 429, by category.",
            ["category"],
            registry=self.registry,
        )
        self.event_subscribers = Gauge(
            "stockade_event_subscribers",
            "Open SSE and WebSocket event streams.",
            registry=self.registry,
        )
        self.spawn_time = Histogram(
            "vm_spawn_time_seconds",
            "Time from asking a backend for a sandbox to the sandbox accepting commands.",
            ["backend"],
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.active_sandboxes = Gauge(
            "stockade_sandboxes_active",
            "Sandboxes running now, by backend.",
            ["backend"],
            registry=self.registry,
        )
        self.tasks = Gauge(
            "stockade_tasks",
            "Tasks by status (a task waiting for a person counts as running).",
            ["status"],
            registry=self.registry,
        )
        self.approvals_pending = Gauge(
            "stockade_approvals_pending",
            "Approvals waiting for a person now.",
            registry=self.registry,
        )
        self.approvals_decided = Counter(
            "stockade_approvals_decided",
            "Approvals that ended, by how: approved, denied or expired.",
            ["decision"],
            registry=self.registry,
        )
        self.approval_wait = Histogram(
            "stockade_approval_wait_seconds",
            "Time from an approval's request to its answer or expiry.",
            buckets=(0.05, 0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
            registry=self.registry,
        )
        self.job_runs = Counter(
            "stockade_job_runs",
            "Job runs that ended, by status: completed, failed or interrupted.",
            ["status"],
            registry=self.registry,
        )
        self.jobs_active = Gauge(
            "stockade_jobs_active", "Job runs under way on this daemon.", registry=self.registry
        )
        self.job_start_delay = Histogram(
            "stockade_job_start_delay_seconds",
            "From a job occurrence being due to its code starting in its sandbox.",
            buckets=(0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self._request_counters: dict[tuple[str, str, int], Counter] = {}
        self._latency_children: dict[tuple[str, str], Histogram] = {}
        info = Gauge(
            "stockade_build_info", "Stockade's version.", ["version"], registry=self.registry
        )
        info.labels(version=__version__).set(1)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its latency. Label children are kept, because
        looking them up through ``labels()`` takes a lock on every request."""
        key = (method, route, status)
        counter = self._request_counters.get(key)
        if counter is None:
            counter = self._request_counters[key] = self.http_requests.labels(
                method, route, str(status)
            )
        counter.inc()
        histogram = self._latency_children.get(key[:2])
        if histogram is None:
            histogram = self._latency_children[key[:2]] = self.http_latency.labels(method, route)
        histogram.observe(seconds)

    def observe_spawn(self, backend: str, seconds: float) -> None:
        self.spawn_time.labels(backend).observe(seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
