package deploy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// commandLine is one binary as a deployment file runs it.
type commandLine struct {
	bin  string
	args []string
}

// nodePaths are the host directories the deployment files use; the test
// moves them into a temporary directory.
var nodePaths = []string{"/var/lib/dfly/", "/run/dfly/", "/etc/containerd/"}

// listenFlags are moved to free loopback ports.
var listenFlags = map[string]bool{"listen": true, "upload-listen": true, "metrics-listen": true, "mirror-listen": true, "api-listen": true}

// keepFlags name paths that are written into configuration, not opened.
var keepFlags = map[string]bool{"snapshotter-address": true, "mirror": true}

// rewrite makes a deployment command line runnable here: node paths under
// root, listeners on 127.0.0.1:0, --supernode at the test's supernode,
// --advertise dropped (the default is derived from the listener).
func rewrite(args []string, root, supernode string) []string {
	type kv struct {
		name, value string
		hasValue    bool
	}
	var flags []kv
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		name := flagName(a)
		if name == "" {
			out = append(out, a) // a subcommand word
			continue
		}
		f := kv{name: name}
		if _, v, ok := strings.Cut(a, "="); ok {
			f.value, f.hasValue = v, true
		} else if i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			f.value, f.hasValue = args[i+1], true
			i++
		}
		flags = append(flags, f)
	}
	for _, f := range flags {
		switch {
		case f.name == "advertise":
			continue
		case listenFlags[f.name]:
			f.value = "127.0.0.1:0"
		case f.name == "supernode" && supernode != "":
			f.value = supernode
		case !keepFlags[f.name]:
			for _, p := range nodePaths {
				if strings.HasPrefix(f.value, p) {
					f.value = filepath.Join(root, f.value)
				}
			}
		}
		if f.hasValue {
			out = append(out, "--"+f.name+"="+f.value)
		} else {
			out = append(out, "--"+f.name)
		}
	}
	return out
}

// proc is a started binary; its output is kept for failure reports.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	mu   sync.Mutex
	out  strings.Builder
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// start runs argv and returns the first line of its output (stdout and
// stderr) containing marker. The test's cleanup stops it (SIGTERM, then
// SIGKILL) and waits for it; it also dies with the test binary.
func start(t *testing.T, name, marker string, argv ...string) (*proc, string) {
	t.Helper()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = pw, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the thread that started the child exits.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(p.done)
	}()
	err = <-started
	pw.Close()
	if err != nil {
		pr.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	lines := make(chan string, 1)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		defer pr.Close()
		sc := bufio.NewScanner(pr)
		sent := false
		for sc.Scan() {
			p.mu.Lock()
			p.out.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if !sent && strings.Contains(sc.Text(), marker) {
				lines <- sc.Text()
				sent = true
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
		<-scanned
	})
	select {
	case line := <-lines:
		return p, line
	case <-p.done:
		<-scanned
		t.Fatalf("%s exited before %q:\n%s", name, marker, p.output())
	case <-time.After(60 * time.Second):
		t.Fatalf("%s printed no %q within 60 s:\n%s", name, marker, p.output())
	}
	return nil, ""
}

var addrField = regexp.MustCompile(`\b(grpc|metrics)=(\S+)`)

func fields(line string) map[string]string {
	m := map[string]string{}
	for _, f := range addrField.FindAllStringSubmatch(line, -1) {
		m[f[1]] = f[2]
	}
	return m
}

// expectHealthy checks /healthz at once, waits for /readyz to answer 200,
// and returns the /metrics exposition.
func expectHealthy(t *testing.T, p *proc, metrics string) string {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	get := func(path string) (int, string, error) {
		resp, err := client.Get("http://" + metrics + path)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return resp.StatusCode, string(b), nil
	}
	if code, body, err := get("/healthz"); err != nil || code != http.StatusOK {
		t.Fatalf("%s: GET /healthz: %d %q %v\n%s", p.name, code, body, err, p.output())
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body, err := get("/readyz")
		if err == nil && code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: GET /readyz never answered 200 within 30 s: last %d %q %v\n%s", p.name, code, body, err, p.output())
		}
		time.Sleep(200 * time.Millisecond)
	}
	code, body, err := get("/metrics")
	if err != nil || code != http.StatusOK || !strings.Contains(body, "dfly_build_info") {
		t.Fatalf("%s: GET /metrics: %d %v, want dfly_build_info in:\n%.2000s", p.name, code, err, body)
	}
	return body
}

