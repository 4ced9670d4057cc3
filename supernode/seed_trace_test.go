package supernode

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
	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/internal/telemetry"
	"github.com/dfly-p2p/dfly/supernode/api"
)

func testTracing(t *testing.T) (*telemetry.Tracing, *tracetest.InMemoryExporter) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tr, err := telemetry.NewTracing(context.Background(), telemetry.TraceConfig{Service: "supernode", SampleRatio: 1, Exporter: exp})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Shutdown(context.Background()) })
	return tr, exp
}

func spansNamed(spans tracetest.SpanStubs, name string) tracetest.SpanStubs {
	var out tracetest.SpanStubs
	for _, s := range spans {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

// A registration that starts a seed run is the parent of its "seed.fetch"
// span, whose sampled origin Range requests (blocks 0 and 16 of 20) are its
// children; a later registration is linked to that run both ways; a run
// nobody registered (Resume) is a root.
func TestSeedSpans(t *testing.T) {
	tr, exp := testTracing(t)
	o := startOrigin(t)
	url := o.Add("f.bin", origin.Content{Size: 20 << 20, Seed: 3})
	id, _ := blockstore.TaskIDForURL(url, "", "")
	st := openStore(t, t.TempDir())
	defer st.Close()
	var ev seedEvents
	cfg := ev.config(st)
	cfg.Tracing = tr
	cfg.RevalidateAfter = time.Hour // a second registration reuses the run
	s := NewSeed(cfg)
	defer s.Close()

	regCtx, reg := tr.Start(context.Background(), "RegisterTask", trace.WithSpanKind(trace.SpanKindServer))
	if _, err := s.Ensure(regCtx, SeedRequest{TaskID: id, URL: url}); err != nil {
		t.Fatal(err)
	}
	reg.End()
	waitSeedRun(t, s, id)

	spans := exp.GetSpans()
	fetch := spansNamed(spans, "seed.fetch")
	if len(fetch) != 1 || fetch[0].Parent.SpanID() != reg.SpanContext().SpanID() || fetch[0].SpanContext.TraceID() != reg.SpanContext().TraceID() {
		t.Fatalf("seed.fetch spans %+v, want one child of the registration", fetch)
	}
	ranges := spansNamed(spans, "seed.origin_range")
	var blocks []int64
	for _, r := range ranges {
		if r.Parent.SpanID() != fetch[0].SpanContext.SpanID() || r.SpanKind != trace.SpanKindClient {
			t.Errorf("origin range span %+v is not a client child of seed.fetch", r)
		}
		for _, kv := range r.Attributes {
			if kv.Key == "dfly.block" {
				blocks = append(blocks, kv.Value.AsInt64())
			}
		}
	}
	if len(blocks) != 2 || blocks[0]+blocks[1] != 16 {
		t.Fatalf("origin range spans for blocks %v, want 0 and 16 (one in 16)", blocks)
	}

	// A second registration of the complete task (within RevalidateAfter:
	// the run is reused) is linked to the run.
	exp.Reset()
	ctx2, reg2 := tr.Start(context.Background(), "RegisterTask")
	if _, err := s.Ensure(ctx2, SeedRequest{TaskID: id, URL: url}); err != nil {
		t.Fatal(err)
	}
	reg2.End()
	got := spansNamed(exp.GetSpans(), "RegisterTask")
	if len(got) != 1 || len(got[0].Links) != 1 || got[0].Links[0].SpanContext.SpanID() != fetch[0].SpanContext.SpanID() {
		t.Fatalf("second registration %+v: want a link to the seed run", got)
	}
	if n := len(spansNamed(exp.GetSpans(), "seed.fetch")); n != 0 {
		t.Fatalf("a reused run made %d new seed.fetch spans", n)
	}

	// A run without a registration (a repair) is a root of its own.
	exp.Reset()
	url2 := o.Add("g.bin", origin.Content{Size: 1 << 20, Seed: 4})
	id2, _ := blockstore.TaskIDForURL(url2, "", "")
	s.Resume(id2, url2)
	waitSeedRun(t, s, id2)
	roots := spansNamed(exp.GetSpans(), "seed.fetch")
	if len(roots) != 1 || roots[0].Parent.IsValid() {
		t.Fatalf("seed.fetch of a resumed task %+v, want one root", roots)
	}
}

func waitSeedRun(t *testing.T, s *Seed, id string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if state, _, _ := s.TaskState(id); state == SeedComplete {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("seed of %s not complete: %v", id, s.Err(id))
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The run's span ends right after the state says complete.
	st := s.lookup(id)
	select {
	case <-st.done:
	case <-time.After(10 * time.Second):
		t.Fatal("seed run did not end")
	}
}

// Tracing off (the default): the seed runs as before, with no-op spans.
func TestSeedWithoutTracing(t *testing.T) {
	o := startOrigin(t)
	url := o.Add("f.bin", origin.Content{Size: 2 << 20, Seed: 5})
	id, _ := blockstore.TaskIDForURL(url, "", "")
	st := openStore(t, t.TempDir())
	defer st.Close()
	var ev seedEvents
	s := NewSeed(ev.config(st))
	defer s.Close()
	if _, err := s.Ensure(context.Background(), SeedRequest{TaskID: id, URL: url}); err != nil {
		t.Fatal(err)
	}
	waitSeedRun(t, s, id)
	if sp := s.lookup(id).span; sp == nil || sp.IsRecording() {
		t.Fatalf("run span %v with tracing off", sp)
	}
}

// The seed's upload server answers a block request that carries a trace
// context (peers send one for sampled blocks) with a server span, a child
// of the requester's span, and the bytes unchanged; without one, no span.
func TestUploadSpans(t *testing.T) {
	tr, exp := testTracing(t)
	key := newTestSigner()
	store, c := storeWithTask(t, "t1", 1<<20, 0)
	u := NewUploadServer(UploadConfig{Store: store, TokenKeys: key.pub(), Logger: quietLogger(), Tracing: tr})
	srv := httptest.NewServer(u)
	defer srv.Close()
	want := make([]byte, 1<<20)
	c.ReadAt(want, 0)
	get := func(ctx context.Context) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/blocks/t1/0", nil)
		req.Header.Set(api.TokenHeader, key.token("t1", time.Hour))
		telemetry.Inject(ctx, req.Header)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		got, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !bytes.Equal(got, want) {
			t.Fatalf("HTTP %d, %d bytes", resp.StatusCode, len(got))
		}
	}
	get(context.Background())
	if n := len(exp.GetSpans()); n != 0 {
		t.Fatalf("an untraced block request made %d spans", n)
	}
	ctx, client := tr.Start(context.Background(), "peer.get_block", trace.WithSpanKind(trace.SpanKindClient))
	get(ctx)
	client.End()
	srvSpans := spansNamed(exp.GetSpans(), "seed.upload_block")
	if len(srvSpans) != 1 || srvSpans[0].Parent.SpanID() != client.SpanContext().SpanID() || srvSpans[0].SpanKind != trace.SpanKindServer {
		t.Fatalf("server spans %+v, want one child of the client's", srvSpans)
	}
}
