package peer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/blockhttp"
	"github.com/dfly-p2p/dfly/internal/compress"
	"github.com/dfly-p2p/dfly/internal/telemetry"
	"github.com/dfly-p2p/dfly/supernode/api"
)

// Data plane: every peer (and the supernode's seed) serves the blocks it
// holds and has verified over plain HTTP:
//
//	GET /blocks/{task_id}/{index}
//	X-Dfly-Token: a task token the supernode signed (api.SignToken: task, host, expiry)
//	Range: optional
//
// Answers: 200/206 with the block's bytes and X-Dfly-Digest (sha256 hex);
// 404 when the block is not held (or failed verification on read); 403 on
// a missing, forged, expired or another task's token (the body says which);
// 429 when more than MaxUploads uploads are in flight.

// TokenChecker decides whether a block request's token is valid for a task.
// *SupernodeSwarm implements it with the public keys the supernode handed
// out (it can verify tokens, never mint them).
type TokenChecker interface {
	CheckToken(taskID, token string) error
}

// UploadConfig configures an UploadServer.
type UploadConfig struct {
	Store *blockstore.Store
	// Tokens checks X-Dfly-Token; nil refuses every request (without a
	// supernode nobody holds a token for this host's blocks).
	Tokens TokenChecker
	// Rate caps the host's total upload in bytes/s; 0 = unlimited.
	Rate int64
	// MaxUploads caps concurrent uploads; beyond it requests get 429. Default 16.
	MaxUploads int
	// CorruptUploads is a TEST HOOK: every block served has one byte flipped,
	// so tests can check that a lying peer is detected and isolated. Never
	// enable it in production (dfdaemon --debug-corrupt-uploads).
	CorruptUploads bool
	Logger         *slog.Logger
	// Tracing makes a server span for each block request that carries a
	// trace context (peers send one for sampled blocks only); nil: off.
	Tracing *telemetry.Tracing
	// Metrics, if set, counts uploaded bytes, uploads in flight, refused
	// requests and the time uploads waited for the Rate limiter.
	Metrics *Metrics
	// Compress serves the compressed forms this host keeps to requesters
	// that ask for them (Accept-Encoding: zstd); nil: plain blocks only.
	Compress *compress.Host
}

// UploadStats are the upload server's counters.
type UploadStats struct {
	BytesServed int64 `json:"bytes_served"`
	Blocks      int64 `json:"blocks_served"`
	InFlight    int32 `json:"uploads_in_flight"`
	Busy        int64 `json:"rejected_busy"`
	Forbidden   int64 `json:"rejected_token"`
	NotFound    int64 `json:"not_found"`
}

// UploadServer serves verified blocks of a store to other peers.
type UploadServer struct {
	cfg     UploadConfig
	limiter atomic.Pointer[rate.Limiter] // nil = unlimited; SetRate changes it
	burst   int
	log     *slog.Logger

	bytes     atomic.Int64
	blocks    atomic.Int64
	inflight  atomic.Int32
	busy      atomic.Int64
	forbidden atomic.Int64
	notFound  atomic.Int64
}

