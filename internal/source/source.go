// Package source fetches content from an origin over HTTP(S): metadata with
// HEAD (or a one-byte ranged GET when HEAD is refused), byte ranges with
// retries and backoff, and one plain stream when the origin ignores Range.
//
// It is a reusable library: the peer engine and the supernode's seed both use
// it to reach origins.
package source

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// ErrUnreachable means the origin could not be reached (DNS, connect, TLS,
// timeout) after every retry.
var ErrUnreachable = errors.New("origin unreachable")

// ErrNotModified is returned by Revalidate when the origin answered 304.
var ErrNotModified = errors.New("not modified")

// HTTPError is a non-success status from the origin.
type HTTPError struct {
	URL    string
	Status int
	Msg    string
}

func (e *HTTPError) Error() string {
	s := fmt.Sprintf("origin %s answered HTTP %d %s", e.URL, e.Status, http.StatusText(e.Status))
	if e.Msg != "" {
		s += ": " + e.Msg
	}
	return s
}

// IsClientError reports whether err is an HTTP 4xx from the origin (retrying will not help).
func IsClientError(err error) bool {
	var he *HTTPError
	return errors.As(err, &he) && he.Status >= 400 && he.Status < 500
}

// Info is what the origin says about the content.
type Info struct {
	URL          string // final URL after redirects
	Length       int64  // -1 when unknown
	ETag         string
	LastModified string
	// Digest is a whole-content digest the origin declared ("md5:HEX" from
	// Content-MD5, or "sha256:HEX" from Docker-Content-Digest), or "".
	Digest       string
	AcceptRanges bool
}

// Client fetches from origins. The zero value is not usable; use New.
type Client struct {
	http    *http.Client
	retries int
	backoff time.Duration
	log     *slog.Logger
}

// Options configure a Client.
type Options struct {
	// Timeout bounds connecting and waiting for response headers, and any
	// stall while reading a body. Default 30s.
	Timeout time.Duration
	// Retries is how many times a failed request (connection error or 5xx)
	// is retried. Default 4.
	Retries int
	// Backoff is the first retry delay; it doubles each time (with jitter). Default 200ms.
	Backoff time.Duration
	// Transport overrides the HTTP transport (tests, TLS config).
	Transport http.RoundTripper
	// TLS configures the default transport's TLS (e.g. LoadCAs for an
	// origin or registry signed by a private CA); nil = the system CAs.
	TLS    *tls.Config
	Logger *slog.Logger
}

// New returns a Client.
func New(o Options) *Client {
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	if o.Retries < 0 {
		o.Retries = 0
	} else if o.Retries == 0 {
		o.Retries = 4
	}
	if o.Backoff <= 0 {
		o.Backoff = 200 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	tr := o.Transport
	if tr == nil {
		tr = &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: o.Timeout, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConnsPerHost:   64,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   o.Timeout,
			ResponseHeaderTimeout: o.Timeout,
			ForceAttemptHTTP2:     true,
			TLSClientConfig:       o.TLS,
		}
	}
	return &Client{http: &http.Client{Transport: tr}, retries: o.Retries, backoff: o.Backoff, log: o.Logger}
}

// Stat asks the origin for the content's length and validators.
func (c *Client) Stat(ctx context.Context, url string, h http.Header) (Info, error) {
	resp, err := c.do(ctx, http.MethodHead, url, h, nil)
	if err == nil && resp.StatusCode == http.StatusOK {
		resp.Body.Close()
		return infoFrom(resp), nil
	}
	if err != nil && !isMethodRefused(err) {
		return Info{}, err
	}
	if resp != nil {
		resp.Body.Close()
	}
	// Some origins (signed URLs, registries' redirect targets) refuse HEAD: ask for one byte.
	rh := h.Clone()
	if rh == nil {
		rh = http.Header{}
	}
	rh.Set("Range", "bytes=0-0")
	resp, err = c.do(ctx, http.MethodGet, url, rh, nil)
	if err != nil {
		return Info{}, err
	}
	defer resp.Body.Close()
	info := infoFrom(resp)
	if resp.StatusCode == http.StatusPartialContent {
		info.AcceptRanges = true
		info.Length = totalFromContentRange(resp.Header.Get("Content-Range"))
	}
	return info, nil
}

