package blockstore

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/dfly-p2p/dfly/internal/directio"
)

func testKey(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

// markedContent is a task of n 4 KiB blocks whose every block starts with a
// 32-byte marker (so that the plaintext is easy to look for on disk).
func markedContent(id string, blocks int) (Task, []byte, []byte) {
	task, data := content(id, blocks*4096)
	marker := []byte("dfly-at-rest-marker-0123456789ab")
	for i := range blocks {
		copy(data[i*4096:], marker)
	}
	sum := sha256.Sum256(data)
	task.Digest = "sha256:" + hex.EncodeToString(sum[:])
	return task, data, marker
}

// grepStore reports the files under dir that contain needle.
func grepStore(t *testing.T, dir string, needle []byte) []string {
	t.Helper()
	var hits []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, needle) {
				hits = append(hits, p)
			}
		}
		return nil
	})
	return hits
}

func readAll(t *testing.T, s *Store, id string) []byte {
	t.Helper()
	var out bytes.Buffer
	if _, err := s.WriteTo(ctx, id, &out); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func TestParseKey(t *testing.T) {
	key := randBytes(KeySize, 7)
	tests := []struct {
		name string
		in   []byte
		raw  bool
		ok   bool
	}{
		{"raw 32 bytes", key, true, true},
		{"raw 32 bytes from the environment", key, false, false},
		{"hex", []byte(hex.EncodeToString(key)), false, true},
		{"hex upper case with newline", []byte(strings.ToUpper(hex.EncodeToString(key)) + "\n"), true, true},
		{"base64", []byte(base64.StdEncoding.EncodeToString(key)), false, true},
		{"base64 with newline", []byte(base64.StdEncoding.EncodeToString(key) + "\n"), true, true},
		{"base64 unpadded", []byte(base64.RawStdEncoding.EncodeToString(key)), false, true},
		{"base64 URL alphabet", []byte(base64.URLEncoding.EncodeToString(key)), false, true},
		{"31 raw bytes", key[:31], true, false},
		{"33 raw bytes", append(bytes.Clone(key), 1), true, false},
		{"63 hex digits", []byte(hex.EncodeToString(key)[:63]), false, false},
		{"hex of 16 bytes", []byte(hex.EncodeToString(key[:16])), false, false},
		{"base64 of 16 bytes", []byte(base64.StdEncoding.EncodeToString(key[:16])), false, false},
		{"64 characters, not hex", []byte(strings.Repeat("z", 64)), false, false},
		{"empty", nil, true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseKey(tc.in, tc.raw)
			if !tc.ok {
				if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "hex") {
					t.Fatalf("ParseKey = %x, %v; want ErrInvalid naming the formats", got, err)
				}
				return
			}
			if err != nil || !bytes.Equal(got, key) {
				t.Fatalf("ParseKey = %x, %v; want %x", got, err, key)
			}
		})
	}
}

func TestLoadKey(t *testing.T) {
	dir := t.TempDir()
	key := randBytes(KeySize, 8)
	write := func(name string, b []byte, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	raw := write("raw", key, 0o600)
	hexf := write("hex", []byte(hex.EncodeToString(key)+"\n"), 0o400)
	open := write("open", key, 0o644)
	group := write("group", key, 0o640)
	short := write("short", key[:20], 0o600)
	tests := []struct {
		name, file, env string
		want            []byte
		err             string // substring of the error; "" = no error
	}{
		{"nothing", "", "", nil, ""},
		{"raw file", raw, "", key, ""},
		{"hex file", hexf, "", key, ""},
		{"environment hex", "", hex.EncodeToString(key), key, ""},
		{"environment base64", "", base64.StdEncoding.EncodeToString(key), key, ""},
		{"world-readable file", open, "", nil, "chmod 600"},
		{"group-readable file", group, "", nil, "chmod 600"},
		{"short file", short, "", nil, "20 bytes"},
		{"missing file", filepath.Join(dir, "nope"), "", nil, "no such file"},
		{"directory", dir, "", nil, "not a regular file"},
		{"bad environment", "", "secret", nil, KeyEnv},
		{"both", raw, hex.EncodeToString(key), nil, "use one"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := LoadKey(tc.file, tc.env)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("LoadKey = %x, %v; want an error saying %q", got, err, tc.err)
				}
				return
			}
			if err != nil || !bytes.Equal(got, tc.want) {
				t.Fatalf("LoadKey = %x, %v; want %x", got, err, tc.want)
			}
		})
	}
}

