package main

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStoreKeyFileFlag(t *testing.T) {
	t.Setenv("DFLY_STORE_KEY", "")
	key := bytes.Repeat([]byte{0x42}, 32)
	dir := t.TempDir()
	good := filepath.Join(dir, "good.key")
	open := filepath.Join(dir, "open.key")
	os.WriteFile(good, []byte(hex.EncodeToString(key)), 0o600)
	os.WriteFile(open, key, 0o644)
	os.Chmod(open, 0o644)

	o, err := parseFlags([]string{"--store-key-file", good}, io.Discard)
	if err != nil || !bytes.Equal(o.cfg.StoreKey, key) {
		t.Fatalf("--store-key-file %s: key %x, %v", good, o.cfg.StoreKey, err)
	}
	if o, err := parseFlags(nil, io.Discard); err != nil || o.cfg.StoreKey != nil {
		t.Fatalf("no key: %x, %v", o.cfg.StoreKey, err)
	}
	_, err = parseFlags([]string{"--store-key-file", open}, io.Discard)
	var ue *usageError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable key file: %v, want a usage error saying chmod 600", err)
	}
	t.Setenv("DFLY_STORE_KEY", hex.EncodeToString(key))
	if o, err := parseFlags(nil, io.Discard); err != nil || !bytes.Equal(o.cfg.StoreKey, key) {
		t.Fatalf("DFLY_STORE_KEY: %x, %v", o.cfg.StoreKey, err)
	}
}
