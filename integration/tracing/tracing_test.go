// Package tracing holds the end-to-end test of dfly's OpenTelemetry tracing:
// the real supernode, dfdaemon and dfget binaries (built in TestMain) on
// loopback, every one exporting with OTLP/gRPC (--otlp-endpoint,
// --otlp-insecure, --trace-sample-ratio 1) to an in-process collector — a
// gRPC server implementing the OTLP TraceService — and assertions made on
// the spans it received: one trace per download, across the processes,
// with correct parent links.
package tracing

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	collectorpb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"

	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/integration/readyproc"
	"github.com/dfly-p2p/dfly/integration/testbin"
)

// binDir holds the binaries built by TestMain.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(testbin.Main(m, func(dir string) { binDir = dir }, "./cmd/supernode", "./cmd/dfdaemon", "./cmd/dfget"))
}

// span is one received span, flattened.
type span struct {
	service, name     string
	trace, id, parent string
	kind              tracepb.Span_SpanKind
	attrs             map[string]string
	links             []string // span ids
	statusError       bool
}

func (s span) String() string {
	return fmt.Sprintf("%s/%s(%s<-%s)", s.service, s.name, s.id[:6], s.parent[:min(6, len(s.parent))])
}

// collector is an in-process OTLP/gRPC trace receiver.
type collector struct {
	collectorpb.UnimplementedTraceServiceServer
	addr string

	mu    sync.Mutex
	spans []span
}

func startCollector(t *testing.T) *collector {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{addr: ln.Addr().String()}
	srv := grpc.NewServer()
	collectorpb.RegisterTraceServiceServer(srv, c)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return c
}

func (c *collector) Export(_ context.Context, req *collectorpb.ExportTraceServiceRequest) (*collectorpb.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		svc := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				svc = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				x := span{service: svc, name: s.GetName(), trace: hex.EncodeToString(s.GetTraceId()), id: hex.EncodeToString(s.GetSpanId()),
					parent: hex.EncodeToString(s.GetParentSpanId()), kind: s.GetKind(), attrs: map[string]string{},
					statusError: s.GetStatus().GetCode() == tracepb.Status_STATUS_CODE_ERROR}
				for _, kv := range s.GetAttributes() {
					v := kv.GetValue()
					x.attrs[kv.GetKey()] = v.GetStringValue()
					if v.GetStringValue() == "" {
						x.attrs[kv.GetKey()] = fmt.Sprint(v.GetIntValue())
					}
				}
				for _, l := range s.GetLinks() {
					x.links = append(x.links, hex.EncodeToString(l.GetSpanId()))
				}
				c.spans = append(c.spans, x)
			}
		}
	}
	return &collectorpb.ExportTraceServiceResponse{}, nil
}

// trace returns the spans of one trace.
func (c *collector) trace(id string) []span {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []span
	for _, s := range c.spans {
		if s.trace == id {
			out = append(out, s)
		}
	}
	return out
}

func (c *collector) all() []span {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]span(nil), c.spans...)
}

// tracingFlags point a binary at the collector, recording every trace.
func (c *collector) tracingFlags() []string {
	return []string{"--otlp-endpoint", c.addr, "--otlp-insecure", "--trace-sample-ratio", "1"}
}

// start runs a binary until its ready line; it is stopped (SIGTERM: it
// flushes its spans) by the returned function, or at the test's end.
func start(t *testing.T, name, ready string, args ...string) (line string, stop func()) {
	t.Helper()
	p, line, err := readyproc.Start(name, filepath.Join(t.TempDir(), name+".log"), ready, 60*time.Second,
		append([]string{filepath.Join(binDir, name)}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			p.Stop(15 * time.Second)
			if t.Failed() {
				t.Logf("--- tail of %s log ---\n%s", name, p.LogTail(4000))
			}
		})
	}
	t.Cleanup(stop)
	return line, stop
}

// find returns the spans named name (or ending in "/"+name: gRPC methods)
// of service svc.
func find(spans []span, svc, name string) []span {
	var out []span
	for _, s := range spans {
		if s.service == svc && (s.name == name || strings.HasSuffix(s.name, "/"+name)) {
			out = append(out, s)
		}
	}
	return out
}

