package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/source"
	"github.com/dfly-p2p/dfly/peer"
)

// serveBlob answers a blob GET through dfly: the blob is one task keyed by
// its digest; the answer streams the blocks in order as they arrive while a
// background download completes and verifies the rest. A full answer is
// finished only after the whole blob matched its digest (else it is cut
// short, so the client never accepts a wrong blob); a ranged one carries
// verified blocks. When dfly cannot serve the blob before the first byte,
// the registry answers instead. It returns the result for the metrics.
func (m *Mirror) serveBlob(w http.ResponseWriter, r *http.Request, up upstream, digest string) string {
	id, _ := blockstore.TaskIDForDigest(digest)
	req := peer.Request{URL: up.base + r.URL.EscapedPath(), Header: originHeader(r), Digest: digest, TaskID: id}
	if m.cfg.E2EPrivate && source.Sensitive(req.Header) {
		req.E2E, req.TaskID = true, blockstore.E2ETaskID(id)
	}
	log := m.log.With("registry", up.host, "digest", digest)

	t, err := m.cfg.Engine.Open(r.Context(), req)
	if err != nil {
		return m.fallback(w, r, up, "open", err)
	}
	meta := t.Info()
	start, end, partial, err := parseRange(r.Header.Get("Range"), meta.Length)
	if err != nil {
		w.Header().Set("Content-Range", "bytes */"+strconv.FormatInt(meta.Length, 10))
		http.Error(w, err.Error(), http.StatusRequestedRangeNotSatisfiable)
		return resultError
	}
	whole := start == 0 && end == meta.Length
	// A whole answer fetches the blob itself, in order with a read-ahead
	// window, and completes it at the end (the engine's final pass); a
	// ranged one leaves the rest to a background download. (A background
	// download in the swarm's rarest-first order beside an in-order reader
	// shares the host's link with it and starves the reader.)
	var c *completion
	if !whole {
		c = m.complete(t, req)
	}
	ra := newReadAhead(r.Context(), t, meta.BlockSize, end, readAheadBlocks)
	defer ra.stop()

	// The first chunk before any header: a failure here still falls back.
	buf := make([]byte, meta.BlockSize)
	next := func(off int64) ([]byte, error) {
		ra.from(off)
		if whole && c == nil && off+meta.BlockSize >= end {
			c = m.complete(t, req) // every block is there or on its way: verify
		}
		n := min(meta.BlockSize-off%meta.BlockSize, end-off)
		rctx, cancel := context.WithTimeout(r.Context(), m.cfg.ReadTimeout)
		defer cancel()
		got, err := t.ReadAt(rctx, buf[:n], off)
		if int64(got) == n {
			err = nil
		}
		return buf[:got], err
	}
	off := start
	var chunk []byte
	if off < end {
		if chunk, err = next(off); err != nil {
			return m.fallback(w, r, up, "first block", err)
		}
	}
	if whole && int64(len(chunk)) == end-off {
		if err := c.wait(r.Context()); err != nil { // a one-chunk blob: verified before it leaves
			return m.fallback(w, r, up, "verify", err)
		}
	}
	blobHeaders(w.Header(), digest, end-start)
	status := http.StatusOK
	if partial {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, meta.Length))
		status = http.StatusPartialContent
	}
	w.WriteHeader(status)
	m.stat.p2p.Add(1)
	for off < end {
		if _, err := w.Write(chunk); err != nil {
			log.Debug("client went away", "err", err)
			return resultError
		}
		m.stat.bytes.Add(int64(len(chunk)))
		off += int64(len(chunk))
		if off == end {
			break
		}
		if chunk, err = next(off); err != nil {
			m.abort(log, "read", err)
		}
		if whole && off+int64(len(chunk)) == end {
			// The last chunk of a whole blob leaves only once the blob
			// matched its digest.
			if err := c.wait(r.Context()); err != nil {
				m.abort(log, "verify", err)
			}
		}
	}
	st := t.Stats()
	log.Info("blob served", "bytes", end-start, "whole", whole, "bytes_peers", st.BytesPeers, "bytes_seed", st.BytesSeed,
		"bytes_origin", st.BytesOrigin, "bytes_local", st.BytesLocal)
	return resultP2P
}

// fallback passes a blob request to the registry because dfly could not
// serve it; nothing was written yet. It returns the result of the
// pass-through (resultError when the client left).
func (m *Mirror) fallback(w http.ResponseWriter, r *http.Request, up upstream, what string, err error) string {
	m.stat.fallbacks.Add(1)
	if r.Context().Err() != nil {
		return resultError
	}
	m.log.Warn("blob not served through dfly; passing the request to the registry", "registry", up.host, "path", r.URL.Path, "step", what, "err", err)
	return m.forward(w, r, up)
}

