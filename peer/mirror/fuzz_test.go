package mirror

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/source"
	"github.com/dfly-p2p/dfly/peer"
)

// FuzzRangeBounds: parseRange against a model of RFC 9110 single byte
// ranges. An accepted range lies within the content and is the range the
// header names (clamped to the content); an unparsable one is refused.
func FuzzRangeBounds(f *testing.F) {
	for _, s := range []string{"bytes=0-1", "bytes=-5", "bytes=3-", "bytes=9-1", "bytes=0-9223372036854775807",
		"bytes=-9223372036854775807", "bytes=5-5", "bytes= 1-2", "bytes=0-0,1-1", "bytes=-0", ""} {
		f.Add(s, int64(100))
	}
	f.Add("bytes=0-", int64(1))
	f.Fuzz(func(t *testing.T, h string, n int64) {
		if n <= 0 {
			return
		}
		s, e, partial, err := parseRange(h, n)
		if err != nil {
			return
		}
		if s < 0 || e > n || s >= e {
			t.Fatalf("parseRange(%q, %d) = [%d, %d): outside the content", h, n, s, e)
		}
		spec, ok := strings.CutPrefix(h, "bytes=")
		if !ok || strings.Contains(spec, ",") {
			if partial || s != 0 || e != n {
				t.Fatalf("parseRange(%q, %d) = [%d, %d) partial=%v, want the whole content", h, n, s, e, partial)
			}
			return
		}
		a, b, _ := strings.Cut(strings.TrimSpace(spec), "-")
		if a == "" {
			k, _ := strconv.ParseInt(b, 10, 64)
			if s != max(n-k, 0) || e != n {
				t.Fatalf("parseRange(%q, %d) = [%d, %d), want the last %d bytes", h, n, s, e, k)
			}
			return
		}
		first, _ := strconv.ParseInt(a, 10, 64)
		wantEnd := n
		if b != "" {
			last, _ := strconv.ParseInt(b, 10, 64)
			if last < n-1 {
				wantEnd = last + 1
			}
		}
		if s != first || e != wantEnd || !partial {
			t.Fatalf("parseRange(%q, %d) = [%d, %d), want [%d, %d)", h, n, s, e, first, wantEnd)
		}
	})
}

// fakeUpstream is every registry the mirror may reach: it records each
// request's URL and answers 200 "ok" (a blob's bytes never match its
// digest, so blob GETs fall back to passing through).
type fakeUpstream struct {
	mu   sync.Mutex
	urls []*url.URL
}

func (u *fakeUpstream) RoundTrip(r *http.Request) (*http.Response, error) {
	u.mu.Lock()
	u.urls = append(u.urls, r.URL)
	u.mu.Unlock()
	w := httptest.NewRecorder()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", "2")
	w.WriteHeader(http.StatusOK)
	w.WriteString("ok")
	resp := w.Result()
	resp.Request = r
	return resp, nil
}

func (u *fakeUpstream) take() []*url.URL {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := u.urls
	u.urls = nil
	return out
}

