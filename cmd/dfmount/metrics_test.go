package main

import (
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/dfly-p2p/dfly/integration/origin"
)

// metricValue returns the value of the series line starting with series
// (name and labels exactly as exposed), or -1 when there is none.
func metricValue(body, series string) float64 {
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return -1
	}
	return v
}

// TestMetricsListen: with --metrics-listen a mount serves its FUSE read,
// prefetch, peer and store metrics and its readiness.
func TestMetricsListen(t *testing.T) {
	requireFUSE(t)
	o, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	c := origin.Content{Size: 32 << 20, Seed: 5}
	u := o.Add("f.bin", c)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	store, dir := t.TempDir(), t.TempDir()
	// A slow prefetch (1 MiB/s of 32 MiB) is still running when scraped.
	startMount(t, dir, "--store", store, "--prefetch-rate", "1M", "--metrics-listen", addr, u, dir)
	if got := readRange(t, filepath.Join(dir, "f.bin"), 20<<20, 4096); string(got) != string(want(c, 20<<20, 4096)) {
		t.Fatal("read through the mount returned wrong bytes")
	}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/readyz"); code != 200 {
		t.Fatalf("/readyz: HTTP %d %q", code, body)
	}
	code, body := get("/metrics")
	if code != 200 || !strings.Contains(body, `dfly_build_info{component="dfmount",`) {
		t.Fatalf("/metrics: HTTP %d\n%s", code, body)
	}
	for _, tc := range []struct {
		series string
		min    float64
	}{
		{"dfly_fuse_read_duration_seconds_count", 1},
		{"dfly_fuse_read_errors_total", 0},
		{`dfly_peer_bytes_total{provenance="origin"}`, 1},
		{"dfly_store_tasks", 1},
		{`dfly_prefetch_progress_ratio{layer="f.bin"}`, 0},
	} {
		if v := metricValue(body, tc.series); v < tc.min {
			t.Errorf("%s = %v, want at least %v", tc.series, v, tc.min)
		}
	}
	if v := metricValue(body, `dfly_prefetch_progress_ratio{layer="f.bin"}`); v >= 1 {
		t.Errorf("prefetch progress %v while the prefetch runs, want below 1", v)
	}
}
