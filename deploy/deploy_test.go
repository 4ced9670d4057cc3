// Package deploy checks dfly's deployment files (systemd units, Kubernetes
// manifests, the Helm chart, the Grafana dashboard): every Kubernetes object
// decodes strictly into its typed API object, the rules that matter hold,
// every flag the files pass exists in the binary they run, and the command
// lines really start the binaries, which then answer /healthz and /readyz.
//
// The package has only tests; TestMain builds the binaries the files run.
package deploy

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// binDir holds the binaries TestMain built, named as in /usr/local/bin.
var binDir string

// binaries are the commands the deployment files run.
var binaries = []string{"supernode", "dfdaemon", "dfly-snapshotter", "dfctl"}

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "dfly-deploy-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	args := []string{"build", "-o", dir + "/"}
	for _, b := range binaries {
		args = append(args, "./cmd/"+b)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build the dfly binaries the deployment files run:", err)
		return 1
	}
	binDir = dir
	return m.Run()
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the dfly module")
	}
	return filepath.Dir(mod), nil
}

// flagLine matches a flag in a pflag --help listing: "  -h, --help ..." or
// "      --store string ...".
var flagLine = regexp.MustCompile(`^\s+(?:-[a-zA-Z], )?--([a-z0-9][a-z0-9-]*)`)

// knownFlags returns the flags the built binary prints in its --help.
func knownFlags(t *testing.T, bin string) map[string]bool {
	t.Helper()
	// --help exits 0 or 2 depending on the binary; only the text matters.
	out, _ := exec.Command(filepath.Join(binDir, bin), "--help").CombinedOutput()
	flags := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		if m := flagLine.FindStringSubmatch(line); m != nil {
			flags[m[1]] = true
		}
	}
	if len(flags) < 3 {
		t.Fatalf("%s --help lists %d flags; output:\n%s", bin, len(flags), out)
	}
	return flags
}

// flagName returns the name of a "--name[=value]" argument, or "".
func flagName(arg string) string {
	if !strings.HasPrefix(arg, "--") {
		return ""
	}
	name, _, _ := strings.Cut(strings.TrimPrefix(arg, "--"), "=")
	return name
}

// flagValue returns the value of --name in args ("--name=V" or "--name V").
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
		if a == "--"+name && i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}
