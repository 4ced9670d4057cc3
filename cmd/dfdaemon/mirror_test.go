package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startRun runs dfdaemon with args until the test ends and returns its
// ready line.
func startRun(t *testing.T, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	var stdout syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"--sock", filepath.Join(dir, "d.sock"), "--store", filepath.Join(dir, "store"), "--log-level", "error",
			"--metrics-listen", "127.0.0.1:0"}, args...), &stdout, io.Discard)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("dfdaemon did not stop")
		}
	})
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if s := stdout.String(); strings.Contains(s, "dfdaemon ready") {
			return s
		}
		select {
		case code := <-done:
			t.Fatalf("dfdaemon exited %d before it was ready", code)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ready line; stdout %q", stdout.String())
		}
	}
}

func readyField(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

// TestMirrorServed: the daemon serves the registry mirror and says where.
func TestMirrorServed(t *testing.T) {
	reg := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		w.Write([]byte("{}"))
	}))
	defer reg.Close()
	line := startRun(t, "--mirror-listen", "127.0.0.1:0")
	addr := readyField(line, "mirror")
	if addr == "" || addr == "off" {
		t.Fatalf("ready line %q names no mirror address", line)
	}
	resp, err := http.Get("http://" + addr + "/v2/?ns=" + strings.TrimPrefix(reg.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Fatalf("GET /v2/ through the mirror: HTTP %d %v", resp.StatusCode, resp.Header)
	}
}

// TestMirrorAddressBusy: a busy default address disables the mirror with a
// warning (several daemons on one host); a busy explicit one is an error.
func TestMirrorAddressBusy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	o := options{mirrorListen: ln.Addr().String()}
	if m, addr, err := startMirror(o, nil, quietLog(), nil); err != nil || addr != "off" || m == nil {
		t.Fatalf("busy default address: %v %q %v, want the mirror off", m, addr, err)
	}
	o.mirrorListenSet = true
	if _, _, err := startMirror(o, nil, quietLog(), nil); err == nil || !strings.Contains(err.Error(), "--mirror-listen") {
		t.Fatalf("busy explicit address: %v, want an error naming --mirror-listen", err)
	}
	if m, addr, err := startMirror(options{mirrorListen: ""}, nil, quietLog(), nil); err != nil || addr != "off" {
		t.Fatalf("--mirror-listen '': %v %q %v", m, addr, err)
	}
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
