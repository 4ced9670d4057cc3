package supernode

// Fuzz targets for what the supernode takes from the network: the seed's
// block requests (path, token, Range) and the gRPC requests (any bytes a
// client sends that decode as a request).

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/source"
	"github.com/dfly-p2p/dfly/supernode/api"
)

func fuzzFreeSpace(string) (int64, int64, error) { return 1 << 40, 1 << 40, nil }

// parseSeedBlockPath is what the seed's route GET /blocks/{task}/{index} accepts.
func parseSeedBlockPath(p string) (string, int, bool) {
	rest, ok := strings.CutPrefix(p, "/blocks/")
	if !ok {
		return "", 0, false
	}
	task, num, ok := strings.Cut(rest, "/")
	if !ok || task == "" || strings.Contains(num, "/") {
		return "", 0, false
	}
	n, err := strconv.Atoi(num)
	return task, n, err == nil && n >= 0
}

// FuzzUploadHandler: the seed's block endpoint with any method, path,
// token and Range. Never 5xx; 200/206 only for GET/HEAD of a well-formed
// path with a valid token of a held block, with exactly its bytes (or the
// range Content-Range names) and its digest.
func FuzzUploadHandler(f *testing.F) {
	st, err := blockstore.Open(f.TempDir(), blockstore.Options{Logger: quietLogger(), GCInterval: -1, FreeSpace: fuzzFreeSpace})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	ctx := context.Background()
	if _, err := st.CreateTask(ctx, blockstore.Task{ID: "task", Length: 2*4096 - 7, BlockSize: 4096}); err != nil {
		f.Fatal(err)
	}
	blk := bytes.Repeat([]byte("seed"), 1024)
	if err := st.PutBlock(ctx, "task", 0, blk); err != nil {
		f.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(nil)
	u := NewUploadServer(UploadConfig{Store: st, TokenKeys: []ed25519.PublicKey{key.Public().(ed25519.PublicKey)}, Logger: quietLogger()})
	f.Add("GET", "/blocks/task/0", uint8(1), "")
	f.Add("GET", "/blocks/task/0", uint8(1), "bytes=10-20")
	f.Add("HEAD", "/blocks/task/0", uint8(1), "")
	f.Add("GET", "/blocks/task/1", uint8(1), "")
	f.Add("GET", "/blocks/task/-1", uint8(1), "")
	f.Add("GET", "/blocks/task/0", uint8(2), "")
	f.Add("GET", "/blocks/task/0", uint8(0), "")
	f.Add("GET", "/blocks/../task/0", uint8(1), "")
	f.Add("PUT", "/blocks/task/0", uint8(1), "")
	f.Add("GET", "/blocks/task/0", uint8(1), "bytes=4000-,0-1")
	f.Fuzz(func(t *testing.T, method, path string, tok uint8, rng string) {
		task, _, _ := parseSeedBlockPath(path)
		var token string
		switch tok % 4 {
		case 1:
			token = api.SignToken(key, api.TokenClaims{Task: task, Host: "h", Expires: time.Now().Add(time.Hour)})
		case 2:
			token = api.SignToken(key, api.TokenClaims{Task: task + "x", Host: "h", Expires: time.Now().Add(time.Hour)})
		case 3:
			token = api.SignToken(key, api.TokenClaims{Task: task, Host: "h", Expires: time.Now().Add(-time.Hour)})
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
		code := w.Code
		if code >= 500 {
			t.Fatalf("%s %q: HTTP %d (%s)", method, path, code, w.Body)
		}
		if code != http.StatusOK && code != http.StatusPartialContent {
			return
		}
		ptask, idx, ok := parseSeedBlockPath(path)
		if !ok || (method != http.MethodGet && method != http.MethodHead) || tok%4 != 1 || ptask != "task" || idx != 0 {
			t.Fatalf("%s %q (token kind %d): HTTP %d, want a refusal", method, path, tok%4, code)
		}
		sum := sha256.Sum256(blk)
		if got := w.Header().Get(api.DigestHeader); got != hex.EncodeToString(sum[:]) {
			t.Fatalf("digest header %q", got)
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
	})
}

// fakeOrigin serves one file at http://origin.test/f.bin; every other host
// is unreachable, so a fuzzed URL never leaves the process.
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

// rpcKinds are the requests FuzzServiceRequests decodes its bytes as.
var rpcKinds = []string{"Announce", "RegisterTask", "Sync", "Leave"}

// allowedCodes are the answers a request can earn: a refusal of bad input
// or of a state the caller must fix, never an internal error.
var allowedCodes = map[codes.Code]bool{
	codes.InvalidArgument: true, codes.NotFound: true, codes.PermissionDenied: true,
	codes.FailedPrecondition: true, codes.DeadlineExceeded: true, codes.Canceled: true,
}

// FuzzServiceRequests: any bytes a client sends, decoded as an Announce,
// RegisterTask, Sync or Leave request, go to the service of a supernode
// with a fake origin. It never panics; every error is a gRPC status of
// the allowed codes (never Unknown or Internal); a request without a host
// id, or with the seed's, is InvalidArgument; a registration names the
// task its request derives; a Sync assigns only wanted blocks of the task.
func FuzzServiceRequests(f *testing.F) {
	content := bytes.Repeat([]byte("0123456789abcdef"), 1000)
	src := source.New(source.Options{Transport: fakeOrigin{content}, Retries: -1, Timeout: 5 * time.Second, Logger: quietLogger()})
	sn, err := Start(Config{StoreDir: f.TempDir(), GRPCListen: "127.0.0.1:0", UploadListen: "127.0.0.1:0",
		Source: src, Logger: quietLogger(), SyncWait: 20 * time.Millisecond})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { sn.Close() })
	v := &service{sn: sn}
	sum := sha256.Sum256(content)
	digestID := "sha256-" + hex.EncodeToString(sum[:])
	urlID, _ := blockstore.TaskIDForURL("http://origin.test/f.bin", "", "")
	add := func(kind int, m proto.Message) {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(kind), b)
	}
	add(0, &api.AnnounceRequest{Host: &api.Host{Id: "h1", UploadAddr: "h1.invalid:1"}, UploadsInFlight: -5,
		Held: []*api.HeldTask{{TaskId: urlID, Url: "http://origin.test/f.bin", Bitmap: []byte{0xff}, Length: int64(len(content)), BlockSize: 4096}}})
	add(0, &api.AnnounceRequest{Host: &api.Host{Id: "h2"}, Held: []*api.HeldTask{{TaskId: digestID, Bitmap: []byte{1, 2, 3}, Length: 5, BlockSize: 4096}}})
	add(0, &api.AnnounceRequest{Host: &api.Host{Id: "h2"}, Held: []*api.HeldTask{{TaskId: "md5-0123", Length: -1, BlockSize: 0}}})
	// A task of 2^40 blocks: the scheduler allocated per block, without bound.
	add(0, &api.AnnounceRequest{Host: &api.Host{Id: "h3"}, Held: []*api.HeldTask{{TaskId: digestID[:len(digestID)-1] + "0", Length: 1 << 40, BlockSize: 1}}})
	add(0, &api.AnnounceRequest{Host: &api.Host{Id: "seed"}})
	add(0, &api.AnnounceRequest{})
	add(1, &api.RegisterTaskRequest{HostId: "h1", Url: "http://origin.test/f.bin"})
	add(1, &api.RegisterTaskRequest{HostId: "h1", Url: "http://origin.test/f.bin", Digest: "sha256:" + hex.EncodeToString(sum[:]), TaskId: digestID, Bitmap: []byte{0xff, 0xff}})
	add(1, &api.RegisterTaskRequest{HostId: "h1", Url: "http://origin.test/f.bin", TaskId: "other"})
	add(1, &api.RegisterTaskRequest{HostId: "h1", Url: "http://origin.test/missing", Tag: "t", Headers: []*api.Header{{Name: "Authorization", Value: "x"}}})
	add(1, &api.RegisterTaskRequest{HostId: "h1", Url: "::not a url"})
	add(1, &api.RegisterTaskRequest{Url: "http://origin.test/f.bin"})
	add(2, &api.SyncRequest{HostId: "h1", TaskId: urlID, Want: []int32{0, 1, 1, -1, 1 << 30}, Have: []int32{-3, 2, 1 << 30}, MaxAssignments: -1,
		Results: []*api.BlockResult{{Block: -1, ParentId: "seed", BadDigest: true}, {Block: 2, ParentId: "h2", Ok: true, Bytes: 9, DurationUs: -1}}})
	add(2, &api.SyncRequest{HostId: "h2", TaskId: "nope"})
	add(2, &api.SyncRequest{TaskId: urlID})
	add(3, &api.LeaveRequest{HostId: "h2", TaskId: urlID})
	add(3, &api.LeaveRequest{HostId: "h2"})
	add(3, &api.LeaveRequest{})
	f.Fuzz(func(t *testing.T, kind uint8, b []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var (
			host string
			resp any
			err  error
		)
		name := rpcKinds[int(kind)%len(rpcKinds)]
		switch name {
		case "Announce":
			var req api.AnnounceRequest
			if proto.Unmarshal(b, &req) != nil {
				return
			}
			host = req.GetHost().GetId()
			resp, err = v.Announce(ctx, &req)
		case "RegisterTask":
			var req api.RegisterTaskRequest
			if proto.Unmarshal(b, &req) != nil {
				return
			}
			host = req.GetHostId()
			var r *api.RegisterTaskResponse
			r, err = v.RegisterTask(ctx, &req)
			if err == nil {
				want, derr := blockstore.TaskIDFor(req.GetTaskId(), req.GetUrl(), req.GetTag(), req.GetDigest())
				if derr != nil || r.GetMeta().GetTaskId() != want {
					t.Fatalf("RegisterTask(%v) = task %q, want %q (%v)", &req, r.GetMeta().GetTaskId(), want, derr)
				}
			}
			resp = r
		case "Sync":
			var req api.SyncRequest
			if proto.Unmarshal(b, &req) != nil {
				return
			}
			host = req.GetHostId()
			var r *api.SyncResponse
			r, err = v.Sync(ctx, &req)
			if err == nil {
				checkSync(t, &req, r)
			}
			resp = r
		case "Leave":
			var req api.LeaveRequest
			if proto.Unmarshal(b, &req) != nil {
				return
			}
			host = req.GetHostId()
			resp, err = v.Leave(ctx, &req)
		}
		if err == nil {
			if host == "" || host == sn.cfg.SeedID {
				t.Fatalf("%s with host id %q accepted: %v", name, host, resp)
			}
			return
		}
		st, ok := status.FromError(err)
		if !ok || !allowedCodes[st.Code()] {
			t.Fatalf("%s: error %v (code %v), want a status of a refusal", name, err, st.Code())
		}
		if (host == "" || host == sn.cfg.SeedID) && st.Code() != codes.InvalidArgument {
			t.Fatalf("%s with host id %q: %v, want InvalidArgument", name, host, err)
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.Fatalf("%s took the whole deadline", name)
		}
	})
}

// checkSync: assignments and digests only for wanted blocks, each at most once.
func checkSync(t *testing.T, req *api.SyncRequest, r *api.SyncResponse) {
	t.Helper()
	wanted := map[int32]bool{}
	for i, b := range req.GetWant() {
		if i == maxWants {
			break
		}
		wanted[b] = true
	}
	seen := map[int32]bool{}
	for _, a := range r.GetAssignments() {
		if !wanted[a.GetBlock()] || seen[a.GetBlock()] || a.GetBlock() < 0 || (r.GetTotalBlocks() > 0 && a.GetBlock() >= r.GetTotalBlocks()) {
			t.Fatalf("Sync(%v) assigned block %d (wanted %v, %d blocks)", req, a.GetBlock(), req.GetWant(), r.GetTotalBlocks())
		}
		seen[a.GetBlock()] = true
	}
	for _, d := range r.GetDigests() {
		if !wanted[d.GetBlock()] || len(d.GetSha256()) != sha256.Size {
			t.Fatalf("Sync(%v) sent a digest of block %d (%d bytes)", req, d.GetBlock(), len(d.GetSha256()))
		}
	}
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
