package telemetry

// OpenTelemetry tracing, exported with OTLP (docs/tracing.md).
//
// A process makes one *Tracing (NewTracing) and hands it to the components
// that make spans; a nil or disabled *Tracing is valid everywhere and costs
// nothing: no exporter, no header parsing, no span. Nothing here touches the
// otel package's globals: the provider and the propagator travel explicitly.
//
// Spans by kind of start (the package's helpers):
//   - Start: a span that may be a trace's root (dfget, a mirror request, a
//     FUSE read, dfdaemon's local API, the engine's Open and Download).
//   - StartChild: only inside a trace the context already carries (a remote
//     or local parent); without one nothing is recorded. Servers that never
//     start traces themselves (the supernode's gRPC, the upload servers) and
//     per-block work use it, so heartbeats and untraced transfers make no
//     traces at all.
//   - StartBlock: StartChild for one block in BlockSampleEvery (by index),
//     so a download of thousands of blocks makes tens of block spans.

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// DefaultSampleRatio is the fraction of the traces a process starts that
// are recorded (--trace-sample-ratio).
const DefaultSampleRatio = 0.1

// BlockSampleEvery: inside a sampled trace only one block in this many (by
// index: 0, 16, 32, ...) gets spans of its own (its GET, the upload
// server's answer, the seed's origin Range request), and only one Sync
// round of a task in this many carries the trace.
const BlockSampleEvery = 16

// SampleBlock reports whether block idx gets its own spans.
func SampleBlock(idx int) bool { return idx%BlockSampleEvery == 0 }

// Protocols of the OTLP exporter.
const (
	ProtocolGRPC = "grpc"
	ProtocolHTTP = "http/protobuf"
)

// The standard environment variables tracing reads (the exporter reads the
// other OTEL_EXPORTER_OTLP_* variables, such as HEADERS and CERTIFICATE).
const (
	EnvTracesEndpoint = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	EnvEndpoint       = "OTEL_EXPORTER_OTLP_ENDPOINT"
	EnvTracesProtocol = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	EnvProtocol       = "OTEL_EXPORTER_OTLP_PROTOCOL"
)

// TraceConfig configures NewTracing.
type TraceConfig struct {
	// Endpoint is the OTLP collector: HOST:PORT or a URL (http:// is
	// plain, https:// TLS). "" takes OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
	// else OTEL_EXPORTER_OTLP_ENDPOINT; none of them: tracing is off.
	Endpoint string
	// Insecure sends plain (no TLS) to the collector, e.g. a local one.
	Insecure bool
	// TLS is the client TLS configuration for the collector (nil: the
	// system's CAs, or OTEL_EXPORTER_OTLP_CERTIFICATE); unused with Insecure.
	TLS *tls.Config
	// Protocol is ProtocolGRPC or ProtocolHTTP; "" takes
	// OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else OTEL_EXPORTER_OTLP_PROTOCOL,
	// else gRPC.
	Protocol string
	// SampleRatio is the fraction (0 to 1) of the traces this process
	// starts that are recorded; a span whose parent came with a request
	// follows the parent's decision. Sampler:
	// ParentBased(TraceIDRatioBased(SampleRatio)).
	SampleRatio float64
	// Service is the resource's service.name: the component (dfget,
	// dfdaemon, supernode, ...); service.version is Version().
	Service string
	// Exporter, if set, receives every span synchronously as it ends,
	// instead of an OTLP collector (tests: tracetest.NewInMemoryExporter).
	Exporter sdktrace.SpanExporter
	// Getenv reads the environment (default os.Getenv).
	Getenv func(string) string
	// Logger receives export failures (rate limited); default slog.Default().
	Logger *slog.Logger
}

// Tracing is a process's tracer provider and propagator. The zero value
// and nil are "tracing off": every method works and does nothing.
type Tracing struct {
	sdk      *sdktrace.TracerProvider
	tracer   trace.Tracer
	endpoint string
}

// instrumentationName is the scope of dfly's own spans.
const instrumentationName = "github.com/dfly-p2p/dfly"