// TestSealedRoundTrip: with a key, blocks go to disk encrypted (the
// plaintext is nowhere under the store), come back exact through every
// read path, and survive a restart.
func TestSealedRoundTrip(t *testing.T) {
	dir := t.TempDir()
	opt := Options{GCInterval: -1, Key: testKey(1)}
	s := openT(t, dir, opt)
	task, data, marker := markedContent("enc", 6)
	created, err := s.CreateTask(ctx, task)
	if err != nil {
		t.Fatal(err)
	}
	if !created.Sealed {
		t.Fatal("a task created with a key is not sealed")
	}
	putAll(t, s, task, data)
	var out bytes.Buffer
	if _, err := s.VerifyAndComplete(ctx, "enc", &out); err != nil || !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("verify: %v", err)
	}
	for i := range task.NumBlocks() {
		blk, err := s.ReadBlock("enc", i)
		if err != nil || !bytes.Equal(blk, data[i*4096:(i+1)*4096]) {
			t.Fatalf("block %d: %v", i, err)
		}
	}
	checkOpenBlocks(t, s, task, data)
	checkOpenBlocks(t, s, task, data) // pooled buffers reused
	p := make([]byte, 5000)
	if _, err := s.ReadAt("enc", p, 4000); err != nil || !bytes.Equal(p, data[4000:9000]) {
		t.Fatalf("ReadAt: %v", err)
	}
	s.Close()

	if fi, err := os.Stat(s.dataPath("enc")); err != nil || fi.Size() != int64(len(data)) {
		t.Fatalf("data file: %v, want %d bytes (same offsets as plain)", err, len(data))
	}
	if hits := grepStore(t, dir, marker); len(hits) > 0 {
		t.Fatalf("plaintext marker found on disk in %v", hits)
	}
	if hits := grepStore(t, dir, data[100:132]); len(hits) > 0 {
		t.Fatalf("plaintext found on disk in %v", hits)
	}

	s = openT(t, dir, opt)
	if got, _ := s.Task("enc"); got.State != StateComplete || !got.Sealed {
		t.Fatalf("after restart: %+v", got)
	}
	if !bytes.Equal(readAll(t, s, "enc"), data) {
		t.Fatal("content after restart differs")
	}
	checkOpenBlocks(t, s, task, data)
	if st := s.Stats(); st.Corrupt != 0 {
		t.Fatalf("corrupt blocks: %d", st.Corrupt)
	}
}