// NewUploadServer returns an upload server; serve it with Serve or use it as an http.Handler.
func NewUploadServer(cfg UploadConfig) *UploadServer {
	if cfg.MaxUploads <= 0 {
		cfg.MaxUploads = 16
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	u := &UploadServer{cfg: cfg, log: cfg.Logger, burst: 64 << 10}
	if cfg.Rate > 0 {
		// A burst of 1/20 s of the rate (at least 16 KiB, at most 256 KiB)
		// keeps the shaping smooth without costing a wake-up per packet.
		u.burst = int(min(max(cfg.Rate/20, 16<<10), 256<<10))
		u.limiter.Store(rate.NewLimiter(rate.Limit(cfg.Rate), u.burst))
	}
	return u
}

// SetRate changes the host's upload limit (UploadConfig.Rate) while the
// server runs: bytes/s, 0 = unlimited. The flow controller (internal/flow,
// dfdaemon --flow auto) calls it.
func (u *UploadServer) SetRate(bps int64) { setLimit(&u.limiter, bps, u.burst) }

// Stats returns the server's counters.
func (u *UploadServer) Stats() UploadStats {
	return UploadStats{
		BytesServed: u.bytes.Load(), Blocks: u.blocks.Load(), InFlight: u.inflight.Load(),
		Busy: u.busy.Load(), Forbidden: u.forbidden.Load(), NotFound: u.notFound.Load(),
	}
}

// Serve serves HTTP on ln until ctx is done, then shuts down (waiting up to 5s for uploads).
func (u *UploadServer) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: u, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("upload server on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	<-errc
	return nil
}

// parseBlockPath parses "/blocks/{task}/{idx}".
func parseBlockPath(p string) (task string, idx int, ok bool) {
	rest, found := strings.CutPrefix(p, "/blocks/")
	if !found {
		return "", 0, false
	}
	task, num, found := strings.Cut(rest, "/")
	if !found || task == "" || strings.Contains(num, "/") {
		return "", 0, false
	}
	n, err := strconv.Atoi(num)
	if err != nil || n < 0 {
		return "", 0, false
	}
	return task, n, true
}

func (u *UploadServer) checkToken(task, token string) error {
	if u.cfg.Tokens == nil {
		return errors.New("this host is not in a swarm: it serves blocks to nobody")
	}
	return u.cfg.Tokens.CheckToken(task, token)
}

// ServeHTTP implements the block endpoint.
func (u *UploadServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		u.cfg.Metrics.uploadRejected(rejectOther)
		http.Error(w, "only GET and HEAD", http.StatusMethodNotAllowed)
		return
	}
	task, idx, ok := parseBlockPath(r.URL.Path)
	if !ok {
		u.cfg.Metrics.uploadRejected(rejectOther)
		http.Error(w, "want /blocks/{task}/{index}", http.StatusNotFound)
		return
	}
	w, r, end := u.cfg.Tracing.HTTPServerSpan(w, r, "peer.upload_block", true, blockAttrs(task, idx)...)
	defer end()
	if err := u.checkToken(task, r.Header.Get(api.TokenHeader)); err != nil {
		u.forbidden.Add(1)
		u.cfg.Metrics.uploadRejected(rejectToken)
		http.Error(w, "refused: "+err.Error(), http.StatusForbidden)
		return
	}
	if n := u.inflight.Add(1); int(n) > u.cfg.MaxUploads {
		u.inflight.Add(-1)
		u.busy.Add(1)
		u.cfg.Metrics.uploadRejected(rejectBusy)
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many uploads in flight", http.StatusTooManyRequests)
		return
	}
	defer u.inflight.Add(-1)
	u.cfg.Metrics.uploadStarted()
	defer u.cfg.Metrics.uploadEnded()
	if u.serveForm(w, r, task, idx) { // a compressed form, when asked for and kept (upload_compress.go)
		return
	}

	var body io.Reader
	var n int64
	if u.cfg.CorruptUploads {
		data, err := u.cfg.Store.ReadBlock(task, idx)
		if err == nil && len(data) > 0 {
			data[len(data)/2] ^= 0xff
		}
		body, n = bytes.NewReader(data), int64(len(data))
		if err != nil {
			u.refuse(w, err)
			return
		}
	} else {
		blk, size, err := u.cfg.Store.OpenBlock(task, idx) // verified; a corrupt block is dropped
		if err != nil {
			u.refuse(w, err)
			return
		}
		defer blk.Close()
		body, n = blk, size
	}
	// The store checked these bytes against this digest (when it stored or
	// first read them): no need to hash them again for every upload.
	sum, _ := u.cfg.Store.BlockDigest(task, idx)
	p := blockhttp.Pacer{Limiter: u.limiter.Load(), Chunk: u.burst, Served: &u.bytes}
	if m := u.cfg.Metrics; m != nil {
		p.Sent = m.uploaded
		p.Waited = func(d time.Duration) { m.waited(limiterUpload, d) }
	}
	if err := blockhttp.Send(r.Context(), w, r, body, n, sum, p); err != nil {
		u.log.Debug("upload cut short", "task", task, "block", idx, "err", err)
		return
	}
	u.blocks.Add(1)
}

// refuse answers a request for a block the store cannot serve.
func (u *UploadServer) refuse(w http.ResponseWriter, err error) {
	u.notFound.Add(1)
	u.cfg.Metrics.uploadRejected(rejectOther)
	if errors.Is(err, blockstore.ErrNotFound) || errors.Is(err, blockstore.ErrCorrupt) {
		http.Error(w, "block not held", http.StatusNotFound)
	} else {
		u.log.Warn("upload: cannot read block", "err", err)
		http.Error(w, "block not available", http.StatusNotFound)
	}
}
