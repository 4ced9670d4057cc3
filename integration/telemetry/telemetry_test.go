// Package telemetry holds the end-to-end test of dfly's metrics with a real
// Prometheus: the real supernode, dfdaemon and dfget binaries (built in
// TestMain) on loopback, scraped by Debian's prometheus binary every
// second, and assertions made through Prometheus's own query API — what an
// operator's dashboards and alerts would see.
package telemetry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/integration/readyproc"
	"github.com/dfly-p2p/dfly/integration/testbin"
)

// binDir holds the binaries built by TestMain.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(testbin.Main(m, func(dir string) { binDir = dir }, "./cmd/supernode", "./cmd/dfdaemon", "./cmd/dfget"))
}

// prometheusBinary is Debian's prometheus (package prometheus,
// .ci/install-deps), or the one in PATH.
func prometheusBinary(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/usr/bin/prometheus"); err == nil {
		return "/usr/bin/prometheus"
	}
	p, err := exec.LookPath("prometheus")
	if err != nil {
		t.Skip("prometheus is not installed (Debian package prometheus; .ci/install-deps installs it): cannot scrape with a real Prometheus")
	}
	return p
}

// start runs a dfly binary and waits for its ready line.
func start(t *testing.T, name, bin, ready string, args ...string) string {
	t.Helper()
	p, line, err := readyproc.Start(name, filepath.Join(t.TempDir(), name+".log"), ready, 60*time.Second,
		append([]string{filepath.Join(binDir, bin)}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop(10 * time.Second)
		if t.Failed() {
			t.Logf("--- tail of %s log ---\n%s", name, p.LogTail(4000))
		}
	})
	return line
}

// metricsAddr is the metrics=ADDR of a ready line.
func metricsAddr(t *testing.T, name, line string) string {
	t.Helper()
	a := readyproc.Fields(line)["metrics"]
	if a == "" {
		t.Fatalf("%s's ready line %q names no metrics=ADDR (--metrics-listen 127.0.0.1:0 was given)", name, line)
	}
	return a
}

