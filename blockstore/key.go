package blockstore

// Loading a store key (Options.Key) from a file or the environment.

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
)

// KeyEnv is the environment variable that may hold a store key (hex or
// base64, as in a key file).
const KeyEnv = "DFLY_STORE_KEY"

// keyFormats says which key encodings are accepted, for error messages.
const keyFormats = "32 raw bytes (files only), 64 hex digits, or the base64 of 32 bytes; make one with `head -c 32 /dev/urandom > FILE && chmod 600 FILE`"

// LoadKey returns the store key in file, or else in env (the value of the
// environment variable KeyEnv; pass os.Getenv(KeyEnv)); nil when both are
// empty (no encryption). Setting both is refused, so that nobody wonders
// which one won. A key file must be readable by its owner only (mode 0600
// or 0400: it holds the key to every block of the store) and hold exactly
// 32 raw bytes, or 64 hex digits, or the base64 (standard or URL alphabet,
// padded or not) of 32 bytes; surrounding white space of the text forms is
// ignored. The environment variable takes the text forms only.
func LoadKey(file, env string) ([]byte, error) {
	switch {
	case file != "" && env != "":
		return nil, fmt.Errorf("store key: both a key file (%s) and the environment variable %s are set; use one: %w", file, KeyEnv, ErrInvalid)
	case file != "":
		fi, err := os.Stat(file)
		if err != nil {
			return nil, fmt.Errorf("store key file: %w", err)
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("store key file %s: not a regular file: %w", file, ErrInvalid)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			return nil, fmt.Errorf("store key file %s: mode %04o lets group or others access it; chmod 600 %s: %w", file, perm, file, ErrInvalid)
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("store key file: %w", err)
		}
		key, err := ParseKey(b, true)
		if err != nil {
			return nil, fmt.Errorf("store key file %s: %w", file, err)
		}
		return key, nil
	case env != "":
		key, err := ParseKey([]byte(env), false)
		if err != nil {
			return nil, fmt.Errorf("store key in %s: %w", KeyEnv, err)
		}
		return key, nil
	}
	return nil, nil
}

// ParseKey decodes a store key: 64 hex digits or base64 of KeySize bytes
// (white space around them ignored), or, with raw, exactly KeySize bytes
// taken as they are.
func ParseKey(b []byte, raw bool) ([]byte, error) {
	if raw && len(b) == KeySize {
		return bytes.Clone(b), nil
	}
	text := string(bytes.TrimSpace(b))
	if len(text) == 2*KeySize {
		if key, err := hex.DecodeString(text); err == nil {
			return key, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if key, err := enc.DecodeString(text); err == nil && len(key) == KeySize {
			return key, nil
		}
	}
	if !raw {
		return nil, fmt.Errorf("%d characters, not a key: want 64 hex digits or the base64 of 32 bytes: %w", len(text), ErrInvalid)
	}
	return nil, fmt.Errorf("%d bytes, not a key: want %s: %w", len(b), keyFormats, ErrInvalid)
}
