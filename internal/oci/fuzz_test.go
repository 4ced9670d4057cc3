package oci

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
)

// FuzzDockerConfigKeychain: whatever a config.json on disk holds, reading it
// either fails with an error naming the file or gives a keychain that
// answers for any registry without panicking.
func FuzzDockerConfigKeychain(f *testing.F) {
	f.Add([]byte(`{"auths":{"reg:5000":{"auth":"dXNlcjpwYXNz"}}}`))
	f.Add([]byte(`{"auths":{"https://index.docker.io/v1/":{"username":"u","password":"p"}}}`))
	f.Add([]byte(`{"auths":{"r":{"identitytoken":"t"}}}`))
	f.Add([]byte(`{"auths":{"r":{"auth":"!!"}}}`))
	f.Add([]byte(`{"auths":{"r":{"auth":"bm9jb2xvbg=="}}}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "config.json")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		kc, err := DockerConfigKeychain(p)
		if err != nil {
			if !strings.Contains(err.Error(), p) {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		for _, host := range []string{"reg:5000", "index.docker.io", "r", "other.example"} {
			reg, err := name.NewRegistry(host)
			if err != nil {
				continue
			}
			a, err := kc.Resolve(reg)
			if err != nil || a == nil {
				t.Fatalf("Resolve(%s): %v, %v", host, a, err)
			}
			if _, err := a.Authorization(); err != nil {
				t.Fatalf("Authorization for %s: %v", host, err)
			}
		}
	})
}

// FuzzBlobDigest: only an ALGO:HEX digest reaches the blob URL; anything
// else (a path, a query, a second URL) is refused before any request.
func FuzzBlobDigest(f *testing.F) {
	f.Add("sha256:" + strings.Repeat("a", 64))
	f.Add("sha256:../../manifests/latest")
	f.Add("sha256:aa?x=1")
	f.Add("")
	r := &Resolver{}
	f.Fuzz(func(t *testing.T, dgst string) {
		// 127.0.0.1:1 refuses connections: a digest that passes the check
		// fails at the HEAD, one that does not never gets that far.
		_, err := r.Blob(context.Background(), "127.0.0.1:1/app:v1", dgst)
		if err == nil {
			t.Fatal("Blob succeeded against a closed port")
		}
		hexOf := func(prefix string, n int) bool {
			return len(dgst) == len(prefix)+n && strings.HasPrefix(dgst, prefix) && strings.Trim(dgst[len(prefix):], "0123456789abcdef") == ""
		}
		valid := hexOf("sha256:", 64) || hexOf("sha512:", 128)
		if !valid && !strings.Contains(err.Error(), "layer digest") {
			t.Fatalf("digest %q reached the network: %v", dgst, err)
		}
	})
}