// freeAddr is a loopback address nobody listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// promServer is a running Prometheus.
type promServer struct {
	addr string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// startPrometheus runs prometheus scraping jobs (job name → targets) every
// second, its storage in a temporary directory, and waits for /-/ready.
func startPrometheus(t *testing.T, bin string, jobs map[string][]string) *promServer {
	t.Helper()
	dir := t.TempDir()
	var cfg strings.Builder
	cfg.WriteString("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n")
	for job, targets := range jobs {
		quoted := make([]string, len(targets))
		for i, tg := range targets {
			quoted[i] = strconv.Quote(tg)
		}
		fmt.Fprintf(&cfg, "  - job_name: %s\n    static_configs:\n      - targets: [%s]\n", job, strings.Join(quoted, ", "))
	}
	conf := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(conf, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &promServer{addr: freeAddr(t), log: filepath.Join(dir, "prometheus.log"), done: make(chan struct{})}
	lf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(bin, "--config.file="+conf, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+p.addr, "--log.level=warn")
	p.cmd.Stdout, p.cmd.Stderr = lf, lf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	go func() {
		// Pdeathsig follows the thread that started the child: keep it.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := p.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = p.cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	if err := <-started; err != nil {
		lf.Close()
		t.Fatalf("start prometheus: %v", err)
	}
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			t.Logf("--- prometheus log ---\n%s", b)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + p.addr + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case <-p.done:
			b, _ := os.ReadFile(p.log)
			t.Fatalf("prometheus exited before it was ready:\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready within 30s (last error %v)", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sample is one element of an instant vector.
type sample struct {
	Metric map[string]string
	Value  float64
	At     float64 // unix seconds
}

// query evaluates an instant PromQL query through /api/v1/query.
func (p *promServer) query(t *testing.T, q string) []sample {
	t.Helper()
	resp, err := http.Get("http://" + p.addr + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		t.Fatalf("query %s: %v", q, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("query %s: HTTP %d, cannot decode %q: %v", q, resp.StatusCode, body, err)
	}
	if r.Status != "success" || r.Data.ResultType != "vector" {
		t.Fatalf("query %s: status %q (%s), result type %q; want a vector", q, r.Status, r.Error, r.Data.ResultType)
	}
	out := make([]sample, 0, len(r.Data.Result))
	for _, x := range r.Data.Result {
		at, _ := x.Value[0].(float64)
		s, _ := x.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			t.Fatalf("query %s: value %v: %v", q, x.Value, err)
		}
		out = append(out, sample{Metric: x.Metric, Value: v, At: at})
	}
	return out
}

// scalar evaluates a query that must give exactly one sample.
func (p *promServer) scalar(t *testing.T, q string) float64 {
	t.Helper()
	s := p.query(t, q)
	if len(s) != 1 {
		t.Fatalf("query %s: %d samples %v, want 1 (does the series exist?)", q, len(s), s)
	}
	return s[0].Value
}

// waitScrapedAfter waits until every one of n targets was scraped after
// since (Prometheus records each scrape's time in its up series).
func (p *promServer) waitScrapedAfter(t *testing.T, since time.Time, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s := p.query(t, "timestamp(up)")
		after := 0
		for _, x := range s {
			if x.Value > float64(since.UnixMilli())/1000 {
				after++
			}
		}
		if after == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d targets scraped since %v within 30s: %v", after, n, since, s)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// dfget downloads url through a daemon's socket into out.
func dfget(ctx context.Context, sock, out, url string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "dfget"), "--daemon-sock", sock, "-q", "-O", out, url)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("dfget through %s: %w: %s", sock, err, b)
	}
	return nil
}

// TestPrometheusScrapesTheSwarm: a supernode and three dfdaemons with
// metrics listeners on free loopback ports, scraped every second by a real
// Prometheus. One daemon downloads 32 MiB (from the seed), then the two
// others at once (from it and each other). After a scrape that followed
// the downloads, Prometheus's query API shows every target up, bytes that
// peers served each other, no origin fallback (the series exists, at 0),
// the supernode's three peers, and the seed fetching the content once.
func TestPrometheusScrapesTheSwarm(t *testing.T) {
	prom := prometheusBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	o, err := origin.Start(origin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	content := origin.Content{Size: 32 << 20, Seed: 15}
	src := o.Add("operate-it.bin", content)

	snLine := start(t, "supernode", "supernode", "supernode listening",
		"--listen", "127.0.0.1:0", "--upload-listen", "127.0.0.1:0", "--store", filepath.Join(t.TempDir(), "store"),
		"--metrics-listen", "127.0.0.1:0", "--heartbeat", "500ms", "--log-level", "info")
	snMetrics := metricsAddr(t, "supernode", snLine)
	grpc := readyproc.Fields(snLine)["grpc"]

	type daemon struct{ id, sock, metrics string }
	ds := make([]daemon, 3)
	for i := range ds {
		dir := t.TempDir()
		d := daemon{id: fmt.Sprintf("d%d", i+1), sock: filepath.Join(dir, "d.sock")}
		line := start(t, d.id, "dfdaemon", "dfdaemon ready", "--supernode", grpc, "--listen", "127.0.0.1:0", "--sock", d.sock,
			"--store", filepath.Join(dir, "store"), "--host-id", d.id, "--mirror-listen", "", "--metrics-listen", "127.0.0.1:0", "--log-level", "info")
		d.metrics = metricsAddr(t, d.id, line)
		ds[i] = d
	}
	p := startPrometheus(t, prom, map[string][]string{
		"supernode": {snMetrics},
		"dfdaemon":  {ds[0].metrics, ds[1].metrics, ds[2].metrics},
	})

	out := t.TempDir()
	if err := dfget(ctx, ds[0].sock, filepath.Join(out, "d1.out"), src); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, len(ds))
	for i := 1; i < len(ds); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = dfget(ctx, ds[i].sock, filepath.Join(out, ds[i].id+".out"), src)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	p.waitScrapedAfter(t, time.Now(), 4)

	up := p.query(t, "up")
	if len(up) != 4 {
		t.Fatalf("up series %v, want 4 (the supernode and 3 daemons)", up)
	}
	for _, s := range up {
		if s.Value != 1 {
			t.Errorf("target %s (job %s) is down: up = %v", s.Metric["instance"], s.Metric["job"], s.Value)
		}
	}
	for _, q := range []string{`sum by (provenance) (dfly_peer_bytes_total)`, `dfly_scheduler_assignments_total`, `dfly_seed_cache_total`} {
		t.Logf("%s: %v", q, p.query(t, q))
	}
	if v := p.scalar(t, `sum(dfly_peer_bytes_total{provenance="peer"})`); v <= 0 {
		t.Errorf("sum(dfly_peer_bytes_total{provenance=\"peer\"}) = %v, want > 0: the daemons served each other nothing", v)
	}
	if n := p.scalar(t, "count(dfly_peer_origin_fallbacks_total)"); n != 3 {
		t.Errorf("%v dfly_peer_origin_fallbacks_total series, want one per daemon (3)", n)
	}
	if v := p.scalar(t, "sum(dfly_peer_origin_fallbacks_total)"); v != 0 {
		t.Errorf("sum(dfly_peer_origin_fallbacks_total) = %v, want 0: no block needed the origin", v)
	}
	if v := p.scalar(t, "dfly_supernode_peers"); v < 3 {
		t.Errorf("dfly_supernode_peers = %v, want >= 3", v)
	}
	if v := p.scalar(t, "dfly_seed_origin_bytes_total"); v != float64(content.Size) {
		t.Errorf("dfly_seed_origin_bytes_total = %v, want the content's %d bytes (fetched once)", v, content.Size)
	}
	if v := p.scalar(t, `dfly_scheduler_assignments_total{parent="peer"}`); v <= 0 {
		t.Errorf("dfly_scheduler_assignments_total{parent=\"peer\"} = %v, want > 0", v)
	}
	if v := p.scalar(t, `sum(dfly_peer_bytes_total)`); v != float64(len(ds))*float64(content.Size) {
		t.Errorf("sum(dfly_peer_bytes_total) = %v, want %d (each daemon got the content once)", v, int64(len(ds))*content.Size)
	}
}
