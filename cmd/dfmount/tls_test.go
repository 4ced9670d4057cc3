package main

import (
	"strings"
	"testing"

	"github.com/dfly-p2p/dfly/internal/tlsconf/tlstest"
)

func TestTLSFlagErrors(t *testing.T) {
	pki := tlstest.New(t, t.TempDir())
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--tls-ca", pki.CAFile, "http://h/f", dir}, "need it"},
		{[]string{"--supernode", "127.0.0.1:1", "--tls-ca", pki.CAFile + ".missing", "http://h/f", dir}, ".missing"},
		{[]string{"--supernode", "127.0.0.1:1", "--tls-client-auth", "http://h/f", dir}, "unknown flag"},
	} {
		if code, out := runInProc(t, tc.args...); code != exitUsage || !strings.Contains(out, tc.want) {
			t.Errorf("dfmount %q: exit %d, output %q; want %d mentioning %q", tc.args, code, out, exitUsage, tc.want)
		}
	}
}
