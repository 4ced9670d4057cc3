package mirror

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// The credentials of a registry started with Auth. docker-registry's htpasswd accepts
// only bcrypt hashes, and golang.org/x/crypto (bcrypt) is not a dependency of this
// module, so the hash of this one password is fixed here (bcrypt cost 5, so that the
// registry's check of every request stays cheap). Generated with
// bcrypt.GenerateFromPassword([]byte(RegistryPassword), 5).
const (
	RegistryUser     = "dfly"
	RegistryPassword = "dfly-mirror-test"
	registryHtpasswd = RegistryUser + ":$2a$05$w1ETjPbVVaY3zv7nRvb4k.YOmOweBu4VNwwOE3fSOmSEyxmmIzuYa"
)

// RegistryOptions configures StartRegistry.
type RegistryOptions struct {
	// Auth makes the registry require basic auth: RegistryUser / RegistryPassword.
	Auth bool
	// Addr is where the counting proxy listens in this network namespace (Host(),
	// where BuildImage pushes); default 127.0.0.1 on a free port.
	Addr string
	// NetNS, when set, makes the proxy listen inside that network namespace (name
	// under /run/netns) too, on NetNSAddr (default 127.0.0.1:5000): HostIn(NetNS).
	// More namespaces: ServeIn. The registry process itself always listens on this
	// namespace's loopback; only the proxy reaches it.
	NetNS, NetNSAddr string
	// Notify, when set, is a notification endpoint URL: the registry sends
	// its events there (distribution's notifications.endpoints) with
	// "Authorization: Bearer NotifySecret". Event URLs name Addr, so set
	// Addr too (the proxy's address is fixed then).
	Notify, NotifySecret string
}

// Registry is a docker-registry process (filesystem storage in a temporary directory)
// behind an in-process counting reverse proxy. Host() is the proxy's address.
type Registry struct {
	opts    RegistryOptions
	bin     string
	dir     string
	config  string
	backend string // 127.0.0.1:port of docker-registry

	mu      sync.Mutex
	proc    *proc
	listens []listenSpec // the proxy's listeners; addresses fixed when first opened
	srvs    []*http.Server
	stats   Stats
	limiter *rate.Limiter
	reqs    []Request
}

// listenSpec is one address of the proxy: addr in network namespace ns.
type listenSpec struct{ ns, addr string }

// Request is one request the proxy forwarded.
type Request struct {
	Method, Path, Query string
	Kind                RequestKind
	Status              int
	Bytes               int64 // response body bytes sent to the client
	UserAgent           string
}

// RequestKind classifies a registry request.
type RequestKind string

// Request kinds.
const (
	KindBlobGet      RequestKind = "blob GET"
	KindBlobHead     RequestKind = "blob HEAD"
	KindManifestGet  RequestKind = "manifest GET"
	KindManifestHead RequestKind = "manifest HEAD"
	KindPush         RequestKind = "push" // POST, PUT, PATCH, DELETE
	KindOther        RequestKind = "other"
)

// Stats counts what the registry served through the proxy.
type Stats struct {
	BlobBytes     map[string]int64 // blob GET body bytes of 200 and 206 answers per digest
	BlobGets      map[string]int   // blob GETs per digest, whatever the answer
	BlobHeads     int
	ManifestGets  int
	ManifestHeads int
	ManifestBytes int64
	Pushes        int
	Other         int // /v2/ pings, catalog, ...
	Unauthorized  int // 401 answers
}

// TotalBlobBytes is the sum of BlobBytes.
func (s Stats) TotalBlobBytes() int64 {
	var n int64
	for _, b := range s.BlobBytes {
		n += b
	}
	return n
}

// Copies is how many copies of each of blobs the registry served (blob GET bytes /
// blob size), and the largest of them.
func (s Stats) Copies(blobs ...Blob) (per map[string]float64, worst float64) {
	per = make(map[string]float64, len(blobs))
	for _, b := range blobs {
		c := float64(s.BlobBytes[b.Digest]) / float64(b.Size)
		per[b.Digest] = c
		worst = max(worst, c)
	}
	return per, worst
}

func (s Stats) clone() Stats {
	c := s
	c.BlobBytes = make(map[string]int64, len(s.BlobBytes))
	for k, v := range s.BlobBytes {
		c.BlobBytes[k] = v
	}
	c.BlobGets = make(map[string]int, len(s.BlobGets))
	for k, v := range s.BlobGets {
		c.BlobGets[k] = v
	}
	return c
}