// TestSealedTamperDetected: a flipped ciphertext byte fails authentication
// on read: the block is dropped, its task pending again, ErrCorrupt
// returned, and a refetched copy makes the task whole.
func TestSealedTamperDetected(t *testing.T) {
	dir := t.TempDir()
	opt := Options{GCInterval: -1, Key: testKey(2)}
	s := openT(t, dir, opt)
	task, data, _ := markedContent("c", 4)
	if _, err := s.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	putAll(t, s, task, data)
	if _, err := s.VerifyAndComplete(ctx, "c", nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	path := s.dataPath("c")
	b, _ := os.ReadFile(path)
	b[2*4096+100] ^= 0x01
	os.WriteFile(path, b, 0o644)

	s = openT(t, dir, opt)
	if _, err := s.ReadBlock("c", 1); err != nil {
		t.Fatalf("intact block: %v", err)
	}
	_, err := s.ReadBlock("c", 2)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "authentication") {
		t.Fatalf("tampered block: %v, want ErrCorrupt saying authentication failed", err)
	}
	if s.HasBlock("c", 2) {
		t.Fatal("tampered block still present")
	}
	if got, _ := s.Task("c"); got.State != StatePending {
		t.Fatalf("task is %s, want pending", got.State)
	}
	if s.Stats().Corrupt != 1 {
		t.Fatalf("corrupt counter %d, want 1", s.Stats().Corrupt)
	}
	if err := s.PutBlock(ctx, "c", 2, data[2*4096:3*4096]); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := s.VerifyAndComplete(ctx, "c", &out); err != nil || !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("after refetch: %v", err)
	}

	// Authentication does not rest on the file's stamp: a change the stamp
	// check misses (here: the store is told the file is as it left it) is
	// caught on the next read all the same, also through OpenBlock.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{b[3*4096] ^ 0x80}, 3*4096)
	got, _ := stampOf(f)
	f.Close()
	st, _ := s.state("c")
	st.mu.Lock()
	st.stamp = got
	st.mu.Unlock()
	if _, _, err := s.OpenBlock("c", 3); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("OpenBlock of a block changed behind a kept stamp: %v, want ErrCorrupt", err)
	}
	if s.HasBlock("c", 3) {
		t.Fatal("block 3 still present")
	}
}

