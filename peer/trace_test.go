package peer

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/source"
	"github.com/dfly-p2p/dfly/internal/telemetry"
	"github.com/dfly-p2p/dfly/supernode/api"
)

func testTracing(t testing.TB) (*telemetry.Tracing, *tracetest.InMemoryExporter) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tr, err := telemetry.NewTracing(context.Background(), telemetry.TraceConfig{Service: "dfdaemon", SampleRatio: 1, Exporter: exp})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Shutdown(context.Background()) })
	return tr, exp
}

func named(spans tracetest.SpanStubs, name string) tracetest.SpanStubs {
	var out tracetest.SpanStubs
	for _, s := range spans {
		if s.Name == name || strings.HasSuffix(s.Name, "/"+name) {
			out = append(out, s)
		}
	}
	return out
}

func intAttr(s tracetest.SpanStub, key attribute.Key) (int64, bool) {
	for _, kv := range s.Attributes {
		if kv.Key == key {
			return kv.Value.AsInt64(), true
		}
	}
	return 0, false
}

// In origin mode: Open and Download are children of the caller's span and
// record where the bytes came from; without a caller's span they are roots.
func TestEngineSpans(t *testing.T) {
	tr, exp := testTracing(t)
	e := newEnv(t, 3<<20)
	eng := e.engine(t, Config{Tracing: tr})
	rctx, root := tr.Start(context.Background(), "dfget")
	if _, err := eng.Download(rctx, Request{URL: e.url}, DownloadOptions{}); err != nil {
		t.Fatal(err)
	}
	root.End()
	spans := exp.GetSpans()
	for _, name := range []string{"engine.open", "engine.download"} {
		s := named(spans, name)
		if len(s) != 1 || s[0].Parent.SpanID() != root.SpanContext().SpanID() {
			t.Fatalf("%s spans %+v, want one child of the caller's", name, s)
		}
	}
	if n, _ := intAttr(named(spans, "engine.download")[0], "dfly.bytes.origin"); n != 3<<20 {
		t.Fatalf("engine.download says %d bytes from the origin, want %d", n, 3<<20)
	}
	exp.Reset()
	if _, err := eng.Open(context.Background(), Request{URL: e.url + "?x"}); err == nil {
		t.Log("(opened)")
	}
	if s := named(exp.GetSpans(), "engine.open"); len(s) != 1 || s[0].Parent.IsValid() {
		t.Fatalf("an Open without a caller's span: %+v, want a root", s)
	}
}

// tracedPeer is a swarm peer (engine, swarm, upload server) with tracing.
func tracedPeer(t *testing.T, fx *seedFixture, id string, tr *telemetry.Tracing) *testPeer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := blockstore.Open(t.TempDir(), blockstore.Options{Logger: quietLogger(), GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &testPeer{store: st}
	p.upload = NewUploadServer(UploadConfig{Store: st, Logger: quietLogger(), Tracing: tr})
	p.swarm, err = NewSwarm(ctx, SwarmConfig{Supernode: fx.addr, Store: st, HostID: id, UploadAddr: ln.Addr().String(),
		BlockTimeout: 10 * time.Second, RPCTimeout: 2 * time.Second, Logger: quietLogger(), Tracing: tr})
	if err != nil {
		t.Fatal(err)
	}
	p.upload.cfg.Tokens = p.swarm
	p.engine, err = New(Config{Store: st, Source: source.New(source.Options{Logger: quietLogger(), Retries: -1}), Swarm: p.swarm,
		Logger: quietLogger(), Tracing: tr})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = p.upload.Serve(ctx, ln) }()
	t.Cleanup(func() {
		p.swarm.Close()
		cancel()
		wg.Wait()
		st.Close()
	})
	return p
}

