package blockstore

// Fuzz targets for what the store parses: digests and task IDs (from
// requests), bitmaps (from peers' announcements and the index), and the
// index's own records read back at Open.

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"log/slog"
	"strings"
	"testing"

	badger "github.com/dgraph-io/badger/v4"
)

// FuzzParseDigest: an accepted digest is sha256 or md5 with the right
// number of lower-case hex digits, parses again to itself, and names a
// valid task ID; a refused one is ErrInvalid.
func FuzzParseDigest(f *testing.F) {
	for _, s := range []string{"sha256:" + strings.Repeat("ab", 32), "SHA256:" + strings.Repeat("AB", 32), "md5:" + strings.Repeat("0", 32),
		"sha256:" + strings.Repeat("g", 64), "sha512:00", "sha256", ":", "md5:" + strings.Repeat("0", 31)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, d string) {
		algo, hexsum, err := ParseDigest(d)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseDigest(%q): %v, want ErrInvalid", d, err)
			}
			if _, err := TaskIDForDigest(d); !errors.Is(err, ErrInvalid) {
				t.Fatalf("TaskIDForDigest(%q) = %v, want ErrInvalid", d, err)
			}
			return
		}
		want := map[string]int{"sha256": 64, "md5": 32}[algo]
		if raw, herr := hex.DecodeString(hexsum); want == 0 || len(hexsum) != want || herr != nil || hex.EncodeToString(raw) != hexsum {
			t.Fatalf("ParseDigest(%q) = %q, %q", d, algo, hexsum)
		}
		if a2, h2, err := ParseDigest(algo + ":" + hexsum); err != nil || a2 != algo || h2 != hexsum {
			t.Fatalf("ParseDigest of its own result %s:%s = %q, %q, %v", algo, hexsum, a2, h2, err)
		}
		id, err := TaskIDForDigest(d)
		if err != nil || id != algo+"-"+hexsum || validID(id) != nil {
			t.Fatalf("TaskIDForDigest(%q) = %q, %v", d, id, err)
		}
		if _, err := NewHash(algo); err != nil {
			t.Fatalf("NewHash(%q): %v", algo, err)
		}
	})
}

// FuzzTaskIDFor: task IDs of requests. Normalising a URL is idempotent;
// an accepted ID is a valid store ID, equals the request's own ID when it
// gives one, and is the URL's (or the digest's) derivation when it does
// not; a refusal is ErrInvalid.
func FuzzTaskIDFor(f *testing.F) {
	d := "sha256:" + strings.Repeat("ab", 32)
	u := "http://Example.COM:80/a/b?b=2&a=1&Expires=3#frag"
	uid, _ := TaskIDForURL(u, "", "")
	f.Add("", u, "", "")
	f.Add(uid, u, "", "")
	f.Add("sha256-"+strings.Repeat("ab", 32), u, "t", d)
	f.Add("other", u, "", d)
	f.Add("", "", "", d)
	f.Add("", "", "", "")
	f.Add("x", "", "", "")
	f.Add(E2ETaskID(uid), u, "", "")
	f.Add("", "https://h:443/%zz", "", "")
	f.Add("", "relative/path", "", "")
	f.Add("", "http://[::1]:80/?a=%20&a=+", "tag", "")
	f.Fuzz(func(t *testing.T, taskID, rawURL, tag, digest string) {
		if n, err := NormalizeURL(rawURL); err == nil {
			if n2, err := NormalizeURL(n); err != nil || n2 != n {
				t.Fatalf("NormalizeURL(%q) = %q, normalised again: %q, %v", rawURL, n, n2, err)
			}
		} else if !errors.Is(err, ErrInvalid) {
			t.Fatalf("NormalizeURL(%q): %v, want ErrInvalid", rawURL, err)
		}
		// The end-to-end representation: the E2ETaskID of a derivation, or an error.
		if eid, err := TaskIDForE2E(taskID, rawURL, tag, digest); err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("TaskIDForE2E(%q, %q, %q, %q): %v, want ErrInvalid", taskID, rawURL, tag, digest, err)
			}
		} else {
			fromURL, uerr := TaskIDForURL(rawURL, tag, "")
			fromDigest, derr := TaskIDForDigest(digest)
			if !(uerr == nil && rawURL != "" && eid == E2ETaskID(fromURL)) && !(derr == nil && digest != "" && eid == E2ETaskID(fromDigest)) {
				t.Fatalf("TaskIDForE2E(%q, %q, %q, %q) = %q: the e2e id of neither derivation", taskID, rawURL, tag, digest, eid)
			}
			if verr := validID(eid); verr != nil {
				t.Fatalf("TaskIDForE2E(...) = %q: %v", eid, verr)
			}
		}
		id, err := TaskIDFor(taskID, rawURL, tag, digest)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("TaskIDFor(%q, %q, %q, %q): %v, want ErrInvalid", taskID, rawURL, tag, digest, err)
			}
			return
		}
		if verr := validID(id); verr != nil {
			t.Fatalf("TaskIDFor(%q, %q, %q, %q) = %q: %v", taskID, rawURL, tag, digest, id, verr)
		}
		if taskID != "" && id != taskID {
			t.Fatalf("TaskIDFor(%q, ...) = %q, another ID", taskID, id)
		}
		fromURL, uerr := TaskIDForURL(rawURL, tag, "")
		fromDigest, derr := TaskIDForDigest(digest)
		switch {
		case taskID == "" && rawURL != "":
			if uerr != nil || id != fromURL {
				t.Fatalf("TaskIDFor(\"\", %q, %q, ...) = %q, want %q (%v)", rawURL, tag, id, fromURL, uerr)
			}
		case taskID == "":
			if derr != nil || id != fromDigest {
				t.Fatalf("TaskIDFor(\"\", \"\", _, %q) = %q, want %q (%v)", digest, id, fromDigest, derr)
			}
		default:
			if !(uerr == nil && rawURL != "" && id == fromURL) && !(derr == nil && digest != "" && id == fromDigest) {
				t.Fatalf("TaskIDFor(%q, %q, %q, %q) accepted an ID that is neither derivation", taskID, rawURL, tag, digest)
			}
		}
	})
}

