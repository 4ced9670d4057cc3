package mirror

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/telemetry"
	"github.com/dfly-p2p/dfly/peer"
)

// Every mirror request is a span "mirror.request" with its kind and result;
// a blob served through dfly has the engine's spans as children; a client
// that sends a trace context gets the span as a child of its own.
func TestMirrorSpans(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tr, err := telemetry.NewTracing(context.Background(), telemetry.TraceConfig{Service: "dfdaemon", SampleRatio: 1, Exporter: exp})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Shutdown(context.Background())
	reg := startRegistry(t, "", "")
	img := reg.push(t, "app", 1<<20, 1)
	d, want := layerOf(t, img, 0)
	st, err := blockstore.Open(t.TempDir(), blockstore.Options{GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	eng, err := peer.New(peer.Config{Store: st, Tracing: tr})
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Engine: eng, Tracing: tr})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(m)
	defer func() { srv.Close(); m.Close() }()

	ctx, client := tr.Start(context.Background(), "containerd.pull", trace.WithSpanKind(trace.SpanKindClient))
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/v2/app/blobs/"+d.String()+"?ns="+reg.host, nil)
	telemetry.Inject(ctx, req.Header)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	client.End()
	if resp.StatusCode != 200 || !bytes.Equal(body, want) {
		t.Fatalf("blob: HTTP %d, %d bytes", resp.StatusCode, len(body))
	}
	// A request without a trace context is a root.
	resp, err = http.Post(srv.URL+"/v2/app/blobs/x", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	var reqs tracetest.SpanStubs
	deadline := time.Now().Add(5 * time.Second)
	for len(reqs) < 2 && time.Now().Before(deadline) { // the spans end after the answers
		reqs = nil
		for _, s := range exp.GetSpans() {
			if s.Name == "mirror.request" {
				reqs = append(reqs, s)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(reqs) != 2 {
		t.Fatalf("%d mirror.request spans, want 2", len(reqs))
	}
	attrs := func(s tracetest.SpanStub) map[string]string {
		m := map[string]string{}
		for _, kv := range s.Attributes {
			m[string(kv.Key)] = kv.Value.String()
		}
		return m
	}
	for _, s := range reqs {
		a := attrs(s)
		switch a["http.request.method"] {
		case "GET":
			if s.Parent.SpanID() != client.SpanContext().SpanID() || a["dfly.mirror.kind"] != "blob" || a["dfly.mirror.result"] != "p2p" || a["http.response.status_code"] != "200" {
				t.Errorf("blob span %v parent %v", a, s.Parent.SpanID())
			}
			var children int
			for _, c := range exp.GetSpans() {
				if c.Parent.SpanID() == s.SpanContext.SpanID() && (c.Name == "engine.open" || c.Name == "engine.download") {
					children++
				}
			}
			if children == 0 {
				t.Error("the blob's engine spans are not children of its mirror.request span")
			}
		case "POST":
			if s.Parent.IsValid() || a["dfly.mirror.result"] != "error" || a["http.response.status_code"] != "405" {
				t.Errorf("refused POST span %v", a)
			}
		}
	}
}
