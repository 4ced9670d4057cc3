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

func TestTaskToken(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	// HMAC-SHA256 test value computed independently:
	// python3 -c 'import hmac,hashlib;print(hmac.new(b"0123456789abcdef0123456789abcdef",b"task-1",hashlib.sha256).hexdigest())'
	const want = "ab873162dbc2c2f919d25b9d5dbba6d9f13b02e2df1dd78ee52a7a46a20d67ac"
	tok := TaskToken(key, "task-1")
	if tok != want {
		t.Fatalf("token %s, want %s", tok, want)
	}
	tests := []struct {
		task, token string
		ok          bool
	}{
		{"task-1", tok, true},
		{"task-1", strings.ToUpper(tok), true},
		{"task-2", tok, false},
		{"task-1", tok[:62], false},
		{"task-1", "zz" + tok[2:], false},
		{"task-1", "", false},
	}
	for _, tc := range tests {
		if got := ValidToken(key, tc.task, tc.token); got != tc.ok {
			t.Errorf("ValidToken(%q, %q) = %v, want %v", tc.task, tc.token, got, tc.ok)
		}
	}
	if ValidToken([]byte("another key, also thirty-two b!!"), "task-1", tok) {
		t.Error("token accepted under another key")
	}
}
