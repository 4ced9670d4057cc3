package peer

// Local API of dfdaemon: HTTP over a unix socket, used by dfget.
//
//	POST /v1/download   JSON DownloadRequest → application/x-ndjson stream of
//	                    DownloadEvent lines: {"event":"progress",...} at most
//	                    every 250ms, then one {"event":"result",...} or
//	                    {"event":"error","error":"..."}.
//	GET  /v1/tasks      JSON array of the store's tasks; their details
//	                    (source URL, which may carry a signed query, tag,
//	                    validators, digest) for root and the daemon's own
//	                    user only, IDs, sizes and states for others
//	GET  /v1/stats      JSON DaemonStats
//	GET  /v1/status     ?window=5m: JSON p2pstatus.Host, is P2P working on
//	                    this host (localapi_status.go, docs/status.md)
//	GET  /v1/ping       204: the daemon answers (dfget's probe)
//	GET  /debug/pprof/  Go profiles (net/http/pprof), for root and the
//	                    daemon's own user only:
//	                    curl --unix-socket SOCK http://d/debug/pprof/profile?seconds=20 > cpu.pprof
//
// Output: the daemon itself writes the file named by DownloadRequest.Output
// (an absolute path) atomically — a temporary file in the output's directory
// (".NAME.dfly-tmp-PID-RANDOM", see localapi_output.go), renamed over the
// output only after every block was verified, the whole content matched its
// digest and the file has exactly the content's length — then hands it to
// the caller's uid/gid (from SO_PEERCRED). A caller that is neither root nor
// the daemon's user may only write into a directory it owns. A caller that
// goes away (dfget killed) cancels its download, and its temporary file is
// removed. With Output empty the content is only fetched into the store
// (preheating a host).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/compress"
	"github.com/dfly-p2p/dfly/internal/flow"
	"github.com/dfly-p2p/dfly/internal/telemetry"
)

// DefaultSocketPath is where dfdaemon listens by default: /run/dfly/dfdaemon.sock
// for root, $XDG_RUNTIME_DIR/dfly/dfdaemon.sock (or /tmp/dfly-UID/dfdaemon.sock)
// for other users.
func DefaultSocketPath() string {
	if os.Geteuid() == 0 {
		return "/run/dfly/dfdaemon.sock"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "dfly", "dfdaemon.sock")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("dfly-%d", os.Getuid()), "dfdaemon.sock")
}

// DownloadRequest asks the daemon to download content.
type DownloadRequest struct {
	URL     string            `json:"url"`
	Headers map[string]string `json:"headers,omitempty"`
	Digest  string            `json:"digest,omitempty"`  // "sha256:HEX" or "md5:HEX"
	TaskID  string            `json:"task_id,omitempty"` // default: derived from the URL (and Tag)
	Tag     string            `json:"tag,omitempty"`
	Output  string            `json:"output,omitempty"` // absolute path; empty = store only
	// E2E: end-to-end encrypted in the swarm and the store (see Request.E2E).
	E2E bool `json:"e2e,omitempty"`
}

// DownloadResult is the final answer of a download.
type DownloadResult struct {
	TaskID      string `json:"task_id"`
	Output      string `json:"output,omitempty"`
	Length      int64  `json:"length"`
	SHA256      string `json:"sha256"`           // hex of the content as written
	Digest      string `json:"digest,omitempty"` // the task's whole-content digest
	Verified    bool   `json:"verified"`         // checked against a declared digest
	BytesLocal  int64  `json:"bytes_local"`
	BytesOrigin int64  `json:"bytes_origin"`
	BytesSeed   int64  `json:"bytes_seed"`
	BytesPeers  int64  `json:"bytes_peers"`
	Fallbacks   int64  `json:"fallbacks"` // operations that went to the origin because the swarm failed
	DurationMS  int64  `json:"duration_ms"`
}

// DownloadEvent is one line of the /v1/download stream.
type DownloadEvent struct {
	Event  string          `json:"event"` // "progress", "result" or "error"
	Done   int64           `json:"done,omitempty"`
	Total  int64           `json:"total,omitempty"`
	Stats  *TaskStats      `json:"stats,omitempty"`
	Result *DownloadResult `json:"result,omitempty"`
	Error  string          `json:"error,omitempty"`
}

// DaemonStats is the answer of /v1/stats.
type DaemonStats struct {
	HostID     string           `json:"host_id"`
	UploadAddr string           `json:"upload_addr"`
	Store      blockstore.Stats `json:"store"`
	Upload     UploadStats      `json:"upload"`
	Swarm      *SwarmStats      `json:"swarm,omitempty"`
	Fallbacks  int64            `json:"fallbacks"`
	Downloads  int64            `json:"downloads"`
	// Compression counts the compressed transfers (bytes on the wire vs
	// plain) and the forms kept; nil with --compress off.
	Compression *compress.Stats `json:"compression,omitempty"`
	// Flow is the flow controller's state (--flow auto, --disk-backoff);
	// nil without flow control.
	Flow *flow.Status `json:"flow,omitempty"`
}

// localAPI serves the local API for a daemon.
type localAPI struct {
	d   *Daemon
	log *slog.Logger
}

