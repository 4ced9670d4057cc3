package snapshotter_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"

	testimg "github.com/dfly-p2p/dfly/integration/snapshotter"
	"github.com/dfly-p2p/dfly/snapshotter"
)

func TestDockerConfigKeychain(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	b64 := base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	tests := []struct {
		name     string
		path     string
		host     string
		wantUser string
		wantPass string
		wantErr  bool
	}{
		{"auth field", write("a.json", `{"auths":{"reg.example:5000":{"auth":"`+b64+`"}}}`), "reg.example:5000", "alice", "s3cret", false},
		{"username/password with scheme", write("b.json", `{"auths":{"https://reg.example":{"username":"bob","password":"pw"}}}`), "reg.example", "bob", "pw", false},
		{"unknown host is anonymous", write("c.json", `{"auths":{"other":{"auth":"`+b64+`"}}}`), "reg.example", "", "", false},
		{"bad base64", write("d.json", `{"auths":{"x":{"auth":"!!!"}}}`), "", "", "", true},
		{"not json", write("e.json", `nope`), "", "", "", true},
		{"missing file", filepath.Join(dir, "missing.json"), "", "", "", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kc, err := snapshotter.DockerConfigKeychain(tc.path)
			if tc.wantErr {
				if err == nil {
					t.Fatal("want an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			reg, _ := name.NewRegistry(tc.host)
			a, err := kc.Resolve(reg)
			if err != nil {
				t.Fatal(err)
			}
			c, err := a.Authorization()
			if err != nil {
				t.Fatal(err)
			}
			if c.Username != tc.wantUser || c.Password != tc.wantPass {
				t.Fatalf("credentials = %q/%q, want %q/%q", c.Username, c.Password, tc.wantUser, tc.wantPass)
			}
		})
	}
}

// authRegistry fronts reg with basic or bearer-token auth for user:pass.
func authRegistry(t *testing.T, reg *testimg.Registry, mode string) *httptest.Server {
	t.Helper()
	const token = "tok-123"
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, basicOK := r.BasicAuth()
		credsOK := basicOK && user == "user" && pass == "pass"
		if r.URL.Path == "/token" {
			if !credsOK {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			_ = json.NewEncoder(w).Encode(map[string]string{"token": token})
			return
		}
		switch mode {
		case "basic":
			if !credsOK {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
		case "bearer":
			if r.Header.Get("Authorization") != "Bearer "+token {
				w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="test"`, srv.URL))
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
		}
		// Proxy to the real registry.
		req, _ := http.NewRequestWithContext(r.Context(), r.Method, "http://"+reg.Host()+r.URL.RequestURI(), r.Body)
		req.Header = r.Header.Clone()
		req.Header.Del("Authorization")
		resp, err := http.DefaultTransport.RoundTrip(req)
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		defer func() { _ = resp.Body.Close() }()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestResolverAuth(t *testing.T) {
	reg := testimg.StartRegistry()
	defer reg.Close()
	p := filepath.Join(t.TempDir(), "l.tar")
	if err := testimg.WriteLayerTar(p, []testimg.File{{Name: "f", Mode: 0o644, Data: []byte("content")}}); err != nil {
		t.Fatal(err)
	}
	ref := reg.Host() + "/auth/img:1"
	if _, err := testimg.PushImage(ref, p); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t}
	layers := e.layers(ref)
	good := authn.NewMultiKeychain(staticKeychain{user: "user", pass: "pass"})
	bad := authn.NewMultiKeychain(staticKeychain{user: "user", pass: "wrong"})
	tests := []struct {
		mode    string
		kc      authn.Keychain
		wantErr bool
	}{
		{"anonymous", authn.NewMultiKeychain(), false},
		{"basic", good, false},
		{"bearer", good, false},
		{"basic", bad, true},
		{"bearer", bad, true},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s wrongcreds=%v", tc.mode, tc.wantErr), func(t *testing.T) {
			srv := authRegistry(t, reg, tc.mode)
			host := strings.TrimPrefix(srv.URL, "http://")
			r := &snapshotter.Resolver{Keychain: tc.kc}
			loc, err := r.Blob(context.Background(), host+"/auth/img:1", layers[0].Digest.String())
			if tc.wantErr {
				if err == nil {
					t.Fatal("want an error for wrong credentials")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if loc.Size != layers[0].Size {
				t.Fatalf("size %d, want %d", loc.Size, layers[0].Size)
			}
			// The returned URL and header allow a bounded ranged GET (what the engine does).
			req, _ := http.NewRequest(http.MethodGet, loc.URL, nil)
			req.Header = loc.Header.Clone()
			req.Header.Set("Range", "bytes=0-9")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusPartialContent || len(b) != 10 || b[0] != 0x1f || b[1] != 0x8b {
				t.Fatalf("ranged GET with resolved header: %s, %d bytes %x", resp.Status, len(b), b)
			}
		})
	}
}

type staticKeychain struct{ user, pass string }

func (s staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return &authn.Basic{Username: s.user, Password: s.pass}, nil
}