func isMethodRefused(err error) bool {
	var he *HTTPError
	return errors.As(err, &he) && (he.Status == http.StatusMethodNotAllowed || he.Status == http.StatusForbidden || he.Status == http.StatusNotImplemented)
}

// Revalidate sends a conditional HEAD with the stored validators. It returns
// ErrNotModified on 304, fresh Info on 200, and an error otherwise.
func (c *Client) Revalidate(ctx context.Context, url string, h http.Header, etag, lastModified string) (Info, error) {
	rh := h.Clone()
	if rh == nil {
		rh = http.Header{}
	}
	if etag != "" {
		rh.Set("If-None-Match", etag)
	}
	if lastModified != "" {
		rh.Set("If-Modified-Since", lastModified)
	}
	resp, err := c.do(ctx, http.MethodHead, url, rh, nil)
	if err != nil {
		return Info{}, err
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusNotModified {
		return Info{}, ErrNotModified
	}
	return infoFrom(resp), nil
}

// ReadRange fetches length bytes at off into a new buffer. If the origin
// ignores Range and sends the whole body, ok=false is returned with no data so
// the caller can switch to Stream.
func (c *Client) ReadRange(ctx context.Context, url string, h http.Header, off, length int64) (data []byte, err error) {
	rh := h.Clone()
	if rh == nil {
		rh = http.Header{}
	}
	rh.Set("Range", fmt.Sprintf("bytes=%d-%d", off, off+length-1))
	for attempt := 0; ; attempt++ {
		data, err = c.readRangeOnce(ctx, url, rh, off, length)
		if err == nil || !retryable(err) || attempt >= c.retries || ctx.Err() != nil {
			return data, err
		}
		c.log.Debug("retrying range", "url", url, "off", off, "attempt", attempt+1, "err", err)
		if err := sleep(ctx, c.delay(attempt)); err != nil {
			return nil, err
		}
	}
}

// ErrRangeIgnored means the origin answered a Range request with the whole body.
var ErrRangeIgnored = errors.New("origin ignores Range requests")

func (c *Client) readRangeOnce(ctx context.Context, url string, rh http.Header, off, length int64) ([]byte, error) {
	resp, err := c.doOnce(ctx, http.MethodGet, url, rh)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		if off == 0 && resp.ContentLength == length {
			return readFull(resp.Body, length)
		}
		return nil, fmt.Errorf("range %d+%d of %s: %w", off, length, url, ErrRangeIgnored)
	}
	if resp.StatusCode != http.StatusPartialContent {
		return nil, &HTTPError{URL: url, Status: resp.StatusCode}
	}
	if s := parseContentRangeStart(resp.Header.Get("Content-Range")); s != off {
		return nil, fmt.Errorf("range %d+%d of %s: origin sent Content-Range %q", off, length, url, resp.Header.Get("Content-Range"))
	}
	return readFull(resp.Body, length)
}

func readFull(r io.Reader, n int64) ([]byte, error) {
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, fmt.Errorf("read body: %w (%w)", err, errShortBody)
	}
	return buf, nil
}

var errShortBody = errors.New("connection closed early")

// Stream opens the whole body from offset off (0 for a plain GET).
func (c *Client) Stream(ctx context.Context, url string, h http.Header, off int64) (io.ReadCloser, Info, error) {
	rh := h.Clone()
	if rh == nil {
		rh = http.Header{}
	}
	if off > 0 {
		rh.Set("Range", fmt.Sprintf("bytes=%d-", off))
	}
	resp, err := c.do(ctx, http.MethodGet, url, rh, nil)
	if err != nil {
		return nil, Info{}, err
	}
	if off > 0 && resp.StatusCode != http.StatusPartialContent {
		resp.Body.Close()
		return nil, Info{}, fmt.Errorf("resume %s at %d: %w", url, off, ErrRangeIgnored)
	}
	return resp.Body, infoFrom(resp), nil
}

