package source

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
)

var ctx = context.Background()

func newOrigin(t *testing.T, size int64) (*origin.Server, string, origin.Content) {
	t.Helper()
	s, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	c := origin.Content{Size: size, Seed: 3}
	return s, s.Add("f", c), c
}

func fast() *Client { return New(Options{Timeout: 2 * time.Second, Backoff: time.Millisecond}) }

func TestStatAndRange(t *testing.T) {
	s, u, c := newOrigin(t, 100000)
	s.SendContentMD5(true)
	info, err := fast().Stat(ctx, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	if info.Length != c.Size || info.ETag == "" || info.LastModified == "" || !info.AcceptRanges || info.Digest != c.Digest("md5") {
		t.Fatalf("info = %+v", info)
	}
	got, err := fast().ReadRange(ctx, u, nil, 777, 5000)
	want := make([]byte, 5000)
	_, _ = c.ReadAt(want, 777)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("ReadRange: %v", err)
	}
	if _, err := fast().Revalidate(ctx, u, nil, info.ETag, ""); !errors.Is(err, ErrNotModified) {
		t.Fatalf("revalidate: %v", err)
	}
	if fresh, err := fast().Revalidate(ctx, u, nil, `"other"`, ""); err != nil || fresh.Length != c.Size {
		t.Fatalf("revalidate changed: %+v %v", fresh, err)
	}
}

func TestRetriesOn5xxAndFailsFastOn4xx(t *testing.T) {
	s, u, _ := newOrigin(t, 1000)
	s.FailNext(2)
	if _, err := fast().ReadRange(ctx, u, nil, 0, 10); err != nil {
		t.Fatalf("two 503s then success: %v", err)
	}
	s.FailNext(100)
	_, err := fast().ReadRange(ctx, u, nil, 0, 10)
	var he *HTTPError
	if !errors.As(err, &he) || he.Status != 503 {
		t.Fatalf("persistent 503: %v", err)
	}
	s.FailNext(0)
	before := s.Requests()
	_, err = fast().Stat(ctx, s.URL+"/missing", nil)
	if !IsClientError(err) {
		t.Fatalf("404: %v", err)
	}
	if n := s.Requests() - before; n != 1 {
		t.Fatalf("4xx was retried: %d requests", n)
	}
}

func TestUnreachable(t *testing.T) {
	s, u, _ := newOrigin(t, 1000)
	s.Close()
	_, err := New(Options{Timeout: time.Second, Retries: 1, Backoff: time.Millisecond}).Stat(ctx, u, nil)
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("closed origin: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := fast().Stat(cctx, u, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
}

func TestRangeIgnoredAndStream(t *testing.T) {
	s, u, c := newOrigin(t, 50000)
	s.IgnoreRange(true)
	if _, err := fast().ReadRange(ctx, u, nil, 100, 10); !errors.Is(err, ErrRangeIgnored) {
		t.Fatalf("ignored range: %v", err)
	}
	body, info, err := fast().Stream(ctx, u, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(body)
	body.Close()
	want := make([]byte, c.Size)
	_, _ = c.ReadAt(want, 0)
	if !bytes.Equal(got, want) || info.Length != c.Size {
		t.Fatal("stream content differs")
	}
	if _, _, err := fast().Stream(ctx, u, nil, 10); !errors.Is(err, ErrRangeIgnored) {
		t.Fatalf("resume on range-ignoring origin: %v", err)
	}
}

func TestHeadersRedirectsAndHeadRefused(t *testing.T) {
	var sawAuth atomic.Bool
	data := bytes.Repeat([]byte("x"), 4096)
	mux := http.NewServeMux()
	mux.HandleFunc("/start", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/real", http.StatusFound) })
	mux.HandleFunc("/real", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "Bearer t" {
			sawAuth.Store(true)
		}
		if r.Method == http.MethodHead {
			http.Error(w, "no HEAD here", http.StatusForbidden)
			return
		}
		http.ServeContent(w, r, "real", time.Time{}, bytes.NewReader(data))
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	info, err := fast().Stat(ctx, srv.URL+"/start", http.Header{"Authorization": {"Bearer t"}})
	if err != nil {
		t.Fatal(err)
	}
	if info.Length != 4096 || !info.AcceptRanges || !sawAuth.Load() {
		t.Fatalf("info %+v auth %v", info, sawAuth.Load())
	}
}

func TestContentRangeParsing(t *testing.T) {
	cases := []struct {
		in           string
		start, total int64
	}{
		{"bytes 0-0/1234", 0, 1234},
		{"bytes 10-19/*", 10, -1},
		{"garbage", -1, -1},
		{"", -1, -1},
	}
	for _, c := range cases {
		if got := parseContentRangeStart(c.in); got != c.start {
			t.Errorf("start(%q) = %d", c.in, got)
		}
		if got := totalFromContentRange(c.in); got != c.total {
			t.Errorf("total(%q) = %d", c.in, got)
		}
	}
}

func FuzzContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-0/1", "bytes -/", "bytes 9999999999999999999-1/2", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if v := parseContentRangeStart(s); v < -1 {
			t.Fatalf("start %d", v)
		}
		_ = totalFromContentRange(s)
	})
}

func TestSensitive(t *testing.T) {
	cases := []struct {
		h    http.Header
		want bool
	}{
		{nil, false},
		{http.Header{}, false},
		{http.Header{"User-Agent": {"x"}, "Accept": {"*/*"}}, false},
		{http.Header{"Authorization": {"Bearer x"}}, true},
		{http.Header{"Cookie": {"s=1"}}, true},
		{http.Header{"X-Api-Key": {"k"}}, true},
		{http.Header{"accept": {"*/*"}, "x-token": {"t"}}, true},
	}
	for _, c := range cases {
		if got := Sensitive(c.h); got != c.want {
			t.Errorf("Sensitive(%v) = %v, want %v", c.h, got, c.want)
		}
	}
}

// TestLoadCAs: an origin signed by a private CA is reached only when that
// CA is configured; a file without certificates is a clear error.
func TestLoadCAs(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "3")
		w.Write([]byte("abc"))
	}))
	defer srv.Close()
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	plain := New(Options{Retries: -1, Timeout: 5 * time.Second})
	if _, err := plain.Stat(ctx, srv.URL+"/x", nil); err == nil {
		t.Fatal("an origin signed by an unknown CA was trusted")
	}
	tc, err := LoadCAs(ca)
	if err != nil {
		t.Fatal(err)
	}
	info, err := New(Options{TLS: tc, Retries: -1, Timeout: 5 * time.Second}).Stat(ctx, srv.URL+"/x", nil)
	if err != nil || info.Length != 3 {
		t.Fatalf("with the CA: %+v, %v", info, err)
	}
	bad := filepath.Join(dir, "bad.pem")
	os.WriteFile(bad, []byte("not a certificate"), 0o644)
	if _, err := LoadCAs(bad); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("bad CA file: %v", err)
	}
	if _, err := LoadCAs(filepath.Join(dir, "missing.pem")); err == nil {
		t.Fatal("missing CA file accepted")
	}
}
