package blockstore

// Encryption at rest (Options.Key): sealed tasks, their blocks' seal
// records, and the store's key check.
//
// A store opened with a key seals every task it creates (Task.Sealed):
// each block is encrypted with AES-256-GCM before it is written to the
// data file, at the same offset and with the same length as the plain
// bytes would have (GCM is a stream mode: no padding), so the sparse
// offset scheme, quota accounting and foreign-change stamps are unchanged.
// The 12-byte nonce and the 16-byte tag of a block are its seal record, the
// value of its b/<id>/<idx> key (empty for a plain block), committed in the
// same transaction that makes the block present. Nonces are random (96 bits
// from crypto/rand) for every write, rewrites included; under one key that
// keeps the chance of a repeat below 2^-32 for the first 2^32 block writes
// (4 PiB of 1 MiB blocks). The additional data of every block names the
// task and the index, so a block moved to another index or task (bytes and
// record alike) fails authentication. A block that fails is treated as a
// corrupt one: dropped, reported (ErrCorrupt), fetched again.
//
// The key check is the record k/check: a fingerprint of the key (for error
// messages) and a known value sealed with it. It is written when a store is
// first opened with a key; from then on Open refuses a different key
// (ErrWrongKey) and no key (ErrKeyRequired) before it changes anything.
// Tasks created before a key was given stay plain (Task.Sealed false) and
// readable; new ones are sealed.

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/dfly-p2p/dfly/internal/directio"
)

const (
	// KeySize is the length of a store key (AES-256).
	KeySize = 32

	sealVersion = 1
	nonceSize   = 12
	tagSize     = 16
	// sealRecordLen is the length of an encoded seal record: version, nonce, tag.
	sealRecordLen = 1 + nonceSize + tagSize

	keyCheckVersion = 1
	fingerprintLen  = 8
	keyCheckPlain   = "dfly block store key check v1"
	// keyCheckLen is the length of an encoded key check: version,
	// fingerprint, nonce, sealed known value (with its tag).
	keyCheckLen = 1 + fingerprintLen + nonceSize + len(keyCheckPlain) + tagSize
)

// keyCheckKey is the Badger key of the store's key check.
var keyCheckKey = []byte("k/check")

// sealRec is what a sealed block needs besides its bytes.
type sealRec struct {
	nonce [nonceSize]byte
	tag   [tagSize]byte
}

func (r sealRec) encode() []byte {
	b := make([]byte, 0, sealRecordLen)
	b = append(b, sealVersion)
	b = append(b, r.nonce[:]...)
	return append(b, r.tag[:]...)
}

// decodeSeal parses a seal record (the value of a sealed block's b/ key).
func decodeSeal(b []byte) (sealRec, error) {
	var r sealRec
	if len(b) != sealRecordLen {
		return r, fmt.Errorf("seal record: %d bytes, want %d", len(b), sealRecordLen)
	}
	if b[0] != sealVersion {
		return r, fmt.Errorf("seal record: version %d, want %d (written by a newer dfly?)", b[0], sealVersion)
	}
	copy(r.nonce[:], b[1:])
	copy(r.tag[:], b[1+nonceSize:])
	return r, nil
}

// sealer encrypts and authenticates blocks under one key. It is immutable
// and safe for concurrent use.
type sealer struct {
	aead cipher.AEAD
	fp   string // key fingerprint, hex
}

func newSealer(key []byte) (*sealer, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("store key: %d bytes, want %d (AES-256): %w", len(key), KeySize, ErrInvalid)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("store key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("store key: %w", err)
	}
	return &sealer{aead: aead, fp: KeyFingerprint(key)}, nil
}

// KeyFingerprint names a store key without revealing it: the first 8
// bytes, in hex, of SHA-256 over a fixed label and the key.
func KeyFingerprint(key []byte) string {
	sum := sha256.Sum256(append([]byte("dfly store key fingerprint\x00"), key...))
	return hex.EncodeToString(sum[:fingerprintLen])
}

// blockAAD is the additional data binding a block's ciphertext to its task
// and index.
func blockAAD(id string, idx int) []byte {
	b := make([]byte, 0, 16+len(id)+4)
	b = append(b, "dfly block v1\x00"...)
	b = append(b, id...)
	b = append(b, 0)
	return binary.BigEndian.AppendUint32(b, uint32(idx))
}

// seal encrypts plain into buf (which must have room for len(plain)+tagSize
// bytes) under a fresh random nonce, and returns the ciphertext (as long as
// plain) and the block's seal record.
func (z *sealer) seal(buf, plain []byte, id string, idx int) ([]byte, sealRec) {
	var r sealRec
	_, _ = rand.Read(r.nonce[:]) // never fails (crypto/rand panics if the system source does)
	out := z.aead.Seal(buf[:0], r.nonce[:], plain, blockAAD(id, idx))
	n := len(plain)
	copy(r.tag[:], out[n:])
	return out[:n], r
}

// open authenticates and decrypts, in place, the ciphertext ct of block idx
// of task id; cap(ct) must be at least len(ct)+tagSize. It returns the
// plain bytes (ct's memory).
func (z *sealer) open(ct []byte, r sealRec, id string, idx int) ([]byte, error) {
	n := len(ct)
	if cap(ct) < n+tagSize {
		ct = append(make([]byte, 0, n+tagSize), ct...)
	}
	whole := append(ct[:n], r.tag[:]...)
	plain, err := z.aead.Open(whole[:0], r.nonce[:], whole, blockAAD(id, idx))
	if err != nil {
		return nil, errors.New("AES-GCM authentication failed: its bytes or seal record were changed, or are another block's")
	}
	return plain, nil
}