// TestSealedWrongKey: a wrong key and no key are refused, clearly and
// without changing a byte; the right key then finds every block.
func TestSealedWrongKey(t *testing.T) {
	dir := t.TempDir()
	right := Options{GCInterval: -1, Key: testKey(3)}
	s := openT(t, dir, right)
	task, data, _ := markedContent("k", 5)
	if _, err := s.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	putAll(t, s, task, data)
	if _, err := s.VerifyAndComplete(ctx, "k", nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	before, _ := os.ReadFile(s.dataPath("k"))

	_, err := Open(dir, Options{GCInterval: -1, Key: testKey(4)})
	if !errors.Is(err, ErrWrongKey) || !strings.Contains(err.Error(), "nothing was changed") || !strings.Contains(err.Error(), KeyFingerprint(testKey(3))) {
		t.Fatalf("open with a wrong key: %v, want ErrWrongKey naming the store's key", err)
	}
	_, err = Open(dir, Options{GCInterval: -1})
	if !errors.Is(err, ErrKeyRequired) || !strings.Contains(err.Error(), "--store-key-file") {
		t.Fatalf("open without a key: %v, want ErrKeyRequired saying what to pass", err)
	}
	if _, err := Open(dir, Options{GCInterval: -1, Key: testKey(3)[:16]}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("open with a 16-byte key: %v, want ErrInvalid", err)
	}
	after, _ := os.ReadFile(s.dataPath("k"))
	if !bytes.Equal(before, after) {
		t.Fatal("the refused opens changed the data file")
	}
	if _, err := os.Stat(filepath.Join(dir, quarantineDir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused open quarantined something: %v", err)
	}

	s = openT(t, dir, right)
	if missing, _ := s.Missing("k"); len(missing) != 0 {
		t.Fatalf("blocks lost after the refused opens: %v", missing)
	}
	if got, _ := s.Task("k"); got.State != StateComplete {
		t.Fatalf("task is %s after the refused opens", got.State)
	}
	if !bytes.Equal(readAll(t, s, "k"), data) {
		t.Fatal("content differs after the refused opens")
	}
}

// swapValues swaps the Badger values of keys a and b of the closed store in dir.
func swapValues(t *testing.T, dir string, a, b []byte) {
	t.Helper()
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil).WithValueThreshold(1 << 10))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(txn *badger.Txn) error {
		ia, err := txn.Get(a)
		if err != nil {
			return err
		}
		va, _ := ia.ValueCopy(nil)
		ib, err := txn.Get(b)
		if err != nil {
			return err
		}
		vb, _ := ib.ValueCopy(nil)
		if err := txn.Set(a, vb); err != nil {
			return err
		}
		return txn.Set(b, va)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestSealedSwappedBlocks: blocks moved between indexes, with or without
// their seal records, or from another task, fail authentication.
func TestSealedSwappedBlocks(t *testing.T) {
	dir := t.TempDir()
	opt := Options{GCInterval: -1, Key: testKey(5)}
	s := openT(t, dir, opt)
	task, data, _ := markedContent("a", 6)
	other := task
	other.ID = "b"
	for _, tk := range []Task{task, other} {
		if _, err := s.CreateTask(ctx, tk); err != nil {
			t.Fatal(err)
		}
		putAll(t, s, tk, data)
	}
	s.Close()
	swap := func(path string, i, j int) {
		b, _ := os.ReadFile(path)
		x := bytes.Clone(b[i*4096 : (i+1)*4096])
		copy(b[i*4096:], b[j*4096:(j+1)*4096])
		copy(b[j*4096:], x)
		os.WriteFile(path, b, 0o644)
	}
	// Blocks 0 and 1: bytes swapped. Blocks 2 and 3: bytes and seal records
	// swapped. Block 4 of task a: task b's block 4, bytes and record.
	swap(s.dataPath("a"), 0, 1)
	swap(s.dataPath("a"), 2, 3)
	swapValues(t, dir, blockKey("a", 2), blockKey("a", 3))
	ab, _ := os.ReadFile(s.dataPath("a"))
	bb, _ := os.ReadFile(s.dataPath("b"))
	copy(ab[4*4096:5*4096], bb[4*4096:5*4096])
	os.WriteFile(s.dataPath("a"), ab, 0o644)
	swapValues(t, dir, blockKey("a", 4), blockKey("b", 4))

	s = openT(t, dir, opt)
	for i := range 5 {
		if _, err := s.ReadBlock("a", i); !errors.Is(err, ErrCorrupt) {
			t.Errorf("block %d moved: %v, want ErrCorrupt", i, err)
		}
	}
	if blk, err := s.ReadBlock("a", 5); err != nil || !bytes.Equal(blk, data[5*4096:]) {
		t.Fatalf("untouched block 5: %v", err)
	}
	if missing, _ := s.Missing("a"); len(missing) != 5 {
		t.Fatalf("missing after the swaps: %v, want blocks 0-4", missing)
	}
}

// TestPlainStoreThenKey: a plain store given a key keeps its plain tasks
// readable, seals new ones, and from then on needs the key.
func TestPlainStoreThenKey(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, Options{GCInterval: -1})
	plain, pdata, _ := markedContent("p", 3)
	if _, err := s.CreateTask(ctx, plain); err != nil {
		t.Fatal(err)
	}
	putAll(t, s, plain, pdata)
	if _, err := s.CreateTask(ctx, Task{ID: "want-sealed", Length: 10, Sealed: true}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("sealed task on a store without a key: %v, want ErrInvalid", err)
	}
	s.Close()

	opt := Options{GCInterval: -1, Key: testKey(6)}
	s = openT(t, dir, opt)
	if got, _ := s.Task("p"); got.Sealed {
		t.Fatal("an existing plain task turned sealed")
	}
	if !bytes.Equal(readAll(t, s, "p"), pdata) {
		t.Fatal("plain task unreadable with a key")
	}
	task, data, marker := markedContent("n", 3)
	for i := range 3 {
		copy(data[i*4096+64:], "new-task-marker-0123456789abcdef")
	}
	sum := sha256.Sum256(data)
	task.Digest = "sha256:" + hex.EncodeToString(sum[:])
	if got, err := s.CreateTask(ctx, task); err != nil || !got.Sealed {
		t.Fatalf("new task: %+v, %v; want sealed", got, err)
	}
	putAll(t, s, task, data)
	if _, err := s.UpdateTask("n", func(t *Task) error { t.Sealed = false; return nil }); !errors.Is(err, ErrInvalid) {
		t.Fatalf("UpdateTask unsealing a task: %v, want ErrInvalid", err)
	}
	s.Close()
	if hits := grepStore(t, dir, marker); len(hits) != 1 || !strings.HasSuffix(hits[0], "p.blocks") {
		t.Fatalf("marker found in %v, want only in the plain task's data file", hits)
	}
	if hits := grepStore(t, dir, []byte("new-task-marker-0123456789abcdef")); len(hits) > 0 {
		t.Fatalf("the new task's plaintext is on disk in %v", hits)
	}
	if _, err := Open(dir, Options{GCInterval: -1}); !errors.Is(err, ErrKeyRequired) {
		t.Fatalf("open without a key after one was given: %v, want ErrKeyRequired", err)
	}
	s = openT(t, dir, opt)
	if !bytes.Equal(readAll(t, s, "n"), data) || !bytes.Equal(readAll(t, s, "p"), pdata) {
		t.Fatal("content differs after restart")
	}
}

// TestSealedKeyCheckLost: a store holding sealed tasks whose key check is
// gone cannot verify a key and refuses to open, changing nothing.
func TestSealedKeyCheckLost(t *testing.T) {
	dir := t.TempDir()
	opt := Options{GCInterval: -1, Key: testKey(7)}
	s := openT(t, dir, opt)
	task, data, _ := markedContent("x", 2)
	if _, err := s.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	putAll(t, s, task, data)
	s.Close()
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil).WithValueThreshold(1 << 10))
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(txn *badger.Txn) error { return txn.Delete(keyCheckKey) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	for _, o := range []Options{opt, {GCInterval: -1}} {
		if _, err := Open(dir, o); !errors.Is(err, ErrKeyRequired) || !strings.Contains(err.Error(), "nothing was changed") {
			t.Fatalf("open with the key check gone: %v, want ErrKeyRequired", err)
		}
	}
	if _, err := os.Stat(s.dataPath("x")); err != nil {
		t.Fatalf("data file after the refused opens: %v", err)
	}
}

