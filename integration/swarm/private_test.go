package swarm

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/peer"
	"github.com/dfly-p2p/dfly/supernode/api"
)

// authOrigin is an origin that serves only requests carrying the right
// Authorization, and counts what it refused.
type authOrigin struct {
	srv     *httptest.Server
	want    string
	refused atomic.Int64
}

func newAuthOrigin(t *testing.T, o *origin.Server, want string) *authOrigin {
	t.Helper()
	a := &authOrigin{want: want}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != a.want {
			a.refused.Add(1)
			w.Header().Set("WWW-Authenticate", `Bearer realm="test"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		o.ServeHTTP(w, r)
	}))
	t.Cleanup(a.srv.Close)
	return a
}

// controlClient talks to the supernode as a host of its own (an attacker
// that knows the task id), with its own host secret.
func controlClient(t *testing.T, addr string) api.SchedulerClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, o ...grpc.CallOption) error {
			return invoker(metadata.AppendToOutgoingContext(ctx, api.HostSecretMetadata, "attacker-secret"), method, req, reply, cc, o...)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return api.NewSchedulerClient(cc)
}

// TestPrivateContentNeedsOwnCredentials: content fetched with credentials
// is handed to another host, or to another local user of the same daemon,
// only after the origin accepted that caller's own credentials. A host
// that knows only the task id gets no token, no parents and no block; the
// credential appears in no log, store file or debug endpoint.
func TestPrivateContentNeedsOwnCredentials(t *testing.T) {
	const secret = "Bearer MARKER-7f3c-credential"
	o := newOrigin(t)
	c := origin.Content{Size: 6 << 20, Seed: 77}
	o.Add("private.bin", c)
	ao := newAuthOrigin(t, o, secret)
	url := ao.srv.URL + "/private.bin"
	id, _ := blockstore.TaskIDForURL(url, "", "")
	want := c.Digest("sha256")

	sn := startSupernode(t, "0")
	a := startDaemon(t, sn, "host-a", "")
	b := startDaemon(t, sn, "host-b", "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()

	// A, with credentials: exact.
	res, err := a.client.Download(ctx, peer.DownloadRequest{URL: url, Headers: map[string]string{"Authorization": secret}, Output: filepath.Join(dir, "a.out")}, nil)
	if err != nil || "sha256:"+res.SHA256 != want {
		t.Fatalf("download with credentials: %+v, %v", res, err)
	}

	// B without, or with wrong, credentials: fails as without dfly (the
	// origin's 401), no output; and a second local user of A's daemon too.
	for _, tc := range []struct {
		name string
		d    *daemon
		hdr  map[string]string
	}{
		{"other host, no credentials", b, nil},
		{"other host, wrong credentials", b, map[string]string{"Authorization": "Bearer wrong"}},
		{"same host, no credentials", a, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			_, err := tc.d.client.Download(ctx, peer.DownloadRequest{URL: url, Headers: tc.hdr, Output: out}, nil)
			if err == nil || !strings.Contains(err.Error(), "401") {
				t.Fatalf("download: %v, want the origin's 401", err)
			}
			if _, serr := os.Stat(out); !os.IsNotExist(serr) {
				t.Fatal("an output was written")
			}
		})
	}

	// Knowing the task id is not enough: no token from the supernode.
	cc := controlClient(t, sn.grpc)
	if _, err := cc.Announce(ctx, &api.AnnounceRequest{Host: &api.Host{Id: "intruder", UploadAddr: "127.0.0.1:1"}}); err != nil {
		t.Fatal(err)
	}
	for _, hdr := range [][]*api.Header{nil, {{Name: "Authorization", Value: "Bearer wrong"}}} {
		_, err := cc.RegisterTask(ctx, &api.RegisterTaskRequest{HostId: "intruder", TaskId: id, Url: url, Headers: hdr})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("RegisterTask of the private task with %v: %v, want PermissionDenied", hdr, err)
		}
	}
	if _, err := cc.Sync(ctx, &api.SyncRequest{HostId: "intruder", TaskId: id, Want: []int32{0, 1}}); status.Code(err) != codes.NotFound {
		t.Fatalf("Sync of the private task without a grant: %v, want NotFound (register with credentials)", err)
	}
	// Nor can it fetch a block from A or the seed without a token the
	// supernode signed for this task.
	_, forger, _ := ed25519.GenerateKey(nil)
	forged := api.SignToken(forger, api.TokenClaims{Task: id, Host: "intruder", Expires: time.Now().Add(time.Hour)})
	for _, addr := range []string{a.upload, sn.upload} {
		for _, tok := range []string{"", forged, strings.Repeat("ab", 32)} {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/blocks/%s/0", addr, id), nil)
			req.Header.Set(api.TokenHeader, tok)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusForbidden {
				t.Fatalf("block from %s with token %.12q: HTTP %d, want 403", addr, tok, resp.StatusCode)
			}
		}
	}

	// B with the credentials: exact, from A and the seed.
	res, err = b.client.Download(ctx, peer.DownloadRequest{URL: url, Headers: map[string]string{"Authorization": secret}, Output: filepath.Join(dir, "b.out")}, nil)
	if err != nil || "sha256:"+res.SHA256 != want {
		t.Fatalf("B with credentials: %+v, %v", res, err)
	}

	// The credential is nowhere: logs, stores, debug state.
	resp, err := http.Get("http://" + sn.upload + "/debug/state")
	if err != nil {
		t.Fatal(err)
	}
	st, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(st), "MARKER-7f3c") {
		t.Fatal("the credential appears in /debug/state")
	}
	sn.stop()
	a.stop()
	b.stop()
	for _, root := range []string{sn.dir, filepath.Dir(a.sock), filepath.Dir(b.sock), filepath.Dir(sn.Log), filepath.Dir(a.Log), filepath.Dir(b.Log)} {
		filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			if data, err := os.ReadFile(path); err == nil && strings.Contains(string(data), "MARKER-7f3c") {
				t.Errorf("the credential appears in %s", path)
			}
			return nil
		})
	}
}