// Through the swarm: RegisterTask is a gRPC client span under engine.open;
// one Sync round in 16 is traced; blocks 0 and 16 of 17 get a GET span
// each, whose context the parent's upload server continues; heartbeats
// make no spans.
func TestSwarmSpans(t *testing.T) {
	tr, exp := testTracing(t)
	fx := newSeedFixture(t, 17<<20)
	a := tracedPeer(t, fx, "A", tr)
	if _, err := a.engine.Download(context.Background(), Request{URL: fx.url}, DownloadOptions{}); err != nil {
		t.Fatal(err)
	}
	b := tracedPeer(t, fx, "B", tr)
	exp.Reset()
	ctx, root := tr.Start(context.Background(), "dfget")
	res, err := b.engine.Download(ctx, Request{URL: fx.url}, DownloadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	root.End()
	if res.Stats.BytesPeers != 17<<20 {
		t.Fatalf("B's bytes %+v: want all from peer A", res.Stats)
	}
	var spans tracetest.SpanStubs
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) { // server spans end after their answer
		spans = exp.GetSpans()
		if len(named(spans, "peer.upload_block")) >= 2 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	byID := map[trace.SpanID]tracetest.SpanStub{}
	for _, s := range spans {
		byID[s.SpanContext.SpanID()] = s
		if s.SpanContext.TraceID() != root.SpanContext().TraceID() {
			t.Errorf("span %s is outside the download's trace", s.Name)
		}
	}
	open := named(spans, "engine.open")
	reg := named(spans, "RegisterTask")
	if len(open) != 1 || len(reg) != 1 || reg[0].Parent.SpanID() != open[0].SpanContext.SpanID() || reg[0].SpanKind != trace.SpanKindClient {
		t.Fatalf("RegisterTask %+v under engine.open %+v", reg, open)
	}
	if syncs := named(spans, "Sync"); len(syncs) == 0 {
		t.Error("no Sync round carried the trace")
	}
	if n := len(named(spans, "Announce")); n != 0 {
		t.Errorf("%d heartbeats traced", n)
	}
	gets := named(spans, "peer.get_block")
	var blocks []int64
	for _, g := range gets {
		idx, _ := intAttr(g, "dfly.block")
		blocks = append(blocks, idx)
	}
	if len(gets) != 2 || blocks[0]+blocks[1] != 16 {
		t.Fatalf("block GET spans for blocks %v, want 0 and 16", blocks)
	}
	for _, s := range named(spans, "peer.upload_block") {
		if p, ok := byID[s.Parent.SpanID()]; !ok || p.Name != "peer.get_block" || s.SpanKind != trace.SpanKindServer {
			t.Errorf("upload span %+v: its parent is not a block GET", s)
		}
	}
	if n := len(named(spans, "peer.upload_block")); n != 2 {
		t.Errorf("%d upload spans, want 2 (the sampled blocks only)", n)
	}
}

func TestSwarmTraceRounds(t *testing.T) {
	var st swarmTrace
	ctx := context.Background()
	if trace.SpanContextFromContext(st.round(ctx)).IsValid() {
		t.Fatal("a round carried a trace before any fetch noted one")
	}
	st.note(ctx) // no trace: nothing noted
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{2}, TraceFlags: trace.FlagsSampled})
	st.note(trace.ContextWithSpanContext(ctx, sc))
	var traced []int
	for i := range 40 {
		if got := trace.SpanContextFromContext(st.round(ctx)); got.IsValid() {
			if got.SpanID() != sc.SpanID() {
				t.Fatalf("round %d carried %v", i, got)
			}
			traced = append(traced, i)
		}
	}
	if len(traced) != 3 || traced[0] != 0 || traced[1] != 16 || traced[2] != 32 {
		t.Fatalf("rounds %v carried the trace, want 0, 16, 32", traced)
	}
}

func TestInjectBlock(t *testing.T) {
	tr, _ := testTracing(t)
	ctx, parent := tr.Start(context.Background(), "download")
	defer parent.End()
	fx := &swarmTask{s: &SupernodeSwarm{cfg: SwarmConfig{Tracing: tr}}, id: "t"}
	for _, tc := range []struct {
		idx  int
		want bool
	}{{0, true}, {3, false}, {16, true}} {
		bctx, span := fx.startBlockSpan(ctx, &api.Parent{HostId: "p", UploadAddr: "127.0.0.1:1"}, tc.idx)
		h := http.Header{}
		injectBlock(bctx, span, h)
		span.End()
		if (h.Get("traceparent") != "") != tc.want {
			t.Errorf("block %d: traceparent %q, want one %v", tc.idx, h.Get("traceparent"), tc.want)
		}
	}
	// Off: no span, nothing injected even inside the caller's trace.
	off := &swarmTask{s: &SupernodeSwarm{}, id: "t"}
	bctx, span := off.startBlockSpan(ctx, &api.Parent{}, 0)
	h := http.Header{}
	injectBlock(bctx, span, h)
	if len(h) != 0 || span.IsRecording() {
		t.Fatalf("tracing off injected %v", h)
	}
}

// The local API's download span joins the caller's trace (DaemonClient
// injects it) and records the download.
func TestLocalAPIDownloadSpan(t *testing.T) {
	tr, exp := testTracing(t)
	e := newEnv(t, 1<<20)
	dir := t.TempDir()
	d, err := StartDaemon(context.Background(), DaemonConfig{Sock: filepath.Join(dir, "d.sock"), StoreDir: filepath.Join(dir, "store"),
		Logger: quietLogger(), Tracing: tr})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	c, err := DialDaemon(context.Background(), d.SockPath())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, root := tr.Start(context.Background(), "dfget")
	if _, err := c.Download(ctx, DownloadRequest{URL: e.url}, nil); err != nil {
		t.Fatal(err)
	}
	root.End()
	var dl tracetest.SpanStubs
	deadline := time.Now().Add(5 * time.Second)
	for len(dl) == 0 && time.Now().Before(deadline) {
		dl = named(exp.GetSpans(), "dfdaemon.download")
		time.Sleep(5 * time.Millisecond)
	}
	if len(dl) != 1 || dl[0].Parent.SpanID() != root.SpanContext().SpanID() || !dl[0].Parent.IsRemote() {
		t.Fatalf("dfdaemon.download %+v, want a child of the caller's span, across the socket", dl)
	}
	if n, _ := intAttr(dl[0], "dfly.length"); n != 1<<20 {
		t.Fatalf("dfly.length %d", n)
	}
	if s := named(exp.GetSpans(), "engine.download"); len(s) != 1 || s[0].Parent.SpanID() != dl[0].SpanContext.SpanID() {
		t.Fatalf("engine.download %+v, want a child of dfdaemon.download", s)
	}
}

// A swarm made inside a trace (dfget's embedded peer) keeps its heartbeats
// and loops out of it.
func TestUntraced(t *testing.T) {
	tr, _ := testTracing(t)
	ctx, span := tr.Start(context.Background(), "dfget")
	defer span.End()
	if trace.SpanContextFromContext(untraced(ctx)).IsValid() {
		t.Fatal("untraced kept the span")
	}
	if _, s := tr.StartChild(untraced(ctx), "heartbeat"); s.IsRecording() {
		t.Fatal("a child span started under an untraced context")
	}
}
