// Package chaos is dfly's chaos suite: real supernode, dfdaemon and dfget
// processes (built in TestMain) on loopback, an in-process origin that can
// fail, and one failure per test — peers killed with SIGKILL, a daemon
// restarted on its store, the supernode restarted, the origin failing with
// 5xx or vanishing, a full disk, a damaged store, lying and slow peers.
// Every test checks that outputs are sha256-exact, that stores stay
// consistent and that errors say what happened.
//
// DFLY_CHAOS_SCALE (default 1) multiplies file sizes and peer counts;
// `make bench-chaos` runs the suite bigger and writes a table of results
// (DFLY_CHAOS_OUT).
package chaos

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/integration/readyproc"
	"github.com/dfly-p2p/dfly/peer"
)

const mib = 1 << 20

// binDir holds the binaries built by TestMain.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "dfly-chaos-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if mod := strings.TrimSpace(string(out)); err != nil || mod == "" || mod == os.DevNull {
		fmt.Fprintln(os.Stderr, "chaos: not inside the dfly module:", err)
		return 1
	}
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/supernode", "./cmd/dfdaemon", "./cmd/dfget")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(out)))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "chaos: build the dfly binaries:", err)
		return 1
	}
	binDir = dir
	code := m.Run()
	writeResults()
	return code
}

// scale is DFLY_CHAOS_SCALE (≥ 1).
func scale() int {
	if n, err := strconv.Atoi(os.Getenv("DFLY_CHAOS_SCALE")); err == nil && n > 1 {
		return n
	}
	return 1
}

// logLevel is the daemons' log level: DFLY_CHAOS_LOG_LEVEL, default info.
func logLevel() string {
	if l := os.Getenv("DFLY_CHAOS_LOG_LEVEL"); l != "" {
		return l
	}
	return "info"
}

// proc is a started binary; its stderr goes to a log kept for failures.
type proc struct{ *readyproc.Proc }