// do runs a request with retries on connection errors and 5xx. A 4xx is
// returned at once as *HTTPError; any 2xx/304 response is returned open.
func (c *Client) do(ctx context.Context, method, url string, h http.Header, _ io.Reader) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		resp, err := c.doOnce(ctx, method, url, h)
		if err == nil && resp.StatusCode >= 300 && resp.StatusCode != http.StatusNotModified {
			resp.Body.Close()
			err = &HTTPError{URL: url, Status: resp.StatusCode}
		}
		if err == nil {
			return resp, nil
		}
		if !retryable(err) || attempt >= c.retries || ctx.Err() != nil {
			return nil, err
		}
		c.log.Debug("retrying request", "method", method, "url", url, "attempt", attempt+1, "err", err)
		if err := sleep(ctx, c.delay(attempt)); err != nil {
			return nil, err
		}
	}
}

func (c *Client) doOnce(ctx context.Context, method, url string, h http.Header) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return nil, fmt.Errorf("bad origin URL %q: %w", url, err)
	}
	for k, vs := range h {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "dfly/1")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%s %s: %w: %w", method, url, ErrUnreachable, err)
	}
	return resp, nil
}

func retryable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if errors.Is(err, ErrUnreachable) || errors.Is(err, errShortBody) {
		return true
	}
	var he *HTTPError
	if errors.As(err, &he) {
		return he.Status >= 500 || he.Status == http.StatusTooManyRequests || he.Status == http.StatusRequestTimeout
	}
	return false
}

func (c *Client) delay(attempt int) time.Duration {
	d := c.backoff << min(attempt, 6)
	return d/2 + rand.N(d/2+1)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func infoFrom(resp *http.Response) Info {
	info := Info{
		URL:          resp.Request.URL.String(),
		Length:       resp.ContentLength,
		ETag:         resp.Header.Get("ETag"),
		LastModified: resp.Header.Get("Last-Modified"),
		AcceptRanges: strings.Contains(strings.ToLower(resp.Header.Get("Accept-Ranges")), "bytes"),
	}
	if m := resp.Header.Get("Content-MD5"); m != "" {
		if raw, err := base64.StdEncoding.DecodeString(m); err == nil && len(raw) == 16 {
			info.Digest = "md5:" + hex.EncodeToString(raw)
		}
	}
	if d := resp.Header.Get("Docker-Content-Digest"); strings.HasPrefix(d, "sha256:") && len(d) == 71 {
		info.Digest = d
	}
	return info
}

// totalFromContentRange parses "bytes a-b/total"; -1 if unknown.
func totalFromContentRange(cr string) int64 {
	_, total, ok := strings.Cut(cr, "/")
	if !ok {
		return -1
	}
	n, err := strconv.ParseInt(strings.TrimSpace(total), 10, 64)
	if err != nil {
		return -1
	}
	return n
}

func parseContentRangeStart(cr string) int64 {
	cr = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(cr), "bytes"))
	a, _, ok := strings.Cut(cr, "-")
	if !ok {
		return -1
	}
	n, err := strconv.ParseInt(strings.TrimSpace(a), 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// harmless are request headers that never carry credentials.
var harmless = map[string]bool{
	"User-Agent": true, "Accept": true, "Accept-Language": true, "Accept-Encoding": true,
	"Cache-Control": true, "Pragma": true,
}

// Sensitive reports whether h carries anything that may be a credential:
// every header except a few that never do (User-Agent, Accept, ...). Content
// fetched with sensitive headers is private: it is served to a caller only
// after the origin accepted that caller's own headers, and the headers are
// never stored, logged or sent to other peers.
func Sensitive(h http.Header) bool {
	for name := range h {
		if !harmless[http.CanonicalHeaderKey(name)] {
			return true
		}
	}
	return false
}

// LoadCAs returns a TLS configuration that trusts the system CAs plus the
// PEM certificates in files (origins and registries signed by a private CA).
func LoadCAs(files ...string) (*tls.Config, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("read CA certificates %s: %w", f, err)
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("CA certificates %s: no PEM certificate found", f)
		}
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}
