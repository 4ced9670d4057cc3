package swarm

import (
	"context"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
)

// scrape GETs a path of a metrics listener.
func scrape(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		t.Fatalf("GET %s%s: %v", addr, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// sample returns the value of the series written exactly as series (name
// and labels as exposed) in a /metrics body; ok is false when absent.
func sample(body, series string) (v float64, ok bool) {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	return v, err == nil
}

// TestDaemonMetricsAndReadiness: real processes (a supernode, two
// dfdaemons, dfget, an origin). The second daemon's /metrics shows its
// download came from the swarm (seed and peer bytes, no origin fallback),
// its /readyz is 200 while the supernode answers, and 503 naming the
// supernode a few heartbeats after the supernode was killed.
func TestDaemonMetricsAndReadiness(t *testing.T) {
	const size = 24 * mib
	o := newOrigin(t)
	url := o.Add("metrics.bin", origin.Content{Size: size, Seed: 15})
	// A short heartbeat (three intervals: 750ms) keeps the readiness part quick.
	p, line := start(t, "supernode", "supernode", "supernode listening",
		"--listen", "127.0.0.1:0", "--upload-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
		"--store", filepath.Join(t.TempDir(), "store"), "--heartbeat", "250ms", "--log-level", "info")
	sn := &supernode{proc: p, grpc: field(line, "grpc"), upload: field(line, "upload")}
	a := startDaemon(t, sn, "metrics-a", "")
	b := startDaemon(t, sn, "metrics-b", "")
	if a.metrics == "" || b.metrics == "" {
		t.Fatal("a daemon's ready line names no metrics address")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, d := range []*daemon{a, b} {
		out := filepath.Join(t.TempDir(), "out")
		if _, err := dfget(ctx, out, "--daemon-sock", d.sock, url); err != nil {
			t.Fatalf("dfget through %s: %v", d.id, err)
		}
	}

	code, body := scrape(t, b.metrics, "/metrics")
	if code != 200 {
		t.Fatalf("/metrics of %s: HTTP %d", b.id, code)
	}
	get := func(series string) float64 {
		t.Helper()
		v, ok := sample(body, series)
		if !ok {
			t.Fatalf("%s's /metrics has no series %s", b.id, series)
		}
		return v
	}
	seed, peers := get(`dfly_peer_bytes_total{provenance="seed"}`), get(`dfly_peer_bytes_total{provenance="peer"}`)
	if seed+peers != size || get(`dfly_peer_bytes_total{provenance="origin"}`) != 0 {
		t.Errorf("%s's bytes: seed %v + peer %v, origin %v; want all %d from the swarm", b.id, seed, peers,
			get(`dfly_peer_bytes_total{provenance="origin"}`), size)
	}
	if v := get("dfly_peer_origin_fallbacks_total"); v != 0 {
		t.Errorf("%s: %v origin fallbacks, want 0", b.id, v)
	}
	if v := get(`dfly_peer_downloads_total{result="ok"}`); v != 1 {
		t.Errorf("%s: %v downloads ok, want 1", b.id, v)
	}
	swarmBlocks := get(`dfly_peer_block_fetch_duration_seconds_count{source="seed"}`) + get(`dfly_peer_block_fetch_duration_seconds_count{source="peer"}`)
	if swarmBlocks != size/mib {
		t.Errorf("%s: %v block fetches from the swarm timed, want %d", b.id, swarmBlocks, size/mib)
	}
	if v := get("dfly_store_tasks"); v != 1 {
		t.Errorf("%s: dfly_store_tasks %v, want 1", b.id, v)
	}
	if v := get("dfly_peer_tasks_active"); v != 0 {
		t.Errorf("%s: %v tasks active after the download, want 0", b.id, v)
	}
	if peers > 0 {
		_, abody := scrape(t, a.metrics, "/metrics")
		if v, _ := sample(abody, "dfly_peer_upload_bytes_total"); v < peers {
			t.Errorf("%s uploaded %v bytes, but %s got %v from peers (%s is the only other peer)", a.id, v, b.id, peers, a.id)
		}
	}
	if code, body := scrape(t, b.metrics, "/readyz"); code != 200 {
		t.Fatalf("/readyz of %s with the supernode up: HTTP %d %q", b.id, code, body)
	}

	sn.kill()
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body := scrape(t, b.metrics, "/readyz")
		if code == http.StatusServiceUnavailable {
			if !strings.Contains(body, sn.grpc) {
				t.Fatalf("/readyz after the supernode died: %q, want it to name %s", body, sn.grpc)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz of %s still %d %q 20s after the supernode was killed", b.id, code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if code, _ := scrape(t, b.metrics, "/healthz"); code != 200 {
		t.Fatalf("/healthz of %s without a supernode: HTTP %d, want 200 (alive)", b.id, code)
	}
}
