// Package tlstest makes throw-away PKIs for tests of dfly's TLS links: a
// development CA (tlsconf.NewCA) in a directory, host certificates from
// it, and Reloaders over those files.
package tlstest

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/internal/tlsconf"
)

// PKI is a CA whose files live in Dir (ca.pem; NAME.pem and NAME-key.pem
// for every issued certificate).
type PKI struct {
	t             testing.TB
	Dir           string
	CAFile        string
	caCert, caKey []byte
}

// New makes a CA in dir.
func New(t testing.TB, dir string) *PKI {
	t.Helper()
	c, k, err := tlsconf.NewCA("dfly test CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := &PKI{t: t, Dir: dir, CAFile: filepath.Join(dir, "ca.pem"), caCert: c, caKey: k}
	p.write(p.CAFile, c)
	return p
}

func (p *PKI) write(path string, b []byte) {
	p.t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		p.t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		p.t.Fatal(err)
	}
}

// Issue writes (or replaces) the certificate NAME.pem and key NAME-key.pem
// for hosts (DNS names or IPs), valid for server and client auth.
func (p *PKI) Issue(name string, hosts ...string) (certFile, keyFile string) {
	p.t.Helper()
	c, k, err := tlsconf.IssueCert(p.caCert, p.caKey, hosts, time.Hour)
	if err != nil {
		p.t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(p.Dir, name+".pem"), filepath.Join(p.Dir, name+"-key.pem")
	p.write(keyFile, k)
	p.write(certFile, c)
	return certFile, keyFile
}

// Reloader issues a certificate NAME for 127.0.0.1 and returns its
// Reloader (mTLS servers with clientAuth), checking the files on every
// handshake.
func (p *PKI) Reloader(name string, clientAuth bool) *tlsconf.Reloader {
	p.t.Helper()
	cert, key := p.Issue(name, "127.0.0.1", "localhost")
	r, err := tlsconf.Load(tlsconf.Options{CertFile: cert, KeyFile: key, CAFile: p.CAFile, ClientAuth: clientAuth, ReloadInterval: time.Nanosecond}, nil)
	if err != nil {
		p.t.Fatal(err)
	}
	return r
}
