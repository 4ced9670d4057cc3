package telemetry

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	collectorpb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// testTracing records every span in memory at the given ratio.
func testTracing(t *testing.T, ratio float64) (*Tracing, *tracetest.InMemoryExporter) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tr, err := NewTracing(context.Background(), TraceConfig{Service: "test", SampleRatio: ratio, Exporter: exp, Getenv: env(nil)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Shutdown(context.Background()) })
	return tr, exp
}

func TestTraceConfig(t *testing.T) {
	tests := []struct {
		name     string
		cfg      TraceConfig
		env      map[string]string
		enabled  bool
		endpoint string
		err      string
	}{
		{"nothing configured: off", TraceConfig{SampleRatio: 0.1}, nil, false, "", ""},
		{"flag", TraceConfig{Endpoint: "127.0.0.1:4317", Insecure: true, SampleRatio: 0.1}, nil, true, "127.0.0.1:4317", ""},
		{"flag as URL", TraceConfig{Endpoint: "https://collector.example:4317", SampleRatio: 1}, nil, true, "https://collector.example:4317", ""},
		{"generic env", TraceConfig{SampleRatio: 0.1}, map[string]string{EnvEndpoint: "http://127.0.0.1:4317"}, true, "http://127.0.0.1:4317", ""},
		{"traces env wins over generic", TraceConfig{SampleRatio: 0.1},
			map[string]string{EnvEndpoint: "http://a:4317", EnvTracesEndpoint: "http://b:4317"}, true, "http://b:4317", ""},
		{"flag wins over env", TraceConfig{Endpoint: "c:4317", SampleRatio: 0.1}, map[string]string{EnvTracesEndpoint: "http://b:4317"}, true, "c:4317", ""},
		{"http/protobuf from env", TraceConfig{Endpoint: "127.0.0.1:4318", SampleRatio: 0.1}, map[string]string{EnvProtocol: "http/protobuf"}, true, "127.0.0.1:4318", ""},
		{"ratio 0 is allowed", TraceConfig{Endpoint: "a:4317"}, nil, true, "a:4317", ""},
		{"ratio above 1", TraceConfig{SampleRatio: 1.5}, nil, false, "", "want a fraction from 0 to 1"},
		{"negative ratio", TraceConfig{Endpoint: "a:1", SampleRatio: -0.1}, nil, false, "", "--trace-sample-ratio"},
		{"unknown protocol", TraceConfig{Endpoint: "a:1", Protocol: "thrift"}, nil, false, "", `OTLP protocol "thrift"`},
		{"bad URL scheme", TraceConfig{Endpoint: "ftp://a:1"}, nil, false, "", "--otlp-endpoint"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Getenv = env(tc.env)
			tr, err := NewTracing(context.Background(), tc.cfg)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Shutdown(context.Background())
			if tr.Enabled() != tc.enabled || tr.Endpoint() != tc.endpoint {
				t.Fatalf("enabled %v endpoint %q, want %v %q", tr.Enabled(), tr.Endpoint(), tc.enabled, tc.endpoint)
			}
		})
	}
}

