"""Distributed tracing shared by both tiers: W3C ``traceparent`` in, spans out.

One request is one trace across processes: the application's ``traceparent`` (HTTP
header or gRPC metadata) is continued by the edge agent, whose spans travel to the cloud
core as the ``tp`` key of the request header on the wire, and on to Triton as an HTTP
header / gRPC metadata. Only the traceparent string crosses threads and processes, so
nothing here depends on an OpenTelemetry context being current in the right thread.

Tracing is off by default. Off, no OpenTelemetry module is imported and no span exists,
but a valid incoming traceparent still passes through unchanged (W3C asks intermediaries
to propagate), so a traced application still links to a traced cloud core. On, spans go
to the configured exporter: ``otlp`` (OTLP over HTTP; needs the ``otlp`` extra),
``console`` (one JSON document per span on stdout), or ``file`` (one JSON line per span
appended to ``tracing.file``: every process of a test or a small deployment writes one
file a script can read, no collector needed).

A malformed traceparent is never an error: it is ignored and counted
(:func:`bad_traceparents`), and the request carries on untraced.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import model_validator

from contract.config import ConfigPath, StrictModel

__all__ = [
    "TRACEPARENT",
    "Span",
    "TraceparentCollector",
    "Tracer",
    "TracingConfig",
    "bad_traceparents",
    "clean_traceparent",
    "current_traceparent",
    "tracer_for",
    "valid_traceparent",
]

log = logging.getLogger(__name__)

#: The W3C header / metadata key.
TRACEPARENT = "traceparent"
_TP = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_bad_lock = threading.Lock()
_bad = 0
_current: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tiersplit_traceparent", default=None)


class TracingConfig(StrictModel):
    """The ``tracing:`` section of ``edge.yaml`` and ``cloud.yaml``.

    Attributes:
        enabled: record spans (off by default: a traceparent is then only passed on).
        exporter: ``otlp`` (OTLP/HTTP to ``endpoint``), ``console`` (stdout), ``file``
            (JSON lines appended to ``file``) or ``none`` (spans made, nothing exported).
        endpoint: the OTLP/HTTP traces URL (default: the exporter's own, or the standard
            ``OTEL_EXPORTER_OTLP_*`` environment variables).
        service_name: ``service.name`` of the spans (default: ``tiersplit-edge`` or
            ``tiersplit-cloud``).
        file: where ``exporter: file`` writes.
    """

    enabled: bool = False
    exporter: Literal["none", "otlp", "console", "file"] = "none"
    endpoint: str | None = None
    service_name: str | None = None
    file: ConfigPath | None = None

    @model_validator(mode="after")
    def _file_for_file_exporter(self) -> TracingConfig:
        if self.exporter == "file" and self.file is None:
            raise ValueError("exporter: file needs tracing.file (where spans are written)")
        return self


def valid_traceparent(value: object) -> bool:
    """Whether ``value`` is a W3C traceparent a receiver may continue."""
    if not isinstance(value, str) or len(value) > 512:
        return False
    m = _TP.match(value)
    if m is None:
        return False
    version, trace_id, span_id, _flags, rest = m.groups()
    if version == "ff" or trace_id == "0" * 32 or span_id == "0" * 16:
        return False
    return version != "00" or rest is None


def clean_traceparent(value: object) -> str | None:
    """``value`` if it is a valid traceparent; None (counted when not absent) otherwise."""
    global _bad
    if value is None or value == "":
        return None
    if valid_traceparent(value):
        return str(value)
    with _bad_lock:
        _bad += 1
    return None


def bad_traceparents() -> int:
    """How many malformed traceparents this process has ignored."""
    with _bad_lock:
        return _bad


class TraceparentCollector:
    """A Prometheus collector of :func:`bad_traceparents`, read at scrape time; each tier
    registers one under its own metric prefix (``tiersplit_edge`` / ``tiersplit_cloud``)."""

    def __init__(self, prefix: str) -> None:
        self.name = f"{prefix}_traceparents_ignored"

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily(self.name, "Malformed W3C traceparents ignored (this process)",
                                  value=bad_traceparents())


def current_traceparent() -> str | None:
    """The traceparent of the innermost :meth:`Tracer.active` span on this thread (what a
    backend forwards to Triton), or None."""
    return _current.get()


class Span:
    """A started span (or, tracing off, a stand-in that passes the parent on).

    Attributes:
        traceparent: what a child of this span is given: this span's own traceparent, or
            the parent's unchanged when tracing is off.
    """

    def __init__(self, otel: Any = None, traceparent: str | None = None) -> None:
        self._otel = otel
        self.traceparent = traceparent

    def set(self, key: str, value: Any) -> None:
        if self._otel is not None and value is not None:
            self._otel.set_attribute(key, value)

    def error(self, message: str) -> None:
        if self._otel is not None:
            from opentelemetry.trace import Status, StatusCode

            self._otel.set_status(Status(StatusCode.ERROR, message[:200]))

    def end(self, end_ns: int | None = None) -> None:
        if self._otel is not None:
            self._otel.end(end_time=end_ns)


class Tracer:
    """Spans of one service; a no-op pass-through when tracing is off."""

    def __init__(self, cfg: TracingConfig, service: str) -> None:
        self.enabled = cfg.enabled
        self._provider: Any = None
        self._tracer: Any = None
        self._prop: Any = None
        if not cfg.enabled:
            return
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider = TracerProvider(resource=Resource.create(
            {"service.name": cfg.service_name or service}))
        processor = _processor(cfg)
        if processor is not None:
            self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("tiersplit")
        self._prop = TraceContextTextMapPropagator()

    def add_processor(self, processor: Any) -> None:
        """Send spans to another processor too (tests: an in-memory exporter)."""
        if self._provider is not None:
            self._provider.add_span_processor(processor)

    def _context(self, parent: str | None) -> Any:
        return None if parent is None else self._prop.extract({TRACEPARENT: parent})

    def span(self, name: str, parent: str | None,
             attributes: Mapping[str, Any] | None = None, *, start_ns: int | None = None,
             links: Sequence[str] = ()) -> Span:
        """Start a span under ``parent`` (a traceparent; None starts a new trace).
        ``links`` are traceparents of other traces this span also serves (a batch)."""
        if self._tracer is None:
            return Span(traceparent=parent)
        from opentelemetry import trace

        otel_links = []
        for tp in links:
            ctx = trace.get_current_span(self._context(tp)).get_span_context()
            if ctx.is_valid:
                otel_links.append(trace.Link(ctx))
        attrs = {k: v for k, v in (attributes or {}).items() if v is not None}
        span = self._tracer.start_span(name, context=self._context(parent), attributes=attrs,
                                       start_time=start_ns, links=otel_links)
        carrier: dict[str, str] = {}
        self._prop.inject(carrier, context=trace.set_span_in_context(span))
        return Span(span, carrier.get(TRACEPARENT))

    def record(self, name: str, parent: str | None, start_ns: int, end_ns: int,
               attributes: Mapping[str, Any] | None = None) -> None:
        """A span whose start and end are already known (wall clock, ns)."""
        if self._tracer is not None:
            self.span(name, parent, attributes, start_ns=start_ns).end(end_ns)

    @contextlib.contextmanager
    def active(self, name: str, parent: str | None,
               attributes: Mapping[str, Any] | None = None, *,
               links: Sequence[str] = ()) -> Iterator[Span]:
        """A span around a block; inside it :func:`current_traceparent` names it. An
        exception marks the span as failed and propagates."""
        span = self.span(name, parent, attributes, links=links)
        token = _current.set(span.traceparent)
        try:
            yield span
        except BaseException as e:
            span.error(f"{type(e).__name__}: {e}")
            raise
        finally:
            _current.reset(token)
            span.end()

    def flush(self, timeout_s: float = 5.0) -> None:
        """Export what is still buffered (the tracer stays usable: it is shared)."""
        if self._provider is not None:
            self._provider.force_flush(int(timeout_s * 1000))


def wall_ns(monotonic_s: float) -> int:
    """A ``time.monotonic()`` reading on the wall clock, in ns (span timestamps)."""
    return time.time_ns() - int((time.monotonic() - monotonic_s) * 1e9)


def _processor(cfg: TracingConfig) -> Any:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if cfg.exporter == "none":
        return None
    if cfg.exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as e:
            raise ValueError("tracing.exporter otlp needs the OTLP exporter "
                             "(pip install 'tiersplit[otlp]')") from e
        kw = {"endpoint": cfg.endpoint} if cfg.endpoint else {}
        return BatchSpanProcessor(OTLPSpanExporter(**kw))
    assert cfg.exporter == "console" or cfg.file is not None
    return SimpleSpanProcessor(_JsonLinesExporter(None if cfg.exporter == "console"
                                                  else cfg.file))


class _JsonLinesExporter:
    """One JSON object per span, appended to a file (or stdout) in one write each, so
    several processes may share the file."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        lines = "".join(json.dumps(_span_doc(s), separators=(",", ":")) + "\n" for s in spans)
        with self._lock:
            try:
                if self._path is None:
                    sys.stdout.write(lines)
                    sys.stdout.flush()
                else:
                    with open(self._path, "a", encoding="utf-8") as f:
                        f.write(lines)
            except OSError as e:
                log.warning("span export to %s failed: %s", self._path or "stdout", e)
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _span_doc(span: Any) -> dict[str, Any]:
    ctx = span.get_span_context()
    parent = span.parent
    return {"name": span.name, "trace_id": f"{ctx.trace_id:032x}",
            "span_id": f"{ctx.span_id:016x}",
            "parent_span_id": f"{parent.span_id:016x}" if parent is not None else None,
            "service": span.resource.attributes.get("service.name"),
            "start_ns": span.start_time, "end_ns": span.end_time,
            "status": span.status.status_code.name,
            "attributes": dict(span.attributes or {}),
            "links": [f"{link.context.trace_id:032x}" for link in span.links]}


_cache_lock = threading.Lock()
_cache: dict[tuple[TracingConfig, str], Tracer] = {}


def tracer_for(cfg: TracingConfig, service: str) -> Tracer:
    """The process's tracer for ``cfg`` and ``service`` (one provider per pair: an agent's
    API and request runner share it; an agent and a core in one process do not)."""
    if not cfg.enabled:
        return Tracer(cfg, service)
    with _cache_lock:
        tracer = _cache.get((cfg, service))
        if tracer is None:
            tracer = _cache[(cfg, service)] = Tracer(cfg, service)
        return tracer
