package blockhttp

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// Compressed answers (issue 17): a receiver that wants a block's
// compressed form, when the sender holds one, sends
//
//	Accept-Encoding: zstd
//
// and a sender holding the form answers 200 with Content-Encoding: zstd,
// the form as the body (one zstd frame declaring the block's length) and
// the plain block's SHA-256 in X-Dfly-Digest: digests are always over the
// plain bytes, which the receiver decodes (bounded) and verifies. A request
// without it, a Range request or a HEAD always gets the plain block.

// EncodingZstd is the content coding of compressed blocks.
const EncodingZstd = "zstd"

// PlainLengthHeader carries the plain block's length in a compressed answer.
const PlainLengthHeader = "X-Dfly-Plain-Length"

// AcceptsZstd reports whether r may be answered with a compressed form: a
// GET of a whole block whose Accept-Encoding lists zstd with a non-zero
// quality.
func AcceptsZstd(r *http.Request) bool {
	if r.Method != http.MethodGet || r.Header.Get("Range") != "" {
		return false
	}
	for _, v := range r.Header.Values("Accept-Encoding") {
		for part := range strings.SplitSeq(v, ",") {
			coding, params, _ := strings.Cut(part, ";")
			if !strings.EqualFold(strings.TrimSpace(coding), EncodingZstd) {
				continue
			}
			q, ok := quality(params)
			return ok && q > 0
		}
	}
	return false
}

// quality parses the "q=..." parameter of an Accept-Encoding element (1 when absent).
func quality(params string) (float64, bool) {
	for p := range strings.SplitSeq(params, ";") {
		k, v, found := strings.Cut(strings.TrimSpace(p), "=")
		if !found || !strings.EqualFold(strings.TrimSpace(k), "q") {
			continue
		}
		q, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || q < 0 || q > 1 {
			return 0, false
		}
		return q, true
	}
	return 1, true
}

// SendZstd answers r (for which AcceptsZstd holds) with a block's
// compressed form: the n bytes body yields (an *os.File positioned at the
// form goes out with sendfile(2)), Content-Encoding: zstd, the plain
// block's digest and length. Pacing and counting are Send's, over the
// bytes on the wire.
func SendZstd(ctx context.Context, w http.ResponseWriter, r *http.Request, body io.Reader, n, plainLen int64, digest []byte, p Pacer) error {
	h := w.Header()
	h.Set("Content-Encoding", EncodingZstd)
	h.Set(PlainLengthHeader, strconv.FormatInt(plainLen, 10))
	h.Add("Vary", "Accept-Encoding")
	return Send(ctx, w, r, body, n, digest, p)
}
