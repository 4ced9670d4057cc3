package supernode

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// TokenKeySize is the length of the token key: the seed of the Ed25519
// key that signs task tokens.
const TokenKeySize = 32

// LoadOrCreateTokenKey reads the token key from path, creating it with a
// fresh random key (mode 0600) when the file does not exist. Keeping the key
// across restarts keeps every token issued before a restart valid, so swarms
// continue after the supernode comes back.
func LoadOrCreateTokenKey(path string) ([]byte, error) {
	key, err := os.ReadFile(path)
	if err == nil {
		if len(key) != TokenKeySize {
			return nil, fmt.Errorf("token key %s has %d bytes, want %d; delete it to make a new one (outstanding tokens become invalid)", path, len(key), TokenKeySize)
		}
		return key, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read token key: %w", err)
	}
	key = make([]byte, TokenKeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generate token key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create directory for token key: %w", err)
	}
	// Write to a temporary file and rename, so a crash never leaves a torn key.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, key, 0o600); err != nil {
		return nil, fmt.Errorf("write token key: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return nil, fmt.Errorf("install token key: %w", err)
	}
	return key, nil
}
