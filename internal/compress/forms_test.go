package compress

import (
	"bytes"
	"crypto/sha256"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func quiet() *slog.Logger { return slog.New(slog.DiscardHandler) }

func openForms(t *testing.T, dir string, c *Codec) *Forms {
	t.Helper()
	f, err := OpenForms(dir, FormsOptions{Codec: c, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// aBlock is a compressible block with its digest and form.
type aBlock struct {
	plain, form, digest []byte
}

func makeBlock(t *testing.T, c *Codec, n int, seed uint64) aBlock {
	t.Helper()
	p := text(n, seed)
	form, ok := c.Trial(p)
	if !ok {
		t.Fatal("test block does not compress")
	}
	sum := sha256.Sum256(p)
	return aBlock{p, form, sum[:]}
}

// readForm reads an opened form to the end and closes it.
func readForm(t *testing.T, f *os.File) []byte {
	t.Helper()
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFormsPutOpenAndRebuild(t *testing.T) {
	c := newCodec(t)
	dir := t.TempDir()
	f := openForms(t, dir, c)
	b0, b1 := makeBlock(t, c, 256<<10, 1), makeBlock(t, c, 256<<10, 2)
	if err := f.Put("u1", 0, b0.digest, int64(len(b0.plain)), b0.form); err != nil {
		t.Fatal(err)
	}
	if err := f.PutNotWorth("u1", 1, b1.digest, int64(len(b1.plain))); err != nil {
		t.Fatal(err)
	}
	check := func(f *Forms) {
		t.Helper()
		if s := f.Lookup("u1", 0, b0.digest); s != Compressed {
			t.Errorf("block 0: %v, want Compressed", s)
		}
		if s := f.Lookup("u1", 1, b1.digest); s != NotWorth {
			t.Errorf("block 1: %v, want NotWorth", s)
		}
		if s := f.Lookup("u1", 2, b1.digest); s != Unknown {
			t.Errorf("block 2: %v, want Unknown", s)
		}
		fh, n, ok := f.Open("u1", 0, b0.digest)
		if !ok || n != int64(len(b0.form)) {
			t.Fatalf("Open: ok %v, %d bytes, want %d", ok, n, len(b0.form))
		}
		if got := readForm(t, fh); !bytes.Equal(got, b0.form) {
			t.Error("Open returned other bytes than the form")
		}
		if _, _, ok := f.Open("u1", 1, b1.digest); ok {
			t.Error("a not-worth marker opened as a form")
		}
		if st := f.Stats(); st.Forms != 1 || st.NotWorth != 1 || st.Bytes != int64(len(b0.form)) {
			t.Errorf("stats %+v", st)
		}
	}
	check(f)
	// Atomic writes leave no temporary files; the index is rebuilt from the files.
	ents, _ := os.ReadDir(filepath.Join(dir, "u1"))
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "0.zst 1.none" {
		t.Fatalf("files %v, want 0.zst 1.none", names)
	}
	// A process that died mid-write left a temporary file, and something
	// else left junk: both go at the next open.
	_ = os.WriteFile(filepath.Join(dir, "u1", ".tmp-123"), []byte("half a form"), 0o600)
	_ = os.WriteFile(filepath.Join(dir, "u1", "7.zst"), []byte("DFZ1 torn"), 0o600)
	_ = os.WriteFile(filepath.Join(dir, "u1", "notes.txt"), []byte("junk"), 0o600)
	_ = os.MkdirAll(filepath.Join(dir, "bad.name"), 0o755)
	f2 := openForms(t, dir, c)
	check(f2)
	for _, p := range []string{"u1/.tmp-123", "u1/7.zst", "u1/notes.txt", "bad.name"} {
		if _, err := os.Stat(filepath.Join(dir, p)); !os.IsNotExist(err) {
			t.Errorf("%s survived the reopen: %v", p, err)
		}
	}
}

func TestFormsStaleFormIgnored(t *testing.T) {
	c := newCodec(t)
	dir := t.TempDir()
	f := openForms(t, dir, c)
	b := makeBlock(t, c, 200<<10, 3)
	if err := f.Put("u1", 4, b.digest, int64(len(b.plain)), b.form); err != nil {
		t.Fatal(err)
	}
	// The task was fetched anew with other content: the block's digest is another.
	other := sha256.Sum256([]byte("other content"))
	if s := f.Lookup("u1", 4, other[:]); s != Unknown {
		t.Fatalf("a form of another version: %v, want Unknown", s)
	}
	if _, _, ok := f.Open("u1", 4, b.digest); ok {
		t.Fatal("a stale form was kept after it was met")
	}
	if _, err := os.Stat(filepath.Join(dir, "u1", "4.zst")); !os.IsNotExist(err) {
		t.Fatalf("the stale form's file is still there: %v", err)
	}
	// A marker replaced by a form (and back) leaves one file.
	_ = f.PutNotWorth("u1", 5, b.digest, int64(len(b.plain)))
	_ = f.Put("u1", 5, b.digest, int64(len(b.plain)), b.form)
	if _, err := os.Stat(filepath.Join(dir, "u1", "5.none")); !os.IsNotExist(err) {
		t.Fatal("the replaced marker is still there")
	}
	if st := f.Stats(); st.Forms != 1 || st.NotWorth != 0 {
		t.Fatalf("stats %+v, want one form", st)
	}
}

func TestFormsCorruptFileDropped(t *testing.T) {
	c := newCodec(t)
	dir := t.TempDir()
	f := openForms(t, dir, c)
	b := makeBlock(t, c, 300<<10, 4)
	if err := f.Put("u1", 0, b.digest, int64(len(b.plain)), b.form); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "u1", "0.zst")
	raw, _ := os.ReadFile(path)
	raw[formHeaderSize+len(b.form)/2] ^= 0x55
	tests := []struct {
		name   string
		reopen bool
	}{
		{"changed behind the process's back", false},
		{"found by a new process", true},
	}
	for _, tc := range tests {
		_ = f.Put("u1", 0, b.digest, int64(len(b.plain)), b.form)
		if err := os.WriteFile(path+".x", raw, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".x", path); err != nil {
			t.Fatal(err)
		}
		g := f
		if tc.reopen {
			g = openForms(t, dir, c)
		}
		if _, _, ok := g.Open("u1", 0, b.digest); ok {
			t.Errorf("%s: a corrupt form was served", tc.name)
		}
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s: the corrupt form was not removed", tc.name)
		}
		if s := g.Lookup("u1", 0, b.digest); s != Unknown {
			t.Errorf("%s: %v after the corrupt form went, want Unknown", tc.name, s)
		}
	}
}

func TestFormsRemovePruneAndCap(t *testing.T) {
	c := newCodec(t)
	dir := t.TempDir()
	b := makeBlock(t, c, 128<<10, 5)
	f, err := OpenForms(dir, FormsOptions{Codec: c, Logger: quiet(), MaxBytes: int64(2*len(b.form) + 1)})
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range []string{"u1", "u2", "sha256-ab"} {
		if err := f.Put(task, 0, b.digest, int64(len(b.plain)), b.form); err != nil && task != "sha256-ab" {
			t.Fatal(err)
		}
	}
	if st := f.Stats(); st.Forms != 2 {
		t.Fatalf("%d forms kept with room for 2", st.Forms)
	}
	if err := f.PutNotWorth("sha256-ab", 1, b.digest, int64(len(b.plain))); err != nil {
		t.Fatalf("a marker is kept when forms are at the cap: %v", err)
	}
	f.RemoveTask("u1")
	if _, err := os.Stat(filepath.Join(dir, "u1")); !os.IsNotExist(err) || f.Lookup("u1", 0, b.digest) != Unknown {
		t.Fatal("RemoveTask left the task's forms")
	}
	if n := f.Prune(func(task string) bool { return task == "u2" }); n != 1 {
		t.Fatalf("Prune removed %d tasks, want 1 (sha256-ab)", n)
	}
	if f.Lookup("u2", 0, b.digest) != Compressed || f.Lookup("sha256-ab", 1, b.digest) != Unknown {
		t.Fatal("Prune removed the wrong tasks")
	}
	if st := f.Stats(); st.Forms != 1 || st.NotWorth != 0 || st.Bytes != int64(len(b.form)) {
		t.Fatalf("stats after pruning %+v", st)
	}
}

func TestFormsRefuseBadInput(t *testing.T) {
	c := newCodec(t)
	dir := t.TempDir()
	f := openForms(t, dir, c)
	b := makeBlock(t, c, 64<<10, 6)
	n := int64(len(b.plain))
	tests := []struct {
		name   string
		task   string
		idx    int
		digest []byte
		form   []byte
	}{
		{"dot-dot task", "..", 0, b.digest, b.form},
		{"slash in task", "a/b", 0, b.digest, b.form},
		{"dot in task", "u.1", 0, b.digest, b.form},
		{"empty task", "", 0, b.digest, b.form},
		{"negative block", "u1", -1, b.digest, b.form},
		{"short digest", "u1", 0, b.digest[:8], b.form},
		{"form not smaller", "u1", 0, b.digest, make([]byte, n)},
		{"empty form", "u1", 0, b.digest, nil},
	}
	for _, tc := range tests {
		if err := f.Put(tc.task, tc.idx, tc.digest, n, tc.form); err == nil {
			t.Errorf("%s: Put accepted it", tc.name)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Fatalf("refused puts left %d entries in the side store", len(ents))
	}
	var nilForms *Forms
	if nilForms.Lookup("u1", 0, b.digest) != Unknown || nilForms.Put("u1", 0, b.digest, n, b.form) != nil || nilForms.Prune(nil) != 0 {
		t.Fatal("a nil side store is not inert")
	}
	if _, _, ok := nilForms.Open("u1", 0, b.digest); ok {
		t.Fatal("a nil side store opened a form")
	}
	if _, err := OpenForms(dir, FormsOptions{}); err == nil {
		t.Fatal("OpenForms without a codec")
	}
}

func TestParseName(t *testing.T) {
	tests := []struct {
		name string
		idx  int
		form bool
		ok   bool
	}{
		{"0.zst", 0, true, true},
		{"17.none", 17, false, true},
		{"17.zst.tmp", 0, false, false},
		{"017.zst", 0, false, false},
		{"-1.zst", 0, false, false},
		{".tmp-1", 0, false, false},
		{"x.zst", 0, false, false},
		{"5", 0, false, false},
	}
	for _, tc := range tests {
		idx, form, ok := parseName(tc.name)
		if ok != tc.ok || (ok && (idx != tc.idx || form != tc.form)) {
			t.Errorf("parseName(%q) = %d, %v, %v; want %d, %v, %v", tc.name, idx, form, ok, tc.idx, tc.form, tc.ok)
		}
	}
}

func TestParseHeader(t *testing.T) {
	sum := sha256.Sum256([]byte("x"))
	good := header(true, 1<<20, sum[:])
	mut := func(i int, v byte) []byte { b := bytes.Clone(good); b[i] = v; return b }
	tests := []struct {
		name string
		b    []byte
		ok   bool
	}{
		{"form", good, true},
		{"marker", header(false, 1<<20, sum[:]), true},
		{"short", good[:40], false},
		{"magic", mut(0, 'X'), false},
		{"kind", mut(4, 9), false},
		{"reserved", mut(6, 1), false},
		{"zero length", header(true, 0, sum[:]), false},
		{"length beyond a block", header(true, MaxBlock+1, sum[:]), false},
	}
	for _, tc := range tests {
		e, ok := parseHeader(tc.b)
		if ok != tc.ok {
			t.Errorf("%s: ok %v, want %v", tc.name, ok, tc.ok)
		}
		if ok && (e.digest != sum || e.plainLen != 1<<20) {
			t.Errorf("%s: parsed %+v", tc.name, e)
		}
	}
}