// FuzzBitmap: a bitmap from the wire or the index. Count is the number of
// blocks Has reports, Missing the others, a clone is equal and
// independent, and Has is false outside it.
func FuzzBitmap(f *testing.F) {
	f.Add([]byte{}, 0)
	f.Add([]byte{0xff, 0x01}, 12)
	f.Add([]byte{0x80, 0, 0x55}, 100)
	f.Add([]byte{0x01}, -3)
	f.Fuzz(func(t *testing.T, raw []byte, n int) {
		if len(raw) > 1<<12 {
			return
		}
		b := Bitmap(raw)
		bits := 8 * len(b)
		has := 0
		for i := 0; i < bits; i++ {
			if b.Has(i) {
				has++
			}
		}
		if has != b.Count() {
			t.Fatalf("Count %d, Has says %d", b.Count(), has)
		}
		for _, i := range []int{-1, -1 << 40, bits, bits + 7, 1 << 40} {
			if b.Has(i) {
				t.Fatalf("Has(%d) of a %d-bit bitmap", i, bits)
			}
		}
		n = min(max(n, -1), bits+64)
		missing := b.Missing(n)
		if want := max(n, 0) - min(has, max(n, 0)); n >= bits && len(missing) != bits-has+(n-bits) || n < bits && len(missing) > max(n, 0) || want < 0 {
			t.Fatalf("Missing(%d) of a bitmap with %d of %d set: %d", n, has, bits, len(missing))
		}
		for _, i := range missing {
			if i < 0 || i >= max(n, 0) || b.Has(i) {
				t.Fatalf("Missing(%d) lists %d", n, i)
			}
		}
		c := b.Clone()
		if string(c) != string(b) {
			t.Fatal("clone differs")
		}
		for i := range bits {
			c.Set(i)
		}
		c.Set(-1)
		c.Set(bits)
		c.Clear(-1)
		if c.Count() != bits || b.Count() != has {
			t.Fatalf("after setting every bit of the clone: %d of %d set, original %d (was %d)", c.Count(), bits, b.Count(), has)
		}
		for i := range bits {
			c.Clear(i)
		}
		if c.Count() != 0 {
			t.Fatalf("after clearing every bit: %d set", c.Count())
		}
	})
}

