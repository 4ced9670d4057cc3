package peer

// Fuzz targets for what the peer parses from the network: the upload
// server's block requests (path, token, Range) and the local API's
// download requests (JSON).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/source"
	"github.com/dfly-p2p/dfly/supernode/api"
)

// FuzzParseBlockPath: a path parses only as /blocks/{task}/{index} with a
// non-empty task without '/' and a non-negative index, and formatting what
// it parsed gives a path that parses the same.
func FuzzParseBlockPath(f *testing.F) {
	for _, s := range []string{"/blocks/abc/0", "/blocks/u123/42", "/blocks/abc/-1", "/blocks/abc/+1", "/blocks/abc/007",
		"/blocks//1", "/blocks/a/1/2", "/blocks/a/99999999999999999999", "/other/a/1", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		task, idx, ok := parseBlockPath(p)
		if !ok {
			if task != "" || idx != 0 {
				t.Fatalf("parseBlockPath(%q) refused it but returned %q, %d", p, task, idx)
			}
			return
		}
		if task == "" || strings.Contains(task, "/") || idx < 0 || !strings.HasPrefix(p, "/blocks/"+task+"/") {
			t.Fatalf("parseBlockPath(%q) = %q, %d", p, task, idx)
		}
		again := fmt.Sprintf("/blocks/%s/%d", task, idx)
		if t2, i2, ok2 := parseBlockPath(again); !ok2 || t2 != task || i2 != idx {
			t.Fatalf("round trip of %q through %q: %q, %d, %v", p, again, t2, i2, ok2)
		}
	})
}

// fuzzBlocks is a store holding blocks 0 and 2 of task "task" (3 blocks of 4 KiB).
func fuzzBlocks(f *testing.F) (*blockstore.Store, [][]byte) {
	st, err := blockstore.Open(f.TempDir(), blockstore.Options{Logger: quietLogger(), GCInterval: -1, FreeSpace: func(string) (int64, int64, error) { return 1 << 40, 1 << 40, nil }})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	ctx := context.Background()
	if _, err := st.CreateTask(ctx, blockstore.Task{ID: "task", Length: 3*4096 - 100, BlockSize: 4096}); err != nil {
		f.Fatal(err)
	}
	blocks := [][]byte{bytes.Repeat([]byte("a"), 4096), nil, bytes.Repeat([]byte("c"), 4096-100)}
	blocks[0][7], blocks[2][9] = 1, 2
	for _, i := range []int{0, 2} {
		if err := st.PutBlock(ctx, "task", i, blocks[i]); err != nil {
			f.Fatal(err)
		}
	}
	return st, blocks
}

// checkBlockAnswer checks an upload server's answer to a request for a
// block: never 5xx; 200 or 206 only for a GET/HEAD of a well-formed path
// with a valid token of a held block, and then exactly the block's bytes
// (or the range of them that Content-Range names) with their digest.
func checkBlockAnswer(t *testing.T, w *httptest.ResponseRecorder, method, path string, goodToken bool, blocks map[string][][]byte, parse func(string) (string, int, bool)) {
	t.Helper()
	code := w.Code
	if code >= 500 {
		t.Fatalf("%s %q: HTTP %d (%s)", method, path, code, w.Body)
	}
	if code != http.StatusOK && code != http.StatusPartialContent {
		return
	}
	task, idx, ok := parse(path)
	if !ok || (method != http.MethodGet && method != http.MethodHead) || !goodToken {
		t.Fatalf("%s %q (valid token: %v): HTTP %d, want a refusal", method, path, goodToken, code)
	}
	bs := blocks[task]
	if idx >= len(bs) || bs[idx] == nil {
		t.Fatalf("%s %q: HTTP %d for a block that is not held", method, path, code)
	}
	blk := bs[idx]
	sum := sha256.Sum256(blk)
	if got := w.Header().Get(api.DigestHeader); got != hex.EncodeToString(sum[:]) {
		t.Fatalf("%s %q: digest header %q", method, path, got)
	}
	if code == http.StatusPartialContent {
		if method == http.MethodGet {
			checkRanges(t, w, blk)
		}
		return
	}
	want := blk
	if method == http.MethodHead {
		want = nil
	}
	if !bytes.Equal(w.Body.Bytes(), want) {
		t.Fatalf("%s %q: HTTP %d with %d bytes, want %d", method, path, code, w.Body.Len(), len(want))
	}
}