// Off — nil or unconfigured — everything is a no-op and nothing is wrapped.
func TestTracingOff(t *testing.T) {
	off, err := NewTracing(context.Background(), TraceConfig{SampleRatio: 0.1, Getenv: env(nil)})
	if err != nil {
		t.Fatal(err)
	}
	for name, tr := range map[string]*Tracing{"nil": nil, "unconfigured": off} {
		t.Run(name, func(t *testing.T) {
			ctx, span := tr.Start(context.Background(), "x")
			if span.IsRecording() || trace.SpanContextFromContext(ctx).IsValid() {
				t.Fatal("a span was started with tracing off")
			}
			span.End()
			if _, s := tr.StartChild(ctx, "y"); s.IsRecording() {
				t.Fatal("child span with tracing off")
			}
			if tr.GRPCServerOptions() != nil || tr.GRPCDialOptions() != nil {
				t.Fatal("gRPC options with tracing off")
			}
			rec := httptest.NewRecorder()
			r := httptest.NewRequest("GET", "/x", nil)
			w2, r2, end := tr.HTTPServerSpan(rec, r, "srv", false)
			end()
			if w2 != http.ResponseWriter(rec) || r2 != r {
				t.Fatal("writer or request wrapped with tracing off")
			}
			if tr.TracerProvider() == nil {
				t.Fatal("no provider")
			}
			if err := tr.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A span started inside an ended one must not end the outer span of
// another provider (off returns its own no-op span, never the parent's).
func TestOffNeverEndsAParent(t *testing.T) {
	on, exp := testTracing(t, 1)
	ctx, outer := on.Start(context.Background(), "outer")
	var off *Tracing
	_, inner := off.Start(ctx, "inner")
	inner.End()
	if !outer.IsRecording() {
		t.Fatal("ending the off span ended the parent")
	}
	outer.End()
	if n := len(exp.GetSpans()); n != 1 {
		t.Fatalf("%d spans, want 1", n)
	}
}

func TestSampler(t *testing.T) {
	sampledParent := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: trace.FlagsSampled, Remote: true})
	unsampledParent := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{3}, SpanID: trace.SpanID{4}, Remote: true})
	tests := []struct {
		name   string
		ratio  float64
		parent trace.SpanContext
		want   bool
	}{
		{"root at ratio 1", 1, trace.SpanContext{}, true},
		{"root at ratio 0", 0, trace.SpanContext{}, false},
		{"sampled parent at ratio 0", 0, sampledParent, true},
		{"unsampled parent at ratio 1", 1, unsampledParent, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr, _ := testTracing(t, tc.ratio)
			ctx := trace.ContextWithRemoteSpanContext(context.Background(), tc.parent)
			_, span := tr.Start(ctx, "s")
			defer span.End()
			if span.IsRecording() != tc.want {
				t.Fatalf("recording %v, want %v", span.IsRecording(), tc.want)
			}
			if tc.parent.IsValid() && span.SpanContext().TraceID() != tc.parent.TraceID() {
				t.Fatal("child left its parent's trace")
			}
		})
	}
	// The ratio is applied to trace IDs: about a tenth of many roots.
	tr, _ := testTracing(t, DefaultSampleRatio)
	n := 0
	for range 2000 {
		_, s := tr.Start(context.Background(), "r")
		if s.IsRecording() {
			n++
		}
		s.End()
	}
	if n < 100 || n > 320 {
		t.Fatalf("%d of 2000 roots sampled at ratio 0.1", n)
	}
}

func TestChildAndBlockSpans(t *testing.T) {
	tr, exp := testTracing(t, 1)
	if _, s := tr.StartChild(context.Background(), "orphan"); s.IsRecording() {
		t.Fatal("StartChild without a parent recorded a span")
	}
	ctx, root := tr.Start(context.Background(), "root")
	for _, tc := range []struct {
		idx  int
		want bool
	}{{0, true}, {1, false}, {15, false}, {16, true}, {33, false}, {48, true}} {
		_, s := tr.StartBlock(ctx, "block", tc.idx)
		if s.IsRecording() != tc.want || SampleBlock(tc.idx) != tc.want {
			t.Errorf("block %d: recording %v, want %v", tc.idx, s.IsRecording(), tc.want)
		}
		EndSpan(s, nil)
	}
	_, failed := tr.StartChild(ctx, "failing")
	EndSpan(failed, errors.New("boom"))
	root.End()
	spans := exp.GetSpans()
	if len(spans) != 5 {
		t.Fatalf("%d spans, want root, 3 blocks, failing", len(spans))
	}
	for _, s := range spans {
		if s.Name != "root" && s.Parent.SpanID() != root.SpanContext().SpanID() {
			t.Errorf("%s: parent %v, want the root", s.Name, s.Parent.SpanID())
		}
		if s.Name == "failing" && (s.Status.Code != codes.Error || s.Status.Description != "boom") {
			t.Errorf("failing span status %+v", s.Status)
		}
		if s.Name == "block" && !hasAttr(s.Attributes, "dfly.block") {
			t.Errorf("block span without dfly.block: %v", s.Attributes)
		}
	}
}

func hasAttr(kvs []attribute.KeyValue, key string) bool {
	for _, kv := range kvs {
		if string(kv.Key) == key {
			return true
		}
	}
	return false
}

