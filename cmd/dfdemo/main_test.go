package main

import (
	"bytes"
	"context"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestDemoEndToEnd builds the real binaries and runs the whole demo on a
// small file: both parts must verify every output and stop every process.
func TestDemoEndToEnd(t *testing.T) {
	bin := t.TempDir()
	out, err := exec.Command("go", "build", "-o", bin+"/", "../dfget", "../supernode", "../dfdaemon").CombinedOutput()
	if err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	if code := run(ctx, []string{"--bin", bin, "--size", "8M"}, &stdout, &stderr); code != 0 {
		t.Fatalf("demo exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	s := stdout.String()
	for _, want := range []string{"killed -9 at ~50%", "no output file: yes", "origin egress", "copies of the file", "every output matched its sha256"} {
		if !strings.Contains(s, want) {
			t.Errorf("demo output lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, " NO") {
		t.Errorf("demo reports a mismatch:\n%s", s)
	}
	// No dfly process may outlive the demo.
	if out, _ := exec.Command("pgrep", "-f", bin).CombinedOutput(); len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("processes left behind: %s", out)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{{"--size", "huge"}, {"--bin", "/nonexistent"}, {"--nope"}} {
		if code := run(context.Background(), args, io.Discard, io.Discard); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
	var errb strings.Builder
	if code := run(context.Background(), []string{"--nope"}, io.Discard, &errb); !strings.Contains(errb.String(), "unknown flag: --nope") {
		t.Errorf("--nope: exit %d, stderr %q; want the flag named", code, errb.String())
	}
	if code := run(context.Background(), []string{"--help"}, io.Discard, io.Discard); code != 0 {
		t.Errorf("--help: exit %d, want 0", code)
	}
}
