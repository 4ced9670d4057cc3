package swarm

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/internal/tlsconf"
)

// dfctlCertsInit runs the real "dfctl certs init" (built on first use).
func dfctlCertsInit(t *testing.T, args ...string) {
	t.Helper()
	bin := filepath.Join(binDir, "dfctl")
	if _, err := os.Stat(bin); err != nil {
		root, err := moduleRoot()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("go", "build", "-o", bin, "./cmd/dfctl")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build dfctl: %v\n%s", err, out)
		}
	}
	if out, err := exec.Command(bin, append([]string{"certs", "init"}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("dfctl certs init %v: %v\n%s", args, err, out)
	}
}

// fileSerial is the serial number of the certificate in a PEM file.
func fileSerial(t *testing.T, path string) *big.Int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber
}

// servedSerial opens a new TLS connection to addr and returns the serial
// of the certificate the server presents.
func servedSerial(r *tlsconf.Reloader, addr string, alpn ...string) (*big.Int, error) {
	cfg := r.ClientConfig(tlsconf.HostOf(addr))
	cfg.NextProtos = alpn
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber, nil
}

// getBlock GETs a block URL with r's certificate and returns the status.
func getBlock(r *tlsconf.Reloader, url string) (int, error) {
	tr := &http.Transport{DialTLSContext: r.DialTLS(&net.Dialer{Timeout: 5 * time.Second})}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// TestTLSSwarm: a development PKI from "dfctl certs init", a supernode and
// three dfdaemons with mutual TLS; dfget downloads are exact and come from
// peers; the links refuse plain HTTP and certificates of another CA; a
// rotated supernode certificate is served without a restart.
func TestTLSSwarm(t *testing.T) {
	const size = 48 * mib
	pkiDir, otherDir := t.TempDir(), t.TempDir()
	dfctlCertsInit(t, "--dir", pkiDir, "--hosts", "127.0.0.1")
	dfctlCertsInit(t, "--dir", otherDir, "--hosts", "127.0.0.1") // another CA
	ca, cert, key := filepath.Join(pkiDir, "ca.pem"), filepath.Join(pkiDir, "127.0.0.1.pem"), filepath.Join(pkiDir, "127.0.0.1-key.pem")
	tlsArgs := []string{"--tls-cert", cert, "--tls-key", key, "--tls-ca", ca}

	org := newOrigin(t)
	c := origin.Content{Size: size, Seed: 443}
	url := org.Add("tls.bin", c)
	want := c.Digest("sha256")

	snDir := t.TempDir()
	p, line := start(t, "supernode", "supernode", "supernode listening", append([]string{"--listen", "127.0.0.1:0", "--upload-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
		"--store", filepath.Join(snDir, "store"), "--upload-rate", "16M", "--log-level", "info", "--tls-client-auth"}, tlsArgs...)...)
	sn := &supernode{proc: p, dir: snDir, grpc: field(line, "grpc"), upload: field(line, "upload")}
	var ds []*daemon
	for i := range 3 {
		ds = append(ds, startDaemon(t, sn, fmt.Sprintf("tls%d", i), "", append([]string{"--tls-client-auth"}, tlsArgs...)...))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	outs := dfgetAll(ctx, t, ds, url)
	for _, o := range outs {
		checkExact(t, o, want)
	}
	s := sum(outs)
	t.Logf("48 MiB to 3 mTLS peers: bytes from peers %.1f MiB, seed %.1f MiB, origin %.1f MiB\n%s",
		float64(s.peers)/mib, float64(s.seed)/mib, float64(s.origin)/mib, table(outs))
	if s.peers == 0 || s.origin != 0 {
		t.Fatalf("bytes from peers %d, from the origin %d: want blocks between peers over TLS and no origin fallback", s.peers, s.origin)
	}

	// An embedded dfget leech with the same certificate: its blocks come
	// from the daemons' TLS upload servers.
	leech, err := dfget(ctx, filepath.Join(t.TempDir(), "leech.out"), append([]string{"--supernode", sn.grpc, "--store", filepath.Join(t.TempDir(), "store"), url}, tlsArgs...)...)
	if err != nil {
		t.Fatal(err)
	}
	if "sha256:"+leech.SHA256 != want || leech.BytesPeers == 0 || leech.BytesOrigin != 0 {
		t.Fatalf("embedded dfget over TLS: %+v, want sha256 %s with bytes from peers", leech, want)
	}

	// Plain HTTP to a TLS upload server fails.
	blockURL := fmt.Sprintf("://%s/blocks/%s/0", ds[0].upload, outs[0].res.TaskID)
	if resp, err := http.Get("http" + blockURL); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("plain HTTP block request to a TLS upload server: HTTP %d", resp.StatusCode)
		}
	}
	// A certificate of the CA reaches the server (403: no task token);
	// one of another CA is refused in the handshake, on the upload
	// servers and on the control plane.
	member, err := tlsconf.Load(tlsconf.Options{CertFile: cert, KeyFile: key, CAFile: ca}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if code, err := getBlock(member, "https"+blockURL); err != nil || code != http.StatusForbidden {
		t.Fatalf("https block request without a token: %d, %v; want 403", code, err)
	}
	intruder, err := tlsconf.Load(tlsconf.Options{CertFile: filepath.Join(otherDir, "127.0.0.1.pem"), KeyFile: filepath.Join(otherDir, "127.0.0.1-key.pem"), CAFile: ca}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"https" + blockURL, "https://" + sn.upload + "/debug/state"} {
		if code, err := getBlock(intruder, u); err == nil {
			t.Fatalf("%s with a certificate of another CA: HTTP %d, want a refused handshake", u, code)
		}
	}

	// Rotation: new certificates from the same CA, picked up without a restart.
	old := fileSerial(t, cert)
	if got, err := servedSerial(member, sn.grpc, "h2"); err != nil || got.Cmp(old) != 0 {
		t.Fatalf("before rotation the supernode serves serial %v (%v), want %v", got, err, old)
	}
	dfctlCertsInit(t, "--dir", pkiDir, "--hosts", "127.0.0.1", "--renew")
	rotated := fileSerial(t, cert)
	if rotated.Cmp(old) == 0 {
		t.Fatal("dfctl certs init --renew kept the certificate")
	}
	for _, addr := range []string{sn.grpc, sn.upload} {
		deadline := time.Now().Add(15 * time.Second)
		for {
			got, err := servedSerial(member, addr, "h2")
			if err == nil && got.Cmp(rotated) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still serves serial %v (%v) 15s after rotation, want %v", addr, got, err, rotated)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	select {
	case <-sn.Done():
		t.Fatal("the supernode exited during rotation")
	default:
	}
	// The swarm keeps working with the new certificates.
	after, err := dfget(ctx, filepath.Join(t.TempDir(), "after.out"), append([]string{"--supernode", sn.grpc, "--store", filepath.Join(t.TempDir(), "store"), url}, tlsArgs...)...)
	if err != nil || "sha256:"+after.SHA256 != want || after.BytesOrigin != 0 {
		t.Fatalf("download after rotation: %+v, %v", after, err)
	}
}