// FuzzUploadHandler: the peer's block endpoint with any method, path,
// token and Range (see checkBlockAnswer).
func FuzzUploadHandler(f *testing.F) {
	st, blocks := fuzzBlocks(f)
	key := newKeyTokens()
	u := NewUploadServer(UploadConfig{Store: st, Tokens: key, Logger: quietLogger()})
	held := map[string][][]byte{"task": blocks}
	f.Add("GET", "/blocks/task/0", uint8(1), "")
	f.Add("GET", "/blocks/task/2", uint8(1), "bytes=5-9")
	f.Add("HEAD", "/blocks/task/0", uint8(1), "bytes=-5")
	f.Add("GET", "/blocks/task/0", uint8(1), "bytes=-0")
	f.Add("GET", "/blocks/task/1", uint8(1), "")
	f.Add("GET", "/blocks/task/0", uint8(2), "")
	f.Add("GET", "/blocks/task/0", uint8(0), "")
	f.Add("GET", "/blocks/task/0", uint8(1), "bytes=0-0,5-6")
	f.Add("POST", "/blocks/task/0", uint8(1), "")
	f.Add("GET", "/blocks/task/99999999999999999999", uint8(1), "")
	f.Add("GET", "/blocks/task/0", uint8(1), "bytes=4000-999999999999999999999")
	f.Fuzz(func(t *testing.T, method, path string, tok uint8, rng string) {
		task, _, _ := parseBlockPath(path)
		var token string
		switch tok % 4 {
		case 1:
			token = key.token(task, time.Hour)
		case 2:
			token = key.token(task+"x", time.Hour)
		case 3:
			token = key.token(task, -time.Hour)
		}
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Method, r.URL = method, &url.URL{Path: path}
		if token != "" {
			r.Header.Set(api.TokenHeader, token)
		}
		if rng != "" {
			r.Header.Set("Range", rng)
		}
		w := httptest.NewRecorder()
		u.ServeHTTP(w, r)
		checkBlockAnswer(t, w, method, path, tok%4 == 1, held, parseBlockPath)
	})
}

// fakeOrigin serves one file at http://origin.test/f.bin (HEAD, GET,
// Range) and answers 404 for every other path of origin.test; any other
// host is unreachable: a fuzzed request never leaves the process.
type fakeOrigin struct{ content []byte }

func (o fakeOrigin) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Host != "origin.test" {
		return nil, fmt.Errorf("fake origin: no host %q", r.URL.Host)
	}
	w := httptest.NewRecorder()
	if r.URL.Path == "/f.bin" {
		w.Header().Set("ETag", `"v1"`)
		http.ServeContent(w, r, "", time.Unix(1700000000, 0), bytes.NewReader(o.content))
	} else {
		http.NotFound(w, r)
	}
	resp := w.Result()
	resp.Request = r
	return resp, nil
}

