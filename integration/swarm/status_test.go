package swarm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/internal/p2pstatus"
)

// dfctlBin builds cmd/dfctl once, beside the other binaries (only the tests
// that need it pay for the build).
var dfctlBin = sync.OnceValues(func() (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	args := append([]string{"build", "-o", binDir + "/"}, strings.Fields(os.Getenv("DFLY_SWARM_BUILD_FLAGS"))...)
	cmd := exec.Command("go", append(args, "./cmd/dfctl")...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build dfctl: %w: %s", err, out)
	}
	return filepath.Join(binDir, "dfctl"), nil
})

// dfctl runs `dfctl args...` and returns its exit code and output.
func dfctl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	bin, err := dfctlBin()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String(), errb.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String(), errb.String()
	}
	t.Fatalf("dfctl %v: %v", args, err)
	return 0, "", ""
}

// TestStatusCommand: after a swarm download `dfctl status` on a daemon says
// "P2P working" (exit 0) and `dfctl status --supernode` shows every host;
// once the supernode is killed, `dfctl status` on a daemon reports it
// unreachable (exit 1) within a few heartbeats.
func TestStatusCommand(t *testing.T) {
	if _, err := dfctlBin(); err != nil {
		t.Fatal(err)
	}
	org := newOrigin(t)
	c := origin.Content{Size: 24 * mib, Seed: 77}
	url := org.Add("status.bin", c)
	p, line := start(t, "supernode", "supernode", "supernode listening",
		"--listen", "127.0.0.1:0", "--upload-listen", "127.0.0.1:0", "--store", filepath.Join(t.TempDir(), "store"),
		"--heartbeat", "500ms", "--metrics-listen", "", "--log-level", "info")
	sn := &supernode{proc: p, grpc: field(line, "grpc"), upload: field(line, "upload")}
	var ds []*daemon
	for i := range 3 {
		ds = append(ds, startDaemon(t, sn, fmt.Sprintf("st%d", i), "", "--metrics-listen", "", "--mirror-listen", ""))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, o := range downloadAll(ctx, t, ds, url, nil) {
		checkExact(t, o, c.Digest("sha256"))
	}

	for _, d := range ds {
		code, out, errs := dfctl(t, "status", "--sock", d.sock)
		if code != 0 || !strings.HasPrefix(out, "P2P working: supernode "+sn.grpc+" reachable (heartbeat ") ||
			!strings.Contains(out, "0% from the origin; no tasks in flight; no errors.") {
			t.Errorf("dfctl status on %s: exit %d\n%s%s", d.id, code, out, errs)
		}
	}

	// The supernode has the hosts' counters from their next heartbeats.
	var st p2pstatus.Swarm
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, out, errs := dfctl(t, "status", "--supernode", "http://"+sn.upload, "--json")
		st = p2pstatus.Swarm{}
		err := json.Unmarshal([]byte(out), &st)
		reported := 0
		for _, h := range st.Hosts {
			if h.Reporting && h.Bytes.Fetched() == 24*mib {
				reported++
			}
		}
		if code == 0 && err == nil && reported == len(ds) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dfctl status --supernode --json: exit %d, %d of %d hosts reported their download: %v\n%s%s", code, reported, len(ds), err, out, errs)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if st.Verdict.P2P != p2pstatus.Working || st.HostsSeen != 3 || st.HostsLive != 3 || st.Bytes.Origin != 0 || st.Seed.OriginBytes != 24*mib {
		t.Errorf("swarm status: %+v", st)
	}
	code, out, errs := dfctl(t, "status", "--supernode", sn.upload)
	if code != 0 || !strings.HasPrefix(out, "P2P working: 3 hosts seen in the last 5m, 3 live; 72.0 MiB, ") {
		t.Errorf("dfctl status --supernode: exit %d\n%s%s", code, out, errs)
	}
	for _, d := range ds {
		if !strings.Contains(out, "\n  "+d.id+" ") {
			t.Errorf("dfctl status --supernode does not list %s:\n%s", d.id, out)
		}
	}

	// The supernode dies: within a few heartbeats each daemon says so.
	sn.kill()
	killed := time.Now()
	deadline = killed.Add(20 * time.Second)
	for {
		code, out, errs = dfctl(t, "status", "--sock", ds[0].sock)
		if code == 1 && strings.HasPrefix(out, "P2P NOT working: supernode "+sn.grpc+" UNREACHABLE (last heartbeat ") {
			t.Logf("reported unreachable %.1fs after the kill:\n%s", time.Since(killed).Seconds(), out)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("20s after the supernode was killed: exit %d\n%s%s", code, out, errs)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
