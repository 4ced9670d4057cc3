package main

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dfly-p2p/dfly/internal/tlsconf"
)

// certsOptions are the inputs of "dfctl certs init".
type certsOptions struct {
	Dir       string
	Hosts     []string // one certificate per entry: a DNS name or an IP address
	IPs       []string // extra IP SANs of every certificate
	Localhost bool     // add localhost, 127.0.0.1 and ::1 to every certificate
	Days      int      // validity of host certificates
	Renew     bool     // issue new host certificates even if valid ones exist
	Force     bool     // make a new CA (and so new host certificates), overwriting
}

const (
	caValidity = 10 * 365 * 24 * time.Hour
	// renewBefore: an existing host certificate expiring sooner is re-issued.
	renewBefore = 7 * 24 * time.Hour
)

// runCertsInit makes (or completes) a development PKI in o.Dir: ca.pem and
// ca-key.pem, and <host>.pem, <host>-key.pem per host, valid for server and
// client authentication. An existing CA is reused; an existing host
// certificate is kept while it is signed by the CA, names the same SANs and
// is not about to expire.
func runCertsInit(o certsOptions, stdout io.Writer) error {
	if err := o.validate(); err != nil {
		return err
	}
	var extra []string
	extra = append(extra, o.IPs...)
	if o.Localhost {
		extra = append(extra, "localhost", "127.0.0.1", "::1")
	}
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", o.Dir, err)
	}
	caCert, caKey, err := ensureCA(o, stdout)
	if err != nil {
		return err
	}
	ca, _, err := tlsconf.ParseCA(caCert, caKey)
	if err != nil {
		return fmt.Errorf("%s: %w; pass --force to make a new CA", filepath.Join(o.Dir, "ca.pem"), err)
	}
	for _, h := range o.Hosts {
		sans := uniq(append([]string{h}, extra...))
		certFile, keyFile := filepath.Join(o.Dir, h+".pem"), filepath.Join(o.Dir, h+"-key.pem")
		if !o.Renew && !o.Force {
			if why := reusable(certFile, keyFile, ca, sans); why == "" {
				fmt.Fprintf(stdout, "kept    %s (valid, signed by the CA, SANs %s)\n", certFile, strings.Join(sans, ","))
				continue
			} else if why != "missing" {
				fmt.Fprintf(stdout, "renew   %s: %s\n", certFile, why)
			}
		}
		c, k, err := tlsconf.IssueCert(caCert, caKey, sans, time.Duration(o.Days)*24*time.Hour)
		if err != nil {
			return err
		}
		// Key first: a reloading process checks that the pair matches.
		if err := writeAtomic(keyFile, k, 0o600); err != nil {
			return err
		}
		if err := writeAtomic(certFile, c, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "created %s, %s (SANs %s, %d days)\n", certFile, keyFile, strings.Join(sans, ","), o.Days)
	}
	fmt.Fprintf(stdout, "use: --tls-ca %s --tls-cert %s --tls-key %s [--tls-client-auth]\n",
		filepath.Join(o.Dir, "ca.pem"), filepath.Join(o.Dir, "HOST.pem"), filepath.Join(o.Dir, "HOST-key.pem"))
	return nil
}

// validate checks the flags (a usage error: exit 2).
func (o certsOptions) validate() error {
	if o.Dir == "" {
		return errors.New("no directory: pass --dir DIR")
	}
	if len(o.Hosts) == 0 {
		return errors.New("no host: pass --hosts NAME|IP,... (one certificate per host)")
	}
	if o.Days <= 0 {
		return fmt.Errorf("--days %d: want a positive number of days", o.Days)
	}
	for _, ip := range o.IPs {
		if net.ParseIP(ip) == nil {
			return fmt.Errorf("--ip %q: not an IP address", ip)
		}
	}
	for _, h := range o.Hosts {
		if h == "" || strings.ContainsAny(h, "/ \\") || h == "ca" || strings.HasPrefix(h, ".") {
			return fmt.Errorf("--hosts %q: want a host name or an IP address", h)
		}
	}
	return nil
}

// ensureCA returns the CA of o.Dir, making it when there is none (or with --force).
func ensureCA(o certsOptions, stdout io.Writer) (certPEM, keyPEM []byte, err error) {
	certFile, keyFile := filepath.Join(o.Dir, "ca.pem"), filepath.Join(o.Dir, "ca-key.pem")
	if !o.Force {
		c, cerr := os.ReadFile(certFile)
		k, kerr := os.ReadFile(keyFile)
		switch {
		case cerr == nil && kerr == nil:
			fmt.Fprintf(stdout, "kept    %s (existing CA; --force makes a new one)\n", certFile)
			return c, k, nil
		case errors.Is(cerr, os.ErrNotExist) && errors.Is(kerr, os.ErrNotExist):
		case cerr == nil || kerr == nil:
			return nil, nil, fmt.Errorf("%s and %s: only one of them exists; restore the other or pass --force to make a new CA (every certificate must then be re-issued)", certFile, keyFile)
		default:
			return nil, nil, fmt.Errorf("read the CA: %w", errors.Join(cerr, kerr))
		}
	}
	c, k, err := tlsconf.NewCA("dfly development CA", caValidity)
	if err != nil {
		return nil, nil, err
	}
	if err := writeAtomic(keyFile, k, 0o600); err != nil {
		return nil, nil, err
	}
	if err := writeAtomic(certFile, c, 0o644); err != nil {
		return nil, nil, err
	}
	fmt.Fprintf(stdout, "created %s, %s (development CA, %d years)\n", certFile, keyFile, int(caValidity.Hours()/24/365))
	return c, k, nil
}

// reusable returns "" when certFile and keyFile hold a certificate the CA
// signed for exactly sans that stays valid for a while, else why not
// ("missing" when either file is absent).
func reusable(certFile, keyFile string, ca *x509.Certificate, sans []string) string {
	c, err := os.ReadFile(certFile)
	if err != nil {
		return "missing"
	}
	if _, err := os.Stat(keyFile); err != nil {
		return "missing"
	}
	b, _ := pem.Decode(c)
	if b == nil {
		return "not a PEM certificate"
	}
	leaf, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return "does not parse"
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, u := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{u}}); err != nil {
			return "not valid for the CA: " + err.Error()
		}
	}
	var have []string
	have = append(have, leaf.DNSNames...)
	for _, ip := range leaf.IPAddresses {
		have = append(have, ip.String())
	}
	want := make([]string, 0, len(sans))
	for _, s := range sans {
		if ip := net.ParseIP(s); ip != nil {
			s = ip.String()
		}
		want = append(want, s)
	}
	slices.Sort(have)
	slices.Sort(want)
	if !slices.Equal(have, want) {
		return fmt.Sprintf("SANs %s, want %s", strings.Join(have, ","), strings.Join(want, ","))
	}
	if time.Until(leaf.NotAfter) < renewBefore {
		return "expires " + leaf.NotAfter.Format(time.DateOnly)
	}
	return ""
}

// writeAtomic writes b to path through a temporary file and a rename, so a
// process reloading path never reads half of it.
func writeAtomic(path string, b []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(tmp, mode); err != nil { // WriteFile keeps an existing file's mode
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("install %s: %w", path, err)
	}
	return nil
}

func uniq(xs []string) []string {
	var out []string
	for _, x := range xs {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}
