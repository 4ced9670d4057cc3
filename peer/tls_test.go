package peer

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/internal/tlsconf"
	"github.com/dfly-p2p/dfly/internal/tlsconf/tlstest"
	"github.com/dfly-p2p/dfly/supernode"
)

// TestTLSSwarm: daemons with SwarmTLS (mTLS) against a TLS supernode: the
// second download comes from the first daemon's upload server over HTTPS
// (its bytes from peers), and that server refuses plain HTTP.
func TestTLSSwarm(t *testing.T) {
	pki := tlstest.New(t, t.TempDir())
	sn, err := supernode.Start(supernode.Config{StoreDir: t.TempDir(), GRPCListen: "127.0.0.1:0", UploadListen: "127.0.0.1:0",
		Logger: quietLogger(), TLS: pki.Reloader("supernode", true)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	o, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	const size = 6<<20 + 77
	content := origin.Content{Size: size, Seed: 3}
	url := o.Add("f.bin", content)

	start := func(name string) *Daemon {
		dir := t.TempDir()
		d, err := StartDaemon(context.Background(), DaemonConfig{Supernode: sn.GRPCAddr(), Listen: "127.0.0.1:0", Sock: filepath.Join(dir, "d.sock"),
			StoreDir: filepath.Join(dir, "store"), HostID: name, Logger: quietLogger(), SwarmTLS: pki.Reloader(name, true)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	a, b := start("A"), start("B")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	want := strings.TrimPrefix(content.Digest("sha256"), "sha256:")
	ra, err := a.Download(ctx, DownloadRequest{URL: url, Output: filepath.Join(t.TempDir(), "a")}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ra.SHA256 != want || ra.BytesSeed != size {
		t.Fatalf("A: %+v, want sha256 %s and every byte from the seed over TLS", ra, want)
	}
	rb, err := b.Download(ctx, DownloadRequest{URL: url, Output: filepath.Join(t.TempDir(), "b")}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rb.SHA256 != want || rb.BytesPeers == 0 || rb.BytesOrigin != 0 {
		t.Fatalf("B: %+v, want sha256 %s, bytes from A over TLS and none from the origin", rb, want)
	}
	if resp, err := http.Get("http://" + a.UploadAddr() + "/blocks/x/0"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest { // Go's TLS server answers plain HTTP with 400
			t.Fatalf("plain HTTP to a TLS upload server: HTTP %d", resp.StatusCode)
		}
	}
}

func TestTLSDaemonNeedsCertificate(t *testing.T) {
	pki := tlstest.New(t, t.TempDir())
	anon, err := tlsconf.Load(tlsconf.Options{CAFile: pki.CAFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	_, err = StartDaemon(context.Background(), DaemonConfig{Supernode: "127.0.0.1:1", Listen: "127.0.0.1:0", Sock: filepath.Join(dir, "d.sock"),
		StoreDir: filepath.Join(dir, "store"), Logger: quietLogger(), SwarmTLS: anon})
	if err == nil || !strings.Contains(err.Error(), "--tls-cert") {
		t.Fatalf("StartDaemon with TLS but no certificate: %v", err)
	}
}