func one(t *testing.T, spans []span, svc, name string) span {
	t.Helper()
	got := find(spans, svc, name)
	if len(got) != 1 {
		t.Fatalf("%d %s spans of %s in the trace, want 1; the trace: %v", len(got), name, svc, spans)
	}
	return got[0]
}

// childOf checks that child's parent is parent.
func childOf(t *testing.T, child, parent span) {
	t.Helper()
	if child.parent != parent.id || child.trace != parent.trace {
		t.Errorf("%v is not a child of %v", child, parent)
	}
}

// descends reports whether s descends from anc in spans.
func descends(spans []span, s, anc span) bool {
	byID := map[string]span{}
	for _, x := range spans {
		byID[x.id] = x
	}
	for p, ok := byID[s.parent]; ok; p, ok = byID[p.parent] {
		if p.id == anc.id {
			return true
		}
	}
	return false
}

// TestTraceAcrossProcesses: a cold dfget through a dfdaemon is one trace
// holding dfget's root span, the daemon's local-API and engine spans, the
// RegisterTask call on both sides, the seed's origin fetch, sampled block
// transfers on both sides, and a Sync; every link across a process is a
// real parent link. dfget's embedded peer (--supernode) makes the same kind
// of trace. Heartbeats make none.
func TestTraceAcrossProcesses(t *testing.T) {
	col := startCollector(t)
	org, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer org.Close()
	// 17 MiB: blocks of 1 MiB, so blocks 0 and 16 get spans of their own.
	cold := org.Add("cold.bin", origin.Content{Size: 17 << 20, Seed: 1})
	embedded := org.Add("embedded.bin", origin.Content{Size: 17 << 20, Seed: 2})

	dir := t.TempDir()
	snLine, stopSN := start(t, "supernode", "supernode listening", append([]string{"--listen", "127.0.0.1:0", "--upload-listen", "127.0.0.1:0",
		"--metrics-listen", "", "--store", filepath.Join(dir, "sn"), "--heartbeat", "200ms"}, col.tracingFlags()...)...)
	grpcAddr := readyproc.Fields(snLine)["grpc"]
	sock := filepath.Join(dir, "d.sock")
	_, stopD := start(t, "dfdaemon", "dfdaemon ready", append([]string{"--supernode", grpcAddr, "--listen", "127.0.0.1:0", "--sock", sock,
		"--store", filepath.Join(dir, "d"), "--mirror-listen", "", "--metrics-listen", "", "--host-id", "d1"}, col.tracingFlags()...)...)

	dfget := func(args ...string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(binDir, "dfget"), append(args, col.tracingFlags()...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("dfget %v: %v\n%s", args, err, out)
		}
	}
	dfget(cold, "-O", filepath.Join(dir, "cold.out"), "--daemon-sock", sock, "-q")
	dfget(embedded, "-O", filepath.Join(dir, "embedded.out"), "--supernode", grpcAddr, "--store", filepath.Join(dir, "e"), "-q")
	time.Sleep(600 * time.Millisecond) // a few heartbeats (200ms), which must make no spans
	stopD()                            // the daemon and the supernode flush their spans as they exit
	stopSN()

	roots := find(col.all(), "dfget", "dfget")
	if len(roots) != 2 {
		t.Fatalf("%d dfget root spans, want 2 (one per run); received %v", len(roots), col.all())
	}
	sort.Slice(roots, func(i, j int) bool { return roots[i].attrs["url.full"] < roots[j].attrs["url.full"] })
	viaDaemon, viaEmbedded := roots[0], roots[1] // cold.bin < embedded.bin
	if !strings.HasSuffix(viaDaemon.attrs["url.full"], "/cold.bin") || viaDaemon.parent != "" {
		t.Fatalf("dfget root %+v", viaDaemon)
	}

	t.Run("through the daemon", func(t *testing.T) {
		tr := col.trace(viaDaemon.trace)
		t.Logf("%d spans: %v", len(tr), tr)
		dl := one(t, tr, "dfdaemon", "dfdaemon.download")
		childOf(t, dl, viaDaemon) // dfget → dfdaemon over the unix socket
		if dl.kind != tracepb.Span_SPAN_KIND_SERVER {
			t.Errorf("dfdaemon.download is a %v span", dl.kind)
		}
		open := one(t, tr, "dfdaemon", "engine.open")
		childOf(t, open, dl)
		childOf(t, one(t, tr, "dfdaemon", "engine.download"), dl)
		checkSwarm(t, tr, "dfdaemon", open)
		// The daemon's uploads served nobody; its block GETs went to the seed.
		if n := len(find(tr, "dfdaemon", "peer.upload_block")); n != 0 {
			t.Errorf("%d upload spans on the daemon, nobody fetched from it", n)
		}
	})
	t.Run("embedded peer", func(t *testing.T) {
		tr := col.trace(viaEmbedded.trace)
		t.Logf("%d spans: %v", len(tr), tr)
		open := one(t, tr, "dfget", "engine.open")
		childOf(t, open, viaEmbedded)
		childOf(t, one(t, tr, "dfget", "engine.download"), viaEmbedded)
		checkSwarm(t, tr, "dfget", open)
	})
	for _, s := range col.all() {
		if strings.HasSuffix(s.name, "/Announce") || strings.HasSuffix(s.name, "/Leave") {
			t.Errorf("a heartbeat or leave was traced: %v", s)
		}
	}
}