// NewTracing returns the process's tracing: off (a no-op provider) when no
// endpoint is configured, else spans batched to the OTLP collector.
// Shutdown flushes them.
func NewTracing(ctx context.Context, cfg TraceConfig) (*Tracing, error) {
	if math.IsNaN(cfg.SampleRatio) || cfg.SampleRatio < 0 || cfg.SampleRatio > 1 {
		return nil, fmt.Errorf("trace sample ratio %v: want a fraction from 0 to 1 (--trace-sample-ratio)", cfg.SampleRatio)
	}
	getenv := cfg.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	endpoint, fromEnv := cfg.Endpoint, false
	if endpoint == "" {
		for _, k := range []string{EnvTracesEndpoint, EnvEndpoint} {
			if v := strings.TrimSpace(getenv(k)); v != "" {
				endpoint, fromEnv = v, true
				break
			}
		}
	}
	exp := cfg.Exporter
	if exp == nil && endpoint == "" {
		return &Tracing{}, nil
	}
	if exp == nil {
		protocol := cfg.Protocol
		for _, k := range []string{EnvTracesProtocol, EnvProtocol} {
			if protocol == "" {
				protocol = strings.TrimSpace(getenv(k))
			}
		}
		var err error
		if exp, err = newExporter(ctx, protocol, endpoint, fromEnv, cfg); err != nil {
			return nil, err
		}
		exp = &loggingExporter{SpanExporter: exp, log: cfg.Logger, endpoint: endpoint}
	}
	res, err := resource.New(ctx,
		resource.WithFromEnv(), resource.WithHost(), resource.WithTelemetrySDK(),
		resource.WithAttributes(semconv.ServiceName(cfg.Service), semconv.ServiceVersion(Version())))
	if err != nil && res == nil {
		return nil, fmt.Errorf("tracing: resource of %s: %w", cfg.Service, err)
	}
	opts := []sdktrace.TracerProviderOption{
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.SampleRatio))),
		sdktrace.WithResource(res),
	}
	if cfg.Exporter != nil {
		opts = append(opts, sdktrace.WithSyncer(exp))
	} else {
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	sdk := sdktrace.NewTracerProvider(opts...)
	return &Tracing{
		sdk:      sdk,
		tracer:   sdk.Tracer(instrumentationName, trace.WithInstrumentationVersion(Version())),
		endpoint: endpoint,
	}, nil
}

// newExporter makes the OTLP exporter. An endpoint from the environment is
// left to the exporter, which applies the specification's rules (such as
// /v1/traces after a generic HTTP endpoint).
func newExporter(ctx context.Context, protocol, endpoint string, fromEnv bool, cfg TraceConfig) (sdktrace.SpanExporter, error) {
	isURL := strings.Contains(endpoint, "://")
	if isURL {
		u, err := url.Parse(endpoint)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, fmt.Errorf("OTLP endpoint %q: want HOST:PORT or an http:// or https:// URL (--otlp-endpoint, %s)", endpoint, EnvEndpoint)
		}
	}
	switch protocol {
	case "", ProtocolGRPC:
		var opts []otlptracegrpc.Option
		switch {
		case fromEnv:
		case isURL:
			opts = append(opts, otlptracegrpc.WithEndpointURL(endpoint))
		default:
			opts = append(opts, otlptracegrpc.WithEndpoint(endpoint))
		}
		if cfg.Insecure {
			opts = append(opts, otlptracegrpc.WithInsecure())
		} else if cfg.TLS != nil {
			opts = append(opts, otlptracegrpc.WithTLSCredentials(credentials.NewTLS(cfg.TLS)))
		}
		exp, err := otlptracegrpc.New(ctx, opts...)
		if err != nil {
			return nil, fmt.Errorf("OTLP/gRPC exporter to %s: %w", endpoint, err)
		}
		return exp, nil
	case ProtocolHTTP:
		var opts []otlptracehttp.Option
		switch {
		case fromEnv:
		case isURL:
			opts = append(opts, otlptracehttp.WithEndpointURL(endpoint))
		default:
			opts = append(opts, otlptracehttp.WithEndpoint(endpoint))
		}
		if cfg.Insecure {
			opts = append(opts, otlptracehttp.WithInsecure())
		} else if cfg.TLS != nil {
			opts = append(opts, otlptracehttp.WithTLSClientConfig(cfg.TLS))
		}
		exp, err := otlptracehttp.New(ctx, opts...)
		if err != nil {
			return nil, fmt.Errorf("OTLP/HTTP exporter to %s: %w", endpoint, err)
		}
		return exp, nil
	}
	return nil, fmt.Errorf("OTLP protocol %q: want %q or %q (%s)", protocol, ProtocolGRPC, ProtocolHTTP, EnvProtocol)
}

