package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/cmd/internal/cli"
	"github.com/dfly-p2p/dfly/internal/tlsconf/tlstest"
)

// syncBuffer is a bytes.Buffer safe for a logger and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// serveOnce runs the supernode with args until its ready line, calls f with
// the upload address, then stops it; it returns what it logged.
func serveOnce(t *testing.T, args []string, f func(upload string)) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	var logs syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, append([]string{"--listen", "127.0.0.1:0", "--upload-listen", "127.0.0.1:0", "--metrics-listen", "", "--store", t.TempDir(), "--log-level", "warn"}, args...), pw, &logs)
		pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("no ready line: %v (run: %v)", err, <-done)
	}
	m := readyLine.FindStringSubmatch(strings.TrimSpace(line))
	if m == nil {
		t.Fatalf("ready line %q", line)
	}
	f(m[2])
	cancel()
	go io.Copy(io.Discard, pr)
	if err := <-done; err != nil {
		t.Fatalf("run after cancel: %v", err)
	}
	return logs.String()
}

func TestTLSFlagsServeTLS(t *testing.T) {
	pki := tlstest.New(t, t.TempDir())
	cert, key := pki.Issue("supernode", "127.0.0.1")
	client := pki.Reloader("client", false)
	logs := serveOnce(t, []string{"--tls-cert", cert, "--tls-key", key, "--tls-ca", pki.CAFile, "--tls-client-auth"}, func(upload string) {
		if resp, err := http.Get("http://" + upload + "/debug/state"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Error("plain HTTP answered 200 with --tls-cert")
			}
		}
		tr := &http.Transport{DialTLSContext: client.DialTLS(&net.Dialer{Timeout: 5 * time.Second})}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr}).Get("https://" + upload + "/debug/state")
		if err != nil {
			t.Fatalf("https: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("https /debug/state: HTTP %d", resp.StatusCode)
		}
	})
	if strings.Contains(logs, cli.PlainWarning) {
		t.Fatal("warned of plain TCP with TLS on")
	}
	// Without --tls-*: plain, with one warning line.
	logs = serveOnce(t, nil, func(string) {})
	if strings.Count(logs, cli.PlainWarning) != 1 {
		t.Fatalf("plain supernode logged %q: want the unencrypted warning once", logs)
	}
}

func TestTLSFlagErrors(t *testing.T) {
	pki := tlstest.New(t, t.TempDir())
	cert, key := pki.Issue("supernode", "127.0.0.1")
	for _, args := range [][]string{
		{"--tls-ca", pki.CAFile},                                        // a server needs a certificate
		{"--tls-cert", cert, "--tls-key", key},                          // no CA
		{"--tls-cert", cert, "--tls-key", cert, "--tls-ca", pki.CAFile}, // not a key
		{"--tls-cert", cert + ".missing", "--tls-key", key, "--tls-ca", pki.CAFile},
	} {
		err := run(context.Background(), append([]string{"--store", t.TempDir()}, args...), io.Discard, io.Discard)
		var ue usageError
		if err == nil || !errors.As(err, &ue) {
			t.Errorf("run(%q) = %v, want a usage error (exit 2)", args, err)
		}
	}
}