// TestSealedDirectIO: encryption at rest with O_DIRECT block I/O.
func TestSealedDirectIO(t *testing.T) {
	dir := t.TempDir()
	opt := Options{GCInterval: -1, DirectIO: true, Key: testKey(8)}
	s := openT(t, dir, opt)
	const bs = 1 << 20
	data := randBytes(3*bs+5000, 12)
	sum := sha256.Sum256(data)
	task := Task{ID: "d", Length: int64(len(data)), BlockSize: bs, Digest: "sha256:" + hex.EncodeToString(sum[:])}
	if _, err := s.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	for i := range task.NumBlocks() {
		blk := directio.Buffer(task.BlockLen(i))
		copy(blk, data[int64(i)*bs:])
		if err := s.PutBlock(ctx, "d", i, blk); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(blk, data[int64(i)*bs:int64(i)*bs+task.BlockLen(i)]) {
			t.Fatal("PutBlock changed the caller's bytes")
		}
	}
	if s.noDirect.Load() {
		t.Logf("the filesystem of %s refuses O_DIRECT: only the fallback was exercised", dir)
	}
	var out bytes.Buffer
	if _, err := s.VerifyAndComplete(ctx, "d", &out); err != nil || !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("verify: %v", err)
	}
	checkOpenBlocks(t, s, task, data)
	if n, err := s.Scrub(ctx, "d"); err != nil || n != 0 {
		t.Fatalf("scrub: %d, %v", n, err)
	}
	s.Close()
	b, _ := os.ReadFile(s.dataPath("d"))
	if len(b) != len(data) || bytes.Contains(b, data[bs:bs+64]) {
		t.Fatal("data file is not the ciphertext of the content")
	}
	b[2*bs+9] ^= 4
	os.WriteFile(s.dataPath("d"), b, 0o644)
	s = openT(t, dir, opt)
	if n, err := s.Scrub(ctx, "d"); err != nil || n != 1 || s.HasBlock("d", 2) {
		t.Fatalf("scrub after damage: dropped %d, %v; want block 2", n, err)
	}
}

