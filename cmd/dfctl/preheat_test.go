package main

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/internal/tlsconf/tlstest"
	"github.com/dfly-p2p/dfly/supernode/preheat"
)

type instantSeeder struct{}

func (instantSeeder) Seed(context.Context, preheat.Target) (int64, error) { return 10, nil }
func (instantSeeder) Progress(string) (int, int, string)                  { return 1, 1, "" }

func TestPreheatCommand(t *testing.T) {
	m, err := preheat.Open(preheat.Config{Dir: t.TempDir(), Seeder: instantSeeder{}, Poll: 10 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	srv := httptest.NewServer(m.Handler(preheat.APIConfig{}))
	defer srv.Close()
	run1 := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := run(context.Background(), append([]string{"preheat", "--supernode-api", srv.URL}, args...), &out, &errb)
		return code, out.String(), errb.String()
	}
	code, out, errs := run1("--url", "http://origin/model.bin", "-H", "Authorization: Bearer x", "--wait")
	if code != 0 || !strings.Contains(out, "succeeded") || !strings.Contains(out, "1/1 layers") {
		t.Fatalf("preheat --wait: %d %q %q", code, out, errs)
	}
	id := strings.Fields(out)[0]
	if code, out, _ := run1("status", id); code != 0 || !strings.Contains(out, id) {
		t.Fatalf("status: %d %q", code, out)
	}
	if code, out, _ := run1("list"); code != 0 || !strings.Contains(out, id) {
		t.Fatalf("list: %d %q", code, out)
	}
	if code, out, _ := run1("list", "--json"); code != 0 || !strings.Contains(out, `"id": "`+id) {
		t.Fatalf("list --json: %d %q", code, out)
	}
	if code, _, errs := run1("status", "ph-nope"); code != 1 || !strings.Contains(errs, "no such preheat job") {
		t.Fatalf("status of an unknown job: %d %q", code, errs)
	}
	for _, bad := range [][]string{
		{},
		{"--url", "http://o/x", "--image", "r/a:1"},
		{"--url", "nota url"},
		{"--url", "http://o/x", "-H", "nocolon"},
		{"--image", "r/a:1", "--digest", "sha256:00"},
		{"--bogus"},
		{"frobnicate"},
	} {
		if code, _, _ := run1(bad...); code != 2 {
			t.Errorf("dfctl preheat %v: exit %d, want 2", bad, code)
		}
	}
	if code, _, errs := run(context.Background(), []string{"preheat", "--supernode-api", "127.0.0.1:1", "list"}, &bytes.Buffer{}, &bytes.Buffer{}), "", ""; code != 1 {
		t.Fatalf("unreachable supernode: exit %d %s", code, errs)
	}
	var help bytes.Buffer
	if code := run(context.Background(), []string{"preheat", "--help"}, &bytes.Buffer{}, &help); code != 0 || !strings.Contains(help.String(), "dfctl preheat list") {
		t.Fatalf("--help: %d %q", code, help.String())
	}
}

// TestPreheatCommandTLS: against a supernode whose upload server uses
// mutual TLS, dfctl preheat with the swarm's --tls-* flags works, and
// without a client certificate it is refused.
func TestPreheatCommandTLS(t *testing.T) {
	m, err := preheat.Open(preheat.Config{Dir: t.TempDir(), Seeder: instantSeeder{}, Poll: 10 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	pki := tlstest.New(t, t.TempDir())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: m.Handler(preheat.APIConfig{})}
	go srv.Serve(pki.Reloader("supernode", true).NewListener(ln))
	defer srv.Close()
	cert, key := pki.Issue("ops", "127.0.0.1")
	addr := ln.Addr().String()
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"preheat", "--supernode-api", addr, "--tls-ca", pki.CAFile, "--tls-cert", cert, "--tls-key", key,
		"--url", "http://origin/x", "--wait"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "succeeded") {
		t.Fatalf("preheat over mTLS: exit %d %q %q", code, out.String(), errb.String())
	}
	errb.Reset()
	if code := run(context.Background(), []string{"preheat", "--supernode-api", addr, "--tls-ca", pki.CAFile, "list"}, &out, &errb); code != 1 {
		t.Fatalf("preheat without a client certificate: exit %d %q, want 1", code, errb.String())
	}
}
