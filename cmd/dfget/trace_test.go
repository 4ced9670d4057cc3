package main

import (
	"bytes"
	"context"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	collectorpb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"

	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/internal/telemetry"
)

func TestStartSpan(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tr, err := telemetry.NewTracing(context.Background(), telemetry.TraceConfig{Service: "dfget", SampleRatio: 1, Exporter: exp})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Shutdown(context.Background())
	ctx, span := startSpan(context.Background(), tr, "https://u:p@example.com/f.bin?sig=secret")
	if !trace.SpanFromContext(ctx).IsRecording() {
		t.Fatal("the context does not carry dfget's span")
	}
	span.End()
	s := exp.GetSpans()
	if len(s) != 1 || s[0].Name != "dfget" || s[0].Parent.IsValid() || s[0].SpanKind != trace.SpanKindClient {
		t.Fatalf("spans %+v, want one root client span dfget", s)
	}
	for _, kv := range s[0].Attributes {
		if kv.Key == "url.full" && kv.Value.AsString() != "https://example.com/f.bin" {
			t.Fatalf("url.full %q keeps credentials or the query", kv.Value.AsString())
		}
	}
}

// otlpReceiver is an in-process OTLP/gRPC collector that keeps
// "service/span" names.
type otlpReceiver struct {
	collectorpb.UnimplementedTraceServiceServer
	mu    sync.Mutex
	names []string
	addr  string
}

func startReceiver(tb testing.TB) *otlpReceiver {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	r := &otlpReceiver{addr: ln.Addr().String()}
	srv := grpc.NewServer()
	collectorpb.RegisterTraceServiceServer(srv, r)
	go srv.Serve(ln)
	tb.Cleanup(srv.Stop)
	return r
}

func (r *otlpReceiver) Export(_ context.Context, req *collectorpb.ExportTraceServiceRequest) (*collectorpb.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		svc := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				svc = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				r.names = append(r.names, svc+"/"+s.GetName())
			}
		}
	}
	return &collectorpb.ExportTraceServiceResponse{}, nil
}

func (r *otlpReceiver) got() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.names)
}

// dfget with --otlp-endpoint sends its trace (its root span and the
// embedded engine's) before it exits; a bad ratio is a usage error.
func TestDfgetExportsItsTrace(t *testing.T) {
	rcv := startReceiver(t)
	o := startOrigin(t)
	u := o.Add("f.bin", origin.Content{Size: 3 << 20, Seed: 8})
	dir := t.TempDir()
	var stderr bytes.Buffer
	code := run(context.Background(), []string{u, "-O", filepath.Join(dir, "out"), "--store", filepath.Join(dir, "store"), "-q",
		"--otlp-endpoint", rcv.addr, "--otlp-insecure", "--trace-sample-ratio", "1"}, &stderr, &stderr)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	got := rcv.got()
	for _, want := range []string{"dfget/dfget", "dfget/engine.open", "dfget/engine.download"} {
		if !slices.Contains(got, want) {
			t.Errorf("collector got %v, want %s among them", got, want)
		}
	}
	code = run(context.Background(), []string{u, "-O", filepath.Join(dir, "out2"), "--trace-sample-ratio", "1.5"}, &stderr, &stderr)
	if code != exitUsage || !strings.Contains(stderr.String(), "--trace-sample-ratio") {
		t.Fatalf("ratio 1.5: exit %d, %s", code, stderr.String())
	}
}

// BenchmarkDfgetTracing downloads the same 128 MiB file (fresh store each
// time) with dfget's tracing off and on at the default sample ratio, to an
// in-process collector, and reports both throughputs and their ratio (no
// threshold: compare runs; > 1 means tracing costs).
func BenchmarkDfgetTracing(b *testing.B) {
	rcv := startReceiver(b)
	o, err := origin.Start(origin.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer o.Close()
	c := origin.Content{Size: 128 << 20, Seed: 6}
	u := o.Add("f", c)
	dir := b.TempDir()
	get := func(extra ...string) time.Duration {
		store := filepath.Join(dir, "store")
		if out, err := exec.Command("rm", "-rf", store).CombinedOutput(); err != nil {
			b.Fatalf("rm: %v %s", err, out)
		}
		start := time.Now()
		args := append([]string{u, "-O", filepath.Join(dir, "out"), "--store", store, "-q"}, extra...)
		if out, err := exec.Command(dfgetBin, args...).CombinedOutput(); err != nil {
			b.Fatalf("dfget: %v %s", err, out)
		}
		return time.Since(start)
	}
	var off, on time.Duration
	for i := 0; i < b.N; i++ {
		off += get()
		on += get("--otlp-endpoint", rcv.addr, "--otlp-insecure")
	}
	mibps := func(d time.Duration) float64 { return float64(c.Size) * float64(b.N) / d.Seconds() / (1 << 20) }
	b.ReportMetric(mibps(off), "off-MiB/s")
	b.ReportMetric(mibps(on), "on-MiB/s")
	b.ReportMetric(on.Seconds()/off.Seconds(), "time-ratio")
}