func attr(kvs []attribute.KeyValue, key string) attribute.Value {
	for _, kv := range kvs {
		if string(kv.Key) == key {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// readerFromRecorder is a ResponseWriter with ReadFrom (as net/http's, for sendfile).
type readerFromRecorder struct {
	*httptest.ResponseRecorder
	readFrom bool
}

func (r *readerFromRecorder) ReadFrom(src io.Reader) (int64, error) {
	r.readFrom = true
	return io.Copy(r.ResponseRecorder, src)
}

func TestHTTPServerSpan(t *testing.T) {
	tr, exp := testTracing(t, 1)
	cctx, client := tr.Start(context.Background(), "client", trace.WithSpanKind(trace.SpanKindClient))
	tests := []struct {
		name      string
		inject    bool
		childOnly bool
		status    int
		span      bool
	}{
		{"child of the caller", true, true, 200, true},
		{"root when the caller sends none", false, false, 503, true},
		{"child only: no caller, no span", false, true, 200, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			exp.Reset()
			r := httptest.NewRequest("GET", "/blocks/t/16", nil)
			if tc.inject {
				Inject(cctx, r.Header)
				if r.Header.Get("traceparent") == "" {
					t.Fatal("Inject wrote no traceparent")
				}
			}
			rec := &readerFromRecorder{ResponseRecorder: httptest.NewRecorder()}
			w, r2, end := tr.HTTPServerSpan(rec, r, "srv", tc.childOnly, attribute.String("dfly.task_id", "t"))
			if tc.status != 200 {
				w.WriteHeader(tc.status)
			}
			// io.Copy must still find ReadFrom (sendfile) through the wrapper.
			if _, err := io.CopyN(w, strings.NewReader("data"), 4); err != nil { // (as blockhttp.Send)
				t.Fatal(err)
			}
			if !rec.readFrom {
				t.Fatal("the wrapped writer lost ReadFrom")
			}
			if got := trace.SpanFromContext(r2.Context()).IsRecording(); got != tc.span {
				t.Fatalf("request context recording %v", got)
			}
			end()
			spans := exp.GetSpans()
			if !tc.span {
				if len(spans) != 0 {
					t.Fatalf("%d spans, want none", len(spans))
				}
				return
			}
			if len(spans) != 1 {
				t.Fatalf("%d spans, want 1", len(spans))
			}
			s := spans[0]
			if s.SpanKind != trace.SpanKindServer || attr(s.Attributes, "http.response.status_code").AsInt64() != int64(tc.status) ||
				attr(s.Attributes, "dfly.task_id").AsString() != "t" || attr(s.Attributes, "url.path").AsString() != "/blocks/t/16" {
				t.Fatalf("span %+v", s)
			}
			if tc.inject != (s.Parent.SpanID() == client.SpanContext().SpanID()) || (tc.inject && !s.Parent.IsRemote()) {
				t.Fatalf("parent %v (remote %v), injected %v", s.Parent.SpanID(), s.Parent.IsRemote(), tc.inject)
			}
			if (tc.status >= 500) != (s.Status.Code == codes.Error) {
				t.Fatalf("status %+v for HTTP %d", s.Status, tc.status)
			}
		})
	}
	client.End()
	// Inject without a span writes nothing.
	h := http.Header{}
	Inject(context.Background(), h)
	if len(h) != 0 {
		t.Fatalf("Inject without a span wrote %v", h)
	}
}

// gRPC: a call inside a trace makes a client and a server span, the server's
// a child of the client's; a call outside any trace (a heartbeat) makes none.
func TestGRPCSpans(t *testing.T) {
	tr, exp := testTracing(t, 1)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(tr.GRPCServerOptions()...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(ln)
	defer srv.Stop()
	conn, err := grpc.NewClient(ln.Addr().String(), append(tr.GRPCDialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	if _, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	if n := len(exp.GetSpans()); n != 0 {
		t.Fatalf("an untraced call made %d spans", n)
	}
	ctx, root := tr.Start(context.Background(), "root")
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	root.End()
	var spans tracetest.SpanStubs
	deadline := time.Now().Add(5 * time.Second)
	for len(spans) < 3 && time.Now().Before(deadline) { // the server span ends after the answer
		time.Sleep(10 * time.Millisecond)
		spans = exp.GetSpans()
	}
	byKind := map[trace.SpanKind]tracetest.SpanStub{}
	for _, s := range spans {
		byKind[s.SpanKind] = s
	}
	cl, sv := byKind[trace.SpanKindClient], byKind[trace.SpanKindServer]
	if len(spans) != 3 || cl.Parent.SpanID() != root.SpanContext().SpanID() || sv.Parent.SpanID() != cl.SpanContext.SpanID() ||
		sv.SpanContext.TraceID() != root.SpanContext().TraceID() || !strings.Contains(sv.Name, "Check") {
		t.Fatalf("spans %+v", spans)
	}
}

// otlpReceiver is an in-process OTLP/gRPC collector.
type otlpReceiver struct {
	collectorpb.UnimplementedTraceServiceServer
	mu   sync.Mutex
	reqs []*collectorpb.ExportTraceServiceRequest
}

func (o *otlpReceiver) Export(_ context.Context, r *collectorpb.ExportTraceServiceRequest) (*collectorpb.ExportTraceServiceResponse, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.reqs = append(o.reqs, r)
	return &collectorpb.ExportTraceServiceResponse{}, nil
}

// spans lists "service/span" of everything received.
func spanNames(reqs []*collectorpb.ExportTraceServiceRequest) []string {
	var out []string
	for _, r := range reqs {
		for _, rs := range r.GetResourceSpans() {
			svc := ""
			for _, kv := range rs.GetResource().GetAttributes() {
				if kv.GetKey() == "service.name" {
					svc = kv.GetValue().GetStringValue()
				}
			}
			for _, ss := range rs.GetScopeSpans() {
				for _, s := range ss.GetSpans() {
					out = append(out, svc+"/"+s.GetName())
				}
			}
		}
	}
	return out
}

// Spans reach a real OTLP/gRPC collector, with the service's resource, by
// the time Shutdown returns.
func TestOTLPGRPCExport(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rcv := &otlpReceiver{}
	srv := grpc.NewServer()
	collectorpb.RegisterTraceServiceServer(srv, rcv)
	go srv.Serve(ln)
	defer srv.Stop()
	tr, err := NewTracing(context.Background(), TraceConfig{Endpoint: ln.Addr().String(), Insecure: true, SampleRatio: 1, Service: "dfget", Getenv: env(nil)})
	if err != nil {
		t.Fatal(err)
	}
	_, s := tr.Start(context.Background(), "dfget")
	s.End()
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	if got := spanNames(rcv.reqs); len(got) != 1 || got[0] != "dfget/dfget" {
		t.Fatalf("received %v", got)
	}
	var version string
	for _, kv := range rcv.reqs[0].GetResourceSpans()[0].GetResource().GetAttributes() {
		if kv.GetKey() == "service.version" {
			version = kv.GetValue().GetStringValue()
		}
	}
	if version != Version() {
		t.Fatalf("service.version %q, want %q", version, Version())
	}
}

// OTLP/HTTP chosen by the standard environment variables: the generic
// endpoint gets /v1/traces.
func TestOTLPHTTPExportFromEnv(t *testing.T) {
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req collectorpb.ExportTraceServiceRequest
		if r.URL.Path != "/v1/traces" || proto.Unmarshal(body, &req) != nil {
			http.Error(w, "bad export "+r.URL.Path, http.StatusBadRequest)
			return
		}
		mu.Lock()
		got = append(got, spanNames([]*collectorpb.ExportTraceServiceRequest{&req})...)
		mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
		b, _ := proto.Marshal(&collectorpb.ExportTraceServiceResponse{})
		w.Write(b)
	}))
	defer srv.Close()
	t.Setenv(EnvEndpoint, srv.URL)
	t.Setenv(EnvProtocol, ProtocolHTTP)
	tr, err := NewTracing(context.Background(), TraceConfig{SampleRatio: 1, Service: "dfdaemon"})
	if err != nil {
		t.Fatal(err)
	}
	_, s := tr.Start(context.Background(), "dfdaemon.download")
	s.End()
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0] != "dfdaemon/dfdaemon.download" {
		t.Fatalf("received %v", got)
	}
}

type failingExporter struct{ sdktrace.SpanExporter }

func (failingExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error {
	return errors.New("connection refused")
}

// Export failures are logged (once a minute), not handed to otel's globals.
func TestExportFailuresAreLogged(t *testing.T) {
	var buf bytes.Buffer
	e := &loggingExporter{SpanExporter: failingExporter{tracetest.NewInMemoryExporter()}, log: slog.New(slog.NewTextHandler(&buf, nil)), endpoint: "c:4317"}
	for range 3 {
		if err := e.ExportSpans(context.Background(), make([]sdktrace.ReadOnlySpan, 2)); err != nil {
			t.Fatal(err)
		}
	}
	if n := strings.Count(buf.String(), "spans dropped"); n != 1 || !strings.Contains(buf.String(), "connection refused") {
		t.Fatalf("logged %d times:\n%s", n, buf.String())
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://user:pw@reg.example/v2/x/blobs/sha256:ab?X-Amz-Signature=s#f": "https://reg.example/v2/x/blobs/sha256:ab",
		"http://127.0.0.1:8080/file.bin":                                       "http://127.0.0.1:8080/file.bin",
		"http://h/p?":                                                          "http://h/p",
		"://bad":                                                               "",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
