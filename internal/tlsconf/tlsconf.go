// Package tlsconf holds the TLS material of one dfly process — its
// certificate and key, and the CA certificates every dfly certificate is
// checked against — and hands out the tls.Configs of its servers (gRPC
// control plane, upload servers) and clients (gRPC to the supernode, block
// fetches from peers, the supernode's checks of accused peers).
//
// The files are reloaded when they change, without a restart: every
// handshake checks their stamps (size, mtime, inode) at most once per
// ReloadInterval, so a rotated certificate is served, and a rotated CA
// trusted, from the next handshake on. There is no goroutine: the check
// runs on the handshake that finds the interval passed. A reload that fails
// (a half-written file, a key that does not match the certificate) keeps
// the previous material and logs a warning once; it is retried on the next
// checks until it succeeds.
//
// Verification never uses crypto/tls's fixed RootCAs/ClientCAs: both sides
// verify the peer's chain in VerifyConnection against the CA pool current
// at that handshake.
package tlsconf

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc/credentials"
)

// Options name the files of a process's TLS material.
type Options struct {
	// CertFile and KeyFile are this process's certificate (PEM, the leaf
	// first, then any intermediates) and its private key (PEM). Required
	// to serve; a pure client (a leech) may go without them unless the
	// servers require client certificates.
	CertFile, KeyFile string
	// CAFile holds the CA certificates (PEM) that sign every certificate of
	// the swarm: servers verify clients and clients verify servers against
	// it. Required.
	CAFile string
	// ClientAuth makes servers require a client certificate signed by the
	// CA (mutual TLS).
	ClientAuth bool
	// ReloadInterval is the least time between two checks of the files
	// (default 1s).
	ReloadInterval time.Duration
}

// DefaultReloadInterval is Options.ReloadInterval's default.
const DefaultReloadInterval = time.Second

// HandshakeTimeout bounds a client's TLS handshake (DialTLS).
const HandshakeTimeout = 10 * time.Second

// ErrNoCertificate is returned when a process that must present a
// certificate (a server, or a client asked for one) has none configured.
var ErrNoCertificate = errors.New("no TLS certificate configured (--tls-cert and --tls-key)")

// Reloader is the current TLS material of a process. It is safe for
// concurrent use.
type Reloader struct {
	opts Options
	log  *slog.Logger

	cur       atomic.Pointer[material]
	lastCheck atomic.Int64 // unix nanos of the last check of the files

	mu         sync.Mutex // serialises reloads
	failStamps [3]stamp   // stamps of the last failed reload (warned once)
}

// material is one consistent set of certificate, key and CAs.
type material struct {
	cert   *tls.Certificate // nil: no certificate configured
	pool   *x509.CertPool
	stamps [3]stamp // of CertFile, KeyFile, CAFile
}

// stamp identifies a version of a file.
type stamp struct {
	size, mtime int64
	ino         uint64
}

// Load reads the files named by opts and returns their Reloader. It fails
// with an error naming the file and what to do when a file is missing or
// unusable.
func Load(opts Options, log *slog.Logger) (*Reloader, error) {
	if log == nil {
		log = slog.Default()
	}
	if opts.CAFile == "" {
		return nil, errors.New("TLS needs the CA certificates every dfly certificate is signed with (--tls-ca FILE); make a development CA with \"dfctl certs init\"")
	}
	if (opts.CertFile == "") != (opts.KeyFile == "") {
		return nil, errors.New("TLS certificate and key go together: give both --tls-cert and --tls-key, or neither")
	}
	if opts.ReloadInterval <= 0 {
		opts.ReloadInterval = DefaultReloadInterval
	}
	r := &Reloader{opts: opts, log: log.With("component", "tls")}
	m, err := r.read()
	if err != nil {
		return nil, fmt.Errorf("%w (make development certificates with \"dfctl certs init --dir DIR --hosts HOST,...\")", err)
	}
	r.cur.Store(m)
	r.lastCheck.Store(time.Now().UnixNano())
	if m.cert != nil && m.cert.Leaf != nil && time.Now().After(m.cert.Leaf.NotAfter) {
		r.log.Warn("the TLS certificate has expired; peers will refuse it", "file", opts.CertFile, "not_after", m.cert.Leaf.NotAfter)
	}
	return r, nil
}

