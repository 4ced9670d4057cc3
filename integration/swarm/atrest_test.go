package swarm

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/peer"
)

// writeKeyFile writes a store key (64 hex digits, mode 0600) and returns its path.
func writeKeyFile(t *testing.T, name string, b byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(hex.EncodeToString(bytes.Repeat([]byte{b}, 32))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// daemonArgs are a dfdaemon's flags for the store, socket and host in dir.
func daemonArgs(sn *supernode, id, dir string, extra ...string) []string {
	return append([]string{"--supernode", sn.grpc, "--listen", "127.0.0.1:0", "--sock", filepath.Join(dir, "d.sock"),
		"--store", filepath.Join(dir, "store"), "--host-id", id, "--log-level", "info", "--metrics-listen", "127.0.0.1:0"}, extra...)
}

// startDaemonIn starts a dfdaemon whose store and socket are in dir (a
// restart reuses them).
func startDaemonIn(t *testing.T, sn *supernode, id, dir string, extra ...string) *daemon {
	t.Helper()
	p, line := start(t, id, "dfdaemon", "dfdaemon ready", daemonArgs(sn, id, dir, extra...)...)
	d := &daemon{proc: p, id: id, sock: field(line, "sock"), upload: field(line, "upload")}
	c, err := peer.DialDaemon(context.Background(), d.sock)
	if err != nil {
		t.Fatalf("%s: %v", id, err)
	}
	d.client = c
	t.Cleanup(c.Close)
	return d
}

// markers are 32-byte pieces of c, one from every block of 1 MiB.
func markers(c origin.Content) [][]byte {
	var ms [][]byte
	for off := int64(4096 + 77); off+32 <= c.Size; off += 1 << 20 {
		m := make([]byte, 32)
		c.ReadAt(m, off)
		ms = append(ms, m)
	}
	return ms
}

// grepTree returns "file: marker" for every file under dir holding one of ms.
func grepTree(t *testing.T, dir string, ms [][]byte) (hits []string, files int) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files++
		for _, m := range ms {
			if bytes.Contains(b, m) {
				hits = append(hits, p+": "+hex.EncodeToString(m[:8]))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hits, files
}

// TestAtRestEncryption: a supernode and two dfdaemons with --store-key-file
// (a key each). A dfget through each daemon is sha256-exact, the second one
// fed by the swarm from the first one's and the seed's encrypted stores
// (served decrypted). No file under any store holds a 32-byte piece of any
// block of the content. A daemon restarted with a wrong key, and with no
// key, exits non-zero saying why; with the right key it serves the task
// again from its store, fetching nothing.
func TestAtRestEncryption(t *testing.T) {
	const size = 24 << 20
	org := newOrigin(t)
	c := origin.Content{Size: size, Seed: 2024}
	url := org.Add("sealed.bin", c)
	want := c.Digest("sha256")

	snDir := t.TempDir()
	p, line := start(t, "supernode", "supernode", "supernode listening",
		"--listen", "127.0.0.1:0", "--upload-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--store", filepath.Join(snDir, "store"),
		"--store-key-file", writeKeyFile(t, "seed.key", 1), "--log-level", "info")
	sn := &supernode{proc: p, dir: snDir, grpc: field(line, "grpc"), upload: field(line, "upload")}
	keyA, keyB := writeKeyFile(t, "a.key", 2), writeKeyFile(t, "b.key", 3)
	dirA, dirB := t.TempDir(), t.TempDir()
	a := startDaemonIn(t, sn, "peerA", dirA, "--store-key-file", keyA)
	b := startDaemonIn(t, sn, "peerB", dirB, "--store-key-file", keyB)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, d := range []*daemon{a, b} {
		outs := dfgetAll(ctx, t, []*daemon{d}, url)
		checkExact(t, outs[0], want)
		r := outs[0].res
		t.Logf("%s: %d bytes: origin %d, seed %d, peers %d, local %d", d.id, r.Length, r.BytesOrigin, r.BytesSeed, r.BytesPeers, r.BytesLocal)
		if d == b && r.BytesPeers+r.BytesSeed == 0 {
			t.Errorf("%s fetched nothing from the swarm: the encrypted stores served nothing", d.id)
		}
	}
	if t.Failed() {
		return
	}

	ms := markers(c)
	for _, dir := range []string{filepath.Join(snDir, "store"), filepath.Join(dirA, "store"), filepath.Join(dirB, "store")} {
		hits, files := grepTree(t, dir, ms)
		if files == 0 {
			t.Fatalf("no files under %s", dir)
		}
		if len(hits) > 0 {
			t.Errorf("plaintext of the content found under %s: %v", dir, hits)
		} else {
			t.Logf("%s: %d files, none holds any of %d plaintext markers", dir, files, len(ms))
		}
	}

	// Restart peerB with a wrong key, then none: refused, clearly; then with the right one.
	b.stop()
	for _, tc := range []struct {
		name string
		args []string
		env  string
		say  string
	}{
		{"wrong key", []string{"--store-key-file", writeKeyFile(t, "wrong.key", 4)}, "", "is not the key the store was encrypted with"},
		{"wrong key in the environment", nil, "DFLY_STORE_KEY=" + hex.EncodeToString(bytes.Repeat([]byte{5}, 32)), "is not the key the store was encrypted with"},
		{"no key", nil, "", "no store key was given"},
	} {
		cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
		cmd := exec.CommandContext(cctx, filepath.Join(binDir, "dfdaemon"), daemonArgs(sn, "peerB", dirB, tc.args...)...)
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "DFLY_STORE_KEY=") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		if tc.env != "" {
			cmd.Env = append(cmd.Env, tc.env)
		}
		out, err := cmd.CombinedOutput()
		ccancel()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() == 0 || !strings.Contains(string(out), tc.say) {
			t.Fatalf("%s: dfdaemon ended with %v, output:\n%s\nwant a non-zero exit saying %q", tc.name, err, out, tc.say)
		}
		t.Logf("%s: exit %d: %s", tc.name, ee.ExitCode(), lastLine(string(out)))
	}
	b2 := startDaemonIn(t, sn, "peerB", dirB, "--store-key-file", keyB)
	outs := dfgetAll(ctx, t, []*daemon{b2}, url)
	checkExact(t, outs[0], want)
	if r := outs[0].res; r.BytesLocal != size || r.BytesOrigin+r.BytesSeed+r.BytesPeers != 0 {
		t.Fatalf("after the restart with the right key: local %d, origin %d, seed %d, peers %d; want all %d local",
			r.BytesLocal, r.BytesOrigin, r.BytesSeed, r.BytesPeers, size)
	}
	if hits, _ := grepTree(t, filepath.Join(dirB, "store"), ms); len(hits) > 0 {
		t.Fatalf("plaintext under peerB's store after the restart: %v", hits)
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