// abort cuts an answer short after its headers: the client sees a broken
// body and never a wrong or incomplete blob.
func (m *Mirror) abort(log *slog.Logger, what string, err error) {
	m.stat.aborted.Add(1)
	log.Warn("blob answer cut short", "step", what, "err", err)
	panic(http.ErrAbortHandler)
}

// complete returns the background completion of a task, starting it when
// the task is not complete yet. It runs in the mirror's lifetime, not the
// request's: a blob a client started pulling lands whole in the store.
func (m *Mirror) complete(t *peer.Task, req peer.Request) *completion {
	meta := t.Info()
	if meta.State == blockstore.StateComplete && meta.Verified {
		c := &completion{done: make(chan struct{})}
		close(c.done)
		return c
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if c, ok := m.bg[t.ID()]; ok {
		return c
	}
	c := &completion{done: make(chan struct{})}
	m.bg[t.ID()] = c
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		res, err := m.cfg.Engine.Download(m.ctx, req, peer.DownloadOptions{})
		if err == nil && !res.Task.Verified {
			err = fmt.Errorf("blob %s completed but was not verified against its digest", req.Digest)
		}
		c.err = err
		m.mu.Lock()
		delete(m.bg, t.ID())
		m.mu.Unlock()
		close(c.done)
	}()
	return c
}

func (c *completion) wait(ctx context.Context) error {
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// parseRange parses a Range header for content of length n: "" is the
// whole content; one range "bytes=a-b", "bytes=a-" or "bytes=-k". Several
// ranges are answered with the whole content (allowed by RFC 9110).
func parseRange(h string, n int64) (start, end int64, partial bool, err error) {
	if h == "" {
		return 0, n, false, nil
	}
	spec, ok := strings.CutPrefix(h, "bytes=")
	if !ok {
		return 0, 0, false, fmt.Errorf("range %q: only byte ranges are supported", h)
	}
	if strings.Contains(spec, ",") {
		return 0, n, false, nil
	}
	a, b, ok := strings.Cut(strings.TrimSpace(spec), "-")
	if !ok {
		return 0, 0, false, fmt.Errorf("range %q: want bytes=START-END", h)
	}
	if a == "" { // suffix: the last b bytes
		k, perr := strconv.ParseInt(b, 10, 64)
		if perr != nil || k <= 0 {
			return 0, 0, false, fmt.Errorf("range %q: bad suffix length", h)
		}
		return max(n-k, 0), n, true, nil
	}
	start, perr := strconv.ParseInt(a, 10, 64)
	if perr != nil || start < 0 {
		return 0, 0, false, fmt.Errorf("range %q: bad start", h)
	}
	if start >= n {
		return 0, 0, false, fmt.Errorf("range %q: starts at or past the end (%d bytes)", h, n)
	}
	end = n
	if b != "" {
		last, perr := strconv.ParseInt(b, 10, 64)
		if perr != nil || last < start {
			return 0, 0, false, fmt.Errorf("range %q: bad end", h)
		}
		end = min(last, n-1) + 1 // (last+1 overflows for last = MaxInt64)
	}
	return start, end, true, nil
}

// copyBody copies a pass-through body, flushing as it goes.
func copyBody(w http.ResponseWriter, r io.Reader) (int64, error) {
	buf := make([]byte, 256<<10)
	var total int64
	f, _ := w.(http.Flusher)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
			if f != nil {
				f.Flush()
			}
		}
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// readAheadBlocks is how many blocks a streaming answer fetches ahead of
// the one it sends.
const readAheadBlocks = 8

// readAhead fetches the blocks after a reader's position (foreground, so
// they do not queue behind background work); single-flight in the engine,
// so the reader's own fetch of a block in flight waits for it.
type readAhead struct {
	ctx    context.Context
	cancel context.CancelFunc
	t      *peer.Task
	bs     int64
	end    int64
	window int
	next   int // first block not started
	wg     sync.WaitGroup
}

func newReadAhead(ctx context.Context, t *peer.Task, bs, end int64, window int) *readAhead {
	ctx, cancel := context.WithCancel(ctx)
	return &readAhead{ctx: ctx, cancel: cancel, t: t, bs: bs, end: end, window: window}
}

// from starts the fetches of the window after the block holding off.
func (ra *readAhead) from(off int64) {
	cur := int(off / ra.bs)
	last := int((ra.end - 1) / ra.bs)
	ra.next = max(ra.next, cur+1)
	for ; ra.next <= min(cur+ra.window, last); ra.next++ {
		idx := ra.next
		ra.wg.Add(1)
		go func() {
			defer ra.wg.Done()
			_ = ra.t.Fetch(ra.ctx, idx, peer.Foreground) // the reader sees any error itself
		}()
	}
}

// stop cancels the fetches still running and waits for them.
func (ra *readAhead) stop() {
	ra.cancel()
	ra.wg.Wait()
}