// loggingExporter logs failed exports (at most one line a minute) instead
// of handing them to the otel package's global error handler.
type loggingExporter struct {
	sdktrace.SpanExporter
	log      *slog.Logger
	endpoint string

	mu     sync.Mutex
	last   time.Time
	failed int
}

func (e *loggingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	err := e.SpanExporter.ExportSpans(ctx, spans)
	if err == nil {
		return nil
	}
	e.mu.Lock()
	e.failed += len(spans)
	var n int
	if time.Since(e.last) >= time.Minute {
		e.last, n, e.failed = time.Now(), e.failed, 0
	}
	e.mu.Unlock()
	if n > 0 {
		e.log.Warn("tracing: spans dropped: the OTLP collector did not take them (check --otlp-endpoint and --otlp-insecure)",
			"endpoint", e.endpoint, "spans", n, "err", err)
	}
	return nil // logged here: nothing for the global handler
}

// Enabled reports whether spans are recorded and exported.
func (t *Tracing) Enabled() bool { return t != nil && t.sdk != nil }

// Endpoint is the collector spans go to ("" when off or with a test exporter).
func (t *Tracing) Endpoint() string {
	if t == nil {
		return ""
	}
	return t.endpoint
}

// TracerProvider returns the provider (a no-op one when off).
func (t *Tracing) TracerProvider() trace.TracerProvider {
	if !t.Enabled() {
		return noop.NewTracerProvider()
	}
	return t.sdk
}

// Propagator returns the W3C trace context and baggage propagator.
func (t *Tracing) Propagator() propagation.TextMapPropagator { return W3C() }

// W3C returns the propagator every dfly link speaks: W3C trace context
// (traceparent, tracestate) and baggage.
func W3C() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

// Shutdown flushes the spans not exported yet and stops the exporter.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if !t.Enabled() {
		return nil
	}
	if err := t.sdk.Shutdown(ctx); err != nil {
		return fmt.Errorf("tracing: flush spans to %s: %w", t.endpoint, err)
	}
	return nil
}

// Start starts a span that is a child of the span in ctx, or a new trace's
// root (sampled at the configured ratio) when ctx carries none. Off, it
// returns ctx and a no-op span.
func (t *Tracing) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	if !t.Enabled() {
		return ctx, noop.Span{}
	}
	return t.tracer.Start(ctx, name, opts...)
}

// StartChild starts a span only inside a trace ctx already carries (local
// or remote parent); otherwise it returns ctx and a no-op span.
func (t *Tracing) StartChild(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	if !t.Enabled() || !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx, noop.Span{}
	}
	return t.tracer.Start(ctx, name, opts...)
}

// StartBlock is StartChild for block idx when SampleBlock(idx), else a no-op.
func (t *Tracing) StartBlock(ctx context.Context, name string, idx int, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	if !SampleBlock(idx) {
		return ctx, noop.Span{}
	}
	return t.StartChild(ctx, name, append(opts, trace.WithAttributes(attribute.Int("dfly.block", idx)))...)
}