// Options returns the options r was loaded with.
func (r *Reloader) Options() Options { return r.opts }

// ClientAuth reports whether servers require client certificates (mTLS).
func (r *Reloader) ClientAuth() bool { return r.opts.ClientAuth }

// HasCertificate reports whether a certificate and key are configured.
func (r *Reloader) HasCertificate() bool { return r.current().cert != nil }

// Leaf returns the certificate currently presented (nil if none).
func (r *Reloader) Leaf() *x509.Certificate {
	if c := r.current().cert; c != nil {
		return c.Leaf
	}
	return nil
}

// Reload checks the files now and reloads them if they changed. On error
// the previous material stays in use.
func (r *Reloader) Reload() error {
	r.lastCheck.Store(time.Now().UnixNano())
	return r.reload()
}

// current returns the material for a handshake, reloading first when the
// files were last checked more than ReloadInterval ago.
func (r *Reloader) current() *material {
	now := time.Now().UnixNano()
	last := r.lastCheck.Load()
	if now-last >= int64(r.opts.ReloadInterval) && r.lastCheck.CompareAndSwap(last, now) {
		_ = r.reload() // logged; the previous material stays
	}
	return r.cur.Load()
}

func (r *Reloader) reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.cur.Load()
	st, err := r.stamps()
	if err == nil && st == old.stamps {
		return nil
	}
	m, err := r.read()
	if err != nil {
		if st != r.failStamps {
			r.failStamps = st
			r.log.Warn("TLS files changed but cannot be loaded; keeping the previous certificate and CAs (fix the files; they are checked again on the next handshakes)", "err", err)
		}
		return err
	}
	r.failStamps = [3]stamp{}
	r.cur.Store(m)
	attrs := []any{"ca", r.opts.CAFile}
	if m.cert != nil {
		attrs = append(attrs, "cert", r.opts.CertFile, "serial", m.cert.Leaf.SerialNumber.Text(16), "not_after", m.cert.Leaf.NotAfter)
	}
	r.log.Info("reloaded the TLS certificate and CAs", attrs...)
	return nil
}

// stamps returns the current stamps of the three files.
func (r *Reloader) stamps() ([3]stamp, error) {
	var st [3]stamp
	for i, f := range []string{r.opts.CertFile, r.opts.KeyFile, r.opts.CAFile} {
		if f == "" {
			continue
		}
		fi, err := os.Stat(f)
		if err != nil {
			return st, err
		}
		st[i] = stamp{size: fi.Size(), mtime: fi.ModTime().UnixNano()}
		if s, ok := fi.Sys().(*syscall.Stat_t); ok {
			st[i].ino = s.Ino
		}
	}
	return st, nil
}

// read loads the files. Their stamps are taken before and after reading:
// a file that changed while it was read is reported as not loadable (the
// next check reads it again).
func (r *Reloader) read() (*material, error) {
	before, err := r.stamps()
	if err != nil {
		return nil, fmt.Errorf("TLS file: %w", err)
	}
	m := &material{stamps: before}
	if r.opts.CertFile != "" {
		certPEM, err := os.ReadFile(r.opts.CertFile)
		if err != nil {
			return nil, fmt.Errorf("read TLS certificate %s: %w", r.opts.CertFile, err)
		}
		keyPEM, err := os.ReadFile(r.opts.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("read TLS key %s: %w", r.opts.KeyFile, err)
		}
		c, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("TLS certificate %s and key %s: %w", r.opts.CertFile, r.opts.KeyFile, err)
		}
		m.cert = &c // Go 1.23+ fills c.Leaf
	}
	caPEM, err := os.ReadFile(r.opts.CAFile)
	if err != nil {
		return nil, fmt.Errorf("read TLS CA certificates %s: %w", r.opts.CAFile, err)
	}
	if m.pool, err = parseCAs(caPEM); err != nil {
		return nil, fmt.Errorf("TLS CA certificates %s: %w", r.opts.CAFile, err)
	}
	after, err := r.stamps()
	if err != nil {
		return nil, fmt.Errorf("TLS file: %w", err)
	}
	if after != before {
		return nil, errors.New("TLS files changed while they were read")
	}
	return m, nil
}

