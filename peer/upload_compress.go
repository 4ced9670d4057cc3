package peer

import (
	"net/http"
	"time"

	"github.com/dfly-p2p/dfly/internal/blockhttp"
)

// serveForm answers a block request with the block's compressed form when
// the requester asked for one (Accept-Encoding: zstd, see
// internal/blockhttp) and this host keeps one for the block it holds now
// (same digest). It reports whether it answered; false: the caller answers
// with the plain block. The TEST HOOK CorruptUploads always answers plain.
func (u *UploadServer) serveForm(w http.ResponseWriter, r *http.Request, task string, idx int) bool {
	c := u.cfg.Compress
	if c == nil || u.cfg.CorruptUploads || !blockhttp.AcceptsZstd(r) || !u.cfg.Store.HasBlock(task, idx) {
		return false
	}
	sum, ok := u.cfg.Store.BlockDigest(task, idx)
	if !ok {
		return false
	}
	meta, err := u.cfg.Store.Task(task)
	if err != nil {
		return false
	}
	f, n, ok := c.Open(task, idx, sum)
	if !ok {
		return false
	}
	defer f.Close()
	p := blockhttp.Pacer{Limiter: u.limiter.Load(), Chunk: u.burst, Served: &u.bytes}
	if m := u.cfg.Metrics; m != nil {
		p.Sent = m.uploaded
		p.Waited = func(d time.Duration) { m.waited(limiterUpload, d) }
	}
	if err := blockhttp.SendZstd(r.Context(), w, r, f, n, meta.BlockLen(idx), sum, p); err != nil {
		u.log.Debug("upload cut short", "task", task, "block", idx, "encoding", blockhttp.EncodingZstd, "err", err)
		return true
	}
	u.blocks.Add(1)
	c.Served(meta.BlockLen(idx), n)
	return true
}
