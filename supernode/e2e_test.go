package supernode

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"testing"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/integration/origin"
)

func TestE2EKeys(t *testing.T) {
	k := newE2EKeys([]byte("secret one"))
	task := blockstore.Task{ID: "e1", E2E: true, E2ESalt: "00ff"}
	a, err := k.key(task)
	if err != nil || len(a) != blockstore.E2EKeySize {
		t.Fatalf("key: %x, %v", a, err)
	}
	for _, tc := range []struct {
		name string
		k    *e2eKeys
		t    blockstore.Task
		same bool
	}{
		{"same task, same secret", newE2EKeys([]byte("secret one")), task, true},
		{"another salt (a new version)", k, blockstore.Task{ID: "e1", E2E: true, E2ESalt: "00fe"}, false},
		{"another task", k, blockstore.Task{ID: "e2", E2E: true, E2ESalt: "00ff"}, false},
		{"another secret", newE2EKeys([]byte("secret two")), task, false},
	} {
		b, err := tc.k.key(tc.t)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if bytes.Equal(a, b) != tc.same {
			t.Errorf("%s: same key %v, want %v", tc.name, bytes.Equal(a, b), tc.same)
		}
	}
	for _, bad := range []blockstore.Task{{ID: "p"}, {ID: "nosalt", E2E: true}} {
		if _, err := k.key(bad); !errors.Is(err, blockstore.ErrE2EKey) {
			t.Errorf("key of %+v: %v, want ErrE2EKey", bad, err)
		}
	}
	if s1, s2 := newE2ESalt(), newE2ESalt(); s1 == s2 || len(s1) != 32 {
		t.Error("salts repeat or are not 16 random bytes in hex")
	}
}

// TestSeedE2E: the seed fetches an end-to-end encrypted task once,
// encrypts each block as it stores it (the block digests are over the
// ciphertext), verifies the whole content in the clear against its digest
// and hands out the key its blocks decrypt with; a seed with another
// secret refuses to hand out a key for them.
func TestSeedE2E(t *testing.T) {
	o := startOrigin(t)
	c := origin.Content{Size: 3<<20 + 999, Seed: 17}
	url := o.Add("e.bin", c)
	store := openStore(t, t.TempDir())
	defer store.Close()
	ev := &seedEvents{}
	cfg := ev.config(store)
	cfg.E2ESecret = []byte("token key seed")
	seed := NewSeed(cfg)
	defer seed.Close()
	plainID, _ := blockstore.TaskIDForURL(url, "", "")
	id := blockstore.E2ETaskID(plainID)

	if _, err := seed.Ensure(context.Background(), SeedRequest{TaskID: id, URL: url, E2E: true, PlainID: "u-wrong"}); err == nil {
		t.Fatal("an e2e request whose id is not the e2e id of its plain id was accepted")
	}
	seed2 := NewSeed(ev.config(store)) // (the failed request above is remembered for RetryAfter)
	defer seed2.Close()
	seed2.keys = seed.keys
	meta, err := seed2.Ensure(context.Background(), SeedRequest{TaskID: id, URL: url, E2E: true, PlainID: plainID, Digest: c.Digest("sha256")})
	if err != nil {
		t.Fatal(err)
	}
	waitSeed(t, seed2, id)
	if err := seed2.Err(id); err != nil {
		t.Fatal(err)
	}
	tk, _ := store.Task(id)
	if !tk.E2E || tk.E2ESalt == "" || tk.State != blockstore.StateComplete || !tk.Verified {
		t.Fatalf("task %+v: want e2e, salted, complete and verified against the plaintext digest", tk)
	}
	key, err := seed2.TaskKey(meta)
	if err != nil {
		t.Fatal(err)
	}
	x, _ := blockstore.NewE2E(key)
	if x.KeyID() != tk.E2EKeyID {
		t.Fatalf("key id %s, stored %s", x.KeyID(), tk.E2EKeyID)
	}
	for b := range tk.NumBlocks() {
		plain := make([]byte, tk.BlockLen(b))
		if _, err := c.ReadAt(plain, int64(b)*tk.BlockSize); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		stored, err := store.ReadBlock(id, b)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(stored, plain) {
			t.Fatalf("block %d stored in the clear", b)
		}
		sum := sha256.Sum256(stored)
		if d, _ := store.BlockDigest(id, b); !bytes.Equal(d, sum[:]) {
			t.Fatalf("block %d: digest not over the stored ciphertext", b)
		}
		x.XOR(b, stored, stored)
		if !bytes.Equal(stored, plain) {
			t.Fatalf("block %d does not decrypt to the content with the handed-out key", b)
		}
	}
	if _, err := seed2.TaskKey(blockstore.Task{ID: plainID}); err != nil {
		t.Errorf("TaskKey of a plain task: %v, want nil", err)
	}
	other := NewSeed(SeedConfig{Store: store, E2ESecret: []byte("another secret")})
	defer other.Close()
	if _, err := other.TaskKey(tk); !errors.Is(err, blockstore.ErrE2EKey) {
		t.Fatalf("a seed with another secret handed out a key: %v", err)
	}
	if _, err := NewSeed(SeedConfig{Store: store}).TaskKey(tk); !errors.Is(err, blockstore.ErrE2EKey) {
		t.Fatalf("a seed without a secret handed out a key: %v", err)
	}
}