// TestSealedMigratedLegacyStore: a store of an older version (bytes in
// Badger) opened with a key migrates, its tasks plain; new ones are sealed.
func TestSealedMigratedLegacyStore(t *testing.T) {
	dir := t.TempDir()
	task, data := content("old", 2*4096+10)
	task.State = StatePending
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil).WithValueThreshold(1 << 10))
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(txn *badger.Txn) error {
		meta, _ := json.Marshal(task)
		if err := txn.Set(taskKey("old"), meta); err != nil {
			return err
		}
		for i := range task.NumBlocks() {
			off := int64(i) * task.BlockSize
			blk := data[off : off+task.BlockLen(i)]
			sum := sha256.Sum256(blk)
			if err := txn.Set(digestKey("old", i), sum[:]); err != nil {
				return err
			}
			if err := txn.Set(blockKey("old", i), blk); err != nil {
				return err
			}
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	s := openT(t, dir, Options{GCInterval: -1, Key: testKey(9)})
	if got, _ := s.Task("old"); got.Sealed {
		t.Fatal("migrated task is sealed")
	}
	if _, err := s.VerifyAndComplete(ctx, "old", nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readAll(t, s, "old"), data) {
		t.Fatal("migrated content differs")
	}
}

// TestSealedForeignChange: the stamp check keeps working on sealed tasks.
func TestSealedForeignChange(t *testing.T) {
	s := openT(t, t.TempDir(), Options{GCInterval: -1, Key: testKey(10)})
	task, data, _ := markedContent("f", 3)
	if _, err := s.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	putAll(t, s, task, data)
	flipForeign(t, s.dataPath("f"), 4096+5)
	if _, err := s.ReadBlock("f", 1); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("read after a foreign change: %v", err)
	}
	if s.Stats().ForeignChanges != 1 {
		t.Fatalf("foreign changes %d, want 1", s.Stats().ForeignChanges)
	}
	if _, err := s.WriteTo(ctx, "f", io.Discard); !errors.Is(err, ErrNotFound) {
		t.Fatalf("WriteTo over the dropped block: %v, want ErrNotFound", err)
	}
}

// FuzzDecodeSeal: the seal record decoder never panics, accepts exactly
// the records encode writes, and round-trips them.
func FuzzDecodeSeal(f *testing.F) {
	f.Add(sealRec{}.encode())
	f.Add([]byte{})
	f.Add([]byte{2, 1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeSeal(b)
		if err != nil {
			return
		}
		if !bytes.Equal(r.encode(), b) {
			t.Fatalf("decode(%x) = %+v re-encodes to %x", b, r, r.encode())
		}
	})
}

// FuzzDecodeKeyCheck: the key check decoder never panics, and a key check
// that decodes verifies only under the key that wrote it.
func FuzzDecodeKeyCheck(f *testing.F) {
	z, _ := newSealer(testKey(1))
	f.Add(z.keyCheck())
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{1}, keyCheckLen))
	f.Fuzz(func(t *testing.T, b []byte) {
		kc, err := decodeKeyCheck(b)
		if err != nil {
			return
		}
		if len(kc.fp) != 2*fingerprintLen || len(kc.nonce) != nonceSize {
			t.Fatalf("decoded %+v", kc)
		}
		z.verify(kc) // must not panic, whatever it says
		if other, _ := newSealer(testKey(2)); other.verify(kc) {
			t.Fatal("a key check verified under two keys")
		}
	})
}

// FuzzSealOpen: opening arbitrary ciphertext and records never panics nor
// succeeds unless they are what seal wrote for that block.
func FuzzSealOpen(f *testing.F) {
	z, _ := newSealer(testKey(3))
	ct, rec := z.seal(make([]byte, 0, 64), []byte("block bytes"), "t", 1)
	f.Add(bytes.Clone(ct), rec.encode(), 1)
	f.Add([]byte{}, sealRec{}.encode(), 0)
	f.Fuzz(func(t *testing.T, c, r []byte, idx int) {
		rec, err := decodeSeal(r)
		if err != nil {
			return
		}
		plain, err := z.open(bytes.Clone(c), rec, "t", idx)
		if err == nil && (idx != 1 || string(plain) != "block bytes") {
			t.Fatalf("forged block opened: idx %d, %q", idx, plain)
		}
	})
}
