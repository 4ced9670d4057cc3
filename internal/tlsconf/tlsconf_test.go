package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// pki is a test CA with a directory to write certificates to.
type pki struct {
	t              *testing.T
	dir            string
	caCert, caKey  []byte
	caFile, prefix string
}

func newPKI(t *testing.T, dir, name string) *pki {
	t.Helper()
	c, k, err := NewCA(name, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{t: t, dir: dir, caCert: c, caKey: k, caFile: filepath.Join(dir, name+"-ca.pem"), prefix: name}
	write(t, p.caFile, c)
	return p
}

func write(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// issue writes a certificate for hosts to DIR/<prefix>-<name>.pem and -key.pem.
func (p *pki) issue(name string, hosts ...string) (certFile, keyFile string) {
	p.t.Helper()
	c, k, err := IssueCert(p.caCert, p.caKey, hosts, time.Hour)
	if err != nil {
		p.t.Fatal(err)
	}
	certFile = filepath.Join(p.dir, p.prefix+"-"+name+".pem")
	keyFile = filepath.Join(p.dir, p.prefix+"-"+name+"-key.pem")
	write(p.t, certFile, c)
	write(p.t, keyFile, k)
	return certFile, keyFile
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func mustLoad(t *testing.T, o Options) *Reloader {
	t.Helper()
	r, err := Load(o, quiet())
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// serve runs a TLS echo-less server: it completes handshakes and reports
// the client certificate's common name in the first byte written back.
func serve(t *testing.T, r *Reloader) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tl := r.NewListener(ln)
	t.Cleanup(func() { tl.Close() })
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if err := c.(*tls.Conn).Handshake(); err != nil {
					return
				}
				_, _ = c.Write([]byte("ok"))
			}()
		}
	}()
	return ln.Addr().String()
}

// handshake dials addr as a client and returns the server's leaf; the
// read makes sure the server accepted the client too (TLS 1.3 sends the
// server's verdict on the client certificate after the client's
// handshake is done).
func handshake(r *Reloader, addr, name string) (*x509.Certificate, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, r.ClientConfig(name))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil {
		return nil, err
	}
	return c.ConnectionState().PeerCertificates[0], nil
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	p := newPKI(t, dir, "a")
	cert, key := p.issue("h", "127.0.0.1")
	_, otherKey := p.issue("o", "127.0.0.1")
	garbage := filepath.Join(dir, "garbage.pem")
	write(t, garbage, []byte("not pem at all"))
	half := filepath.Join(dir, "half.pem")
	write(t, half, p.caCert[:len(p.caCert)/2])
	tests := []struct {
		name string
		o    Options
		want string // substring of the error; "" = loads
	}{
		{"ok", Options{CertFile: cert, KeyFile: key, CAFile: p.caFile}, ""},
		{"client without cert", Options{CAFile: p.caFile}, ""},
		{"no CA", Options{CertFile: cert, KeyFile: key}, "--tls-ca"},
		{"cert without key", Options{CertFile: cert, CAFile: p.caFile}, "both --tls-cert and --tls-key"},
		{"missing cert file", Options{CertFile: filepath.Join(dir, "nope.pem"), KeyFile: key, CAFile: p.caFile}, "nope.pem"},
		{"missing CA file", Options{CAFile: filepath.Join(dir, "noca.pem")}, "noca.pem"},
		{"key of another cert", Options{CertFile: cert, KeyFile: otherKey, CAFile: p.caFile}, "does not match"},
		{"CA not PEM", Options{CAFile: garbage}, "garbage.pem"},
		{"CA half written", Options{CAFile: half}, "half.pem"},
		{"cert not PEM", Options{CertFile: garbage, KeyFile: key, CAFile: p.caFile}, "garbage.pem"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Load(tc.o, quiet())
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				if r.HasCertificate() != (tc.o.CertFile != "") {
					t.Fatalf("HasCertificate = %v", r.HasCertificate())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load error %v, want one mentioning %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), "dfctl certs init") && !strings.Contains(err.Error(), "--tls-") {
				t.Errorf("error %q does not say how to make certificates", err)
			}
		})
	}
}

