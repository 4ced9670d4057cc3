package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
)

// checkMetricsListener: the listener of the ready line's metrics=ADDR
// serves /healthz, /readyz (ready) and /metrics with the build info, the
// supernode's series and the seed's store gauges.
func checkMetricsListener(t *testing.T, addr string) {
	t.Helper()
	if addr == "" {
		t.Fatal("the ready line names no metrics=ADDR though --metrics-listen is set")
	}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, body := get(p); code != http.StatusOK {
			t.Errorf("GET %s: HTTP %d %s, want 200", p, code, body)
		}
	}
	code, body := get("/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: HTTP %d", code)
	}
	for _, want := range []string{`dfly_build_info{component="supernode"`, "dfly_supernode_peers 0", `dfly_seed_cache_total{result="miss"} 0`,
		"dfly_store_quota_bytes 1.073741824e+09", "dfly_store_tasks 0", `dfly_preheat_jobs{state="queued"} 0`, "go_goroutines", "process_cpu_seconds_total"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestMetricsListenFlag: "" disables the listener (no metrics= in the
// ready line); an address in use fails the start, naming the flag.
func TestMetricsListenFlag(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--upload-listen", "127.0.0.1:0", "--store", t.TempDir(), "--log-level", "warn", "--metrics-listen", ""}, pw, io.Discard)
		pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("no ready line: %v (run: %v)", err, <-done)
	}
	if m := readyLine.FindStringSubmatch(strings.TrimSpace(line)); m == nil || m[4] != "" {
		t.Fatalf("ready line %q: want no metrics= with --metrics-listen \"\"", line)
	}
	cancel()
	go io.Copy(io.Discard, pr)
	if err := <-done; err != nil {
		t.Fatalf("run after cancel: %v", err)
	}

	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	err = run(context.Background(), []string{"--listen", "127.0.0.1:0", "--upload-listen", "127.0.0.1:0", "--store", t.TempDir(), "--log-level", "error",
		"--metrics-listen", busy.Addr().String()}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--metrics-listen") {
		t.Fatalf("metrics address in use: %v, want an error naming --metrics-listen", err)
	}
}