// parseCAs parses every CERTIFICATE block; it fails on a file with none or
// with data that does not parse (a half-written file).
func parseCAs(b []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	n := 0
	for {
		blk, rest := pem.Decode(b)
		if blk == nil {
			if len(bytes.TrimSpace(b)) > 0 {
				return nil, errors.New("data that is not PEM after the certificates (a half-written file?)")
			}
			break
		}
		b = rest
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", n+1, err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, errors.New("no PEM CERTIFICATE in the file")
	}
	return pool, nil
}

// verify checks a peer's chain against the current CA pool.
func (r *Reloader) verify(certs []*x509.Certificate, name string, usage x509.ExtKeyUsage) error {
	if len(certs) == 0 {
		return errors.New("tls: the peer presented no certificate")
	}
	opts := x509.VerifyOptions{Roots: r.current().pool, DNSName: name, Intermediates: x509.NewCertPool(), KeyUsages: []x509.ExtKeyUsage{usage}}
	for _, c := range certs[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := certs[0].Verify(opts); err != nil {
		return fmt.Errorf("tls: verify the peer's certificate against the CAs of %s: %w", r.opts.CAFile, err)
	}
	return nil
}

// ServerConfig returns the configuration of a TLS server: it presents the
// current certificate (GetCertificate) and, with ClientAuth, requires a
// client certificate that the current CAs sign.
func (r *Reloader) ServerConfig() *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			if c := r.current().cert; c != nil {
				return c, nil
			}
			return nil, ErrNoCertificate
		},
	}
	if r.opts.ClientAuth {
		// The chain is verified against the current CAs below, not against
		// a fixed ClientCAs.
		cfg.ClientAuth = tls.RequireAnyClientCert
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			return r.verify(cs.PeerCertificates, "", x509.ExtKeyUsageClientAuth)
		}
	}
	return cfg
}

// ClientConfig returns the configuration of a TLS client of the server
// named serverName (a DNS name or an IP address: the host part of the
// address dialled). It verifies the server's certificate against the
// current CAs and presents the current certificate when asked for one.
func (r *Reloader) ClientConfig(serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: serverName,
		// crypto/tls's own verification would use a fixed RootCAs;
		// VerifyConnection verifies against the CAs current at the handshake.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			name := serverName
			if name == "" {
				name = cs.ServerName
			}
			if name == "" {
				return errors.New("tls: no server name to verify the server's certificate against")
			}
			return r.verify(cs.PeerCertificates, name, x509.ExtKeyUsageServerAuth)
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if c := r.current().cert; c != nil {
				return c, nil
			}
			return &tls.Certificate{}, nil // none: a server requiring one refuses us
		},
	}
}

// NewListener wraps ln so that every accepted connection is a TLS server
// connection with ServerConfig.
func (r *Reloader) NewListener(ln net.Listener) net.Listener {
	return tls.NewListener(ln, r.ServerConfig())
}

// DialTLS returns a dial function for http.Transport.DialTLSContext: it
// connects with d and completes a handshake (bounded by HandshakeTimeout)
// verifying the server against the host part of addr.
func (r *Reloader) DialTLS(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		raw, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		c := tls.Client(raw, r.ClientConfig(HostOf(addr)))
		hctx, cancel := context.WithTimeout(ctx, HandshakeTimeout)
		defer cancel()
		if err := c.HandshakeContext(hctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
		}
		return c, nil
	}
}

// ServerCredentials are gRPC server credentials with ServerConfig.
func (r *Reloader) ServerCredentials() credentials.TransportCredentials {
	return credentials.NewTLS(r.ServerConfig())
}

// ClientCredentials are gRPC client credentials for the server at addr
// (HOST:PORT; the host is the name verified).
func (r *Reloader) ClientCredentials(addr string) credentials.TransportCredentials {
	return credentials.NewTLS(r.ClientConfig(HostOf(addr)))
}

// Scheme returns the URL scheme of dfly's HTTP links: "https" with TLS
// (r non-nil), "http" without.
func (r *Reloader) Scheme() string {
	if r == nil {
		return "http"
	}
	return "https"
}

// HostOf returns the host part of HOST:PORT (addr itself if it has no port).
func HostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