func TestHandshakes(t *testing.T) {
	dir := t.TempDir()
	a, b := newPKI(t, dir, "a"), newPKI(t, dir, "b")
	srvCert, srvKey := a.issue("srv", "127.0.0.1", "localhost")
	cliCert, cliKey := a.issue("cli", "client.example")
	otherCert, otherKey := b.issue("cli", "client.example")
	tlsSrv := serve(t, mustLoad(t, Options{CertFile: srvCert, KeyFile: srvKey, CAFile: a.caFile}))
	mtlsSrv := serve(t, mustLoad(t, Options{CertFile: srvCert, KeyFile: srvKey, CAFile: a.caFile, ClientAuth: true}))
	withCert := mustLoad(t, Options{CertFile: cliCert, KeyFile: cliKey, CAFile: a.caFile})
	noCert := mustLoad(t, Options{CAFile: a.caFile})
	otherCA := mustLoad(t, Options{CertFile: otherCert, KeyFile: otherKey, CAFile: b.caFile})
	// Trusts CA a, presents a certificate of CA b.
	foreignCert := mustLoad(t, Options{CertFile: otherCert, KeyFile: otherKey, CAFile: a.caFile})
	tests := []struct {
		name   string
		client *Reloader
		addr   string
		server string // name verified
		ok     bool
	}{
		{"tls, IP SAN", noCert, tlsSrv, "127.0.0.1", true},
		{"tls, DNS SAN", noCert, tlsSrv, "localhost", true},
		{"tls, wrong name", noCert, tlsSrv, "10.1.2.3", false},
		{"tls, server of another CA", otherCA, tlsSrv, "127.0.0.1", false},
		{"mtls, client cert of the CA", withCert, mtlsSrv, "127.0.0.1", true},
		{"mtls, client without cert", noCert, mtlsSrv, "127.0.0.1", false},
		{"mtls, client cert of another CA", foreignCert, mtlsSrv, "127.0.0.1", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := handshake(tc.client, tc.addr, tc.server)
			t.Logf("handshake: %v", err)
			if (err == nil) != tc.ok {
				t.Fatalf("handshake error %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestReloadRotatedCertificate(t *testing.T) {
	dir := t.TempDir()
	a := newPKI(t, dir, "a")
	cert, key := a.issue("srv", "127.0.0.1")
	srv := mustLoad(t, Options{CertFile: cert, KeyFile: key, CAFile: a.caFile, ReloadInterval: time.Nanosecond})
	addr := serve(t, srv)
	client := mustLoad(t, Options{CAFile: a.caFile})
	first, err := handshake(client, addr, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	// Rotate: a new certificate and key from the same CA, in place.
	c2, k2, err := IssueCert(a.caCert, a.caKey, []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	write(t, cert, c2)
	write(t, key, k2)
	second, err := handshake(client, addr, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if second.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Fatal("the next handshake still presented the old certificate")
	}
	if want := parseLeaf(t, c2).SerialNumber; second.SerialNumber.Cmp(want) != 0 || srv.Leaf().SerialNumber.Cmp(want) != 0 {
		t.Fatalf("served serial %x, want %x", second.SerialNumber, want)
	}
}

func parseLeaf(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(certPEM)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestBadReloadKeepsPreviousMaterial(t *testing.T) {
	dir := t.TempDir()
	a := newPKI(t, dir, "a")
	cert, key := a.issue("srv", "127.0.0.1")
	srv := mustLoad(t, Options{CertFile: cert, KeyFile: key, CAFile: a.caFile, ReloadInterval: time.Hour})
	orig := srv.Leaf().SerialNumber
	addr := serve(t, srv)
	client := mustLoad(t, Options{CAFile: a.caFile})
	c2, k2, err := IssueCert(a.caCert, a.caKey, []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		name      string
		cert, key []byte
	}{
		{"half-written certificate", c2[:len(c2)/2], nil},
		{"new certificate, old key", c2, nil},
		{"empty key", c2, []byte{}},
	} {
		write(t, cert, step.cert)
		if step.key != nil {
			write(t, key, step.key)
		}
		if err := srv.Reload(); err == nil {
			t.Fatalf("%s: Reload succeeded", step.name)
		}
		got, err := handshake(client, addr, "127.0.0.1")
		if err != nil {
			t.Fatalf("%s: handshake after a bad reload: %v", step.name, err)
		}
		if got.SerialNumber.Cmp(orig) != 0 {
			t.Fatalf("%s: the served certificate changed", step.name)
		}
	}
	write(t, key, k2) // the rotation completes
	if err := srv.Reload(); err != nil {
		t.Fatal(err)
	}
	got, err := handshake(client, addr, "127.0.0.1")
	if err != nil || got.SerialNumber.Cmp(parseLeaf(t, c2).SerialNumber) != 0 {
		t.Fatalf("after the fix: %v, serial %v", err, got)
	}
}

func TestReloadedCATakesEffect(t *testing.T) {
	dir := t.TempDir()
	a, b := newPKI(t, dir, "a"), newPKI(t, dir, "b")
	// The server moves to CA b; a client trusting only a refuses it until
	// its CA file lists b too.
	cert, key := b.issue("srv", "127.0.0.1")
	addr := serve(t, mustLoad(t, Options{CertFile: cert, KeyFile: key, CAFile: b.caFile}))
	caFile := filepath.Join(dir, "trust.pem")
	write(t, caFile, a.caCert)
	client := mustLoad(t, Options{CAFile: caFile, ReloadInterval: time.Nanosecond})
	if _, err := handshake(client, addr, "127.0.0.1"); err == nil {
		t.Fatal("a client trusting CA a accepted a server of CA b")
	}
	write(t, caFile, append(append([]byte{}, a.caCert...), b.caCert...))
	if _, err := handshake(client, addr, "127.0.0.1"); err != nil {
		t.Fatalf("after adding CA b: %v", err)
	}
}

func TestLazyReloadInterval(t *testing.T) {
	dir := t.TempDir()
	a := newPKI(t, dir, "a")
	cert, key := a.issue("srv", "127.0.0.1")
	r := mustLoad(t, Options{CertFile: cert, KeyFile: key, CAFile: a.caFile, ReloadInterval: time.Hour})
	orig := r.Leaf().SerialNumber
	c2, k2, _ := IssueCert(a.caCert, a.caKey, []string{"127.0.0.1"}, time.Hour)
	write(t, cert, c2)
	write(t, key, k2)
	if r.Leaf().SerialNumber.Cmp(orig) != 0 {
		t.Fatal("reloaded before the interval passed")
	}
	r.lastCheck.Store(time.Now().Add(-2 * time.Hour).UnixNano())
	if r.Leaf().SerialNumber.Cmp(orig) == 0 {
		t.Fatal("not reloaded once the interval passed")
	}
}

func TestHTTPAndGRPC(t *testing.T) {
	dir := t.TempDir()
	a := newPKI(t, dir, "a")
	sc, sk := a.issue("srv", "127.0.0.1")
	cc, ck := a.issue("cli", "cli")
	srv := mustLoad(t, Options{CertFile: sc, KeyFile: sk, CAFile: a.caFile, ClientAuth: true})
	cli := mustLoad(t, Options{CertFile: cc, KeyFile: ck, CAFile: a.caFile})
	anon := mustLoad(t, Options{CAFile: a.caFile})

	// HTTP: NewListener on the server, DialTLS on the client.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.TLS.PeerCertificates[0].Subject.CommonName)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = hs.Serve(srv.NewListener(ln)) }()
	t.Cleanup(func() { hs.Close() })
	get := func(r *Reloader) (string, error) {
		tr := &http.Transport{DialTLSContext: r.DialTLS(&net.Dialer{Timeout: 5 * time.Second})}
		defer tr.CloseIdleConnections()
		resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(r.Scheme() + "://" + ln.Addr().String() + "/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	if got, err := get(cli); err != nil || got != "cli" {
		t.Fatalf("https GET with a client certificate: %q, %v", got, err)
	}
	if _, err := get(anon); err == nil {
		t.Fatal("https GET without a client certificate succeeded")
	}
	resp, err := http.Get("http://" + ln.Addr().String() + "/")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("plain HTTP to the TLS server succeeded")
		}
	}

	// gRPC: ServerCredentials / ClientCredentials (ALPN h2 included).
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(srv.ServerCredentials()))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go func() { _ = gs.Serve(gl) }()
	t.Cleanup(gs.Stop)
	check := func(r *Reloader) error {
		conn, err := grpc.NewClient(gl.Addr().String(), grpc.WithTransportCredentials(r.ClientCredentials(gl.Addr().String())))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	if err := check(cli); err != nil {
		t.Fatalf("gRPC over mTLS: %v", err)
	}
	if err := check(anon); err == nil {
		t.Fatal("gRPC without a client certificate succeeded")
	}
}

func TestIssueCert(t *testing.T) {
	ca, caKey, err := NewCA("dfly dev CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := IssueCert(ca, caKey, []string{"node1", "10.0.0.1", "::1"}, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := parseLeaf(t, c)
	if leaf.Subject.CommonName != "node1" || len(leaf.DNSNames) != 1 || len(leaf.IPAddresses) != 2 {
		t.Fatalf("SANs %v %v cn %q", leaf.DNSNames, leaf.IPAddresses, leaf.Subject.CommonName)
	}
	caLeaf := parseLeaf(t, ca)
	if leaf.NotAfter.After(caLeaf.NotAfter) {
		t.Fatal("the host certificate outlives its CA")
	}
	pool := x509.NewCertPool()
	pool.AddCert(caLeaf)
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "10.0.0.1", KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
			t.Fatalf("usage %v: %v", u, err)
		}
	}
	if _, _, err := IssueCert(ca, caKey, nil, time.Hour); err == nil {
		t.Fatal("a certificate without hosts was issued")
	}
	_, otherKey, _ := NewCA("other", time.Hour)
	if _, _, err := ParseCA(ca, otherKey); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("ParseCA with the wrong key: %v", err)
	}
	if _, _, err := ParseCA(c, caKey); err == nil {
		t.Fatal("a host certificate was accepted as a CA")
	}
}

func TestScheme(t *testing.T) {
	var none *Reloader
	if none.Scheme() != "http" || (&Reloader{}).Scheme() != "https" {
		t.Fatal("Scheme")
	}
	if HostOf("10.0.0.1:8002") != "10.0.0.1" || HostOf("[::1]:1") != "::1" || HostOf("host") != "host" {
		t.Fatal("HostOf")
	}
}

func TestServerWithoutCertificate(t *testing.T) {
	a := newPKI(t, t.TempDir(), "a")
	srv := mustLoad(t, Options{CAFile: a.caFile})
	if srv.HasCertificate() || srv.Leaf() != nil {
		t.Fatal("a certificate appeared")
	}
	cfg := srv.ServerConfig()
	if _, err := cfg.GetCertificate(&tls.ClientHelloInfo{}); !errors.Is(err, ErrNoCertificate) {
		t.Fatalf("GetCertificate: %v", err)
	}
}