// checkSwarm checks the swarm's part of a cold download's trace made by
// service peer: RegisterTask on both sides, the seed's fetch under the
// registration, its sampled origin Range requests, sampled block GETs
// answered by the seed's upload server, and at least one Sync.
func checkSwarm(t *testing.T, tr []span, peer string, open span) {
	t.Helper()
	regClient := one(t, tr, peer, "RegisterTask")
	if regClient.kind != tracepb.Span_SPAN_KIND_CLIENT || !descends(tr, regClient, open) {
		t.Errorf("RegisterTask client span %v does not descend from engine.open", regClient)
	}
	regServer := one(t, tr, "supernode", "RegisterTask")
	childOf(t, regServer, regClient) // peer → supernode over gRPC
	if regServer.kind != tracepb.Span_SPAN_KIND_SERVER {
		t.Errorf("the supernode's RegisterTask is a %v span", regServer.kind)
	}
	fetch := one(t, tr, "supernode", "seed.fetch")
	childOf(t, fetch, regServer) // the cold registration started the seed
	var originBlocks []string
	for _, r := range find(tr, "supernode", "seed.origin_range") {
		childOf(t, r, fetch)
		originBlocks = append(originBlocks, r.attrs["dfly.block"])
	}
	sort.Strings(originBlocks)
	if strings.Join(originBlocks, ",") != "0,16" {
		t.Errorf("origin Range spans for blocks %v, want 0 and 16", originBlocks)
	}
	gets := find(tr, peer, "peer.get_block")
	if len(gets) < 2 {
		t.Errorf("%d block GET spans, want one for block 0 and one for 16", len(gets))
	}
	byID := map[string]span{}
	for _, s := range tr {
		byID[s.id] = s
	}
	ups := find(tr, "supernode", "seed.upload_block")
	if len(ups) < 2 {
		t.Errorf("%d seed upload spans, want the sampled blocks'", len(ups))
	}
	for _, u := range ups {
		if p := byID[u.parent]; p.name != "peer.get_block" || p.service != peer {
			t.Errorf("seed upload span %v: its parent %v is not %s's block GET", u, p, peer)
		}
	}
	for _, g := range gets {
		if b := g.attrs["dfly.block"]; b != "0" && b != "16" {
			t.Errorf("block %s has a span: only one block in 16 should", b)
		}
	}
	syncs := find(tr, "supernode", "Sync")
	if len(syncs) == 0 {
		t.Error("no Sync reached the supernode inside the trace")
	}
	for _, s := range syncs {
		if p := byID[s.parent]; !strings.HasSuffix(p.name, "/Sync") || p.service != peer {
			t.Errorf("supernode Sync %v: parent %v is not %s's Sync call", s, p, peer)
		}
	}
}
