// Package swarm holds the multi-process tests of dfly's P2P swarm: a real
// origin (in process), the real supernode and dfdaemon binaries (built in
// TestMain), and downloads driven through the daemons' local API — the same
// unix-socket client dfget uses.
package swarm

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
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/integration/readyproc"
	"github.com/dfly-p2p/dfly/peer"
)

// binDir holds the binaries built by TestMain.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "dfly-swarm-bin-")
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
	// DFLY_SWARM_BUILD_FLAGS adds go build flags, e.g. "-race" to run the
	// daemons themselves under the race detector.
	args := append([]string{"build", "-o", dir + "/"}, strings.Fields(os.Getenv("DFLY_SWARM_BUILD_FLAGS"))...)
	cmd := exec.Command("go", append(args, "./cmd/supernode", "./cmd/dfdaemon", "./cmd/dfget")...)
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build the dfly binaries:", err)
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

// proc is a started binary; its output goes to a log file kept for failures.
type proc struct{ *readyproc.Proc }

// start runs a binary and waits for the line starting with ready on stdout.
func start(t *testing.T, name, bin string, ready string, args ...string) (*proc, string) {
	t.Helper()
	rp, line, err := readyproc.Start(name, filepath.Join(t.TempDir(), name+".log"), ready, 60*time.Second,
		append([]string{filepath.Join(binDir, bin)}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{rp}
	t.Cleanup(func() {
		p.stop()
		if strings.Contains(p.LogTail(1<<30), "WARNING: DATA RACE") {
			t.Errorf("%s: the race detector fired (see its log below)", name)
		}
		if t.Failed() {
			t.Logf("--- tail of %s log ---\n%s", name, p.LogTail(6000))
		}
	})
	return p, line
}

// stop ends the process with SIGTERM (SIGKILL after 10s) and waits for it.
func (p *proc) stop() { p.Stop(10 * time.Second) }

// kill ends the process at once, as a crash would.
func (p *proc) kill() { p.Kill() }

// field returns the value of key=VALUE in a ready line.
func field(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

// supernode is a running supernode process.
type supernode struct {
	*proc
	dir          string
	grpc, upload string
}

func startSupernode(t *testing.T, uploadRate string) *supernode {
	t.Helper()
	return startSupernodeAt(t, t.TempDir(), "127.0.0.1:0", "127.0.0.1:0", uploadRate)
}

// startSupernodeAt starts a supernode with the given store directory and
// listen addresses (a restart reuses them).
func startSupernodeAt(t *testing.T, dir, grpcAddr, uploadAddr, uploadRate string) *supernode {
	t.Helper()
	p, line := start(t, "supernode", "supernode", "supernode listening",
		"--listen", grpcAddr, "--upload-listen", uploadAddr, "--metrics-listen", "127.0.0.1:0", "--store", filepath.Join(dir, "store"),
		"--upload-rate", uploadRate, "--log-level", "info")
	sn := &supernode{proc: p, dir: dir, grpc: field(line, "grpc"), upload: field(line, "upload")}
	if sn.grpc == "" || sn.upload == "" {
		t.Fatalf("cannot parse the supernode's ready line %q", line)
	}
	return sn
}

// state is the part of the supernode's /debug/state the tests read.
type state struct {
	Scheduler struct {
		Hosts []struct {
			ID          string `json:"id"`
			IDC         string `json:"idc"`
			IsSeed      bool   `json:"is_seed"`
			BytesServed int64  `json:"bytes_served"`
		} `json:"hosts"`
		Tasks []struct {
			ID      string         `json:"id"`
			Holders map[string]int `json:"holders"`
			Blocked []string       `json:"blocked"`
		} `json:"tasks"`
	} `json:"scheduler"`
	Seed struct {
		ID              string `json:"id"`
		BytesFromOrigin int64  `json:"bytes_from_origin"`
	} `json:"seed"`
}

func (sn *supernode) state(t *testing.T) state {
	t.Helper()
	resp, err := http.Get("http://" + sn.upload + "/debug/state")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st state
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// daemon is a running dfdaemon process and a client of its local API.
type daemon struct {
	*proc
	id, idc string
	sock    string
	upload  string
	metrics string // the metrics listener's HOST:PORT
	client  *peer.DaemonClient
}

func startDaemon(t *testing.T, sn *supernode, id, idc string, extra ...string) *daemon {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "d.sock")
	args := append([]string{"--supernode", sn.grpc, "--listen", "127.0.0.1:0", "--sock", sock,
		"--store", filepath.Join(dir, "store"), "--host-id", id, "--log-level", "info", "--metrics-listen", "127.0.0.1:0"}, extra...)
	if idc != "" {
		args = append(args, "--idc", idc)
	}
	p, line := start(t, id, "dfdaemon", "dfdaemon ready", args...)
	d := &daemon{proc: p, id: id, idc: idc, sock: field(line, "sock"), upload: field(line, "upload"), metrics: field(line, "metrics")}
	c, err := peer.DialDaemon(context.Background(), d.sock)
	if err != nil {
		t.Fatalf("%s: %v", id, err)
	}
	d.client = c
	t.Cleanup(c.Close)
	return d
}

// outcome of one download.
type outcome struct {
	d      *daemon
	res    peer.DownloadResult
	err    error
	out    string
	took   time.Duration
	served int64 // bytes the daemon's upload server sent (after the downloads)
	stats  peer.DaemonStats
}

// downloadAll runs one download per daemon at once; progress(i, done) is
// called with each daemon's progress events.
func downloadAll(ctx context.Context, t *testing.T, ds []*daemon, url string, progress func(i int, done, total int64)) []outcome {
	t.Helper()
	return downloadRequests(ctx, t, ds, peer.DownloadRequest{URL: url}, progress)
}

// dfgetReport is the part of dfget's --report-json the tests read.
type dfgetReport struct {
	TaskID      string `json:"task_id"`
	Bytes       int64  `json:"bytes"`
	BytesOrigin int64  `json:"bytes_origin"`
	BytesSeed   int64  `json:"bytes_seed"`
	BytesPeers  int64  `json:"bytes_peers"`
	BytesLocal  int64  `json:"bytes_local"`
	Fallbacks   int64  `json:"fallbacks"`
	SHA256      string `json:"sha256"`
}

// dfget runs the dfget binary with args plus -O out --report-json and
// returns its report.
func dfget(ctx context.Context, out string, args ...string) (peer.DownloadResult, error) {
	rep := out + ".report.json"
	defer os.Remove(rep)
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "dfget"), append(args, "-q", "-O", out, "--report-json", rep)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return peer.DownloadResult{}, fmt.Errorf("dfget %v: %w: %s", args, err, b)
	}
	b, err := os.ReadFile(rep)
	if err != nil {
		return peer.DownloadResult{}, err
	}
	var r dfgetReport
	if err := json.Unmarshal(b, &r); err != nil {
		return peer.DownloadResult{}, fmt.Errorf("dfget report %s: %w", b, err)
	}
	return peer.DownloadResult{TaskID: r.TaskID, Length: r.Bytes, SHA256: strings.TrimPrefix(r.SHA256, "sha256:"), BytesOrigin: r.BytesOrigin,
		BytesSeed: r.BytesSeed, BytesPeers: r.BytesPeers, BytesLocal: r.BytesLocal, Fallbacks: r.Fallbacks}, nil
}

// dfgetAll runs one `dfget --daemon-sock` process per daemon at once.
func dfgetAll(ctx context.Context, t *testing.T, ds []*daemon, url string) []outcome {
	t.Helper()
	outDir := t.TempDir()
	res := make([]outcome, len(ds))
	var wg sync.WaitGroup
	for i, d := range ds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out := filepath.Join(outDir, d.id+".out")
			began := time.Now()
			r, err := dfget(ctx, out, "--daemon-sock", d.sock, url)
			res[i] = outcome{d: d, res: r, err: err, out: out, took: time.Since(began)}
		}()
	}
	wg.Wait()
	for i := range res {
		if st, err := res[i].d.client.Stats(ctx); err == nil {
			res[i].served = st.Upload.BytesServed
			res[i].stats = st
		}
	}
	return res
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// checkExact asserts that a download succeeded and its output has the content's sha256.
func checkExact(t *testing.T, o outcome, want string) {
	t.Helper()
	if o.err != nil {
		t.Errorf("%s: download failed: %v", o.d.id, o.err)
		return
	}
	if got := fileSHA256(t, o.out); got != want {
		t.Errorf("%s: output %s, want %s", o.d.id, got, want)
	}
	if "sha256:"+o.res.SHA256 != want {
		t.Errorf("%s: daemon reported sha256 %s, want %s", o.d.id, o.res.SHA256, want)
	}
	os.Remove(o.out) // keep the disk footprint of the test small
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

// progressTracker records each daemon's progress and signals when the
// average passes a fraction.
type progressTracker struct {
	mu      sync.Mutex
	done    []int64
	total   int64
	frac    float64
	reached chan struct{}
	once    sync.Once
}

func newProgressTracker(n int, frac float64) *progressTracker {
	return &progressTracker{done: make([]int64, n), frac: frac, reached: make(chan struct{})}
}

func (p *progressTracker) update(i int, done, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done[i], p.total = done, total
	var sum int64
	for _, d := range p.done {
		sum += d
	}
	if p.total > 0 && float64(sum) >= p.frac*float64(p.total)*float64(len(p.done)) {
		p.once.Do(func() { close(p.reached) })
	}
}