// FuzzIndexRecords: the records Open reads back from the index (a task's
// metadata JSON, a block's and a digest's key and value, a tombstone), as
// a damaged or older index may hold them. Open never panics or hangs: it
// refuses the store, or opens one whose tasks are all well-formed (a
// valid ID, the one its record is filed under; a length and a block size
// the store accepts) and whose digests and bitmaps stay within the task.
func FuzzIndexRecords(f *testing.F) {
	good := `{"id":"t1","length":10000,"block_size":4096,"state":"complete","created_at":"2024-01-01T00:00:00Z","accessed_at":"2024-01-01T00:00:00Z"}`
	f.Add("t1", []byte(good), uint32(1), []byte("0123456789abcdef0123456789abcdef"), uint32(2), []byte{}, false)
	f.Add("t1", []byte(good), uint32(7), []byte("x"), uint32(1<<31), []byte("legacy bytes"), true)
	f.Add("t1", []byte(`{"id":"t1","length":-5,"block_size":3}`), uint32(0), []byte{}, uint32(0), []byte{}, false)
	f.Add("t1", []byte(`{"id":"t1","length":1099511627776,"block_size":1}`), uint32(0), []byte{}, uint32(0), []byte{}, false)
	f.Add("t1", []byte(`{"id":"../x","length":1,"block_size":1}`), uint32(0), []byte{}, uint32(0), []byte{}, false)
	f.Add("t1", []byte(`{"id":"t2","length":1,"block_size":1,"sealed":true}`), uint32(0), []byte{}, uint32(0), []byte{1, 2}, false)
	f.Add("", []byte(`{"id":""}`), uint32(0), []byte{}, uint32(0), []byte{}, false)
	f.Add("t1", []byte(`not json`), uint32(0), []byte{}, uint32(0), []byte{}, false)
	f.Fuzz(func(t *testing.T, key string, meta []byte, didx uint32, dval []byte, bidx uint32, bval []byte, tomb bool) {
		if len(meta) > 4096 || len(dval) > 4096 || len(bval) > 4096 || len(key) > 256 {
			return
		}
		dir := t.TempDir()
		opts := badger.DefaultOptions(dir).WithLogger(nil).WithValueThreshold(1 << 10).WithNumVersionsToKeep(1).
			WithMemTableSize(16 << 20).WithBlockCacheSize(16 << 20).WithValueLogFileSize(256 << 20).WithMetricsEnabled(false)
		db, err := badger.Open(opts)
		if err != nil {
			t.Fatal(err)
		}
		err = db.Update(func(txn *badger.Txn) error {
			sets := [][2][]byte{
				{[]byte("t/" + key), meta},
				{binary.BigEndian.AppendUint32([]byte("d/"+key+"/"), didx), dval},
				{binary.BigEndian.AppendUint32([]byte("b/"+key+"/"), bidx), bval},
			}
			if tomb {
				sets = append(sets, [2][]byte{[]byte("x/" + key), nil})
			}
			for _, kv := range sets {
				if err := txn.Set(kv[0], kv[1]); err != nil {
					return err
				}
			}
			return nil
		})
		if cerr := db.Close(); err != nil || cerr != nil {
			t.Fatal(err, cerr)
		}
		s, err := Open(dir, Options{Logger: slog.New(slog.DiscardHandler), GCInterval: -1, FreeSpace: func(string) (int64, int64, error) { return 1 << 40, 1 << 40, nil }})
		if err != nil {
			return
		}
		defer s.Close()
		for _, task := range s.List() {
			if err := validID(task.ID); err != nil || task.ID != key {
				t.Fatalf("opened with task %q filed under %q: %v", task.ID, key, err)
			}
			if task.Length < 0 || task.BlockSize <= 0 || task.BlockSize&(task.BlockSize-1) != 0 {
				t.Fatalf("opened with task %q of length %d, block size %d", task.ID, task.Length, task.BlockSize)
			}
			n := task.NumBlocks()
			bm, err := s.Bitmap(task.ID)
			if err != nil || len(bm) != (n+7)/8 {
				t.Fatalf("task %q of %d blocks: bitmap of %d bytes, %v", task.ID, n, len(bm), err)
			}
			if miss, err := s.Missing(task.ID); err != nil || len(miss) != n-bm.Count() {
				t.Fatalf("task %q: %d missing of %d, %d present: %v", task.ID, len(miss), n, bm.Count(), err)
			}
			if task.State == StateComplete && bm.Count() != n {
				t.Fatalf("task %q is complete with %d of %d blocks", task.ID, bm.Count(), n)
			}
		}
		if _, ok := s.BlockDigest(key, int(didx)); ok && int(didx) >= 1<<30 {
			t.Fatalf("digest of block %d kept", didx)
		}
	})
}
