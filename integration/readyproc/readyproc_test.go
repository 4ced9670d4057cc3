package readyproc

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestStart(t *testing.T) {
	dir := t.TempDir()
	p, line, err := Start("sh", filepath.Join(dir, "sh.log"), "ready", 10*time.Second,
		"sh", "-c", `echo booting; echo oops >&2; echo "ready a=1 b=x"; exec sleep 60`)
	if err != nil {
		t.Fatal(err)
	}
	if f := Fields(line); f["a"] != "1" || f["b"] != "x" {
		t.Fatalf("ready line %q fields %v", line, f)
	}
	p.Stop(5 * time.Second)
	select {
	case <-p.Done():
	default:
		t.Fatal("Stop returned before the process exited")
	}
	if !strings.Contains(p.LogTail(100), "oops") {
		t.Fatalf("stderr not in the log: %q", p.LogTail(100))
	}
	p.Stop(time.Second) // again: no-op

	if _, _, err := Start("sh", filepath.Join(dir, "early.log"), "ready", 10*time.Second, "sh", "-c", "echo bye >&2; exit 3"); err == nil || !strings.Contains(err.Error(), "bye") {
		t.Fatalf("an early exit: %v, want an error with the log", err)
	}
	if _, _, err := Start("sh", filepath.Join(dir, "slow.log"), "ready", 200*time.Millisecond, "sh", "-c", "exec sleep 60"); err == nil || !strings.Contains(err.Error(), "not ready") {
		t.Fatalf("never ready: %v", err)
	}
	if _, _, err := Start("x", filepath.Join(dir, "x.log"), "ready", time.Second, filepath.Join(dir, "no-such-binary")); err == nil {
		t.Fatal("a missing binary started")
	}
}
