package cli

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/dfly-p2p/dfly/internal/tlsconf/tlstest"
)

func TestTLSFlags(t *testing.T) {
	pki := tlstest.New(t, t.TempDir())
	cert, key := pki.Issue("h", "127.0.0.1")
	tests := []struct {
		name    string
		serves  bool
		args    []string
		enabled bool
		want    string // error substring; "" = ok
		warned  bool
	}{
		{"plain server warns", true, nil, false, "", true},
		{"plain client is quiet", false, nil, false, "", false},
		{"server", true, []string{"--tls-cert", cert, "--tls-key", key, "--tls-ca", pki.CAFile, "--tls-client-auth"}, true, "", false},
		{"server without a certificate", true, []string{"--tls-ca", pki.CAFile}, true, "--tls-cert and --tls-key are required", false},
		{"client without a certificate", false, []string{"--tls-ca", pki.CAFile}, true, "", false},
		{"no CA", false, []string{"--tls-cert", cert, "--tls-key", key}, true, "--tls-ca", false},
		{"missing file", true, []string{"--tls-cert", cert + ".gone", "--tls-key", key, "--tls-ca", pki.CAFile}, true, ".gone", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
			f := AddTLSFlags(fs, tc.serves)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			if f.Enabled() != tc.enabled {
				t.Fatalf("Enabled = %v", f.Enabled())
			}
			var logs bytes.Buffer
			r, err := f.Load(slog.New(slog.NewTextHandler(&logs, nil)))
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Load error %v, want %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (r != nil) != tc.enabled {
				t.Fatalf("reloader %v with TLS enabled=%v", r, tc.enabled)
			}
			if strings.Contains(logs.String(), PlainWarning) != tc.warned {
				t.Fatalf("logs %q: want the plain-TCP warning %v", logs.String(), tc.warned)
			}
		})
	}
	// Clients have no --tls-client-auth (it is a server's choice).
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	AddTLSFlags(fs, false)
	if fs.Lookup("tls-client-auth") != nil {
		t.Fatal("a client binary has --tls-client-auth")
	}
}
