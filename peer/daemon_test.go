package peer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func startTestDaemon(t *testing.T, supernode string) *Daemon {
	t.Helper()
	dir := t.TempDir()
	d, err := StartDaemon(context.Background(), DaemonConfig{
		Supernode: supernode, Listen: "127.0.0.1:0", Sock: filepath.Join(dir, "d.sock"),
		StoreDir: filepath.Join(dir, "store"), HostID: "daemon-" + filepath.Base(dir), Logger: quietLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func TestDaemonDownloadThroughLocalAPI(t *testing.T) {
	const size = 4<<20 + 1
	fx := newSeedFixture(t, size)
	d := startTestDaemon(t, fx.addr)
	ctx := context.Background()
	c, err := DialDaemon(ctx, d.SockPath())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	outDir := t.TempDir()
	out := filepath.Join(outDir, "file.bin")
	var events int
	res, err := c.Download(ctx, DownloadRequest{URL: fx.url, Output: out}, func(DownloadEvent) { events++ })
	if err != nil {
		t.Fatal(err)
	}
	want := strings.TrimPrefix(fx.content.Digest("sha256"), "sha256:")
	if res.SHA256 != want || fileSHA256(t, out) != want {
		t.Fatalf("result sha256 %s, file %s, want %s", res.SHA256, fileSHA256(t, out), want)
	}
	if res.BytesSeed != size || res.BytesOrigin != 0 || res.Length != size || res.TaskID != fx.taskID {
		t.Fatalf("result %+v: want %d bytes from the seed", res, size)
	}
	if events == 0 {
		t.Fatal("no progress events")
	}
	entries, _ := os.ReadDir(outDir)
	if len(entries) != 1 {
		t.Fatalf("output directory holds %d entries, want only the output (no temporary files left)", len(entries))
	}

	tasks, err := c.Tasks(ctx)
	if err != nil || len(tasks) != 1 || tasks[0].ID != fx.taskID {
		t.Fatalf("tasks %+v, %v", tasks, err)
	}
	st, err := c.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Swarm == nil || st.Swarm.BytesFromSeed != size || st.Downloads != 1 || st.UploadAddr == "" {
		t.Fatalf("stats %+v", st)
	}

	// Again: everything is local now, and a relative output is refused by the daemon.
	res, err = c.Download(ctx, DownloadRequest{URL: fx.url, Output: filepath.Join(outDir, "again.bin")}, nil)
	if err != nil || res.BytesLocal != size || fileSHA256(t, filepath.Join(outDir, "again.bin")) != want {
		t.Fatalf("second download: %+v, %v", res, err)
	}
}

func TestDaemonOriginModeAndErrors(t *testing.T) {
	const size = 1<<20 + 3
	fx := newSeedFixture(t, size)
	d := startTestDaemon(t, "")
	if d.UploadAddr() != "" {
		t.Fatalf("origin-mode daemon advertises %q", d.UploadAddr())
	}
	ctx := context.Background()
	c, err := DialDaemon(ctx, d.SockPath())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	out := filepath.Join(t.TempDir(), "f")
	res, err := c.Download(ctx, DownloadRequest{URL: fx.url, Output: out}, nil)
	if err != nil || res.BytesOrigin != size {
		t.Fatalf("origin-mode download: %+v, %v", res, err)
	}
	// A missing file on the origin is an error event, and no output appears.
	bad := filepath.Join(t.TempDir(), "missing")
	if _, err := c.Download(ctx, DownloadRequest{URL: fx.origin.URL + "/nope", Output: bad}, nil); err == nil {
		t.Fatal("download of a missing URL succeeded")
	}
	if _, err := os.Stat(bad); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("output of a failed download exists: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(bad)); len(entries) != 0 {
		t.Fatalf("a failed download left %d entries (temporary output) behind", len(entries))
	}
	// A second daemon on the same socket is refused.
	if _, err := StartDaemon(ctx, DaemonConfig{Sock: d.SockPath(), StoreDir: t.TempDir(), Logger: quietLogger()}); err == nil {
		t.Fatal("second daemon on the same socket started")
	}
	// Nothing on a socket: ErrNoDaemon.
	if _, err := DialDaemon(ctx, filepath.Join(t.TempDir(), "none.sock")); !errors.Is(err, ErrNoDaemon) {
		t.Fatalf("dial of a missing socket: %v, want ErrNoDaemon", err)
	}
}

func TestHostSecretPersists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "host.secret")
	a, err := loadOrCreateHostSecret(path)
	if err != nil || len(a) < 16 {
		t.Fatalf("new secret %q, %v", a, err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret file mode: %v %v", fi, err)
	}
	b, err := loadOrCreateHostSecret(path)
	if err != nil || b != a {
		t.Fatalf("secret after a restart %q, %v; want %q", b, err, a)
	}
	if err := os.WriteFile(path, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadOrCreateHostSecret(path); err == nil {
		t.Fatal("a truncated secret was accepted")
	}
}
