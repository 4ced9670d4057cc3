package swarm

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"golang.org/x/time/rate"

	"github.com/dfly-p2p/dfly/integration/origin"
)

// throttledOrigin is a front to an origin that paces every response body
// through one shared rate limit (the origin's uplink) and counts the body
// bytes it actually sent. With hideValidators it answers without ETag and
// Last-Modified (and ignores conditional requests), like many object
// stores' signed URLs and dynamic origins.
type throttledOrigin struct {
	*origin.Server
	front          *httptest.Server
	lim            *rate.Limiter
	hideValidators atomic.Bool
	sent           atomic.Int64
}

// newThrottledOrigin starts an origin whose responses share bytesPerSec.
func newThrottledOrigin(t *testing.T, bytesPerSec int) *throttledOrigin {
	t.Helper()
	o := &throttledOrigin{Server: newOrigin(t), lim: rate.NewLimiter(rate.Limit(bytesPerSec), throttleChunk)}
	o.front = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if o.hideValidators.Load() {
			for _, h := range []string{"If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since", "If-Range"} {
				r.Header.Del(h)
			}
		}
		o.Server.ServeHTTP(&throttledWriter{ResponseWriter: w, o: o, r: r}, r)
	}))
	t.Cleanup(o.front.Close)
	return o
}

// Add serves c at /name behind the throttle and returns its URL.
func (o *throttledOrigin) Add(name string, c origin.Content) string {
	o.Server.Add(name, c)
	return o.front.URL + "/" + name
}

// BytesSent is the number of body bytes sent through the throttle
// (including those of responses cut short).
func (o *throttledOrigin) BytesSent() int64 { return o.sent.Load() }

const throttleChunk = 32 << 10

type throttledWriter struct {
	http.ResponseWriter
	o           *throttledOrigin
	r           *http.Request
	wroteHeader bool
}

func (w *throttledWriter) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	w.wroteHeader = true
	if w.o.hideValidators.Load() {
		w.Header().Del("ETag")
		w.Header().Del("Last-Modified")
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *throttledWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	written := 0
	for len(p) > 0 {
		n := min(len(p), throttleChunk)
		if err := w.o.lim.WaitN(w.r.Context(), n); err != nil {
			return written, err
		}
		m, err := w.ResponseWriter.Write(p[:n])
		written += m
		w.o.sent.Add(int64(m))
		if err != nil {
			return written, err
		}
		p = p[n:]
	}
	return written, nil
}