// FuzzRouting: the mirror's routing of any request (method, path, query,
// Range). Only GET and HEAD of /v2 paths are served (405, 404 otherwise);
// it never answers 5xx of its own; and it only ever talks to the registry
// the request names (?ns=, else the default), at that registry's API
// endpoint, for the request's own /v2 path: no path, query or header
// makes it reach another host.
func FuzzRouting(f *testing.F) {
	log := slog.New(slog.DiscardHandler)
	st, err := blockstore.Open(f.TempDir(), blockstore.Options{Logger: log, GCInterval: -1, FreeSpace: func(string) (int64, int64, error) { return 1 << 40, 1 << 40, nil }})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	up := &fakeUpstream{}
	eng, err := peer.New(peer.Config{Store: st, Logger: log, Source: source.New(source.Options{Transport: up, Retries: -1, Timeout: 5 * time.Second, Logger: log})})
	if err != nil {
		f.Fatal(err)
	}
	m, err := New(Config{Engine: eng, Logger: log, Registry: "docker.io", Transport: up, Insecure: []string{"reg.test:5000"}, ReadTimeout: 5 * time.Second})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { m.Close() })
	sum := sha256.Sum256([]byte("ok"))
	blob := "sha256:" + hex.EncodeToString(sum[:])
	for _, s := range [][3]string{
		{"GET", "/v2/", ""}, {"GET", "/v2/library/alpine/manifests/latest", "ns=docker.io"},
		{"GET", "/v2/library/alpine/blobs/" + blob, "ns=reg.test:5000"}, {"HEAD", "/v2/a/blobs/" + blob, "ns=127.0.0.1:5000"},
		{"GET", "/v2/a/blobs/sha256:00", "ns=evil.com/x"}, {"GET", "/v2/../../etc", "ns=a@b"}, {"POST", "/v2/a/blobs/uploads/", ""},
		{"GET", "/v2/a/tags/list", "ns=ghcr.io&n=10&ns=other"}, {"GET", "/other", ""}, {"GET", "/v2//evil.com/x", "ns=%2f"},
	} {
		f.Add(s[0], s[1], s[2], "")
	}
	f.Add("GET", "/v2/a/blobs/"+blob, "ns=reg.test:5000", "bytes=0-0")
	f.Add("GET", "/v2/1/blobs/"+strings.ToUpper(blob), "", "") // the same blob, from the default registry
	bases := map[string]bool{}
	f.Fuzz(func(t *testing.T, method, path, query, rng string) {
		q, err := url.ParseQuery(query)
		if err != nil {
			return
		}
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Method, r.URL = method, &url.URL{Path: path, RawQuery: query}
		if rng != "" {
			r.Header.Set("Range", rng)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r = r.WithContext(ctx)
		w := httptest.NewRecorder()
		up.take()
		m.ServeHTTP(w, r)
		sent := up.take()
		if method != http.MethodGet && method != http.MethodHead {
			if w.Code != http.StatusMethodNotAllowed || len(sent) > 0 {
				t.Fatalf("%s %q: HTTP %d after %d upstream requests, want 405 and none", method, path, w.Code, len(sent))
			}
			return
		}
		if path != "/v2" && !strings.HasPrefix(path, "/v2/") {
			if w.Code != http.StatusNotFound || len(sent) > 0 {
				t.Fatalf("%s %q: HTTP %d after %d upstream requests, want 404 and none", method, path, w.Code, len(sent))
			}
			return
		}
		if w.Code >= 500 && w.Code != http.StatusBadGateway {
			t.Fatalf("%s %q?%s: HTTP %d: %s", method, path, query, w.Code, w.Body)
		}
		host := q.Get("ns")
		if host == "" {
			host = "docker.io"
		}
		want, rerr := resolveRegistry(host, []string{"reg.test:5000"})
		if rerr == nil {
			bases[want.base] = true
		}
		_, digest, isBlob := strings.Cut(path, "/blobs/")
		for _, u := range sent {
			if rerr != nil {
				t.Fatalf("%s %q?%s: reached %s though the registry %q is refused", method, path, query, u, host)
			}
			if isBlob && bases[u.Scheme+"://"+u.Host] && strings.EqualFold(u.Path[strings.LastIndex(u.Path, "/")+1:], digest) {
				// A blob is one task whatever registry it is pulled from
				// (content-addressed, verified): the engine may fetch it
				// where an earlier pull of the same digest did.
				continue
			}
			if u.Scheme+"://"+u.Host != want.base {
				t.Fatalf("%s %q?%s: reached %s, want only %s", method, path, query, u, want.base)
			}
			if u.Path != path || u.Query().Has("ns") {
				t.Fatalf("%s %q?%s: upstream request %s is not the request's path", method, path, query, u)
			}
		}
		if w.Code == http.StatusOK && len(sent) == 0 && method == http.MethodGet {
			if !bytes.Equal(w.Body.Bytes(), []byte("ok")) {
				t.Fatalf("%s %q: 200 from the store with %q", method, path, w.Body)
			}
		}
	})
}
