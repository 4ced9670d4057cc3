package blockstore

// End-to-end encryption of a task's content (opt-in per request, see
// docs/security.md): the seed encrypts each block once with the task's key
// and every host stores and relays the ciphertext, so a host that holds or
// relays blocks without the key cannot read them. Only holders of the key —
// handed out by the supernode with a task token, never stored — decrypt.
//
// The cipher is AES-256-CTR, length-preserving, so blocks keep their sizes
// and offsets and the store, the swarm and the upload servers move and
// verify ciphertext like any other bytes: a block's SHA-256 (its digest in
// the store and on the wire) is over the ciphertext. The whole-content
// digest (Task.Digest, an OCI digest) stays over the plaintext; the hash
// passes decrypt (ContentHash.SetE2E). Each block has its own counter
// block (the block index in the high 64 bits), so no keystream is used
// twice under one key; a new version of the content gets a new key (the
// seed derives it from the version it stored). CTR does not authenticate:
// integrity comes from the per-block SHA-256 the supernode hands out and
// the whole-content digest, as for plain tasks.

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// E2EKeySize is the size of a task key (AES-256).
const E2EKeySize = 32

// ErrE2EKey: an end-to-end encrypted task's bytes are needed in the clear
// and its key is not at hand (or is not the key its blocks were stored
// under).
var ErrE2EKey = errors.New("end-to-end encrypted task: its key is missing or wrong")

// E2E is the end-to-end cipher of one task version. It is safe for
// concurrent use.
type E2E struct {
	block cipher.Block
	keyID string
}

// NewE2E returns the cipher of a task key.
func NewE2E(key []byte) (*E2E, error) {
	if len(key) != E2EKeySize {
		return nil, fmt.Errorf("end-to-end task key: %d bytes, want %d: %w", len(key), E2EKeySize, ErrInvalid)
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("end-to-end task key: %w", err)
	}
	sum := sha256.Sum256(append([]byte("dfly-e2e-key-id\x00"), key...))
	return &E2E{block: b, keyID: hex.EncodeToString(sum[:8])}, nil
}

// KeyID names the key without revealing it (stored with the task, so a
// copy stored under another key is recognised).
func (x *E2E) KeyID() string { return x.keyID }

// XOR encrypts or decrypts (the same operation) block idx from src into
// dst; dst and src may be the same slice, else must not overlap.
func (x *E2E) XOR(idx int, dst, src []byte) {
	var iv [aes.BlockSize]byte
	binary.BigEndian.PutUint64(iv[:8], uint64(idx))
	cipher.NewCTR(x.block, iv[:]).XORKeyStream(dst[:len(src)], src)
}

// E2ETaskID is the id of the end-to-end encrypted representation of the
// task plainID names. The two are separate tasks (their stored bytes
// differ), so a plain copy and an encrypted one never mix.
func E2ETaskID(plainID string) string {
	sum := sha256.Sum256([]byte("dfly-e2e\x00" + plainID))
	return "e" + hex.EncodeToString(sum[:16])
}

// IsE2ETaskID reports whether id has the form of an end-to-end encrypted
// task's id ("e" and 32 hex digits; plain ids are "u…" or "ALGO-HEX").
func IsE2ETaskID(id string) bool {
	if len(id) != 33 || id[0] != 'e' {
		return false
	}
	_, err := hex.DecodeString(id[1:])
	return err == nil && strings.ToLower(id) == id
}

// TaskIDForE2E is TaskIDFor for the end-to-end encrypted representation:
// with taskID empty the E2ETaskID of the request's plain id, else taskID
// when it is the E2ETaskID of one of the request's derivations.
func TaskIDForE2E(taskID, url, tag, digest string) (string, error) {
	if taskID == "" {
		plain, err := TaskIDFor("", url, tag, digest)
		if err != nil {
			return "", err
		}
		return E2ETaskID(plain), nil
	}
	var derived []string
	if digest != "" {
		id, err := TaskIDForDigest(digest)
		if err != nil {
			return "", fmt.Errorf("task ID %q: %w", taskID, err)
		}
		if E2ETaskID(id) == taskID {
			return taskID, nil
		}
		derived = append(derived, E2ETaskID(id)+" (from the digest)")
	}
	if url != "" {
		id, err := TaskIDForURL(url, tag, "")
		if err != nil {
			return "", fmt.Errorf("task ID %q: %w", taskID, err)
		}
		if E2ETaskID(id) == taskID {
			return taskID, nil
		}
		derived = append(derived, E2ETaskID(id)+" (from the URL and tag)")
	}
	if len(derived) == 0 {
		return "", fmt.Errorf("task ID %q: a request that names a task must carry the digest or URL its ID derives from: %w", taskID, ErrInvalid)
	}
	return "", fmt.Errorf("end-to-end task ID %q does not name this content (want %s); leave the task ID out: %w",
		taskID, joinOr(derived), ErrInvalid)
}

func joinOr(s []string) string {
	out := ""
	for i, v := range s {
		if i > 0 {
			out += " or "
		}
		out += v
	}
	return out
}
