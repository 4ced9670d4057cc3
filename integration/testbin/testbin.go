// Package testbin builds the dfly commands an integration test package runs
// as real processes, once per package: call Main from TestMain.
package testbin

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// ModuleRoot is the directory of the dfly module's go.mod, as the go
// command sees it from the current directory.
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the dfly module (go env GOMOD is empty)")
	}
	return filepath.Dir(mod), nil
}

// Build builds the packages (module-relative, e.g. "./cmd/dfget") into dir.
func Build(dir string, pkgs ...string) error {
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	cmd := exec.Command("go", append([]string{"build", "-o", dir + "/"}, pkgs...)...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build %s: %w\n%s", strings.Join(pkgs, " "), err, out)
	}
	return nil
}

// Main builds pkgs into a temporary directory, runs the tests with its path
// (run receives it) and removes it; it returns the exit code for os.Exit.
//
//	func TestMain(m *testing.M) { os.Exit(testbin.Main(m, func(dir string) { binDir = dir }, "./cmd/dfget")) }
func Main(m *testing.M, set func(dir string), pkgs ...string) int {
	dir, err := os.MkdirTemp("", "dfly-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := Build(dir, pkgs...); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	set(dir)
	return m.Run()
}