// firstScrape are the contract metrics each binary exposes from its first
// scrape (series pre-initialised at startup), so the dashboard is never
// blank. Per-layer gauges and FUSE reads appear with their layers.
var firstScrape = map[string][]string{
	"supernode": {"dfly_build_info", "dfly_supernode_peers", "dfly_supernode_tasks", "dfly_scheduler_sync_duration_seconds",
		"dfly_scheduler_assignments_total", "dfly_scheduler_withheld_total", "dfly_seed_cache_total",
		"dfly_seed_origin_bytes_total", "dfly_seed_upload_bytes_total", "dfly_preheat_jobs",
		"dfly_store_bytes", "dfly_store_quota_bytes", "dfly_store_tasks", "dfly_store_evictions_total"},
	"dfdaemon": {"dfly_build_info", "dfly_peer_bytes_total", "dfly_peer_downloads_total", "dfly_peer_block_fetch_duration_seconds",
		"dfly_peer_origin_fallbacks_total", "dfly_peer_upload_bytes_total", "dfly_peer_uploads_in_flight",
		"dfly_peer_uploads_rejected_total", "dfly_peer_limiter_wait_seconds_total", "dfly_peer_tasks_active",
		"dfly_store_bytes", "dfly_store_quota_bytes", "dfly_store_tasks", "dfly_store_evictions_total", "dfly_mirror_requests_total"},
	"dfly-snapshotter": {"dfly_build_info", "dfly_peer_bytes_total", "dfly_peer_downloads_total",
		"dfly_store_bytes", "dfly_store_quota_bytes", "dfly_store_tasks", "dfly_store_evictions_total"},
}

