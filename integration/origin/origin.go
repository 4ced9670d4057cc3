// Package origin is a real HTTP origin for tests, demos and benchmarks: a
// net/http server (Range, If-Modified-Since, If-None-Match, HEAD) serving
// generated deterministic content of any size without storing it, or files
// from a directory. It counts the bytes it sends, and can be told to fail,
// to ignore Range, or to serve corrupted bytes; for chaos tests it can also
// pace its bodies (SetRate), start failing with a 5xx after a number of
// bytes (FailAfter), and vanish mid-download and come back on the same
// address (Vanish, Return).
package origin

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Content is deterministic pseudo-random data of a given size, addressable at
// any offset (64 KiB chunks, each from its own ChaCha8 stream).
type Content struct {
	Size int64
	Seed uint64
}

const chunk = 64 << 10

// ReadAt fills p with the content at off.
func (c Content) ReadAt(p []byte, off int64) (int, error) {
	if off >= c.Size {
		return 0, io.EOF
	}
	n := 0
	var buf [chunk]byte
	for n < len(p) && off+int64(n) < c.Size {
		pos := off + int64(n)
		k := pos / chunk
		var seed [32]byte
		binary.LittleEndian.PutUint64(seed[0:], c.Seed)
		binary.LittleEndian.PutUint64(seed[8:], uint64(k))
		r := rand.NewChaCha8(seed)
		_, _ = r.Read(buf[:])
		start := pos - k*chunk
		end := min(int64(chunk), c.Size-k*chunk)
		n += copy(p[n:], buf[start:end])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Reader returns an io.ReadSeeker over the content.
func (c Content) Reader() io.ReadSeeker { return io.NewSectionReader(c, 0, c.Size) }

// Digest returns "algo:hex" of the whole content ("sha256" or "md5").
func (c Content) Digest(algo string) string {
	var h hash.Hash = sha256.New()
	if algo == "md5" {
		h = md5.New()
	} else {
		algo = "sha256"
	}
	_, _ = io.Copy(h, io.NewSectionReader(c, 0, c.Size))
	return algo + ":" + hex.EncodeToString(h.Sum(nil))
}

// Server is a running origin.
type Server struct {
	URL string // base URL, e.g. http://127.0.0.1:34567

	dir  string
	addr string // the listen address (kept for Return)

	lnMu   sync.Mutex // guards ln and srv (Vanish, Return, Close)
	ln     net.Listener
	srv    *http.Server
	gone   bool // vanished: Return listens again
	closed bool // closed for good

	mu      sync.Mutex
	files   map[string]Content
	modTime time.Time

	bytesSent    atomic.Int64
	requests     atomic.Int64
	failNext     atomic.Int64 // answer this many requests with 503
	ignoreRange  atomic.Bool
	down         atomic.Bool // answer nothing useful: close connections
	corruptAfter atomic.Int64
	sendMD5      atomic.Bool

	limiter    atomic.Pointer[rate.Limiter] // nil = unpaced
	failAfter  atomic.Int64                 // fail once bytesSent reaches this; -1 = never
	failStatus atomic.Int64                 // the status failures answer with
	failed     atomic.Int64                 // requests answered with failStatus, bodies cut
}

// Options configure a Server.
type Options struct {
	// Addr to listen on; default 127.0.0.1:0.
	Addr string
	// Dir, if set, serves files from this directory (besides generated ones).
	Dir string
}

// Start starts an origin.
func Start(o Options) (*Server, error) {
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return nil, fmt.Errorf("origin listen on %s: %w", o.Addr, err)
	}
	s := &Server{dir: o.Dir, files: map[string]Content{}, modTime: time.Now().UTC().Truncate(time.Second)}
	s.corruptAfter.Store(-1)
	s.failAfter.Store(-1)
	s.addr = ln.Addr().String()
	s.URL = "http://" + s.addr
	s.serve(ln)
	return s, nil
}

// serve starts an http.Server on ln (it ends when Close or Vanish is called).
func (s *Server) serve(ln net.Listener) {
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	s.ln, s.srv = ln, srv
	go func() { _ = srv.Serve(ln) }()
}

// Close stops the server and drops its connections.
func (s *Server) Close() error {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	s.gone, s.closed = true, true
	return s.srv.Close()
}

// Vanish makes the origin disappear as a crashed process would: the
// listener is closed (connections are refused) and every connection,
// responses in mid-body included, is dropped. Return brings it back.
func (s *Server) Vanish() error {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	if s.gone {
		return nil
	}
	s.gone = true
	return s.srv.Close()
}

// Return listens again on the address the origin had before Vanish, with
// the same files and counters (as a restarted origin process would).
func (s *Server) Return() error {
	s.lnMu.Lock()
	defer s.lnMu.Unlock()
	if s.closed {
		return errors.New("origin closed")
	}
	if !s.gone {
		return nil
	}
	var ln net.Listener
	var err error
	for range 50 { // the old socket may linger a moment
		if ln, err = net.Listen("tcp", s.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("origin listen again on %s: %w", s.addr, err)
	}
	s.gone = false
	s.serve(ln)
	return nil
}

// SetRate paces the body bytes of all responses together to bytesPerSec
// (the origin's uplink); 0 removes the limit.
func (s *Server) SetRate(bytesPerSec int64) {
	if bytesPerSec <= 0 {
		s.limiter.Store(nil)
		return
	}
	s.limiter.Store(rate.NewLimiter(rate.Limit(bytesPerSec), paceChunk))
}

// paceChunk is the largest write paced at once.
const paceChunk = 32 << 10

// FailAfter makes the origin fail with status (e.g. 500) once it has sent n
// body bytes in total (n = 0: at once): every later request is answered
// with status, and a response in mid-body when the threshold is crossed is
// cut there (its connection dropped). FailAfter(-1, 0) heals it.
func (s *Server) FailAfter(n int64, status int) {
	s.failStatus.Store(int64(status))
	s.failAfter.Store(n)
}

// Failures is the number of requests the origin failed on purpose
// (FailNext, FailAfter), cut responses included.
func (s *Server) Failures() int64 { return s.failed.Load() }

// failing reports whether FailAfter's threshold is reached.
func (s *Server) failing() bool {
	n := s.failAfter.Load()
	return n >= 0 && s.bytesSent.Load() >= n
}

// Add serves generated content at /name and returns its URL.
func (s *Server) Add(name string, c Content) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.files[strings.TrimPrefix(name, "/")] = c
	return s.URL + "/" + strings.TrimPrefix(name, "/")
}

// BytesSent is the number of body bytes the origin has written.
func (s *Server) BytesSent() int64 { return s.bytesSent.Load() }

// Requests is the number of requests served.
func (s *Server) Requests() int64 { return s.requests.Load() }

// ResetCounters zeroes BytesSent and Requests.
func (s *Server) ResetCounters() { s.bytesSent.Store(0); s.requests.Store(0) }

// FailNext makes the next n requests fail with 503.
func (s *Server) FailNext(n int64) { s.failNext.Store(n) }

// IgnoreRange makes the origin answer every GET with the whole body (200).
func (s *Server) IgnoreRange(v bool) { s.ignoreRange.Store(v) }

// SetDown makes the origin hang up on every request (as if dead) until SetDown(false).
func (s *Server) SetDown(v bool) { s.down.Store(v) }

// CorruptFrom makes every byte at offset ≥ off of every response body be
// flipped (a lying origin or a broken cache); -1 turns it off.
func (s *Server) CorruptFrom(off int64) { s.corruptAfter.Store(off) }

// SendContentMD5 makes full (200) responses and HEADs carry Content-MD5.
func (s *Server) SendContentMD5(v bool) { s.sendMD5.Store(v) }

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	if s.down.Load() {
		if hj, ok := w.(http.Hijacker); ok {
			if c, _, err := hj.Hijack(); err == nil {
				c.Close()
				return
			}
		}
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	if s.failNext.Load() > 0 && s.failNext.Add(-1) >= 0 {
		s.failed.Add(1)
		http.Error(w, "injected failure", http.StatusServiceUnavailable)
		return
	}
	if s.failing() {
		s.failed.Add(1)
		code := int(s.failStatus.Load())
		http.Error(w, fmt.Sprintf("injected failure: HTTP %d", code), code)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	name := strings.TrimPrefix(r.URL.Path, "/")
	rs, size, err := s.open(name)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			http.NotFound(w, r)
			return
		}
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if c, ok := rs.(io.Closer); ok {
		defer c.Close()
	}
	if s.ignoreRange.Load() {
		r.Header.Del("Range")
	}
	w.Header().Set("ETag", fmt.Sprintf(`"%x-%x"`, size, s.modTime.Unix()))
	if s.sendMD5.Load() && r.Header.Get("Range") == "" {
		h := md5.New()
		_, _ = io.Copy(h, io.NewSectionReader(readerAt(rs), 0, size))
		w.Header().Set("Content-MD5", base64.StdEncoding.EncodeToString(h.Sum(nil)))
		_, _ = rs.Seek(0, io.SeekStart)
	}
	cw := &countingWriter{ResponseWriter: w, s: s, r: r, pos: rangeStart(r.Header.Get("Range"))}
	http.ServeContent(cw, r, name, s.modTime, rs)
}

func readerAt(rs io.ReadSeeker) io.ReaderAt {
	if ra, ok := rs.(io.ReaderAt); ok {
		return ra
	}
	return nil
}

func (s *Server) open(name string) (io.ReadSeeker, int64, error) {
	s.mu.Lock()
	c, ok := s.files[name]
	s.mu.Unlock()
	if ok {
		return c.Reader(), c.Size, nil
	}
	if s.dir == "" || name == "" || strings.Contains(name, "..") {
		return nil, 0, os.ErrNotExist
	}
	f, err := os.Open(filepath.Join(s.dir, filepath.FromSlash(name)))
	if err != nil {
		return nil, 0, err
	}
	fi, err := f.Stat()
	if err != nil || fi.IsDir() {
		f.Close()
		return nil, 0, os.ErrNotExist
	}
	return f, fi.Size(), nil
}

func rangeStart(h string) int64 {
	var a int64
	if _, err := fmt.Sscanf(h, "bytes=%d-", &a); err != nil {
		return 0
	}
	return a
}

type countingWriter struct {
	http.ResponseWriter
	s   *Server
	r   *http.Request
	pos int64
}

// Write paces (SetRate) and cuts (FailAfter) the body; see write.
func (c *countingWriter) Write(p []byte) (int, error) {
	if c.s.limiter.Load() == nil && c.s.failAfter.Load() < 0 {
		return c.write(p)
	}
	written := 0
	for len(p) > 0 {
		n := min(len(p), paceChunk)
		if lim := c.s.limiter.Load(); lim != nil {
			if err := lim.WaitN(c.r.Context(), n); err != nil {
				return written, err
			}
		}
		if c.s.failing() {
			// The backend broke in mid-body: drop the connection so the
			// client sees a short body, never a wrong one.
			c.s.failed.Add(1)
			panic(http.ErrAbortHandler)
		}
		m, err := c.write(p[:n])
		written += m
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}

func (c *countingWriter) write(p []byte) (int, error) {
	if off := c.s.corruptAfter.Load(); off >= 0 {
		q := append([]byte(nil), p...)
		for i := range q {
			if c.pos+int64(i) >= off {
				q[i] ^= 0xff
			}
		}
		p = q
	}
	n, err := c.ResponseWriter.Write(p)
	c.pos += int64(n)
	c.s.bytesSent.Add(int64(n))
	return n, err
}
