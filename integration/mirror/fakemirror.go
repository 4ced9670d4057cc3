package mirror

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
	"time"
)

// FakeMirrorMode is what a FakeMirror does with a request.
type FakeMirrorMode int

const (
	// MirrorFail answers every request 503: containerd must fall back to the server.
	MirrorFail FakeMirrorMode = iota
	// MirrorForward forwards each request to http://<ns>/... (the ?ns= registry, which
	// must be in this namespace, e.g. 127.0.0.1:port), headers included.
	MirrorForward
)

// MirrorRequest is one request a FakeMirror received.
type MirrorRequest struct {
	Method, Path string
	NS           string // the ns query parameter: the registry containerd wanted
	Auth         bool   // an Authorization header came along
	Status       int    // what the mirror answered
}

// FakeMirror is an in-process stand-in for a registry mirror on a loopback port: it
// records what containerd sends to a hosts.toml mirror host and fails or forwards it.
// It proves the hosts.toml mechanics without dfly; the dfdaemon mirror replaces it.
type FakeMirror struct {
	srv  *http.Server
	addr string
	mode FakeMirrorMode

	mu   sync.Mutex
	reqs []MirrorRequest
}

// StartFakeMirror starts a FakeMirror on 127.0.0.1 for t; it stops at cleanup.
func StartFakeMirror(t testing.TB, mode FakeMirrorMode) *FakeMirror {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("start fake mirror: %v", err)
	}
	m := &FakeMirror{addr: l.Addr().String(), mode: mode}
	m.srv = &http.Server{Handler: http.HandlerFunc(m.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = m.srv.Serve(l) }() // ends when cleanup closes srv
	t.Cleanup(func() { _ = m.srv.Close() })
	return m
}

// Host is the mirror's host:port (for WriteHostsToml).
func (m *FakeMirror) Host() string { return m.addr }

// Requests returns what the mirror received so far.
func (m *FakeMirror) Requests() []MirrorRequest {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]MirrorRequest(nil), m.reqs...)
}

func (m *FakeMirror) serve(w http.ResponseWriter, req *http.Request) {
	ns := req.URL.Query().Get("ns")
	rec := MirrorRequest{Method: req.Method, Path: req.URL.Path, NS: ns, Auth: req.Header.Get("Authorization") != ""}
	cw := &countingWriter{ResponseWriter: w, status: http.StatusOK}
	switch {
	case m.mode == MirrorFail:
		http.Error(cw, "fake mirror: failing on purpose", http.StatusServiceUnavailable)
	case ns == "":
		http.Error(cw, "fake mirror: no ns query parameter", http.StatusBadGateway)
	default:
		target := &url.URL{Scheme: "http", Host: ns}
		rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			q := pr.Out.URL.Query()
			q.Del("ns")
			pr.Out.URL.RawQuery = q.Encode()
		}, ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			http.Error(w, fmt.Sprintf("fake mirror: upstream %s: %v", ns, err), http.StatusBadGateway)
		}}
		rp.ServeHTTP(cw, req)
	}
	rec.Status = cw.status
	m.mu.Lock()
	m.reqs = append(m.reqs, rec)
	m.mu.Unlock()
}
