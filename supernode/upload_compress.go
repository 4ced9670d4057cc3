package supernode

import (
	"net/http"

	"github.com/dfly-p2p/dfly/internal/blockhttp"
)

// serveForm answers a block request with the block's compressed form when
// the requester asked for one (Accept-Encoding: zstd, see
// internal/blockhttp) and the seed keeps one for the block it holds now
// (same digest). A block nobody tried yet is queued for its trial, the
// most asked for first. It reports whether it answered; false: the caller
// answers with the plain block.
func (u *UploadServer) serveForm(w http.ResponseWriter, r *http.Request, id string, idx int) bool {
	c := u.cfg.Compress
	if c == nil || !blockhttp.AcceptsZstd(r) || !u.cfg.Store.HasBlock(id, idx) {
		return false
	}
	sum, ok := u.cfg.Store.BlockDigest(id, idx)
	if !ok {
		return false
	}
	meta, err := u.cfg.Store.Task(id)
	if err != nil {
		return false
	}
	f, n, ok := c.Open(id, idx, sum)
	if !ok {
		return false
	}
	defer f.Close()
	p := blockhttp.Pacer{Limiter: u.limiter, Chunk: uploadChunk, Served: &u.served} // as serveBlock paces plain blocks
	if err := blockhttp.SendZstd(r.Context(), w, r, f, n, meta.BlockLen(idx), sum, p); err != nil {
		u.log.Debug("upload cut short", "task", id, "block", idx, "encoding", blockhttp.EncodingZstd, "err", err)
		return true
	}
	c.Served(meta.BlockLen(idx), n)
	return true
}