// EndSpan ends span, recording err (if any) as its error status.
func EndSpan(span trace.Span, err error) {
	if err != nil && span.IsRecording() {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// RecordError marks the span in ctx as failed with err (no-op without one).
func RecordError(ctx context.Context, err error) {
	if span := trace.SpanFromContext(ctx); err != nil && span.IsRecording() {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
}

// Inject writes the trace context of ctx (if any) into an HTTP request's
// headers. It needs no *Tracing: without a span in ctx it writes nothing.
func Inject(ctx context.Context, h http.Header) {
	if trace.SpanContextFromContext(ctx).IsValid() {
		W3C().Inject(ctx, propagation.HeaderCarrier(h))
	}
}

// HTTPServerSpan starts a server span for r named name: a child of the
// trace context the request carries, or with childOnly unset a new root
// when it carries none (with childOnly, requests without one get no span).
// It returns the writer and request to serve with (the request's context
// holds the span) and the function that ends the span, recording the
// answer's status. Off, or without a span, w and r come back unchanged.
func (t *Tracing) HTTPServerSpan(w http.ResponseWriter, r *http.Request, name string, childOnly bool, attrs ...attribute.KeyValue) (http.ResponseWriter, *http.Request, func()) {
	if !t.Enabled() {
		return w, r, func() {}
	}
	ctx := W3C().Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	if childOnly && !trace.SpanContextFromContext(ctx).IsValid() {
		return w, r, func() {}
	}
	ctx, span := t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(semconv.HTTPRequestMethodKey.String(r.Method), semconv.URLPath(r.URL.Path)),
		trace.WithAttributes(attrs...))
	r = r.WithContext(ctx)
	if !span.IsRecording() { // not sampled: the context still travels on
		return w, r, func() { span.End() }
	}
	sw := &statusWriter{ResponseWriter: w}
	return sw, r, func() {
		code := sw.code
		if code == 0 {
			code = http.StatusOK
		}
		span.SetAttributes(semconv.HTTPResponseStatusCode(code))
		if code >= 500 {
			span.SetStatus(codes.Error, http.StatusText(code))
		}
		span.End()
	}
}

// statusWriter remembers the status of an answer. It keeps the writer's
// ReadFrom (sendfile), Flush and, through Unwrap, the rest for
// http.ResponseController.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{w.ResponseWriter}, r)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// GRPCServerOptions trace a gRPC server's calls that carry a trace context
// (W3C, in the metadata): a server span each; calls without one (heartbeats
// of untraced peers) are not traced. Off: none.
func (t *Tracing) GRPCServerOptions() []grpc.ServerOption {
	if !t.Enabled() {
		return nil
	}
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(t.grpcOptions()...))}
}

// GRPCDialOptions trace a gRPC client's calls made inside a trace: a client
// span each, its context sent in the metadata; calls outside any trace
// (heartbeats) are not traced. Off: none.
func (t *Tracing) GRPCDialOptions() []grpc.DialOption {
	if !t.Enabled() {
		return nil
	}
	return []grpc.DialOption{grpc.WithStatsHandler(otelgrpc.NewClientHandler(t.grpcOptions()...))}
}

func (t *Tracing) grpcOptions() []otelgrpc.Option {
	return []otelgrpc.Option{
		otelgrpc.WithTracerProvider(childOnlyProvider{tp: t.sdk}),
		otelgrpc.WithPropagators(W3C()),
		otelgrpc.WithMeterProvider(metricnoop.NewMeterProvider()), // metrics are Prometheus's (server.go)
	}
}

// childOnlyProvider hands out tracers that start spans only under a parent.
type childOnlyProvider struct {
	embedded.TracerProvider
	tp trace.TracerProvider
}

func (p childOnlyProvider) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return childOnlyTracer{tr: p.tp.Tracer(name, opts...)}
}

type childOnlyTracer struct {
	embedded.Tracer
	tr trace.Tracer
}

func (t childOnlyTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx, noop.Span{}
	}
	return t.tr.Start(ctx, name, opts...)
}

// RedactURL is rawURL fit for a span attribute: scheme, host and path, with
// no user information, query (signatures) or fragment.
func RedactURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return ""
	}
	u.User, u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = nil, "", false, "", ""
	return u.String()
}
