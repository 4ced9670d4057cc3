package peer

// Local API of dfdaemon: HTTP over a unix socket, used by dfget.
//
//	POST /v1/download   JSON DownloadRequest → application/x-ndjson stream of
//	                    DownloadEvent lines: {"event":"progress",...} at most
//	                    every 250ms, then one {"event":"result",...} or
//	                    {"event":"error","error":"..."}.
//	GET  /v1/tasks      JSON array of the store's tasks
//	GET  /v1/stats      JSON DaemonStats
//	GET  /debug/pprof/  Go profiles (net/http/pprof), for root and the
//	                    daemon's own user only:
//	                    curl --unix-socket SOCK http://d/debug/pprof/profile?seconds=20 > cpu.pprof
//
// Output: the daemon itself writes the file named by DownloadRequest.Output
// (an absolute path) atomically — a temporary file in the output's directory,
// renamed over the output only after every block was read back verified and
// the whole content matched its digest — then hands it to the caller's uid/gid
// (from SO_PEERCRED). A caller that is neither root nor the daemon's user may
// only write into a directory it owns. With Output empty the content is only
// fetched into the store (preheating a host).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/directio"
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
	mux.HandleFunc("GET /v1/tasks", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, a.d.store.List())
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
		cred, _ := r.Context().Value(credKey{}).(*syscall.Ucred)
		if cred == nil || (cred.Uid != 0 && int(cred.Uid) != os.Geteuid()) {
			http.Error(w, "profiles are for root and the daemon's user only", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func (a *localAPI) download(w http.ResponseWriter, r *http.Request) {
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

// outputFile is an output being written: a temporary file next to its
// final name, renamed into place by commit (or removed by abort), so a
// reader never sees a partial file. It is written around the page cache
// (the store already caches these bytes; see internal/directio).
type outputFile struct {
	f   *os.File
	w   *directio.File
	out string
}

func createOutput(out string) (*outputFile, error) {
	dir := filepath.Dir(out)
	f, err := os.CreateTemp(dir, "."+filepath.Base(out)+".dfly-*")
	if err != nil {
		return nil, fmt.Errorf("create temporary output in %s: %w", dir, err)
	}
	return &outputFile{f: f, w: directio.New(f), out: out}, nil
}

func (o *outputFile) abort() {
	o.w.Close()
	o.f.Close()
	os.Remove(o.f.Name())
}

// commit makes the written content (task meta) the output file: its sha256
// checked against a declared one, synced, handed to the caller (cred),
// renamed into place. It returns the content's sha256. Complete content is
// not hashed again: its sha256 was computed (or checked against the
// declared one) by the whole-content verification that completed it, and
// the store hands out only blocks that match their per-block digests, so
// the copy is that content. Anything else is read back and hashed.
func (o *outputFile) commit(meta blockstore.Task, cred *syscall.Ucred) (_ string, err error) {
	defer func() {
		if err != nil {
			o.abort()
		}
	}()
	tmp := o.f
	if err := o.w.Flush(); err != nil {
		return "", err
	}
	algo, want, derr := blockstore.ParseDigest(meta.Digest)
	sum := want
	if derr != nil || algo != "sha256" || !(meta.Verified || meta.State == blockstore.StateComplete) {
		h := sha256.New()
		if _, err := tmp.Seek(0, io.SeekStart); err != nil {
			return "", fmt.Errorf("read back %s: %w", tmp.Name(), err)
		}
		if _, err := io.Copy(h, tmp); err != nil {
			return "", fmt.Errorf("read back %s: %w", tmp.Name(), err)
		}
		sum = hex.EncodeToString(h.Sum(nil))
		if derr == nil && algo == "sha256" && want != sum {
			return "", fmt.Errorf("content written to %s has sha256 %s, want %s: %w", o.out, sum, want, blockstore.ErrDigestMismatch)
		}
	}
	if err := tmp.Sync(); err != nil {
		return "", fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if cred != nil && os.Geteuid() == 0 && cred.Uid != 0 {
		if err := os.Chown(tmp.Name(), int(cred.Uid), int(cred.Gid)); err != nil {
			return "", fmt.Errorf("hand %s to uid %d: %w", o.out, cred.Uid, err)
		}
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return "", fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), o.out); err != nil {
		return "", fmt.Errorf("rename to %s: %w", o.out, err)
	}
	return sum, nil
}

// DaemonClient talks to a running dfdaemon over its unix socket.
type DaemonClient struct {
	sock string
	http *http.Client
}

// ErrNoDaemon means no dfdaemon answered on the socket.
var ErrNoDaemon = errors.New("no dfdaemon running")

// DialDaemon returns a client for the daemon on sock after checking that it
// answers (within 2s). It fails with ErrNoDaemon when nothing listens there.
func DialDaemon(ctx context.Context, sock string) (*DaemonClient, error) {
	c := &DaemonClient{sock: sock, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := c.Stats(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("dfdaemon socket %s: %v: %w", sock, err, ErrNoDaemon)
	}
	return c, nil
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
