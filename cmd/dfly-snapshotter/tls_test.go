package main

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"

	"github.com/dfly-p2p/dfly/internal/tlsconf/tlstest"
)

func TestTLSFlagErrors(t *testing.T) {
	pki := tlstest.New(t, t.TempDir())
	cert, key := pki.Issue("h", "127.0.0.1")
	root := t.TempDir()
	for _, args := range [][]string{
		{"--supernode", "127.0.0.1:1", "--tls-ca", pki.CAFile}, // the upload server needs a certificate
		{"--supernode", "127.0.0.1:1", "--tls-cert", cert, "--tls-key", key},
		{"--supernode", "127.0.0.1:1", "--tls-cert", cert, "--tls-key", key, "--tls-ca", filepath.Join(root, "missing.pem")},
	} {
		var out, errb bytes.Buffer
		args = append(args, "--root", root)
		if code := run(context.Background(), args, &out, &errb); code != 2 {
			t.Errorf("dfly-snapshotter %q: exit %d, want 2 (stderr %q)", args, code, errb.String())
		}
	}
}
