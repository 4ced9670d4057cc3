// Package mirror is dfdaemon's registry mirror: the OCI distribution pull
// API in front of the registries a host pulls from, so that containerd,
// CRI, nerdctl and Docker pull every layer peer to peer without converting
// images.
//
// A blob GET (/v2/<name>/blobs/sha256:<hex>) becomes a dfly task keyed by
// the digest (the same layer from two registries or two repositories is one
// task), fetched through the host's engine (the swarm, the seed fetching
// from the registry, or the registry itself), every block verified, the
// whole blob verified against its digest, and streamed to the client as the
// blocks arrive, in order, with Range support. Everything else (/v2/,
// manifests, tags, referrers, and HEAD of a blob this host does not hold)
// passes through to the registry unchanged, including its 401 challenges,
// so an engine authenticates exactly as it does without dfly.
//
// The registry is the one containerd names in ?ns= (a mirror host in
// hosts.toml), else Config.Registry (Docker's registry-mirrors).
//
// Credentials: a request's Authorization goes to the engine for that fetch
// only (the supernode's seed uses it to fetch; the content is private and
// each host's own credentials are checked with the registry before it gets
// the blob's blocks); it is never stored or logged.
//
// Fail safe: when the blob cannot be served through dfly before the answer
// started, the request is passed through to the registry, so a pull through
// the mirror fails only where the same pull without it fails; a mirror that
// cannot reach the registry answers 502, and containerd moves on to the next
// host of hosts.toml.
package mirror

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/telemetry"
	"github.com/dfly-p2p/dfly/peer"
)

// DefaultListen is the mirror's default address.
const DefaultListen = "127.0.0.1:65001"

// Config configures a Mirror.
type Config struct {
	// Engine is the host's engine (dfdaemon's): blobs land in its store.
	Engine *peer.Engine
	// Registry is the upstream for requests without ?ns= (Docker's
	// registry-mirrors sends none): "docker.io" or HOST[:PORT]. Empty:
	// such requests are refused with 404 so the client uses the registry.
	Registry string
	// Insecure lists registries (HOST[:PORT]) reached over plain HTTP;
	// loopback addresses and localhost always are.
	Insecure []string
	// Transport reaches registries for pass-through requests (default: a
	// clone of http.DefaultTransport, which uses the system CAs). Blob
	// fetches go through the engine's origin client.
	Transport http.RoundTripper
	// ReadTimeout bounds waiting for one block while streaming (default 60s).
	ReadTimeout time.Duration
	Logger      *slog.Logger
	// Metrics, if set, counts requests by kind and result.
	Metrics *Metrics
	// E2EPrivate makes every blob fetched with credentials (a private
	// registry's) end-to-end encrypted in the swarm (peer.Request.E2E).
	E2EPrivate bool
	// Tracing makes every request a span, "mirror.request" (a root, or a
	// child of the trace the client sent); the engine's spans of a blob
	// are its children. nil: off.
	Tracing *telemetry.Tracing
}

// Stats counts requests by what the mirror did with them.
type Stats struct {
	BlobsP2P      int64 `json:"blobs_p2p"`      // blob GETs served through dfly
	BlobBytes     int64 `json:"blob_bytes"`     // bytes of those answers
	BlobFallbacks int64 `json:"blob_fallbacks"` // blob GETs passed to the registry because dfly could not serve them
	Passthrough   int64 `json:"passthrough"`    // manifests, tags, /v2/, HEADs passed to the registry
	HeadsLocal    int64 `json:"heads_local"`    // blob HEADs answered from the store
	Aborted       int64 `json:"aborted"`        // answers cut short (failure after the headers)
	UpstreamFail  int64 `json:"upstream_fail"`  // registry unreachable (502)
}

// Mirror is an http.Handler serving the pull API. Close it to stop its
// background downloads.
type Mirror struct {
	cfg   Config
	log   *slog.Logger
	proxy *http.Client

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	bg   map[string]*completion // task id → background completion
	stat struct {
		p2p, bytes, fallbacks, pass, heads, aborted, upfail atomic.Int64
	}
}

// completion is the background download that completes and verifies a
// blob while its readers stream it.
type completion struct {
	done chan struct{}
	err  error
}

