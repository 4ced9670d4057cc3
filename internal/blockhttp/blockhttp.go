// Package blockhttp writes one block as the answer to a data-plane request
// (GET /blocks/{task}/{index}, see supernode/api). The peers' and the seed's
// upload servers share it: the same headers, pacing and byte counting, and
// the same zero-copy path.
package blockhttp

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/dfly-p2p/dfly/supernode/api"
)

// Pacer paces and counts the bytes of answers.
type Pacer struct {
	// Limiter caps the upload rate over all answers that share it; nil: unlimited.
	Limiter *rate.Limiter
	// Chunk is how many bytes go out per limiter wait (default 64 KiB);
	// it must not exceed the limiter's burst.
	Chunk int
	// Served, if set, counts the body bytes written.
	Served *atomic.Int64
	// Sent, if set, is called with the body bytes of each write once it
	// returned (Served counts a chunk before it goes and takes back what
	// did not; Sent only ever adds, as a Prometheus counter must).
	Sent func(n int64)
	// Waited, if set, is called with the time each Limiter wait took.
	Waited func(time.Duration)
}

// wait takes c bytes from the limiter, reporting the time it took.
func (p Pacer) wait(ctx context.Context, c int) error {
	if p.Limiter == nil {
		return nil
	}
	began := time.Now()
	err := p.Limiter.WaitN(ctx, c)
	if p.Waited != nil {
		p.Waited(time.Since(began))
	}
	return err
}

func (p Pacer) sent(n int64) {
	if p.Sent != nil && n > 0 {
		p.Sent(n)
	}
}

// Send answers r with the n bytes that body yields and the block's SHA-256
// in api.DigestHeader: 200 with a Content-Length, or 206 for a Range
// request. When body is an *os.File positioned at the block's first byte
// (blockstore.OpenBlock), a whole-block answer goes from the page cache to
// the socket with sendfile(2): the bytes never pass through user space. It
// returns the error that cut the answer short (the client left, ctx ended).
func Send(ctx context.Context, w http.ResponseWriter, r *http.Request, body io.Reader, n int64, digest []byte, p Pacer) error {
	if p.Chunk <= 0 {
		p.Chunk = 64 << 10
	}
	h := w.Header()
	h.Set(api.DigestHeader, hex.EncodeToString(digest))
	h.Set("Content-Type", "application/octet-stream")
	if r.Header.Get("Range") != "" {
		// Rare (dfly's own peers fetch whole blocks): serve ranges from memory.
		data := make([]byte, n)
		if _, err := io.ReadFull(body, data); err != nil {
			http.Error(w, "block not readable", http.StatusInternalServerError)
			return fmt.Errorf("read block for a range answer: %w", err)
		}
		http.ServeContent(&pacedWriter{ResponseWriter: w, ctx: ctx, p: p}, r, "", time.Time{}, bytes.NewReader(data))
		return nil
	}
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Length", strconv.FormatInt(n, 10))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return nil
	}
	for sent := int64(0); sent < n; {
		c := min(int64(p.Chunk), n-sent)
		if err := p.wait(ctx, int(c)); err != nil {
			return fmt.Errorf("upload rate limiter: %w", err)
		}
		// Counted before it is sent: the receiver may have the bytes before
		// the copy returns here. A short copy takes back what did not go.
		if p.Served != nil {
			p.Served.Add(c)
		}
		// io.CopyN hands the ResponseWriter an io.LimitedReader of body: for
		// an *os.File that is sendfile(2).
		m, err := io.CopyN(w, body, c)
		sent += m
		p.sent(m)
		if p.Served != nil && m < c {
			p.Served.Add(m - c)
		}
		if err != nil {
			return fmt.Errorf("send block: after %d of %d bytes: %w", sent, n, err)
		}
	}
	return nil
}

// pacedWriter paces the writes of http.ServeContent.
type pacedWriter struct {
	http.ResponseWriter
	ctx context.Context
	p   Pacer
}

func (pw *pacedWriter) Write(b []byte) (int, error) {
	written := 0
	for len(b) > 0 {
		c := min(len(b), pw.p.Chunk)
		if err := pw.p.wait(pw.ctx, c); err != nil {
			return written, fmt.Errorf("upload rate limiter: %w", err)
		}
		m, err := pw.ResponseWriter.Write(b[:c])
		written += m
		pw.p.sent(int64(m))
		if pw.p.Served != nil {
			pw.p.Served.Add(int64(m))
		}
		if err != nil {
			return written, err
		}
		b = b[c:]
	}
	return written, nil
}