// RegistryBinary returns the path of Debian's docker-registry.
func RegistryBinary() (string, error) {
	for _, p := range []string{"/usr/bin/docker-registry"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("docker-registry")
	if err != nil {
		return "", fmt.Errorf("docker-registry not found (install the Debian package docker-registry, e.g. with .ci/install-deps): %w", err)
	}
	return p, nil
}

// StartRegistry starts a registry for t; it stops at cleanup. t is skipped only when
// the docker-registry binary is absent.
func StartRegistry(t testing.TB, opts RegistryOptions) *Registry {
	t.Helper()
	bin, err := RegistryBinary()
	if err != nil {
		t.Skip(err.Error())
	}
	dir := shortTempDir(t, "dfmr-reg-")
	backend, err := freeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	r := &Registry{opts: opts, bin: bin, dir: dir, backend: backend, config: filepath.Join(dir, "config.yml")}
	r.stats = Stats{BlobBytes: map[string]int64{}, BlobGets: map[string]int{}}
	r.listens = []listenSpec{{addr: opts.Addr}}
	if r.listens[0].addr == "" {
		r.listens[0].addr = "127.0.0.1:0"
	}
	if opts.NetNS != "" {
		addr := opts.NetNSAddr
		if addr == "" {
			addr = "127.0.0.1:5000"
		}
		r.listens = append(r.listens, listenSpec{ns: opts.NetNS, addr: addr})
	}
	if err := r.writeConfig(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *Registry) writeConfig() error {
	var secret [16]byte
	_, _ = rand.Read(secret[:])
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: %s
health:
  storagedriver:
    enabled: false
`, filepath.Join(r.dir, "storage"), r.backend, hex.EncodeToString(secret[:]))
	if r.opts.Notify != "" {
		cfg = strings.Replace(cfg, "http:\n", fmt.Sprintf("http:\n  host: http://%s\n", r.opts.Addr), 1)
		cfg += fmt.Sprintf(`notifications:
  endpoints:
    - name: dfly
      url: %s
      headers:
        Authorization: [Bearer %s]
      timeout: 5s
      threshold: 3
      backoff: 500ms
`, r.opts.Notify, r.opts.NotifySecret)
	}
	if r.opts.Auth {
		htpasswd := filepath.Join(r.dir, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte(registryHtpasswd+"\n"), 0o600); err != nil {
			return fmt.Errorf("write the registry's htpasswd: %w", err)
		}
		cfg += fmt.Sprintf("auth:\n  htpasswd:\n    realm: dfly-test\n    path: %s\n", htpasswd)
	}
	if err := os.WriteFile(r.config, []byte(cfg), 0o644); err != nil {
		return fmt.Errorf("write the registry's config: %w", err)
	}
	return nil
}

// Start starts the registry process and the proxy (again, after Stop: same storage,
// same addresses). It returns when the registry answers /v2/.
func (r *Registry) Start() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.proc != nil && !r.proc.exited() {
		return errors.New("start registry: already running")
	}
	p, err := startProc(filepath.Join(r.dir, "registry.log"), nil, r.bin, "serve", r.config)
	if err != nil {
		return fmt.Errorf("start docker-registry: %w", err)
	}
	r.proc = p
	probe := &http.Client{Timeout: 2 * time.Second}
	if err := waitUntil(context.Background(), "docker-registry on "+r.backend, 30*time.Second, p, func() error {
		resp, err := probe.Get("http://" + r.backend + "/v2/")
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusUnauthorized {
			return fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		return nil
	}); err != nil {
		p.stop(syscall.SIGKILL, time.Second)
		r.proc = nil
		return err
	}
	for i := range r.listens {
		if err := r.serve(i); err != nil {
			r.stopLocked()
			return err
		}
	}
	return nil
}

// serve opens the proxy's listener i and serves it; r.mu is held.
func (r *Registry) serve(i int) error {
	ls := &r.listens[i]
	l, err := ListenIn(ls.ns, ls.addr)
	if err != nil {
		return fmt.Errorf("start the registry's proxy: %w", err)
	}
	ls.addr = l.Addr().String()
	target := &url.URL{Scheme: "http", Host: r.backend}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host // the registry builds Location headers from it
		},
	}
	srv := &http.Server{Handler: r.count(rp), ReadHeaderTimeout: 10 * time.Second}
	r.srvs = append(r.srvs, srv)
	go func() { _ = srv.Serve(l) }() // ends when Stop closes srv
	return nil
}

// ServeIn makes the proxy listen on addr inside network namespace ns too (also after
// a Stop/Start) and returns the address ("127.0.0.1:0" picks a port).
func (r *Registry) ServeIn(ns, addr string) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.listens = append(r.listens, listenSpec{ns: ns, addr: addr})
	if r.proc == nil {
		return "", errors.New("registry stopped: Start it first")
	}
	if err := r.serve(len(r.listens) - 1); err != nil {
		r.listens = r.listens[:len(r.listens)-1]
		return "", err
	}
	return r.listens[len(r.listens)-1].addr, nil
}

// Stop stops the proxy (closing its connections: clients in the middle of a pull see
// them cut, new ones are refused) and the registry process. Start brings both back.
// Safe to call more than once.
func (r *Registry) Stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopLocked()
}

func (r *Registry) stopLocked() {
	for _, srv := range r.srvs {
		_ = srv.Close()
	}
	r.srvs = nil
	if r.proc != nil {
		r.proc.stop(syscall.SIGTERM, 10*time.Second)
		r.proc = nil
	}
}

// Host is the registry's address (host:port) in this network namespace as clients
// use it: the proxy's.
func (r *Registry) Host() string { return r.HostIn("") }

// HostIn is the proxy's address in network namespace ns (RegistryOptions.NetNS or
// ServeIn), "" if it does not listen there.
func (r *Registry) HostIn(ns string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range r.listens {
		if l.ns == ns {
			return l.addr
		}
	}
	return ""
}

// Ref returns the reference Host()/repo:tag.
func (r *Registry) Ref(repo, tag string) string { return r.Host() + "/" + repo + ":" + tag }

// Auth reports whether the registry requires RegistryUser / RegistryPassword.
func (r *Registry) Auth() bool { return r.opts.Auth }

// Credentials returns "user:password" for an Auth registry, "" otherwise.
func (r *Registry) Credentials() string {
	if !r.opts.Auth {
		return ""
	}
	return RegistryUser + ":" + RegistryPassword
}

// Stats returns a copy of the counts since the start or the last ResetStats.
func (r *Registry) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats.clone()
}

// Requests returns the requests forwarded since the start or the last ResetStats.
func (r *Registry) Requests() []Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Request(nil), r.reqs...)
}

// ResetStats zeroes the counts and the request log.
func (r *Registry) ResetStats() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats = Stats{BlobBytes: map[string]int64{}, BlobGets: map[string]int{}}
	r.reqs = nil
}

// SetRate caps the blob GET body bytes per second the proxy sends in all (0 =
// unlimited), e.g. so that a test can stop the registry in the middle of a pull.
func (r *Registry) SetRate(bytesPerSec int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if bytesPerSec <= 0 {
		r.limiter = nil
		return
	}
	r.limiter = rate.NewLimiter(rate.Limit(bytesPerSec), 64<<10)
}

// Log returns the registry process's log.
func (r *Registry) Log() string {
	b, _ := os.ReadFile(filepath.Join(r.dir, "registry.log"))
	return string(b)
}

// classify returns the kind of a request and, for blobs, the digest.
func classify(method, path string) (RequestKind, string) {
	switch method {
	case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
		return KindPush, ""
	}
	i := strings.LastIndex(path, "/")
	if i < 0 {
		return KindOther, ""
	}
	parent, ref := path[:i], path[i+1:]
	get := method == http.MethodGet
	switch {
	case strings.HasSuffix(parent, "/blobs") && strings.HasPrefix(path, "/v2/"):
		if get {
			return KindBlobGet, ref
		}
		if method == http.MethodHead {
			return KindBlobHead, ref
		}
	case strings.HasSuffix(parent, "/manifests") && strings.HasPrefix(path, "/v2/"):
		if get {
			return KindManifestGet, ""
		}
		if method == http.MethodHead {
			return KindManifestHead, ""
		}
	}
	return KindOther, ""
}

// count wraps the proxy: it classifies each request, counts the response body bytes
// it writes, and applies the blob rate limit.
func (r *Registry) count(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		kind, dgst := classify(req.Method, req.URL.Path)
		r.mu.Lock()
		lim := r.limiter
		r.mu.Unlock()
		if kind != KindBlobGet {
			lim = nil
		}
		cw := &countingWriter{ResponseWriter: w, lim: lim, ctx: req.Context(), status: http.StatusOK}
		h.ServeHTTP(cw, req)
		r.mu.Lock()
		defer r.mu.Unlock()
		s := &r.stats
		switch kind {
		case KindBlobGet:
			// Error bodies (401 to a client that has not authenticated yet, 404) are
			// not copies of the blob.
			if cw.status == http.StatusOK || cw.status == http.StatusPartialContent {
				s.BlobBytes[dgst] += cw.n
			}
			s.BlobGets[dgst]++
		case KindBlobHead:
			s.BlobHeads++
		case KindManifestGet:
			s.ManifestGets++
			s.ManifestBytes += cw.n
		case KindManifestHead:
			s.ManifestHeads++
		case KindPush:
			s.Pushes++
		default:
			s.Other++
		}
		if cw.status == http.StatusUnauthorized {
			s.Unauthorized++
		}
		r.reqs = append(r.reqs, Request{Method: req.Method, Path: req.URL.Path, Query: req.URL.RawQuery, Kind: kind,
			Status: cw.status, Bytes: cw.n, UserAgent: req.UserAgent()})
	})
}

// countingWriter counts the body bytes written through it, optionally rate limited.
type countingWriter struct {
	http.ResponseWriter
	n      int64
	status int
	lim    *rate.Limiter
	ctx    context.Context
}

func (c *countingWriter) WriteHeader(code int) {
	c.status = code
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.lim == nil {
		n, err := c.ResponseWriter.Write(p)
		c.n += int64(n)
		return n, err
	}
	written := 0
	for written < len(p) {
		chunk := p[written:min(len(p), written+c.lim.Burst())]
		if err := c.lim.WaitN(c.ctx, len(chunk)); err != nil {
			return written, err
		}
		n, err := c.ResponseWriter.Write(chunk)
		c.n += int64(n)
		written += n
		if err != nil {
			return written, err
		}
	}
	return written, nil
}

// Unwrap lets http.ResponseController reach the real writer (the proxy flushes).
func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }
