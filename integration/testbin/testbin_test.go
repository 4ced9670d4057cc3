package testbin

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestBuild(t *testing.T) {
	root, err := ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("ModuleRoot %s has no go.mod: %v", root, err)
	}
	dir := t.TempDir()
	if err := Build(dir, "./cmd/dforigin"); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(dir, "dforigin"), "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--listen") {
		t.Fatalf("built dforigin --help: %v %s", err, out)
	}
	if err := Build(dir, "./cmd/no-such-command"); err == nil || !strings.Contains(err.Error(), "no-such-command") {
		t.Fatalf("building a missing package: %v, want an error naming it", err)
	}
}
