package blockhttp

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"testing"
)

// FuzzSendRange: a block answered to any Range header. 200 is the whole
// block, 416 a refusal, 206 exactly the byte ranges Content-Range (or
// each multipart/byteranges part) names; never a 5xx.
func FuzzSendRange(f *testing.F) {
	for _, s := range []string{"", "bytes=0-9", "bytes=-5", "bytes=90-", "bytes=0-0,5-6", "bytes=100-", "bytes=9-1", "items=0-1",
		"bytes=0-9223372036854775807", "bytes=-0", "bytes= 1 - 2 "} {
		f.Add(s, uint16(100), false)
	}
	f.Add("bytes=0-1", uint16(0), true)
	f.Fuzz(func(t *testing.T, rng string, size uint16, head bool) {
		blk := make([]byte, int(size)%5000)
		for i := range blk {
			blk[i] = byte(i * 7)
		}
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		r := httptest.NewRequest(method, "/blocks/t/0", nil)
		if rng != "" {
			r.Header.Set("Range", rng)
		}
		w := httptest.NewRecorder()
		if err := Send(context.Background(), w, r, bytes.NewReader(blk), int64(len(blk)), []byte{1}, Pacer{Chunk: 7}); err != nil {
			t.Fatalf("Send: %v", err)
		}
		switch w.Code {
		case http.StatusOK:
			if !head && !bytes.Equal(w.Body.Bytes(), blk) {
				t.Fatalf("200 with %d bytes of %d", w.Body.Len(), len(blk))
			}
		case http.StatusRequestedRangeNotSatisfiable:
		case http.StatusPartialContent:
			if rng == "" {
				t.Fatal("206 without a Range")
			}
			if !head {
				checkParts(t, w, blk)
			}
		default:
			t.Fatalf("Range %q: HTTP %d", rng, w.Code)
		}
	})
}

func checkParts(t *testing.T, w *httptest.ResponseRecorder, blk []byte) {
	one := func(cr string, body []byte) {
		var a, b, n int
		if _, err := fmt.Sscanf(cr, "bytes %d-%d/%d", &a, &b, &n); err == nil && a == n && b == n-1 && len(body) == 0 {
			return // "bytes=-0": net/http's 206 "N-(N-1)/N" (golang/go#81262)
		}
		if _, err := fmt.Sscanf(cr, "bytes %d-%d/%d", &a, &b, &n); err != nil || n != len(blk) || a < 0 || a > b || b >= n || !bytes.Equal(body, blk[a:b+1]) {
			t.Fatalf("206 part %q with %d bytes (block of %d)", cr, len(body), len(blk))
		}
	}
	mt, params, err := mime.ParseMediaType(w.Header().Get("Content-Type"))
	if err != nil || mt != "multipart/byteranges" {
		one(w.Header().Get("Content-Range"), w.Body.Bytes())
		return
	}
	mr := multipart.NewReader(bytes.NewReader(w.Body.Bytes()), params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatalf("multipart: %v", err)
		}
		body, _ := io.ReadAll(p)
		one(p.Header.Get("Content-Range"), body)
	}
}