type credKey struct{}

// peerCred returns the uid/gid of the process on the other end of a unix connection.
func peerCred(c net.Conn) (*syscall.Ucred, bool) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, false
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return nil, false
	}
	return cred, true
}

func (a *localAPI) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/download", a.download)
	mux.HandleFunc("GET /v1/tasks", a.tasks)
	mux.HandleFunc("GET /v1/status", a.status)
	mux.HandleFunc("GET /v1/ping", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, a.d.Stats())
	})
	mux.Handle("/debug/pprof/", a.ownerOnly(http.HandlerFunc(pprof.Index)))
	mux.Handle("/debug/pprof/profile", a.ownerOnly(http.HandlerFunc(pprof.Profile)))
	return mux
}

// ownerOnly admits callers that are root or the daemon's own user: profiles
// show what other users download.
func (a *localAPI) ownerOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isOwner(r) {
			http.Error(w, "profiles are for root and the daemon's user only", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// isOwner reports whether the caller (SO_PEERCRED) is root or the daemon's
// own user.
func isOwner(r *http.Request) bool {
	cred, _ := r.Context().Value(credKey{}).(*syscall.Ucred)
	return cred != nil && (cred.Uid == 0 || int(cred.Uid) == os.Geteuid())
}

// taskSummary is what /v1/tasks tells a caller that is neither root nor the
// daemon's user: a task's source URL may carry a signed query string, and
// its other details say what someone else downloaded.
type taskSummary struct {
	ID        string           `json:"id"`
	Length    int64            `json:"length"`
	BlockSize int64            `json:"block_size"`
	State     blockstore.State `json:"state"`
}

func (a *localAPI) tasks(w http.ResponseWriter, r *http.Request) {
	tasks := a.d.store.List()
	if isOwner(r) {
		writeJSON(w, tasks)
		return
	}
	out := make([]taskSummary, len(tasks))
	for i, t := range tasks {
		out[i] = taskSummary{ID: t.ID, Length: t.Length, BlockSize: t.BlockSize, State: t.State}
	}
	writeJSON(w, out)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func (a *localAPI) download(w http.ResponseWriter, r *http.Request) {
	w, r, end := a.d.cfg.Tracing.HTTPServerSpan(w, r, "dfdaemon.download", false)
	defer end()
	var dr DownloadRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&dr); err != nil {
		http.Error(w, "bad JSON body: "+err.Error(), http.StatusBadRequest)
		return
	}
	cred, _ := r.Context().Value(credKey{}).(*syscall.Ucred)
	if dr.Output != "" {
		if err := checkOutput(dr.Output, cred); err != nil {
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	var mu sync.Mutex
	enc := json.NewEncoder(w)
	flusher, _ := w.(http.Flusher)
	emit := func(ev DownloadEvent) {
		mu.Lock()
		defer mu.Unlock()
		_ = enc.Encode(ev)
		if flusher != nil {
			flusher.Flush()
		}
	}
	var lastMu sync.Mutex
	var last time.Time
	progress := func(p Progress) { // called from the engine's workers concurrently
		lastMu.Lock()
		if time.Since(last) < 250*time.Millisecond && p.Done < p.Total {
			lastMu.Unlock()
			return
		}
		last = time.Now()
		lastMu.Unlock()
		st := p.Stats
		emit(DownloadEvent{Event: "progress", Done: p.Done, Total: p.Total, Stats: &st})
	}
	res, err := a.d.Download(r.Context(), dr, cred, progress)
	annotateDownload(r.Context(), dr, res, err)
	if err != nil {
		a.log.Warn("download failed", "url", dr.URL, "err", err)
		emit(DownloadEvent{Event: "error", Error: err.Error()})
		return
	}
	emit(DownloadEvent{Event: "result", Result: &res})
}

// checkOutput refuses outputs a local caller could not write itself.
func checkOutput(out string, cred *syscall.Ucred) error {
	if !filepath.IsAbs(out) {
		return fmt.Errorf("output %q: the daemon needs an absolute path", out)
	}
	dir := filepath.Dir(out)
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("output directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("output directory %s is not a directory", dir)
	}
	if cred == nil || cred.Uid == 0 || int(cred.Uid) == os.Geteuid() {
		return nil
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid == cred.Uid {
		return nil
	}
	return fmt.Errorf("output directory %s is not owned by uid %d; the daemon writes only into directories the caller owns", dir, cred.Uid)
}

// DaemonClient talks to a running dfdaemon over its unix socket.
type DaemonClient struct {
	sock string
	http *http.Client
}

// ErrNoDaemon means no dfdaemon listens on the socket: it does not exist,
// or nothing accepts connections on it.
var ErrNoDaemon = errors.New("no dfdaemon running")

// daemonPatience bounds how long a client waits for a daemon that exists
// but does not accept or answer (a burst of clients filled its accept
// queue, or it is overloaded) before giving up on it.
const daemonPatience = 30 * time.Second

// DialDaemon returns a client for the daemon on sock after checking that it
// answers. It fails with ErrNoDaemon only when nothing listens there (the
// socket does not exist, or refuses connections); a daemon that is busy
// (its accept queue full, slow to answer) is waited for, with backoff,
// until ctx ends or 30s passed, then reported as not answering.
func DialDaemon(ctx context.Context, sock string) (*DaemonClient, error) {
	c := &DaemonClient{sock: sock, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialDaemon(ctx, sock)
		},
		MaxIdleConnsPerHost: 4,
	}}}
	ctx, cancel := context.WithTimeout(ctx, daemonPatience)
	defer cancel()
	if err := c.ping(ctx); err != nil {
		c.Close()
		if noDaemon(err) {
			return nil, fmt.Errorf("dfdaemon socket %s: %v: %w", sock, err, ErrNoDaemon)
		}
		if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
			return nil, fmt.Errorf("dfdaemon socket %s: this user may not connect to it; ask the daemon's owner, or pass --store DIR to download without it: %w", sock, err)
		}
		return nil, fmt.Errorf("dfdaemon on %s does not answer (%w); it may be overloaded: run again, or pass --store DIR to download without it", sock, err)
	}
	return c, nil
}

// noDaemon reports a dial error that means nothing listens on the socket.
func noDaemon(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)
}

