package peer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/dfly-p2p/dfly/blockstore"
)

func TestCheckOutput(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chown(dir, 4242, 4242); err != nil && os.Geteuid() == 0 {
		t.Fatal(err)
	}
	root := &syscall.Ucred{Uid: 0}
	tests := []struct {
		name string
		out  string
		cred *syscall.Ucred
		ok   bool
	}{
		{"relative path", "out.bin", nil, false},
		{"missing directory", filepath.Join(dir, "no", "out.bin"), nil, false},
		{"parent is a file", filepath.Join("/etc/hostname", "x"), nil, false},
		{"root caller", filepath.Join(dir, "out.bin"), root, true},
		{"owner of the directory", filepath.Join(dir, "out.bin"), &syscall.Ucred{Uid: 4242}, os.Geteuid() == 0},
		{"someone else", filepath.Join(dir, "out.bin"), &syscall.Ucred{Uid: 5151}, os.Geteuid() == 5151},
		{"no credentials", filepath.Join(dir, "out.bin"), nil, true},
	}
	for _, tc := range tests {
		if err := checkOutput(tc.out, tc.cred); (err == nil) != tc.ok {
			t.Errorf("%s: checkOutput(%q) = %v, want ok=%v", tc.name, tc.out, err, tc.ok)
		}
	}
}

func TestWriteOutputAtomic(t *testing.T) {
	st, blocks := uploadFixture(t) // 3 blocks, block 1 missing
	ctx := context.Background()
	dir := t.TempDir()
	out := filepath.Join(dir, "out.bin")
	// Incomplete content: no output, no temporary file left behind.
	if _, err := writeOutput(ctx, st, "task", out, nil); !errors.Is(err, blockstore.ErrNotFound) {
		t.Fatalf("incomplete task: %v, want ErrNotFound", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("left %d entries behind", len(entries))
	}
	if err := st.PutBlock(ctx, "task", 1, blocks[1]); err != nil {
		t.Fatal(err)
	}
	// A declared sha256 the content does not match: refused, nothing written.
	if _, err := st.UpdateTask("task", func(m *blockstore.Task) error { m.Digest = "sha256:" + strings.Repeat("0", 64); return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := writeOutput(ctx, st, "task", out, nil); !errors.Is(err, blockstore.ErrDigestMismatch) {
		t.Fatalf("wrong digest: %v, want ErrDigestMismatch", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("left %d entries behind after a digest mismatch", len(entries))
	}
	if _, err := st.UpdateTask("task", func(m *blockstore.Task) error { m.Digest = ""; return nil }); err != nil {
		t.Fatal(err)
	}
	sum, err := writeOutput(ctx, st, "task", out, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := append(append(append([]byte(nil), blocks[0]...), blocks[1]...), blocks[2]...)
	got, err := os.ReadFile(out)
	if err != nil || string(got) != string(want) {
		t.Fatalf("output differs from the content (%v)", err)
	}
	if sum != fileSHA256(t, out) {
		t.Fatalf("reported sha256 %s, file %s", sum, fileSHA256(t, out))
	}
	if fi, _ := os.Stat(out); fi.Mode().Perm() != 0o644 {
		t.Fatalf("mode %v, want 0644", fi.Mode())
	}
	// Content verified against its sha256: reported without hashing it
	// again, and the file is that content.
	if _, err := st.UpdateTask("task", func(m *blockstore.Task) error { m.Digest = "sha256:" + sum; return nil }); err != nil {
		t.Fatal(err)
	}
	if m, err := st.VerifyAndComplete(ctx, "task", io.Discard); err != nil || !m.Verified {
		t.Fatalf("verify: %+v, %v", m, err)
	}
	out2 := filepath.Join(dir, "out2.bin")
	sum2, err := writeOutput(ctx, st, "task", out2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if sum2 != sum || fileSHA256(t, out2) != sum {
		t.Fatalf("verified content: reported %s, file %s, want %s", sum2, fileSHA256(t, out2), sum)
	}
}

func TestDefaultSocketPath(t *testing.T) {
	p := DefaultSocketPath()
	if os.Geteuid() == 0 && p != "/run/dfly/dfdaemon.sock" {
		t.Fatalf("root socket %s", p)
	}
	if !filepath.IsAbs(p) || filepath.Base(p) != "dfdaemon.sock" {
		t.Fatalf("socket path %s", p)
	}
}

// writeOutput writes the stored content of task id to out through an
// outputFile, as Daemon.Download does with the engine's output.
func writeOutput(ctx context.Context, store *blockstore.Store, id, out string, cred *syscall.Ucred) (string, error) {
	o, err := createOutput(out, quietLogger())
	if err != nil {
		return "", err
	}
	bw := bufio.NewWriterSize(o.f, 1<<20)
	if _, err := store.WriteTo(ctx, id, bw); err != nil {
		o.abort()
		return "", fmt.Errorf("write %s: %w", out, err)
	}
	if err := bw.Flush(); err != nil {
		o.abort()
		return "", fmt.Errorf("write %s: %w", out, err)
	}
	meta, err := store.Task(id)
	if err != nil {
		o.abort()
		return "", err
	}
	return o.commit(meta, cred)
}