// New returns a mirror.
func New(cfg Config) (*Mirror, error) {
	if cfg.Engine == nil {
		return nil, errors.New("mirror: no engine")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = 60 * time.Second
	}
	if cfg.Transport == nil {
		cfg.Transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Mirror{cfg: cfg, log: cfg.Logger.With("component", "mirror"), ctx: ctx, cancel: cancel, bg: map[string]*completion{}}
	// Pass-through answers go back as they are: redirects included (the
	// client follows a blob's redirect to the registry's storage itself).
	m.proxy = &http.Client{Transport: cfg.Transport, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return m, nil
}

// Close stops the background downloads and waits for them.
func (m *Mirror) Close() error {
	m.cancel()
	m.wg.Wait()
	return nil
}

// Stats returns the counters.
func (m *Mirror) Stats() Stats {
	return Stats{BlobsP2P: m.stat.p2p.Load(), BlobBytes: m.stat.bytes.Load(), BlobFallbacks: m.stat.fallbacks.Load(),
		Passthrough: m.stat.pass.Load(), HeadsLocal: m.stat.heads.Load(), Aborted: m.stat.aborted.Load(), UpstreamFail: m.stat.upfail.Load()}
}

// blobPath matches /v2/<name>/blobs/<digest>; name is one or more
// lower-case path components (the distribution spec's grammar).
var blobPath = regexp.MustCompile(`^/v2/([a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)/blobs/([a-z0-9]+:[a-zA-Z0-9=_-]+)$`)

// ServeHTTP implements http.Handler.
func (m *Mirror) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	kind, result := kindOf(r.URL.Path), resultError
	// Deferred: an answer cut short (abort panics) counts as an error.
	defer func() { m.cfg.Metrics.request(kind, result) }()
	w, r, endSpan := m.startSpan(w, r, kind)
	defer func() { endSpan(result) }()
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "the dfly registry mirror only serves pulls (GET, HEAD); push to the registry itself", http.StatusMethodNotAllowed)
		return
	}
	if r.URL.Path != "/v2" && !strings.HasPrefix(r.URL.Path, "/v2/") {
		http.Error(w, "not a registry API path (want /v2/...)", http.StatusNotFound)
		return
	}
	up, err := m.upstream(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	if sm := blobPath.FindStringSubmatch(r.URL.Path); sm != nil {
		if algo, _, derr := blockstore.ParseDigest(sm[2]); derr == nil && algo == "sha256" {
			if r.Method == http.MethodGet {
				result = m.serveBlob(w, r, up, sm[2])
			} else {
				result = m.headBlob(w, r, up, sm[2])
			}
			return
		}
	}
	result = m.passthrough(w, r, up)
}

// upstream is the registry a request is for.
type upstream struct {
	host   string // as the client names it (ns), e.g. docker.io or HOST:PORT
	base   string // scheme://host of its API endpoint
	secure bool
}

func (u upstream) url(r *http.Request) string {
	q := r.URL.Query()
	q.Del("ns")
	s := u.base + r.URL.EscapedPath()
	if enc := q.Encode(); enc != "" {
		s += "?" + enc
	}
	return s
}

func (m *Mirror) upstream(r *http.Request) (upstream, error) {
	host := r.URL.Query().Get("ns")
	if host == "" {
		host = m.cfg.Registry
	}
	if host == "" {
		return upstream{}, errors.New("dfly mirror: the request names no registry (?ns=) and no default registry is configured (dfdaemon --mirror-registry); pull from the registry directly")
	}
	return resolveRegistry(host, m.cfg.Insecure)
}

// resolveRegistry maps a registry name to its API endpoint.
func resolveRegistry(host string, insecure []string) (upstream, error) {
	if !validRegistryHost(host) {
		return upstream{}, fmt.Errorf("dfly mirror: %q is not a registry host[:port]", host)
	}
	api := host
	if host == "docker.io" || host == "index.docker.io" {
		api = "registry-1.docker.io"
	}
	secure := !plainHTTP(host, insecure)
	scheme := "https"
	if !secure {
		scheme = "http"
	}
	return upstream{host: host, base: scheme + "://" + api, secure: secure}, nil
}

// validRegistryHost reports whether host is a registry's HOST or
// HOST:PORT (a name, an IPv4 address or a bracketed IPv6 address; a port
// of 1-65535): nothing else may become the host of an upstream URL.
func validRegistryHost(host string) bool {
	if host == "" || strings.ContainsAny(host, "/?#@ \\%") {
		return false
	}
	name := host
	if h, port, err := net.SplitHostPort(host); err == nil {
		n, perr := strconv.Atoi(port)
		if perr != nil || n < 1 || n > 65535 || strings.TrimLeft(port, "0123456789") != "" {
			return false
		}
		name = h
		if strings.HasPrefix(host, "[") || strings.Contains(name, ":") {
			return strings.HasPrefix(host, "[") && strings.Contains(name, ":") && net.ParseIP(name) != nil
		}
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		return net.ParseIP(host[1:len(host)-1]) != nil
	} else if strings.Contains(host, ":") {
		return false
	}
	return name != ""
}

