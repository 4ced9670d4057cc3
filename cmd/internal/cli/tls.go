package cli

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/spf13/pflag"

	"github.com/dfly-p2p/dfly/internal/tlsconf"
)

// TLSFlags are the --tls-* flags every dfly binary on a swarm link has:
// the whole swarm is either TLS (every link, the same CA) or plain.
type TLSFlags struct {
	Cert, Key, CA string
	ClientAuth    bool
	serves        bool
}

// PlainWarning is the line a serving binary logs when TLS is off.
const PlainWarning = "control plane and block transfers are unencrypted; use --tls-cert/--tls-key/--tls-ca"

// AddTLSFlags registers --tls-cert, --tls-key, --tls-ca and, on a binary
// that serves (serves: supernode, dfdaemon, dfly-snapshotter),
// --tls-client-auth.
func AddTLSFlags(fs *pflag.FlagSet, serves bool) *TLSFlags {
	f := &TLSFlags{serves: serves}
	fs.StringVar(&f.Cert, "tls-cert", "", "TLS: this host's certificate (PEM) for every swarm link; reloaded when it changes (see \"dfctl certs init\")")
	fs.StringVar(&f.Key, "tls-key", "", "TLS: the certificate's private key (PEM)")
	fs.StringVar(&f.CA, "tls-ca", "", "TLS: CA certificates (PEM) every swarm certificate is checked against; turns TLS on")
	if serves {
		fs.BoolVar(&f.ClientAuth, "tls-client-auth", false, "TLS: require client certificates of the CA (mutual TLS) on this host's servers")
	}
	return f
}

// Enabled reports whether any --tls-* flag was given.
func (f *TLSFlags) Enabled() bool { return f.Cert != "" || f.Key != "" || f.CA != "" || f.ClientAuth }

// Load loads the TLS material the flags name; it returns nil when TLS is
// off (a serving binary then logs PlainWarning once).
func (f *TLSFlags) Load(log *slog.Logger) (*tlsconf.Reloader, error) {
	if !f.Enabled() {
		if f.serves {
			log.Warn(PlainWarning)
		}
		return nil, nil
	}
	if f.serves && (f.Cert == "" || f.Key == "") {
		return nil, errors.New("--tls-cert and --tls-key are required with TLS: this host serves the swarm (make them with \"dfctl certs init\")")
	}
	r, err := tlsconf.Load(tlsconf.Options{CertFile: f.Cert, KeyFile: f.Key, CAFile: f.CA, ClientAuth: f.ClientAuth}, log)
	if err != nil {
		return nil, fmt.Errorf("TLS: %w", err)
	}
	return r, nil
}
