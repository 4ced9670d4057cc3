package supernode

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTokenKeyPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "token.key")
	k1, err := LoadOrCreateTokenKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(k1) != TokenKeySize || bytes.Equal(k1, make([]byte, TokenKeySize)) {
		t.Fatalf("key %x: want %d random bytes", k1, TokenKeySize)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", fi.Mode().Perm())
	}
	k2, err := LoadOrCreateTokenKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k1, k2) {
		t.Fatal("second load returned a different key: tokens would not survive a restart")
	}
	other, err := LoadOrCreateTokenKey(filepath.Join(t.TempDir(), "token.key"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(k1, other) {
		t.Fatal("two supernodes got the same key")
	}
	if err := os.WriteFile(path, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateTokenKey(path); err == nil || !strings.Contains(err.Error(), "delete it") {
		t.Fatalf("torn key file: err %v, want an error that says what to do", err)
	}
}