// plainHTTP reports whether a registry is reached over plain HTTP.
func plainHTTP(host string, insecure []string) bool {
	for _, h := range insecure {
		if strings.EqualFold(h, host) {
			return true
		}
	}
	name := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		name = h
	}
	if name == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(name, "[]"))
	return ip != nil && ip.IsLoopback()
}

// forwarded are the request headers passed to the registry.
var forwarded = []string{"Authorization", "Accept", "Range", "If-None-Match", "If-Modified-Since", "User-Agent"}

// originHeader is what the engine (and so the seed) sends to the registry
// for a blob: the client's credentials, nothing else.
func originHeader(r *http.Request) http.Header {
	h := http.Header{}
	if v := r.Header.Get("Authorization"); v != "" {
		h.Set("Authorization", v)
	}
	return h
}

// passthrough sends the request to the registry and its answer back; it
// returns the result for the metrics.
func (m *Mirror) passthrough(w http.ResponseWriter, r *http.Request, up upstream) string {
	m.stat.pass.Add(1)
	return m.forward(w, r, up)
}

// forward passes the request to the registry: resultPassthrough, or
// resultError when the registry could not be asked or its answer was cut.
func (m *Mirror) forward(w http.ResponseWriter, r *http.Request, up upstream) string {
	req, err := http.NewRequestWithContext(r.Context(), r.Method, up.url(r), nil)
	if err != nil {
		http.Error(w, "dfly mirror: "+err.Error(), http.StatusBadRequest)
		return resultError
	}
	for _, k := range forwarded {
		for _, v := range r.Header.Values(k) {
			req.Header.Add(k, v)
		}
	}
	resp, err := m.proxy.Do(req)
	if err != nil {
		m.stat.upfail.Add(1)
		m.log.Warn("registry unreachable", "registry", up.host, "path", r.URL.Path, "err", redact(err))
		http.Error(w, fmt.Sprintf("dfly mirror: registry %s unreachable: %v", up.host, redact(err)), http.StatusBadGateway)
		return resultError
	}
	defer resp.Body.Close()
	copyHeader(w.Header(), resp.Header)
	w.WriteHeader(resp.StatusCode)
	if r.Method != http.MethodHead {
		if _, err := copyBody(w, resp.Body); err != nil {
			m.log.Debug("pass-through answer cut short", "registry", up.host, "path", r.URL.Path, "err", err)
			return resultError
		}
	}
	return resultPassthrough
}

// hopByHop are headers of one connection, never forwarded.
var hopByHop = map[string]bool{"Connection": true, "Keep-Alive": true, "Proxy-Authenticate": true, "Proxy-Authorization": true,
	"Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true}

func copyHeader(dst, src http.Header) {
	for k, vs := range src {
		if hopByHop[k] {
			continue
		}
		for _, v := range vs {
			dst.Add(k, v)
		}
	}
}

// redact describes a transport error without its URL (signed storage
// URLs carry credentials in their query).
func redact(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Op + ": " + ue.Err.Error()
	}
	return err.Error()
}

// headBlob answers a blob HEAD from the store when this host holds the
// whole, verified, public blob; else the registry answers.
func (m *Mirror) headBlob(w http.ResponseWriter, r *http.Request, up upstream, digest string) string {
	id, _ := blockstore.TaskIDForDigest(digest)
	if t, err := m.cfg.Engine.Store().Task(id); err == nil && t.State == blockstore.StateComplete && t.Verified && !t.Private {
		m.stat.heads.Add(1)
		blobHeaders(w.Header(), digest, t.Length)
		w.WriteHeader(http.StatusOK)
		return resultP2P
	}
	return m.passthrough(w, r, up)
}

func blobHeaders(h http.Header, digest string, length int64) {
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Docker-Content-Digest", digest)
	h.Set("Accept-Ranges", "bytes")
	h.Set("ETag", `"`+digest+`"`)
	h.Set("Content-Length", strconv.FormatInt(length, 10))
}