// start runs a binary from binDir and waits for its ready line; t.Cleanup
// stops it and shows its log tail when the test failed.
func start(t *testing.T, name, bin, ready string, args ...string) (*proc, map[string]string) {
	t.Helper()
	rp, line, err := readyproc.Start(name, filepath.Join(t.TempDir(), name+".log"), ready, 60*time.Second,
		append([]string{filepath.Join(binDir, bin)}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{rp}
	t.Cleanup(func() {
		p.Stop(10 * time.Second)
		if dir := os.Getenv("DFLY_CHAOS_LOGS"); dir != "" { // keep every log for debugging
			if b, err := os.ReadFile(p.Log); err == nil {
				_ = os.WriteFile(filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_")+"."+name+"."+strconv.Itoa(p.Cmd.Process.Pid)+".log"), b, 0o644)
			}
		}
		if t.Failed() {
			t.Logf("--- tail of %s log ---\n%s", name, p.LogTail(4000))
		}
	})
	return p, readyproc.Fields(line)
}

// supernode is a running supernode.
type supernode struct {
	*proc
	dir, grpc, upload, rate string
}

func startSupernode(t *testing.T, uploadRate string) *supernode {
	t.Helper()
	return restartSupernode(t, &supernode{dir: t.TempDir(), grpc: "127.0.0.1:0", upload: "127.0.0.1:0", rate: uploadRate})
}

// restartSupernode starts a supernode on old's store and addresses.
func restartSupernode(t *testing.T, old *supernode) *supernode {
	t.Helper()
	p, f := start(t, "supernode", "supernode", "supernode listening",
		"--listen", old.grpc, "--upload-listen", old.upload, "--metrics-listen", "127.0.0.1:0", "--store", filepath.Join(old.dir, "store"),
		"--upload-rate", old.rate, "--log-level", logLevel())
	sn := &supernode{proc: p, dir: old.dir, grpc: f["grpc"], upload: f["upload"], rate: old.rate}
	if sn.grpc == "" || sn.upload == "" {
		t.Fatalf("cannot parse the supernode's ready line %v", f)
	}
	return sn
}

// snState is the part of the supernode's /debug/state the tests read.
type snState struct {
	Scheduler struct {
		Hosts []struct {
			ID          string  `json:"id"`
			BytesServed int64   `json:"bytes_served"`
			FailRate    float64 `json:"fail_rate"`
		} `json:"hosts"`
		Tasks []struct {
			ID      string         `json:"id"`
			Holders map[string]int `json:"holders"`
			Blocked []string       `json:"blocked"`
		} `json:"tasks"`
	} `json:"scheduler"`
	Seed struct {
		BytesFromOrigin int64 `json:"bytes_from_origin"`
	} `json:"seed"`
	Upload struct { // the seed's upload server
		BytesServed int64 `json:"bytes_served"`
	} `json:"upload"`
}

// seedServed is what the seed's upload server sent so far.
func (sn *supernode) seedServed(t *testing.T) int64 {
	t.Helper()
	st, err := sn.state()
	if err != nil {
		t.Fatalf("supernode state: %v", err)
	}
	return st.Upload.BytesServed
}

func (sn *supernode) state() (snState, error) {
	var st snState
	resp, err := http.Get("http://" + sn.upload + "/debug/state")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// daemon is a dfdaemon; restart runs it again on the same store and socket.
type daemon struct {
	*proc
	id, dir, sock, upload string
	sn                    *supernode
	args                  []string
	client                *peer.DaemonClient
}

// startDaemon starts a dfdaemon with its store in dir (a fresh temporary
// directory when dir is "").
func startDaemon(t *testing.T, sn *supernode, id, dir string, extra ...string) *daemon {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	d := &daemon{id: id, dir: dir, sock: filepath.Join(dir, "d.sock"), sn: sn, args: extra}
	d.run(t)
	return d
}

func (d *daemon) store() string { return filepath.Join(d.dir, "store") }

func (d *daemon) run(t *testing.T) {
	t.Helper()
	args := append([]string{"--supernode", d.sn.grpc, "--listen", "127.0.0.1:0", "--sock", d.sock,
		"--store", d.store(), "--host-id", d.id, "--log-level", logLevel(), "--mirror-listen", "", "--metrics-listen", "127.0.0.1:0"}, d.args...)
	p, f := start(t, d.id, "dfdaemon", "dfdaemon ready", args...)
	d.proc, d.upload = p, f["upload"]
	c, err := peer.DialDaemon(context.Background(), d.sock)
	if err != nil {
		t.Fatalf("%s: %v", d.id, err)
	}
	d.client = c
	t.Cleanup(c.Close)
}

// restart starts the daemon again (after kill or stop) on its store.
func (d *daemon) restart(t *testing.T) {
	t.Helper()
	d.client.Close()
	d.run(t)
}

func (d *daemon) stats(t *testing.T) peer.DaemonStats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := d.client.Stats(ctx)
	if err != nil {
		t.Fatalf("%s: stats: %v", d.id, err)
	}
	return st
}

// startDaemons starts n daemons named prefix0..prefixN-1 with the same flags.
func startDaemons(t *testing.T, sn *supernode, prefix string, n int, extra ...string) []*daemon {
	t.Helper()
	ds := make([]*daemon, n)
	for i := range ds {
		ds[i] = startDaemon(t, sn, fmt.Sprintf("%s%d", prefix, i), "", extra...)
	}
	return ds
}

// report is the part of dfget's --report-json the tests read.
type report struct {
	TaskID      string `json:"task_id"`
	Bytes       int64  `json:"bytes"`
	BytesOrigin int64  `json:"bytes_origin"`
	BytesSeed   int64  `json:"bytes_seed"`
	BytesPeers  int64  `json:"bytes_peers"`
	BytesLocal  int64  `json:"bytes_local"`
	SHA256      string `json:"sha256"`
}

// fetched is what a download received over the network.
func (r report) fetched() int64 { return r.BytesOrigin + r.BytesSeed + r.BytesPeers }

// result is one dfget run.
type result struct {
	d    *daemon
	out  string
	rep  report
	err  error
	code int // dfget's exit code (-1: did not exit)
	msg  string
	took time.Duration
}

// dfget runs `dfget --daemon-sock d.sock URL -O out` and returns its report,
// exit code and output.
func dfget(ctx context.Context, d *daemon, url, out string, extra ...string) result {
	rep := out + ".report.json"
	defer os.Remove(rep)
	args := append([]string{"--daemon-sock", d.sock, url, "-q", "-O", out, "--report-json", rep}, extra...)
	began := time.Now()
	b, err := exec.CommandContext(ctx, filepath.Join(binDir, "dfget"), args...).CombinedOutput()
	r := result{d: d, out: out, err: err, msg: strings.TrimSpace(string(b)), took: time.Since(began)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		r.code = -1
	}
	if err == nil {
		if rb, rerr := os.ReadFile(rep); rerr != nil {
			r.err = rerr
		} else if rerr := json.Unmarshal(rb, &r.rep); rerr != nil {
			r.err = fmt.Errorf("dfget report %s: %w", rb, rerr)
		}
	}
	return r
}

// dfgetAll runs one dfget per daemon at once, each to its own output in dir.
func dfgetAll(ctx context.Context, ds []*daemon, url, dir string) []result {
	res := make([]result, len(ds))
	var wg sync.WaitGroup
	for i, d := range ds {
		wg.Go(func() { res[i] = dfget(ctx, d, url, filepath.Join(dir, d.id+".out")) })
	}
	wg.Wait()
	return res
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// checkExact asserts that a download succeeded with an exact output (and
// removes the output: the disk footprint stays small).
func checkExact(t *testing.T, r result, want string) {
	t.Helper()
	if r.err != nil {
		t.Errorf("%s: dfget failed (exit %d): %v: %s", r.d.id, r.code, r.err, r.msg)
		return
	}
	got, err := fileSHA256(r.out)
	if err != nil {
		t.Errorf("%s: %v", r.d.id, err)
		return
	}
	if got != want {
		t.Errorf("%s: output %s, want %s", r.d.id, got, want)
	}
	if r.rep.SHA256 != want && "sha256:"+r.rep.SHA256 != want {
		t.Errorf("%s: dfget reported sha256 %s, want %s", r.d.id, r.rep.SHA256, want)
	}
	os.Remove(r.out)
}

// checkNoOutput asserts that a failed download left nothing at out nor a
// temporary file beside it.
func checkNoOutput(t *testing.T, out string) {
	t.Helper()
	if _, err := os.Stat(out); err == nil {
		t.Errorf("a failed download left %s", out)
	}
	checkNoTemp(t, filepath.Dir(out))
}

// checkNoTemp asserts that dir holds no temporary output file.
func checkNoTemp(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".dfly-tmp-") {
			t.Errorf("a temporary output file was left behind: %s", e.Name())
		}
	}
}

func newOrigin(t *testing.T) *origin.Server {
	t.Helper()
	o, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

// waitFor polls cond every 20ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stored is how many bytes of blocks the daemon's store holds (0 when the
// daemon does not answer).
func (d *daemon) stored() int64 {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := d.client.Stats(ctx)
	if err != nil {
		return 0
	}
	return st.Store.Stored
}
