package main

import (
	"context"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/readyproc"
	"github.com/dfly-p2p/dfly/internal/tlsconf/tlstest"
)

func TestTLSFlagErrors(t *testing.T) {
	pki := tlstest.New(t, t.TempDir())
	cert, key := pki.Issue("d", "127.0.0.1")
	for _, args := range [][]string{
		{"--supernode", "127.0.0.1:1", "--tls-ca", pki.CAFile}, // the upload server needs a certificate
		{"--supernode", "127.0.0.1:1", "--tls-cert", cert, "--tls-key", key},
		{"--supernode", "127.0.0.1:1", "--tls-cert", cert, "--tls-key", key, "--tls-ca", cert + ".missing"},
	} {
		dir := t.TempDir()
		args = append(args, "--sock", filepath.Join(dir, "s"), "--store", filepath.Join(dir, "store"), "--listen", "127.0.0.1:0")
		if code := run(context.Background(), args, io.Discard, io.Discard); code != 2 {
			t.Errorf("dfdaemon %q: exit %d, want 2", args, code)
		}
	}
}

// TestTLSUploadServer: with --tls-* the upload server speaks TLS only (the
// supernode may be unreachable: the daemon starts anyway).
func TestTLSUploadServer(t *testing.T) {
	pki := tlstest.New(t, t.TempDir())
	cert, key := pki.Issue("d", "127.0.0.1")
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	var stdout syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--supernode", "127.0.0.1:1", "--listen", "127.0.0.1:0", "--mirror-listen", "", "--sock", filepath.Join(dir, "d.sock"),
			"--store", filepath.Join(dir, "store"), "--log-level", "error", "--tls-cert", cert, "--tls-key", key, "--tls-ca", pki.CAFile, "--tls-client-auth"}, &stdout, io.Discard)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(stdout.String(), "dfdaemon ready") {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("no ready line; stdout %q", stdout.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	upload := readyproc.Fields(strings.TrimSpace(stdout.String()))["upload"]
	resp, err := http.Get("http://" + upload + "/blocks/x/0")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("plain HTTP to the TLS upload server: HTTP %d, want Go's 400 for HTTP on a TLS port", resp.StatusCode)
		}
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d", code)
	}
}
