package blockhttp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/dfly-p2p/dfly/supernode/api"
)

func TestAcceptsZstd(t *testing.T) {
	tests := []struct {
		name   string
		method string
		accept []string
		rng    string
		want   bool
	}{
		{"zstd", "GET", []string{"zstd"}, "", true},
		{"listed with others", "GET", []string{"gzip, zstd;q=0.5, br"}, "", true},
		{"in a second header", "GET", []string{"gzip", "ZSTD"}, "", true},
		{"spaces and case", "GET", []string{" Zstd ; Q=1 "}, "", true},
		{"refused with q=0", "GET", []string{"zstd;q=0"}, "", false},
		{"bad quality", "GET", []string{"zstd;q=abc"}, "", false},
		{"only gzip (Go's transport default)", "GET", []string{"gzip"}, "", false},
		{"no header", "GET", nil, "", false},
		{"a range request", "GET", []string{"zstd"}, "bytes=0-9", false},
		{"HEAD", "HEAD", []string{"zstd"}, "", false},
		{"a longer coding name", "GET", []string{"zstdx"}, "", false},
	}
	for _, tc := range tests {
		r := httptest.NewRequest(tc.method, "/blocks/t/0", nil)
		for _, v := range tc.accept {
			r.Header.Add("Accept-Encoding", v)
		}
		if tc.rng != "" {
			r.Header.Set("Range", tc.rng)
		}
		if got := AcceptsZstd(r); got != tc.want {
			t.Errorf("%s: AcceptsZstd = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestSendZstd(t *testing.T) {
	form := bytes.Repeat([]byte("form"), 5000)
	sum := sha256.Sum256([]byte("the plain block"))
	var served atomic.Int64
	var sent atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := Pacer{Served: &served, Sent: func(n int64) { sent.Add(n) }}
		if err := SendZstd(context.Background(), w, r, blockFile(t, form), int64(len(form)), 1<<20, sum[:], p); err != nil {
			t.Error(err)
		}
	}))
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL, nil)
	req.Header.Set("Accept-Encoding", EncodingZstd) // so the transport leaves the body alone
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	h := resp.Header
	if resp.StatusCode != 200 || !bytes.Equal(body, form) || resp.ContentLength != int64(len(form)) {
		t.Fatalf("status %d, %d bytes (length %d), want the form", resp.StatusCode, len(body), resp.ContentLength)
	}
	if h.Get("Content-Encoding") != "zstd" || h.Get(PlainLengthHeader) != "1048576" || h.Get(api.DigestHeader) != hex.EncodeToString(sum[:]) || h.Get("Vary") != "Accept-Encoding" {
		t.Fatalf("headers %v", h)
	}
	srv.Close() // waits for the handler
	if served.Load() != int64(len(form)) || sent.Load() != int64(len(form)) {
		t.Fatalf("counted %d served, %d sent; want the %d bytes on the wire", served.Load(), sent.Load(), len(form))
	}
}
