package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/internal/telemetry"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// freeAddr returns a loopback address nothing listens on (a moment ago).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestServeMetrics: a serving snapshotter answers /readyz (its store is
// open; containerd is not needed) and /metrics with its store, peer and
// build series.
func TestServeMetrics(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("serving the snapshotter needs root (overlay snapshotter); not running as root")
	}
	dir := t.TempDir()
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	var errb bytes.Buffer
	go func() {
		done <- run(ctx, []string{"--root", filepath.Join(dir, "root"), "--address", filepath.Join(dir, "sn.sock"), "--log-level", "error",
			"--metrics-listen", addr}, io.Discard, &errb)
	}()
	defer func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("serve exit %d: %s", code, errb.String())
		}
	}()
	c := http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := c.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz never answered 200 (last: %v)", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`dfly_build_info{component="dfly-snapshotter",`, "dfly_store_tasks 0", `dfly_peer_bytes_total{provenance="origin"} 0`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestMetricsAddressBusy: a busy default address disables the listener; a
// busy explicit one is an error; "" is off.
func TestMetricsAddressBusy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	reg := telemetry.NewRegistry("dfly-snapshotter", "test")
	if srv, err := startMetrics(ln.Addr().String(), false, reg, quietLog()); err != nil || srv != nil {
		t.Fatalf("busy default address: %v %v, want the listener off", srv, err)
	}
	if _, err := startMetrics(ln.Addr().String(), true, reg, quietLog()); err == nil || !strings.Contains(err.Error(), "--metrics-listen") {
		t.Fatalf("busy explicit address: %v, want an error naming --metrics-listen", err)
	}
	srv, err := startMetrics("", true, reg, quietLog())
	if err != nil || srv != nil || addrOf(srv) != "off" {
		t.Fatalf("--metrics-listen '': %v %v", srv, err)
	}
	stopMetrics(srv, quietLog()) // none: a no-op
	srv, err = startMetrics("127.0.0.1:0", true, reg, quietLog())
	if err != nil || addrOf(srv) == "off" {
		t.Fatalf("port 0: %v %v", srv, err)
	}
	stopMetrics(srv, quietLog())
}