// FuzzLocalAPIDownload: POST /v1/download with any body. Never 5xx: a
// body that is not JSON is 400, an output the caller may not write 403;
// anything else is a stream of JSON events that ends with exactly one
// result or error. A result names the task the request derives (never
// another content's ID), with the origin's bytes (in the output too).
func FuzzLocalAPIDownload(f *testing.F) {
	content := bytes.Repeat([]byte("dfly fuzz "), 1000)
	st, err := blockstore.Open(f.TempDir(), blockstore.Options{Logger: quietLogger(), GCInterval: -1, FreeSpace: func(string) (int64, int64, error) { return 1 << 40, 1 << 40, nil }})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	src := source.New(source.Options{Transport: fakeOrigin{content}, Retries: -1, Timeout: 5 * time.Second, Logger: quietLogger()})
	eng, err := New(Config{Store: st, Source: src, Logger: quietLogger()})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { eng.Close() })
	h := (&localAPI{d: &Daemon{store: st, engine: eng, log: quietLogger()}, log: quietLogger()}).handler()
	outDir := f.TempDir()
	sum := sha256.Sum256(content)
	good := "sha256:" + hex.EncodeToString(sum[:])
	id, _ := blockstore.TaskIDForURL("http://origin.test/f.bin", "", "")
	for _, s := range []string{
		`{"url":"http://origin.test/f.bin"}`,
		`{"url":"http://origin.test/f.bin","digest":"` + good + `","output":"` + filepath.Join(outDir, "out") + `"}`,
		`{"url":"http://origin.test/f.bin","task_id":"` + id + `"}`,
		`{"url":"http://origin.test/f.bin","task_id":"sha256-` + hex.EncodeToString(sum[:]) + `","digest":"` + good + `"}`,
		`{"url":"http://origin.test/f.bin","task_id":"other"}`,
		`{"url":"http://origin.test/f.bin","digest":"md5:zz"}`,
		`{"url":"http://origin.test/f.bin","headers":{"Authorization":"Bearer x","X-A\n":"b"}}`,
		`{"url":"http://origin.test/missing","tag":"t"}`,
		`{"url":"relative/path"}`,
		`{"url":"http://origin.test/f.bin","output":"relative"}`,
		`{"url":"http://origin.test/f.bin","output":"` + filepath.Join(outDir, "no", "dir") + `"}`,
		`{"digest":"` + good + `"}`,
		`{}`, `null`, `[]`, `{"url":1}`, `{`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var dr DownloadRequest
		decErr := json.NewDecoder(bytes.NewReader(body)).Decode(&dr)
		if decErr == nil && dr.Output != "" {
			// The daemon writes where the request says (it runs as root
			// here): only inside the fuzz's own directory.
			if !strings.HasPrefix(dr.Output, outDir+"/") || strings.Contains(dr.Output, "..") || strings.ContainsRune(dr.Output, 0) {
				return
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		r := httptest.NewRequestWithContext(ctx, http.MethodPost, "/v1/download", bytes.NewReader(body))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		switch {
		case decErr != nil:
			if w.Code != http.StatusBadRequest {
				t.Fatalf("undecodable body (%v): HTTP %d, want 400", decErr, w.Code)
			}
			return
		case w.Code == http.StatusForbidden:
			if dr.Output == "" {
				t.Fatalf("403 without an output: %s", w.Body)
			}
			return
		case w.Code != http.StatusOK:
			t.Fatalf("HTTP %d: %s", w.Code, w.Body)
		}
		var last DownloadEvent
		terminal := 0
		sc := bufio.NewScanner(w.Body)
		for sc.Scan() {
			if terminal > 0 {
				t.Fatalf("event after the %s event: %s", last.Event, sc.Text())
			}
			if err := json.Unmarshal(sc.Bytes(), &last); err != nil {
				t.Fatalf("event %q: %v", sc.Text(), err)
			}
			switch last.Event {
			case "result", "error":
				terminal++
			case "progress":
			default:
				t.Fatalf("event %q", sc.Text())
			}
		}
		if terminal != 1 {
			t.Fatalf("stream ended without a result or error")
		}
		if last.Event == "error" {
			return
		}
		res := last.Result
		want, err := blockstore.TaskIDFor(dr.TaskID, dr.URL, dr.Tag, dr.Digest)
		if err != nil {
			t.Fatalf("request %+v: result %+v, but its task ID is refused: %v", dr, res, err)
		}
		if res == nil || res.TaskID != want || res.Length != int64(len(content)) {
			t.Fatalf("request %+v: result %+v, want task %s of %d bytes", dr, res, want, len(content))
		}
		if dr.Output != "" {
			got, err := os.ReadFile(dr.Output)
			if err != nil || !bytes.Equal(got, content) || res.SHA256 != hex.EncodeToString(sum[:]) {
				t.Fatalf("output %s: %d bytes, %v; sha256 %s", dr.Output, len(got), err, res.SHA256)
			}
			os.Remove(dr.Output)
		}
	})
}

// checkRanges checks a 206 answer against the block it ranges over: one
// range with Content-Range, or multipart/byteranges with one per part.
func checkRanges(t *testing.T, w *httptest.ResponseRecorder, blk []byte) {
	t.Helper()
	one := func(cr string, body []byte) {
		var a, b, n int
		if _, err := fmt.Sscanf(cr, "bytes %d-%d/%d", &a, &b, &n); err == nil && a == n && b == n-1 && len(body) == 0 {
			// "bytes=-0": net/http answers 206 "bytes N-(N-1)/N" and no
			// bytes where RFC 9110 wants 416 (golang/go#81262).
			return
		}
		if _, err := fmt.Sscanf(cr, "bytes %d-%d/%d", &a, &b, &n); err != nil || n != len(blk) || a < 0 || a > b || b >= n {
			t.Fatalf("206 with Content-Range %q (block of %d bytes)", cr, len(blk))
		}
		if !bytes.Equal(body, blk[a:b+1]) {
			t.Fatalf("206 range %q: %d bytes that are not the block's", cr, len(body))
		}
	}
	mt, params, err := mime.ParseMediaType(w.Header().Get("Content-Type"))
	if err != nil || mt != "multipart/byteranges" {
		one(w.Header().Get("Content-Range"), w.Body.Bytes())
		return
	}
	mr := multipart.NewReader(bytes.NewReader(w.Body.Bytes()), params["boundary"])
	parts := 0
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("206 multipart: %v", err)
		}
		body, err := io.ReadAll(p)
		if err != nil {
			t.Fatalf("206 multipart: %v", err)
		}
		one(p.Header.Get("Content-Range"), body)
		parts++
	}
	if parts == 0 {
		t.Fatal("206 multipart without parts")
	}
}
