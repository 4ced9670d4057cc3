package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/internal/source"
)

var dfgetBin, dfdaemonBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dfget-bin")
	if err != nil {
		panic(err)
	}
	dfgetBin, dfdaemonBin = filepath.Join(dir, "dfget"), filepath.Join(dir, "dfdaemon")
	if out, err := exec.Command("go", "build", "-o", dir+"/", ".", "../dfdaemon").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build dfget and dfdaemon: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func startOrigin(t *testing.T) *origin.Server {
	t.Helper()
	o, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

func fileSHA(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := f.WriteTo(h); err != nil {
		t.Fatal(err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

func dfget(args ...string) (int, string) {
	cmd := exec.Command(dfgetBin, args...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		return -1, err.Error()
	}
	return 0, string(out)
}

// TestDownload256MiB: a real origin serving a generated 256 MiB file; the
// output's sha256 equals the source's, the report says where bytes came from.
func TestDownload256MiB(t *testing.T) {
	o := startOrigin(t)
	c := origin.Content{Size: 256 << 20, Seed: 1}
	u := o.Add("big.bin", c)
	dir := t.TempDir()
	out := filepath.Join(dir, "big.bin")
	want := c.Digest("sha256")
	code, msg := dfget(u, "-O", out, "--store", filepath.Join(dir, "store"), "--digest", want, "--report-json", filepath.Join(dir, "r.json"))
	if code != 0 {
		t.Fatalf("dfget exit %d: %s", code, msg)
	}
	if got := fileSHA(t, out); got != want {
		t.Fatalf("output %s, source %s", got, want)
	}
	var r report
	b, _ := os.ReadFile(filepath.Join(dir, "r.json"))
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	if r.BytesOrigin != c.Size || !r.Verified || r.SHA256 != strings.TrimPrefix(want, "sha256:") {
		t.Fatalf("report %+v", r)
	}
	if !strings.Contains(msg, "verified against") {
		t.Fatalf("summary line missing: %s", msg)
	}
	if o.BytesSent() != c.Size {
		t.Fatalf("origin sent %d bytes for a %d-byte file", o.BytesSent(), c.Size)
	}
}

// TestKill9AndResume kills dfget at about half way and reruns it: it finishes
// from the stored blocks; the origin sends at most 1.1 copies in all.
func TestKill9AndResume(t *testing.T) {
	o := startOrigin(t)
	c := origin.Content{Size: 256 << 20, Seed: 2}
	u := o.Add("big.bin", c)
	dir := t.TempDir()
	out := filepath.Join(dir, "out.bin")
	store := filepath.Join(dir, "store")
	cmd := exec.Command(dfgetBin, u, "-O", out, "--store", store, "--limit-rate", "64M", "-q")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for o.BytesSent() < c.Size/2 {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("dfget did not reach 50% in time")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	first := o.BytesSent()
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("output exists after kill -9: %v", err)
	}
	stale := tempFiles(dir)
	if len(stale) != 1 {
		t.Fatalf("after kill -9: temporary outputs %v, want the killed dfget's one", stale)
	}
	code, msg := dfget(u, "-O", out, "--store", store)
	if code != 0 {
		t.Fatalf("resume exit %d: %s", code, msg)
	}
	if left := tempFiles(dir); len(left) != 0 {
		t.Fatalf("the killed dfget's temporary output was not removed by the next run: %v", left)
	}
	if got, want := fileSHA(t, out), c.Digest("sha256"); got != want {
		t.Fatalf("resumed output %s, want %s", got, want)
	}
	total := o.BytesSent()
	t.Logf("origin bytes: %d before kill, %d in all (%.3f copies)", first, total, float64(total)/float64(c.Size))
	if float64(total) > 1.1*float64(c.Size) {
		t.Fatalf("origin sent %.3f copies over both runs, want ≤ 1.1", float64(total)/float64(c.Size))
	}
	if !strings.Contains(msg, "local store") {
		t.Fatalf("summary: %s", msg)
	}
}

// TestCorruptStoredBlockIsRefetched flips bytes of a stored block inside the
// store's data file; the next dfget detects it, refetches, and writes the right bytes.
func TestCorruptStoredBlockIsRefetched(t *testing.T) {
	o := startOrigin(t)
	c := origin.Content{Size: 8 << 20, Seed: 3}
	u := o.Add("f.bin", c)
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	if code, msg := dfget(u, "-O", filepath.Join(dir, "a"), "--store", store); code != 0 {
		t.Fatalf("first: %d %s", code, msg)
	}
	needle := make([]byte, 64)
	_, _ = c.ReadAt(needle, 5<<20+1000) // inside block 5
	files, _ := filepath.Glob(filepath.Join(store, "data", "*"))
	hit := false
	for _, f := range files {
		b, _ := os.ReadFile(f)
		if i := bytes.Index(b, needle); i >= 0 {
			b[i+3] ^= 0x55
			if err := os.WriteFile(f, b, 0o644); err != nil {
				t.Fatal(err)
			}
			hit = true
		}
	}
	if !hit {
		t.Fatal("block not found in the store's data files")
	}
	o.ResetCounters()
	out := filepath.Join(dir, "b")
	code, msg := dfget(u, "-O", out, "--store", store, "--log-level", "error")
	if code != 0 {
		t.Fatalf("after corruption: %d %s", code, msg)
	}
	if got, want := fileSHA(t, out), c.Digest("sha256"); got != want {
		t.Fatalf("output after corruption %s, want %s", got, want)
	}
	if o.BytesSent() == 0 {
		t.Fatal("the corrupt block was not refetched from the origin")
	}
	if !strings.Contains(msg, "failed verification") {
		t.Fatalf("corruption was not reported: %s", msg)
	}
}

func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestExitCodes: every bad input gets its documented exit code and a
// message naming the problem, and never leaves a file at the output path.
func TestExitCodes(t *testing.T) {
	o := startOrigin(t)
	c := origin.Content{Size: 3 << 20, Seed: 4}
	u := o.Add("f.bin", c)
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	store := filepath.Join(dir, "store")
	zero := "sha256:" + strings.Repeat("0", 64)
	cases := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"no output", []string{u}, exitUsage, "missing -O"},
		{"no URL", []string{"-O", out}, exitUsage, "want exactly one URL"},
		{"unknown flag", []string{u, "-O", out, "--bogus"}, exitUsage, "unknown flag"},
		{"bad digest", []string{u, "-O", out, "--digest", "sha1:abc"}, exitUsage, "unsupported algorithm"},
		{"bad rate", []string{u, "-O", out, "--limit-rate", "fast"}, exitUsage, "invalid size"},
		{"bad header", []string{u, "-O", out, "-H", "nocolon"}, exitUsage, "Name: value"},
		{"ftp URL", []string{"ftp://x/y", "-O", out}, exitUsage, "only http"},
		{"missing out dir", []string{u, "-O", filepath.Join(dir, "nodir", "x")}, exitUsage, "does not exist"},
		{"unreachable", []string{"http://" + closedPort(t) + "/f", "-O", out, "--retries", "1", "--timeout", "2s"}, exitUnreachable, "origin unreachable"},
		{"404", []string{o.URL + "/missing", "-O", out}, exitHTTP4xx, "HTTP 404"},
		{"digest mismatch", []string{u, "-O", out, "--digest", zero}, exitDigest, "digest mismatch"},
		{"quota", []string{u, "-O", out, "--store", filepath.Join(dir, "qstore"), "--quota", "1M"}, exitDisk, "quota"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if !containsStore(args) {
				args = append(args, "--store", store)
			}
			code, msg := dfget(args...)
			if code != tc.code || !strings.Contains(msg, tc.msg) {
				t.Fatalf("exit %d (want %d), output %q (want %q)", code, tc.code, msg, tc.msg)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Fatalf("output file exists after a failure")
			}
			leftovers, _ := filepath.Glob(filepath.Join(dir, ".out.dfly-*"))
			if len(leftovers) > 0 {
				t.Fatalf("temporary files left: %v", leftovers)
			}
		})
	}
	// A 503 storm ends as "unreachable/failing" after retries.
	o.FailNext(1000)
	if code, msg := dfget(o.Add("g.bin", origin.Content{Size: 10, Seed: 1}), "-O", out, "--store", store, "--retries", "1"); code != exitUnreachable || !strings.Contains(msg, "503") {
		t.Fatalf("503: %d %s", code, msg)
	}
	o.FailNext(0)
	// After all those failures the same store still downloads correctly.
	if code, msg := dfget(u, "-O", out, "--store", store, "--digest", c.Digest("sha256")); code != 0 {
		t.Fatalf("good download after failures: %d %s", code, msg)
	}
}

func containsStore(args []string) bool {
	for _, a := range args {
		if a == "--store" {
			return true
		}
	}
	return false
}

func TestExitCodeMapping(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	bg := context.Background()
	cases := []struct {
		ctx  context.Context
		err  error
		want int
	}{
		{bg, fmt.Errorf("x: %w", blockstore.ErrDigestMismatch), exitDigest},
		{bg, fmt.Errorf("x: %w", blockstore.ErrQuota), exitDisk},
		{bg, fmt.Errorf("x: %w", blockstore.ErrNoSpace), exitDisk},
		{bg, fmt.Errorf("write: %w", syscall.ENOSPC), exitDisk},
		{bg, &source.HTTPError{Status: 403}, exitHTTP4xx},
		{bg, &source.HTTPError{Status: 502}, exitUnreachable},
		{bg, fmt.Errorf("x: %w", source.ErrUnreachable), exitUnreachable},
		{bg, fmt.Errorf("x: %w", blockstore.ErrInvalid), exitUsage},
		{bg, errors.New("other"), exitFailure},
		{bg, daemonError{errors.New("dfdaemon: task x: content is sha256:1, want sha256:2: digest mismatch")}, exitDigest},
		{bg, daemonError{errors.New("dfdaemon: task x needs 1 GiB but the store quota is 1 MiB: store quota exceeded")}, exitDisk},
		{bg, daemonError{errors.New("dfdaemon: ask origin: origin http://x/f answered HTTP 404 Not Found")}, exitHTTP4xx},
		{bg, daemonError{errors.New("dfdaemon: GET http://x/f: origin unreachable: dial tcp: refused")}, exitUnreachable},
		{bg, daemonError{errors.New("dfdaemon: something else")}, exitFailure},
		{cancelled, errors.New("anything"), exitInterrupted},
	}
	for _, c := range cases {
		if got := exitCode(c.ctx, c.err); got != c.want {
			t.Errorf("exitCode(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}

func TestHelp(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, &out, &errb); code != 0 || !strings.Contains(out.String(), "Exit codes") {
		t.Fatalf("help: %d %q", code, out.String())
	}
}
