package supernode

import (
	"crypto/ed25519"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"golang.org/x/time/rate"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/blockhttp"
	"github.com/dfly-p2p/dfly/internal/compress"
	"github.com/dfly-p2p/dfly/internal/telemetry"
	"github.com/dfly-p2p/dfly/supernode/api"
)

// UploadConfig configures the seed's upload server.
type UploadConfig struct {
	Store *blockstore.Store
	// TokenKeys verify X-Dfly-Token (api.VerifyToken); empty refuses every request.
	TokenKeys []ed25519.PublicKey
	// Rate caps upload bytes/s over all requests; 0 = unlimited.
	Rate int64
	// MaxUploads caps concurrent block uploads; more get 429 (default 64).
	MaxUploads int
	// OnCorrupt is called when a stored block failed verification while
	// being read (the store has dropped it).
	OnCorrupt func(taskID string, idx int)
	Logger    *slog.Logger
	// Tracing makes a server span for each block request that carries a
	// trace context (peers send one for sampled blocks only); nil: off.
	Tracing *telemetry.Tracing
	// Compress answers requests that ask for zstd with the block's
	// compressed form when the seed keeps one (upload_compress.go); nil:
	// plain blocks only.
	Compress *compress.Host
}

// UploadServer serves blocks of the supernode's store over HTTP:
//
//	GET /blocks/{task_id}/{index}   (header X-Dfly-Token; Range optional)
//
// 200/206 with the block bytes and X-Dfly-Digest; 404 when the block is not
// held (or failed verification); 403 for a bad token; 429 over the cap on
// concurrent uploads. Every block is verified as it is read from the store.
type UploadServer struct {
	cfg     UploadConfig
	log     *slog.Logger
	limiter *rate.Limiter // nil: unlimited
	mux     *http.ServeMux

	inFlight  atomic.Int32
	served    atomic.Int64
	requests  atomic.Int64
	rejected  atomic.Int64
	forbidden atomic.Int64
}

// uploadChunk is the write size under rate limiting.
const uploadChunk = 32 << 10

// NewUploadServer returns the handler. Extra routes (such as /debug/state)
// can be added with Handle.
func NewUploadServer(cfg UploadConfig) *UploadServer {
	if cfg.MaxUploads <= 0 {
		cfg.MaxUploads = 64
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	u := &UploadServer{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux()}
	if cfg.Rate > 0 {
		u.limiter = rate.NewLimiter(rate.Limit(cfg.Rate), max(uploadChunk, int(min(cfg.Rate/10, 4<<20))))
	}
	u.mux.HandleFunc("GET /blocks/{task}/{index}", u.serveBlock)
	return u
}

// Handle adds a route to the server.
func (u *UploadServer) Handle(pattern string, h http.Handler) { u.mux.Handle(pattern, h) }

// ServeHTTP implements http.Handler.
func (u *UploadServer) ServeHTTP(w http.ResponseWriter, r *http.Request) { u.mux.ServeHTTP(w, r) }

// InFlight is the number of uploads in progress.
func (u *UploadServer) InFlight() int { return int(u.inFlight.Load()) }

// BytesServed is the number of block bytes written to requesters.
func (u *UploadServer) BytesServed() int64 { return u.served.Load() }

// UploadStats are the upload server's counters.
type UploadStats struct {
	InFlight    int   `json:"in_flight"`
	BytesServed int64 `json:"bytes_served"`
	Requests    int64 `json:"requests"`
	Rejected    int64 `json:"rejected"`       // 429s
	Forbidden   int64 `json:"rejected_token"` // 403s: missing, forged, expired or another task's token
}

// Stats returns the counters.
func (u *UploadServer) Stats() UploadStats {
	return UploadStats{InFlight: u.InFlight(), BytesServed: u.served.Load(), Requests: u.requests.Load(), Rejected: u.rejected.Load(), Forbidden: u.forbidden.Load()}
}

func (u *UploadServer) serveBlock(w http.ResponseWriter, r *http.Request) {
	u.requests.Add(1)
	w, r, end := u.cfg.Tracing.HTTPServerSpan(w, r, "seed.upload_block", true, attribute.String("dfly.task_id", r.PathValue("task")))
	defer end()
	id := r.PathValue("task")
	idx, err := strconv.Atoi(r.PathValue("index"))
	if err != nil || idx < 0 {
		http.Error(w, "block index must be a non-negative integer", http.StatusBadRequest)
		return
	}
	if _, err := api.VerifyToken(u.cfg.TokenKeys, r.Header.Get(api.TokenHeader), id, time.Now()); err != nil {
		u.forbidden.Add(1)
		http.Error(w, "refused: "+err.Error(), http.StatusForbidden)
		return
	}
	if n := u.inFlight.Add(1); int(n) > u.cfg.MaxUploads {
		u.inFlight.Add(-1)
		u.rejected.Add(1)
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many concurrent uploads; try another parent", http.StatusTooManyRequests)
		return
	}
	defer u.inFlight.Add(-1)
	if u.serveForm(w, r, id, idx) { // a compressed form, when asked for and kept (upload_compress.go)
		return
	}
	f, n, err := u.cfg.Store.OpenBlock(id, idx) // verified; a corrupt block is dropped
	if err != nil {
		if !errors.Is(err, blockstore.ErrNotFound) {
			u.log.Warn("upload: cannot read block", "task", id, "block", idx, "err", err)
		}
		if errors.Is(err, blockstore.ErrCorrupt) && u.cfg.OnCorrupt != nil {
			u.cfg.OnCorrupt(id, idx)
		}
		http.Error(w, "block not held", http.StatusNotFound)
		return
	}
	defer f.Close()
	sum, _ := u.cfg.Store.BlockDigest(id, idx)
	p := blockhttp.Pacer{Limiter: u.limiter, Chunk: uploadChunk, Served: &u.served}
	if err := blockhttp.Send(r.Context(), w, r, f, n, sum, p); err != nil {
		u.log.Debug("upload cut short", "task", id, "block", idx, "err", err)
	}
}
