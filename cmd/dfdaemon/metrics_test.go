package main

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/internal/telemetry"
)

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestMetricsServed: with --metrics-listen the daemon names the address in
// its ready line and serves its metrics (every peer, store and mirror
// series from the start) and its health there.
func TestMetricsServed(t *testing.T) {
	line := startRun(t, "--mirror-listen", "127.0.0.1:0")
	addr := readyField(line, "metrics")
	if addr == "" {
		t.Fatalf("ready line %q names no metrics address", line)
	}
	code, body := httpGet(t, "http://"+addr+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: HTTP %d", code)
	}
	for _, want := range []string{
		`dfly_build_info{component="dfdaemon",version="`,
		`dfly_peer_bytes_total{provenance="peer"} 0`,
		`dfly_peer_downloads_total{result="canceled"} 0`,
		`dfly_peer_uploads_rejected_total{reason="busy"} 0`,
		`dfly_peer_limiter_wait_seconds_total{limiter="preheat"} 0`,
		"dfly_peer_tasks_active 0",
		"dfly_store_tasks 0",
		"dfly_store_evictions_total 0",
		`dfly_mirror_requests_total{kind="manifest",result="passthrough"} 0`,
		"go_goroutines", "process_cpu_seconds_total",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if code, body := httpGet(t, "http://"+addr+"/readyz"); code != 200 {
		t.Errorf("/readyz of an origin-mode daemon: HTTP %d %q", code, body)
	}
	if code, _ := httpGet(t, "http://"+addr+"/healthz"); code != 200 {
		t.Errorf("/healthz: HTTP %d", code)
	}
}

// TestReadyzNamesSupernode: a daemon whose supernode does not answer is
// alive but not ready, and /readyz says why.
func TestReadyzNamesSupernode(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	line := startRun(t, "--supernode", dead, "--listen", "127.0.0.1:0", "--mirror-listen", "")
	addr := readyField(line, "metrics")
	if code, body := httpGet(t, "http://"+addr+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, dead) {
		t.Fatalf("/readyz with the supernode down: HTTP %d %q, want 503 naming %s", code, body, dead)
	}
	if code, _ := httpGet(t, "http://"+addr+"/healthz"); code != 200 {
		t.Fatalf("/healthz with the supernode down: HTTP %d, want 200 (alive)", code)
	}
}

// TestMetricsAddressBusy: a busy default address disables the listener
// with a warning (several daemons on one host); a busy explicit one is an
// error; "" is off.
func TestMetricsAddressBusy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	reg := telemetry.NewRegistry("dfdaemon", "test")
	if m, addr, err := startMetrics(ln.Addr().String(), false, reg, quietLog()); err != nil || addr != "" || m == nil {
		t.Fatalf("busy default address: %v %q %v, want the listener off", m, addr, err)
	}
	if _, _, err := startMetrics(ln.Addr().String(), true, reg, quietLog()); err == nil || !strings.Contains(err.Error(), "--metrics-listen") {
		t.Fatalf("busy explicit address: %v, want an error naming --metrics-listen", err)
	}
	m, addr, err := startMetrics("", true, reg, quietLog())
	if err != nil || addr != "" || metricsField(addr) != "" {
		t.Fatalf("--metrics-listen '': %v %q %v", m, addr, err)
	}
	m.close(quietLog()) // a listener that is off closes as a no-op
	m, addr, err = startMetrics("127.0.0.1:0", true, reg, quietLog())
	if err != nil || metricsField(addr) != " metrics="+addr {
		t.Fatalf("port 0: %q %v", addr, err)
	}
	m.close(quietLog())
	c := http.Client{Timeout: time.Second}
	if _, err := c.Get("http://" + addr + "/healthz"); err == nil {
		t.Fatal("the listener still answers after close")
	}
}
