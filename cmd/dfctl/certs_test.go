package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dfly-p2p/dfly/internal/tlsconf"
)

func certsInit(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), append([]string{"certs", "init"}, args...), &out, &errb)
	return code, out.String() + errb.String()
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func parseCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(readFile(t, path))
	if b == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCertsUsageErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		args []string
		code int
	}{
		{[]string{"certs"}, 2},
		{[]string{"certs", "frobnicate"}, 2},
		{[]string{"certs", "init"}, 2},                                            // no --dir
		{[]string{"certs", "init", "--dir", dir}, 2},                              // no --hosts
		{[]string{"certs", "init", "--dir", dir, "--hosts", "a/b"}, 2},            // not a host name
		{[]string{"certs", "init", "--dir", dir, "--hosts", "a", "--ip", "x"}, 2}, // not an IP
		{[]string{"certs", "init", "--dir", dir, "--hosts", "a", "--days", "0"}, 2},
		{[]string{"certs", "init", "--dir", dir, "--hosts", "a", "--no-such-flag"}, 2},
	}
	for _, tc := range tests {
		var out, errb bytes.Buffer
		if got := run(context.Background(), tc.args, &out, &errb); got != tc.code {
			t.Errorf("dfctl %v = %d, want %d (stderr %q)", tc.args, got, tc.code, errb.String())
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("usage errors wrote files: %v", ents)
	}
}

func TestCertsInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if code, out := certsInit(t, "--dir", dir, "--hosts", "127.0.0.1,node1", "--ip", "10.0.0.9", "--localhost"); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	ca := parseCert(t, filepath.Join(dir, "ca.pem"))
	if !ca.IsCA {
		t.Fatal("ca.pem is not a CA")
	}
	for _, f := range []string{"ca-key.pem", "127.0.0.1-key.pem", "node1-key.pem"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, mode %v; want 0600", f, err, fi.Mode())
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, tc := range []struct {
		host string
		sans []string
	}{
		{"127.0.0.1", []string{"127.0.0.1", "10.0.0.9", "localhost", "::1"}},
		{"node1", []string{"node1", "10.0.0.9", "localhost", "127.0.0.1", "::1"}},
	} {
		leaf := parseCert(t, filepath.Join(dir, tc.host+".pem"))
		for _, name := range tc.sans {
			for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
				if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: name, KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
					t.Errorf("%s for %s (usage %v): %v", tc.host, name, u, err)
				}
			}
		}
		if n := len(leaf.DNSNames) + len(leaf.IPAddresses); n != len(tc.sans) {
			t.Errorf("%s: %d SANs, want %v", tc.host, n, tc.sans)
		}
	}
	// The files are what the --tls-* flags load.
	if _, err := tlsconf.Load(tlsconf.Options{CertFile: filepath.Join(dir, "node1.pem"), KeyFile: filepath.Join(dir, "node1-key.pem"),
		CAFile: filepath.Join(dir, "ca.pem"), ClientAuth: true}, nil); err != nil {
		t.Fatal(err)
	}

	snapshot := func() map[string][]byte {
		m := map[string][]byte{}
		for _, f := range []string{"ca.pem", "ca-key.pem", "127.0.0.1.pem", "127.0.0.1-key.pem", "node1.pem", "node1-key.pem"} {
			m[f] = readFile(t, filepath.Join(dir, f))
		}
		return m
	}
	before := snapshot()
	// Idempotent: the same command changes nothing.
	if code, out := certsInit(t, "--dir", dir, "--hosts", "127.0.0.1,node1", "--ip", "10.0.0.9", "--localhost"); code != 0 || strings.Contains(out, "created") {
		t.Fatalf("second run: exit %d: %s", code, out)
	}
	if again := snapshot(); !mapsEqual(before, again) {
		t.Fatal("a second identical run changed files")
	}
	// Other SANs: that host's certificate is re-issued, the CA kept.
	if code, out := certsInit(t, "--dir", dir, "--hosts", "node1"); code != 0 || !strings.Contains(out, "renew") {
		t.Fatalf("changed SANs: exit %d: %s", code, out)
	}
	after := snapshot()
	if !bytes.Equal(after["ca.pem"], before["ca.pem"]) || bytes.Equal(after["node1.pem"], before["node1.pem"]) || !bytes.Equal(after["127.0.0.1.pem"], before["127.0.0.1.pem"]) {
		t.Fatal("changed SANs: want only node1's certificate re-issued")
	}
	// --renew: new host certificates from the same CA.
	if code, out := certsInit(t, "--dir", dir, "--hosts", "127.0.0.1", "--renew"); code != 0 {
		t.Fatalf("--renew: exit %d: %s", code, out)
	}
	renewed := snapshot()
	if !bytes.Equal(renewed["ca.pem"], before["ca.pem"]) || bytes.Equal(renewed["127.0.0.1.pem"], before["127.0.0.1.pem"]) {
		t.Fatal("--renew: want a new host certificate and the same CA")
	}
	if parseCert(t, filepath.Join(dir, "127.0.0.1.pem")).CheckSignatureFrom(ca) != nil {
		t.Fatal("--renew: the new certificate is not signed by the CA")
	}
	// --force: a new CA.
	if code, out := certsInit(t, "--dir", dir, "--hosts", "127.0.0.1", "--force"); code != 0 {
		t.Fatalf("--force: exit %d: %s", code, out)
	}
	if bytes.Equal(readFile(t, filepath.Join(dir, "ca.pem")), before["ca.pem"]) {
		t.Fatal("--force kept the CA")
	}
	// A certificate signed by the old CA is re-issued without --renew.
	if code, out := certsInit(t, "--dir", dir, "--hosts", "node1"); code != 0 || !strings.Contains(out, "not valid for the CA") {
		t.Fatalf("old-CA certificate: exit %d: %s", code, out)
	}
}

func mapsEqual(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !bytes.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

func TestCertsInitHalfCA(t *testing.T) {
	dir := t.TempDir()
	if code, out := certsInit(t, "--dir", dir, "--hosts", "h"); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	if err := os.Remove(filepath.Join(dir, "ca-key.pem")); err != nil {
		t.Fatal(err)
	}
	ca := readFile(t, filepath.Join(dir, "ca.pem"))
	code, out := certsInit(t, "--dir", dir, "--hosts", "h2")
	if code != 1 || !strings.Contains(out, "--force") {
		t.Fatalf("a CA without its key: exit %d: %s", code, out)
	}
	if !bytes.Equal(ca, readFile(t, filepath.Join(dir, "ca.pem"))) {
		t.Fatal("the CA certificate was overwritten without --force")
	}
	if ents, _ := os.ReadDir(dir); slices.ContainsFunc(ents, func(e os.DirEntry) bool { return strings.HasPrefix(e.Name(), "h2") }) {
		t.Fatal("a host certificate was made without a usable CA")
	}
}
