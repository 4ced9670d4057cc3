package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"4096", 4096, true},
		{"100M", 100 << 20, true},
		{"100m", 100 << 20, true},
		{"100MB", 100 << 20, true},
		{"100MiB", 100 << 20, true},
		{"1.5G", 3 << 29, true},
		{"2T", 2 << 40, true},
		{"64K", 64 << 10, true},
		{"10B", 10, true},
		{"", 0, false},
		{"M", 0, false},
		{"-1", 0, false},
		{"ten", 0, false},
		{"5X", 0, false},
	}
	for _, tc := range tests {
		got, err := parseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d, ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

// readyLine: m[1] grpc, m[2] upload, m[3] api, m[4] metrics ("" when off).
var readyLine = regexp.MustCompile(`^supernode listening grpc=(\S+) upload=(\S+)(?: api=(\S+))?(?: metrics=(\S+))?$`)

func TestRunServesUntilCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--upload-listen", "127.0.0.1:0", "--store", t.TempDir(),
			"--upload-rate", "10M", "--quota", "1G", "--log-level", "warn", "--metrics-listen", "127.0.0.1:0"}, pw, io.Discard)
		pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatalf("no ready line: %v (run: %v)", err, <-done)
	}
	m := readyLine.FindStringSubmatch(strings.TrimSpace(line))
	if m == nil {
		t.Fatalf("ready line %q", line)
	}
	resp, err := http.Get("http://" + m[2] + "/debug/state")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("/debug/state: HTTP %d", resp.StatusCode)
	}
	checkMetricsListener(t, m[4])
	cancel()
	go io.Copy(io.Discard, pr)
	if err := <-done; err != nil {
		t.Fatalf("run after cancel: %v", err)
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	tests := [][]string{
		{},                                       // no --store
		{"--store", t.TempDir(), "--quota", "x"}, // bad size
		{"--store", t.TempDir(), "--log-level", "loud"},
		{"--store", t.TempDir(), "extra"},
		{"--store", t.TempDir(), "--no-such-flag"},
		{"--store", t.TempDir(), "--ca-file", "/nonexistent.pem"},
	}
	for _, args := range tests {
		err := run(context.Background(), args, io.Discard, io.Discard)
		var ue usageError
		if err == nil || !errors.As(err, &ue) {
			t.Errorf("run(%q) = %v, want a usage error (exit 2)", args, err)
		}
	}
}

// TestBinarySIGTERM builds the real binary, waits for its ready line and
// stops it with SIGTERM.
func TestBinarySIGTERM(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go tool is not in PATH; cannot build the binary")
	}
	bin := filepath.Join(t.TempDir(), "supernode")
	if out, err := exec.Command(goBin, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "--listen", "127.0.0.1:0", "--upload-listen", "127.0.0.1:0", "--metrics-listen", "", "--store", t.TempDir())
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !readyLine.MatchString(strings.TrimSpace(line)) {
		t.Fatalf("ready line %q, err %v", line, err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("supernode did not exit after SIGTERM")
	}
}
