package blockstore

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func e2eKey(b byte) []byte { return bytes.Repeat([]byte{b}, E2EKeySize) }

func TestE2ECipher(t *testing.T) {
	x, err := NewE2E(e2eKey(1))
	if err != nil {
		t.Fatal(err)
	}
	plain := randBytes(10000, 7)
	ct := make([]byte, len(plain))
	x.XOR(3, ct, plain)
	if bytes.Equal(ct, plain) {
		t.Fatal("ciphertext equals plaintext")
	}
	back := bytes.Clone(ct)
	x.XOR(3, back, back) // in place
	if !bytes.Equal(back, plain) {
		t.Fatal("decrypting in place did not give the plaintext back")
	}
	other := make([]byte, len(plain))
	x.XOR(4, other, plain)
	if bytes.Equal(other, ct) {
		t.Fatal("two blocks share a keystream")
	}
	y, _ := NewE2E(e2eKey(2))
	y.XOR(3, other, plain)
	if bytes.Equal(other, ct) || x.KeyID() == y.KeyID() {
		t.Fatal("two keys give the same ciphertext or key id")
	}
	if x2, _ := NewE2E(e2eKey(1)); x2.KeyID() != x.KeyID() || len(x.KeyID()) != 16 {
		t.Fatalf("key id %q not stable or not 16 hex digits", x.KeyID())
	}
	for _, n := range []int{0, 16, 31, 33} {
		if _, err := NewE2E(make([]byte, n)); !errors.Is(err, ErrInvalid) {
			t.Errorf("NewE2E with a %d-byte key: %v, want ErrInvalid", n, err)
		}
	}
}

func TestTaskIDForE2E(t *testing.T) {
	const url, digest = "http://origin/f", "sha256:0123456789012345678901234567890123456789012345678901234567890123"
	plainURL, _ := TaskIDForURL(url, "", "")
	plainDigest, _ := TaskIDForDigest(digest)
	for _, tc := range []struct {
		name                     string
		taskID, url, tag, digest string
		want                     string
		err                      bool
	}{
		{name: "from the URL", url: url, want: E2ETaskID(plainURL)},
		{name: "from the digest", digest: digest, want: E2ETaskID(plainDigest)},
		{name: "URL wins when both", url: url, digest: digest, want: E2ETaskID(plainURL)},
		{name: "given, of the digest", taskID: E2ETaskID(plainDigest), url: url, digest: digest, want: E2ETaskID(plainDigest)},
		{name: "given, of the URL", taskID: E2ETaskID(plainURL), url: url, want: E2ETaskID(plainURL)},
		{name: "the plain id is not the e2e one", taskID: plainURL, url: url, err: true},
		{name: "another content's id", taskID: E2ETaskID("uother"), url: url, err: true},
		{name: "nothing to derive from", taskID: E2ETaskID(plainURL), err: true},
		{name: "no request at all", err: true},
	} {
		got, err := TaskIDForE2E(tc.taskID, tc.url, tc.tag, tc.digest)
		if tc.err {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("%s: %q, %v; want ErrInvalid", tc.name, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
	if id := E2ETaskID(plainURL); id == plainURL || !strings.HasPrefix(id, "e") || len(id) != 33 {
		t.Errorf("E2ETaskID(%q) = %q", plainURL, id)
	}
}

// TestE2EContentHash stores an end-to-end encrypted task (ciphertext
// blocks, plaintext digest): the whole-content hash decrypts with the key,
// emits plaintext and completes; without the key, or with another, it
// refuses instead of computing anything over the ciphertext.
func TestE2EContentHash(t *testing.T) {
	s := openT(t, t.TempDir(), Options{})
	x, _ := NewE2E(e2eKey(9))
	task, plain := content("e2e", 5*4096+77)
	task.E2E, task.E2EKeyID = true, x.KeyID()
	if _, err := s.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	ct := make([]byte, len(plain))
	for i := 0; i < task.NumBlocks(); i++ {
		off := int64(i) * task.BlockSize
		x.XOR(i, ct[off:off+task.BlockLen(i)], plain[off:off+task.BlockLen(i)])
	}
	putAll(t, s, task, ct)

	for _, tc := range []struct {
		name string
		key  *E2E
	}{{"no key", nil}, {"wrong key", func() *E2E { y, _ := NewE2E(e2eKey(8)); return y }()}} {
		c, err := s.NewContentHash("e2e")
		if err != nil {
			t.Fatal(err)
		}
		c.SetE2E(tc.key)
		if _, err := s.HashPresent(ctx, c, nil); !errors.Is(err, ErrE2EKey) {
			t.Errorf("%s: HashPresent: %v, want ErrE2EKey", tc.name, err)
		}
		c, _ = s.NewContentHash("e2e")
		c.SetE2E(tc.key)
		if _, err := s.CompleteHash(ctx, c, nil); !errors.Is(err, ErrE2EKey) {
			t.Errorf("%s: CompleteHash: %v, want ErrE2EKey", tc.name, err)
		}
	}
	if got, _ := s.Task("e2e"); got.State == StateComplete {
		t.Fatal("completed without the key")
	}

	c, err := s.NewContentHash("e2e")
	if err != nil {
		t.Fatal(err)
	}
	c.SetE2E(x)
	out := make([]byte, len(plain))
	emit := func(idx int, blk []byte) error { copy(out[int64(idx)*task.BlockSize:], blk); return nil }
	if n, err := s.HashPresent(ctx, c, emit); err != nil || n != task.NumBlocks() {
		t.Fatalf("HashPresent with the key: %d of %d blocks, %v", n, task.NumBlocks(), err)
	}
	done, err := s.CompleteHash(ctx, c, emit)
	if err != nil {
		t.Fatalf("CompleteHash with the key: %v", err)
	}
	if done.State != StateComplete || !bytes.Equal(out, plain) {
		t.Fatalf("state %s, plaintext emitted %v", done.State, bytes.Equal(out, plain))
	}
	// The stored bytes stay ciphertext (what peers relay).
	if b, err := s.ReadBlock("e2e", 1); err != nil || !bytes.Equal(b, ct[4096:8192]) {
		t.Fatalf("stored block 1 is not the ciphertext: %v", err)
	}
	// Neither the flag nor the key can change on a stored task.
	for _, f := range []func(*Task){func(m *Task) { m.E2E = false }, func(m *Task) { m.E2EKeyID = "0000000000000000" }} {
		if _, err := s.UpdateTask("e2e", func(m *Task) error { f(m); return nil }); !errors.Is(err, ErrInvalid) {
			t.Errorf("UpdateTask changed the encryption: %v", err)
		}
	}
}

func TestIsE2ETaskID(t *testing.T) {
	plain, _ := TaskIDForURL("http://o/f", "", "")
	for id, want := range map[string]bool{
		E2ETaskID(plain):                     true,
		plain:                                false,
		"sha256-" + strings.Repeat("ab", 32): false,
		"e" + strings.Repeat("0", 31):        false,
		"e" + strings.Repeat("g", 32):        false,
		"E" + strings.Repeat("0", 32):        false,
		"e" + strings.Repeat("A", 32):        false,
		"":                                   false,
	} {
		if IsE2ETaskID(id) != want {
			t.Errorf("IsE2ETaskID(%q) = %v, want %v", id, !want, want)
		}
	}
}