// keyCheck returns a new key check record for the store's key.
func (z *sealer) keyCheck() []byte {
	fp, _ := hex.DecodeString(z.fp)
	var nonce [nonceSize]byte
	_, _ = rand.Read(nonce[:])
	b := make([]byte, 0, keyCheckLen)
	b = append(b, keyCheckVersion)
	b = append(b, fp...)
	b = append(b, nonce[:]...)
	return z.aead.Seal(b, nonce[:], []byte(keyCheckPlain), []byte("dfly key check"))
}

// keyCheckRec is a decoded key check.
type keyCheckRec struct {
	fp     string // hex
	nonce  []byte
	sealed []byte // ciphertext and tag
}

// decodeKeyCheck parses the value of k/check.
func decodeKeyCheck(b []byte) (keyCheckRec, error) {
	if len(b) != keyCheckLen {
		return keyCheckRec{}, fmt.Errorf("key check: %d bytes, want %d", len(b), keyCheckLen)
	}
	if b[0] != keyCheckVersion {
		return keyCheckRec{}, fmt.Errorf("key check: version %d, want %d (written by a newer dfly?)", b[0], keyCheckVersion)
	}
	b = b[1:]
	return keyCheckRec{
		fp:     hex.EncodeToString(b[:fingerprintLen]),
		nonce:  b[fingerprintLen : fingerprintLen+nonceSize],
		sealed: b[fingerprintLen+nonceSize:],
	}, nil
}

// verify reports whether the key check was sealed with z's key.
func (z *sealer) verify(kc keyCheckRec) bool {
	plain, err := z.aead.Open(nil, kc.nonce, kc.sealed, []byte("dfly key check"))
	return err == nil && string(plain) == keyCheckPlain
}

// checkKey compares the key the store was opened with against its key
// check, and refuses, changing nothing, a wrong key or a missing one. It
// runs after the metadata is loaded and before anything is written. A
// store first opened with a key gets its key check here.
func (s *Store) checkKey() error {
	var raw []byte
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(keyCheckKey)
		if err != nil {
			return err
		}
		raw, err = item.ValueCopy(nil)
		return err
	})
	if err != nil && !errors.Is(err, badger.ErrKeyNotFound) {
		return fmt.Errorf("open block store %s: read its key check: %w", s.dir, err)
	}
	sealed, plain := 0, 0
	for _, st := range s.tasks {
		if st.task.Sealed {
			sealed++
		} else {
			plain++
		}
	}
	if raw == nil {
		switch {
		case sealed > 0:
			return fmt.Errorf("open block store %s: it holds %d encrypted tasks but its key check (%s) is missing, so the key cannot be verified; "+
				"nothing was changed. Restore the store's index from a backup, or move %s aside to start an empty store: %w",
				s.dir, sealed, keyCheckKey, s.dir, ErrKeyRequired)
		case s.seal == nil:
			return nil // a plain store
		}
		if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(keyCheckKey, s.seal.keyCheck()) }); err != nil {
			return fmt.Errorf("open block store %s: record its key check: %w", s.dir, err)
		}
		if plain > 0 {
			s.log.Info("store key given to a store holding plain tasks: they stay unencrypted, new tasks are encrypted; delete the plain ones to have them fetched again encrypted",
				"dir", s.dir, "plain_tasks", plain, "key", s.seal.fp)
		} else {
			s.log.Info("block store encrypted at rest", "dir", s.dir, "key", s.seal.fp)
		}
		return nil
	}
	kc, err := decodeKeyCheck(raw)
	if err != nil {
		return fmt.Errorf("open block store %s: its key check is unreadable (%v); nothing was changed. Restore the store's index from a backup, or move %s aside: %w",
			s.dir, err, s.dir, ErrWrongKey)
	}
	if s.seal == nil {
		return fmt.Errorf("open block store %s: it is encrypted at rest (key %s) and no store key was given; "+
			"pass the key it was created with (--store-key-file FILE or the environment variable %s); nothing was changed: %w",
			s.dir, kc.fp, KeyEnv, ErrKeyRequired)
	}
	if !s.seal.verify(kc) {
		return fmt.Errorf("open block store %s: the store key given (%s) is not the key the store was encrypted with (%s); "+
			"pass the right key (--store-key-file FILE or %s), or move %s aside to start an empty store; nothing was changed: %w",
			s.dir, s.seal.fp, kc.fp, KeyEnv, s.dir, ErrWrongKey)
	}
	return nil
}

// sealBuf returns a pooled buffer with room for an n-byte block and its
// tag, aligned for direct I/O; putSealBuf gives it back.
func (s *Store) sealBuf(n int) *[]byte {
	bp, _ := s.sealBufs.Get().(*[]byte)
	if bp == nil || cap(*bp) < n+tagSize {
		b := directio.Buffer(int64(n + tagSize))
		bp = &b
	}
	return bp
}

func (s *Store) putSealBuf(bp *[]byte) { s.sealBufs.Put(bp) }