// dialDaemon connects to the daemon's socket. A full accept queue
// (EAGAIN: more clients at once than the listen backlog) is not the
// absence of a daemon: it is retried with backoff for up to daemonPatience.
func dialDaemon(ctx context.Context, sock string) (net.Conn, error) {
	var d net.Dialer
	deadline := time.Now().Add(daemonPatience)
	delay := 2 * time.Millisecond
	for {
		conn, err := d.DialContext(ctx, "unix", sock)
		if err == nil || !errors.Is(err, syscall.EAGAIN) || time.Now().After(deadline) {
			return conn, err
		}
		t := time.NewTimer(delay/2 + rand.N(delay/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (waiting for the daemon to accept: %w)", err, ctx.Err())
		case <-t.C:
		}
		delay = min(2*delay, 250*time.Millisecond)
	}
}

// ping checks that the daemon answers HTTP (any status: an older daemon
// without /v1/ping answers 404), retrying failed attempts until ctx ends
// unless nothing listens.
func (c *DaemonClient) ping(ctx context.Context) error {
	delay := 10 * time.Millisecond
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://dfdaemon/v1/ping", nil)
		if err != nil {
			return err
		}
		resp, err := c.http.Do(req)
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if noDaemon(err) || errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) || ctx.Err() != nil {
			return err // (no permission to connect: waiting will not help)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		delay = min(2*delay, 500*time.Millisecond)
	}
}

// Close releases idle connections.
func (c *DaemonClient) Close() { c.http.CloseIdleConnections() }

func (c *DaemonClient) getJSON(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://dfdaemon"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("dfdaemon %s: HTTP %d: %s", path, resp.StatusCode, msg)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("dfdaemon %s: bad answer: %w", path, err)
	}
	return nil
}

// Stats returns the daemon's counters.
func (c *DaemonClient) Stats(ctx context.Context) (DaemonStats, error) {
	var s DaemonStats
	err := c.getJSON(ctx, "/v1/stats", &s)
	return s, err
}

// Tasks lists the daemon's tasks.
func (c *DaemonClient) Tasks(ctx context.Context) ([]blockstore.Task, error) {
	var ts []blockstore.Task
	err := c.getJSON(ctx, "/v1/tasks", &ts)
	return ts, err
}

// Download asks the daemon to download dr; progress (optional) receives the
// progress events. Relative outputs are made absolute here.
func (c *DaemonClient) Download(ctx context.Context, dr DownloadRequest, progress func(DownloadEvent)) (DownloadResult, error) {
	if dr.Output != "" && !filepath.IsAbs(dr.Output) {
		abs, err := filepath.Abs(dr.Output)
		if err != nil {
			return DownloadResult{}, fmt.Errorf("output path %q: %w", dr.Output, err)
		}
		dr.Output = abs
	}
	body, err := json.Marshal(dr)
	if err != nil {
		return DownloadResult{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://dfdaemon/v1/download", bytes.NewReader(body))
	if err != nil {
		return DownloadResult{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	telemetry.Inject(ctx, req.Header) // the daemon's spans join the caller's trace
	resp, err := c.http.Do(req)
	if err != nil {
		return DownloadResult{}, fmt.Errorf("dfdaemon %s: %w", c.sock, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return DownloadResult{}, fmt.Errorf("dfdaemon refused the download: HTTP %d: %s", resp.StatusCode, msg)
	}
	dec := json.NewDecoder(resp.Body)
	for {
		var ev DownloadEvent
		if err := dec.Decode(&ev); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return DownloadResult{}, fmt.Errorf("dfdaemon %s: download stream ended without a result: %w", c.sock, err)
		}
		switch ev.Event {
		case "progress":
			if progress != nil {
				progress(ev)
			}
		case "result":
			if ev.Result == nil {
				return DownloadResult{}, fmt.Errorf("dfdaemon %s: result event without a result", c.sock)
			}
			return *ev.Result, nil
		case "error":
			return DownloadResult{}, fmt.Errorf("dfdaemon: %s", ev.Error)
		}
	}
}