var (
	sampleRe = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+\S+`)
	labelRe  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
)

// checkExposition returns how a /metrics answer (Prometheus text format)
// breaks the metric-name contract the dashboard is built on: labels or label
// values of contract metrics outside it, a histogram exposed without its
// series, or first-scrape metrics of bin that are missing. Other dfly_
// metrics (features beyond the contract) are fine.
func checkExposition(bin, body string) []string {
	var bad []string
	seen, reported := map[string]bool{}, map[string]bool{}
	values := map[string]map[string]bool{} // metric/label -> values seen
	for _, line := range strings.Split(body, "\n") {
		m := sampleRe.FindStringSubmatch(line)
		if m == nil || !strings.HasPrefix(m[1], "dfly_") {
			continue
		}
		base, spec, err := contractMetric(m[1])
		if err != nil {
			if _, inContract := contract[m[1]]; inContract && !reported[m[1]] {
				bad = append(bad, fmt.Sprintf("%s exposes %v", bin, err))
			}
			reported[m[1]] = true
			continue
		}
		seen[base] = true
		for _, l := range labelRe.FindAllStringSubmatch(m[2], -1) {
			want, ok := spec.labels[l[1]]
			switch {
			case !ok:
				bad = append(bad, fmt.Sprintf("%s: %s has label %s, which the contract does not name", bin, line, l[1]))
			case want != nil && !contains(want, l[2]):
				bad = append(bad, fmt.Sprintf("%s: %s: %s=%q is not one of %v", bin, line, l[1], l[2], want))
			}
			key := base + "/" + l[1]
			if values[key] == nil {
				values[key] = map[string]bool{}
			}
			values[key][l[2]] = true
		}
	}
	for _, name := range firstScrape[bin] {
		if !seen[name] {
			bad = append(bad, fmt.Sprintf("%s does not expose %s at its first scrape", bin, name))
			continue
		}
		for label, want := range contract[name].labels {
			for _, v := range want {
				if !values[name+"/"+label][v] {
					bad = append(bad, fmt.Sprintf("%s: %s{%s=%q} is not pre-initialised (the series must exist from the first scrape)", bin, name, label, v))
				}
			}
		}
	}
	return bad
}

// readyMarker is what each binary prints once it serves, with metrics=ADDR.
var readyMarker = map[string]string{
	"supernode":        "supernode listening",
	"dfdaemon":         "dfdaemon ready",
	"dfly-snapshotter": "dfly snapshotter serving",
}

// runSwarm starts the supernode, dfdaemon and snapshotter command lines and
// checks that each one answers its health endpoints.
func runSwarm(t *testing.T, lines map[string]commandLine) {
	root, err := os.MkdirTemp("", "dfly-deploy-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	sn := lines["supernode"]
	p, line := start(t, "supernode", readyMarker["supernode"], append([]string{filepath.Join(binDir, "supernode")}, rewrite(sn.args, root, "")...)...)
	f := fields(line)
	if f["grpc"] == "" || f["metrics"] == "" {
		t.Fatalf("supernode ready line %q lacks grpc= or metrics=", line)
	}
	for _, problem := range checkExposition("supernode", expectHealthy(t, p, f["metrics"])) {
		t.Error(problem)
	}
	for _, b := range []string{"dfdaemon", "dfly-snapshotter"} {
		cl, ok := lines[b]
		if !ok {
			t.Fatalf("no %s command line", b)
		}
		p, line := start(t, b, readyMarker[b], append([]string{filepath.Join(binDir, b)}, rewrite(cl.args, root, f["grpc"])...)...)
		m := fields(line)["metrics"]
		if m == "" {
			t.Fatalf("%s ready line %q lacks metrics=ADDR", b, line)
		}
		for _, problem := range checkExposition(b, expectHealthy(t, p, m)) {
			t.Error(problem)
		}
	}
}

// podEnv resolves a container's env as the kubelet would on a test node.
func podEnv(t *testing.T, objs []object, c *corev1.Container) map[string]string {
	env := map[string]string{}
	fieldValues := map[string]string{"metadata.name": "dfly-supernode-0", "metadata.namespace": "dfly",
		"spec.nodeName": "node-1", "status.hostIP": "127.0.0.1", "status.podIP": "127.0.0.1"}
	m := manifests{objs: objs}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil:
			v, ok := fieldValues[e.ValueFrom.FieldRef.FieldPath]
			if !ok {
				t.Fatalf("%s: env %s: field %s is not simulated", c.Name, e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
			env[e.Name] = v
		case e.ValueFrom.ConfigMapKeyRef != nil:
			cm := m.configMap(e.ValueFrom.ConfigMapKeyRef.Name)
			if cm == nil {
				t.Fatalf("%s: env %s: no ConfigMap %s", c.Name, e.Name, e.ValueFrom.ConfigMapKeyRef.Name)
			}
			env[e.Name] = cm.Data[e.ValueFrom.ConfigMapKeyRef.Key]
		default:
			t.Fatalf("%s: env %s: source not simulated", c.Name, e.Name)
		}
	}
	return env
}

// podLines returns each container's binary and args, $(VAR) expanded.
func podLines(t *testing.T, objs []object) (main map[string]commandLine, init []commandLine) {
	main = map[string]commandLine{}
	for _, c := range (manifests{objs: objs}).containers() {
		env := podEnv(t, objs, c.c)
		var args []string
		for _, a := range c.c.Args {
			args = append(args, envRef.ReplaceAllStringFunc(a, func(ref string) string {
				return env[envRef.FindStringSubmatch(ref)[1]]
			}))
		}
		cl := commandLine{bin: c.bin(), args: args}
		if c.init {
			init = append(init, cl)
		} else if _, ok := c.w.owner.obj.(*appsv1.DaemonSet); ok || c.bin() == "supernode" {
			main[c.bin()] = cl
		}
	}
	return main, init
}

// runConfigure runs the containerd-config init container's dfctl against a
// node directory with a containerd 1.6 config.toml, twice (a pod restart
// runs it again), and checks what it wrote.
func runConfigure(t *testing.T, cl commandLine, registries string, snapshotter bool) {
	root := t.TempDir()
	cfg := filepath.Join(root, "etc/containerd/config.toml")
	if err := os.MkdirAll(filepath.Dir(cfg), 0o755); err != nil {
		t.Fatal(err)
	}
	const old = "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"runc\"\n"
	if err := os.WriteFile(cfg, []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	argv := append([]string{filepath.Join(binDir, cl.bin)}, rewrite(cl.args, root, "")...)
	for run := 1; run <= 2; run++ {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("run %d of %q: %v\n%s", run, argv, err, out)
		}
		if run == 2 && !strings.Contains(string(out), "nothing to change") {
			t.Errorf("second run changed files again:\n%s", out)
		}
	}
	for _, r := range strings.Split(registries, ",") {
		b, err := os.ReadFile(filepath.Join(root, "etc/containerd/certs.d", r, "hosts.toml"))
		if err != nil {
			t.Errorf("registry %s: %v", r, err)
		} else if !strings.Contains(string(b), `[host."http://127.0.0.1:65001"]`) {
			t.Errorf("registry %s: hosts.toml does not name the node's mirror:\n%s", r, b)
		}
	}
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	conf := string(b)
	if !strings.HasPrefix(conf, old) {
		t.Errorf("config.toml's own lines changed:\n%s", conf)
	}
	// The node's directory is mounted at its own path, so the directory the
	// init container wrote hosts.toml into is the one containerd reads.
	if want := fmt.Sprintf("config_path = %q", filepath.Join(root, "etc/containerd/certs.d")); !strings.Contains(conf, want) {
		t.Errorf("config.toml: no %s (where hosts.toml went):\n%s", want, conf)
	}
	if got := strings.Contains(conf, `address = "/run/dfly/snapshotter.sock"`); got != snapshotter {
		t.Errorf("config.toml names the snapshotter's node socket: %v, want %v:\n%s", got, snapshotter, conf)
	}
}

// TestCommandLinesStart starts the binaries exactly as each deployment form
// runs them (paths and ports moved into the test's sandbox) and checks that
// they come up, answer /healthz, become ready on /readyz and serve /metrics
// on the listener the probes and Prometheus use; and it runs the
// containerd-config init container's dfctl on a sample node directory.
func TestCommandLinesStart(t *testing.T) {
	t.Run("systemd", func(t *testing.T) {
		t.Parallel()
		lines := map[string]commandLine{}
		for _, s := range units {
			u, err := parseUnit(readDeploy(t, filepath.Join("systemd", s.file)))
			if err != nil {
				t.Fatal(err)
			}
			extra, err := envArgs(readDeploy(t, filepath.Join("systemd", "default", s.envFile)), s.envVar)
			if err != nil {
				t.Fatal(err)
			}
			argv := execArgv(u, s.envVar, extra)
			lines[s.bin] = commandLine{bin: s.bin, args: argv[1:]}
		}
		runSwarm(t, lines)
	})
	forms := []struct {
		name string
		objs func(t *testing.T) []object
	}{
		{"kubernetes", func(t *testing.T) []object {
			objs, err := decodeFiles(plainManifests(t))
			if err != nil {
				t.Fatal(err)
			}
			return objs
		}},
		{"helm", func(t *testing.T) []object { return render(t) }},
	}
	for _, f := range forms {
		t.Run(f.name, func(t *testing.T) {
			t.Parallel()
			objs := f.objs(t)
			main, init := podLines(t, objs)
			runSwarm(t, main)
			if len(init) != 1 || init[0].bin != "dfctl" {
				t.Fatalf("init containers %v, want one dfctl", init)
			}
			cm := (manifests{objs: objs}).configMap("dfly-config")
			if cm == nil {
				t.Fatal("no ConfigMap dfly-config")
			}
			runConfigure(t, init[0], cm.Data["registries"], true)
		})
	}
}

func TestRewrite(t *testing.T) {
	for _, c := range []struct {
		in   []string
		want string
	}{
		{[]string{"--store", "/var/lib/dfly/x", "--listen", "0.0.0.0:8002", "--quota", "1G"},
			"--store=/R/var/lib/dfly/x --listen=127.0.0.1:0 --quota=1G"},
		{[]string{"--metrics-listen=$(X):65002", "--advertise=a:1", "--supernode=s.svc:8002", "--tls-client-auth"},
			"--metrics-listen=127.0.0.1:0 --supernode=S --tls-client-auth"},
		{[]string{"containerd", "configure", "--config=/etc/containerd/config.toml", "--snapshotter-address=/run/dfly/snapshotter.sock", "--snapshotter-address="},
			"containerd configure --config=/R/etc/containerd/config.toml --snapshotter-address=/run/dfly/snapshotter.sock --snapshotter-address="},
	} {
		if got := strings.Join(rewrite(c.in, "/R", "S"), " "); got != c.want {
			t.Errorf("rewrite(%q):\n got %s\nwant %s", c.in, got, c.want)
		}
	}
}

func TestFields(t *testing.T) {
	got := fields("supernode listening grpc=127.0.0.1:1 upload=127.0.0.1:2 metrics=127.0.0.1:3")
	if fmt.Sprint(got) != "map[grpc:127.0.0.1:1 metrics:127.0.0.1:3]" {
		t.Errorf("fields: %v", got)
	}
}

func TestCheckExposition(t *testing.T) {
	ok := `# HELP dfly_build_info x
dfly_build_info{component="dfly-snapshotter",version="v1"} 1
dfly_peer_bytes_total{provenance="origin"} 0
dfly_peer_bytes_total{provenance="seed"} 0
dfly_peer_bytes_total{provenance="peer"} 0
dfly_peer_bytes_total{provenance="local"} 5
dfly_peer_downloads_total{result="ok"} 0
dfly_peer_downloads_total{result="error"} 0
dfly_peer_downloads_total{result="canceled"} 0
dfly_store_bytes 0
dfly_store_quota_bytes 0
dfly_store_tasks 0
dfly_store_evictions_total 0
dfly_fuse_read_duration_seconds_bucket{le="+Inf"} 0
go_goroutines 12
`
	if p := checkExposition("dfly-snapshotter", ok); len(p) != 0 {
		t.Errorf("a complete exposition: %v", p)
	}
	// Metrics of features beyond the contract are fine.
	if p := checkExposition("dfly-snapshotter", ok+"dfly_peer_compression_saved_bytes_total 0\n"); len(p) != 0 {
		t.Errorf("an exposition with a metric beyond the contract: %v", p)
	}
	for _, c := range []struct{ name, old, new, want string }{
		{"label value outside the set", `provenance="local"`, `provenance="cache"`, `provenance="cache" is not one of`},
		{"label outside the contract", `dfly_store_tasks 0`, `dfly_store_tasks{kind="x"} 0`, "has label kind"},
		{"series not pre-initialised", "dfly_peer_downloads_total{result=\"canceled\"} 0\n", "", `{result="canceled"} is not pre-initialised`},
		{"metric missing", "dfly_store_evictions_total 0\n", "", "does not expose dfly_store_evictions_total"},
		{"histogram without suffix", "go_goroutines 12", "dfly_fuse_read_duration_seconds 1", "is a histogram"},
	} {
		broken := strings.Replace(ok, c.old, c.new, 1)
		if broken == ok {
			t.Fatalf("%s: %q not in the sample", c.name, c.old)
		}
		if got := strings.Join(checkExposition("dfly-snapshotter", broken), "\n"); !strings.Contains(got, c.want) {
			t.Errorf("%s: problems %q, want one naming %q", c.name, got, c.want)
		}
	}
}
