package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/internal/tlsconf/tlstest"
	"github.com/dfly-p2p/dfly/supernode"
)

func TestTLSFlagErrors(t *testing.T) {
	pki := tlstest.New(t, t.TempDir())
	out := filepath.Join(t.TempDir(), "out")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--tls-ca", pki.CAFile, "http://h/f", "-O", out}, "need --supernode"},
		{[]string{"--supernode", "127.0.0.1:1", "--tls-ca", pki.CAFile + ".missing", "http://h/f", "-O", out}, ".missing"},
		{[]string{"--supernode", "127.0.0.1:1", "--tls-client-auth", "http://h/f", "-O", out}, "unknown flag"},
	} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), tc.args, &stdout, &stderr); code != exitUsage || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("dfget %q: exit %d, stderr %q; want %d mentioning %q", tc.args, code, stderr.String(), exitUsage, tc.want)
		}
	}
}

// TestTLSEmbeddedPeer: dfget --supernode with --tls-* downloads from the
// seed of an mTLS supernode (nothing from the origin).
func TestTLSEmbeddedPeer(t *testing.T) {
	pki := tlstest.New(t, t.TempDir())
	sn, err := supernode.Start(supernode.Config{StoreDir: t.TempDir(), GRPCListen: "127.0.0.1:0", UploadListen: "127.0.0.1:0",
		Logger: quietLogger(), TLS: pki.Reloader("supernode", true)})
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	o, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	const size = 3<<20 + 5
	c := origin.Content{Size: size, Seed: 11}
	url := o.Add("f.bin", c)
	cert, key := pki.Issue("dfget", "127.0.0.1")
	dir := t.TempDir()
	out, rep := filepath.Join(dir, "out"), filepath.Join(dir, "rep.json")
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"--supernode", sn.GRPCAddr(), "--store", filepath.Join(dir, "store"), "-q", "-O", out, "--report-json", rep,
		"--tls-cert", cert, "--tls-key", key, "--tls-ca", pki.CAFile, url}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	b, err := os.ReadFile(rep)
	if err != nil {
		t.Fatal(err)
	}
	var r report
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	if "sha256:"+r.SHA256 != c.Digest("sha256") || r.BytesSeed != size || r.BytesOrigin != 0 {
		t.Fatalf("report %+v: want every byte from the seed over TLS, sha256 %s", r, c.Digest("sha256"))
	}
}
