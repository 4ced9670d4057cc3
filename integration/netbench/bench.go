package netbench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
)

// Config configures a benchmark.
type Config struct {
	// Repo is the module root, used to build the binaries (go build ./cmd/x).
	Repo string
	// BinDir holds the binaries; they are built into it.
	BinDir string
	// WorkDir holds per-run logs, outputs and stores.
	WorkDir string
	// Size of the file every host downloads, in bytes; Seed of its content.
	Size int64
	Seed uint64
	// Ns is the list of host counts; Scenarios the list of scenarios.
	Ns        []int
	Scenarios []string
	// Rates in bit/s; SupernodeRate defaults to OriginRate.
	PeerRate, OriginRate, SupernodeRate, InterIDCRate int64
	// PieceExp is the BitTorrent piece size exponent (default 20: 1 MiB).
	PieceExp int
	// RunTimeout bounds one run; 0 means 10 × the client-server time + 60 s.
	RunTimeout time.Duration
	// KeepOutputs keeps downloaded files and stores after a run.
	KeepOutputs bool
	// DaemonArgs and SupernodeArgs are extra flags for every dfdaemon and
	// for the supernode (for experiments such as --direct-io); they are
	// recorded in the report's command.
	DaemonArgs, SupernodeArgs []string
	// DynamicARP: see Spec.DynamicARP.
	DynamicARP bool
	// Telemetry runs dfly as an operator would: every dfdaemon and the
	// supernode serve /metrics, scraped every second by a sink in the
	// supernode's namespace (cmd/otlpsink), and every dfly process (dfget
	// included) exports traces at the default sample ratio to that sink's
	// OTLP receiver. Off: no metrics listeners, no tracing.
	Telemetry bool
	// Content is what every host downloads: ContentRandom (generated, the
	// default) or ContentTar (a tar of ContentDirs, default
	// DefaultContentDirs, built at start; see compress.go).
	Content     string
	ContentDirs []string
	// Compress lists the --compress modes every dfly scenario runs with,
	// one run each, in this order (empty: one run, the binaries' default).
	Compress []string
	Log      *slog.Logger
}

// Sources are the bytes dfget reported per source, summed over hosts.
type Sources struct {
	Origin int64 `json:"bytes_origin"`
	Seed   int64 `json:"bytes_seed"`
	Peers  int64 `json:"bytes_peers"`
}

// Result is the measurement of one run: one scenario at one N.
type Result struct {
	Scenario     string    `json:"scenario"`
	N            int       `json:"n"`
	SizeBytes    int64     `json:"size_bytes"`
	PeerRate     int64     `json:"peer_rate_bps"`
	OriginRate   int64     `json:"origin_rate_bps"`
	InterIDCRate int64     `json:"inter_idc_rate_bps,omitempty"`
	Started      time.Time `json:"started"`

	BoundSeconds float64   `json:"bound_seconds"`
	Times        []float64 `json:"times_seconds"` // per host, in host order; NaN-free: failed hosts are absent
	P50          float64   `json:"p50_seconds"`
	P99          float64   `json:"p99_seconds"`
	Max          float64   `json:"max_seconds"`
	P50X         float64   `json:"p50_x_bound"`
	P99X         float64   `json:"p99_x_bound"`
	MaxX         float64   `json:"max_x_bound"`

	OriginEgressBytes     int64              `json:"origin_egress_bytes"`
	OriginEgressCopies    float64            `json:"origin_egress_copies"`
	SupernodeEgressCopies float64            `json:"supernode_egress_copies,omitempty"`
	CrossIDCBytes         int64              `json:"cross_idc_bytes,omitempty"`
	CrossIDCCopies        float64            `json:"cross_idc_copies,omitempty"`
	CPU                   float64            `json:"cpu_utilisation"`           // whole machine, download phase
	ProcsCPUSeconds       float64            `json:"procs_cpu_seconds"`         // CPU time of every process of the run (services + downloads)
	ProcsCPUByName        map[string]float64 `json:"procs_cpu_seconds_by_name"` // the same by program: download, dfdaemon, supernode, dforigin, aria2c, ...
	Completed             int                `json:"completed"`
	SHA256OK              bool               `json:"sha256_ok"`
	Sources               *Sources           `json:"sources,omitempty"`
	Errors                []string           `json:"errors,omitempty"`
	// Compression (compress.go): the content, the dfly processes'
	// --compress mode, the bytes the peers' NICs received (in copies of
	// S per peer) and the daemons' compression counters.
	Content      string             `json:"content,omitempty"`
	Compress     string             `json:"compress,omitempty"`
	PeerRxBytes  int64              `json:"peer_rx_bytes,omitempty"`
	PeerRxCopies float64            `json:"peer_rx_copies,omitempty"`
	Compression  *CompressionTotals `json:"compression,omitempty"`
}

// Binaries are the paths of the programs a benchmark runs.
type Binaries struct {
	Origin, Supernode, Dfdaemon, Dfget string
	OTLPSink                           string // integration/netbench/cmd/otlpsink (Config.Telemetry)
}

// Bench runs scenarios for one configuration.
type Bench struct {
	cfg      Config
	bins     Binaries
	content  origin.Content
	digest   string // hex sha256 of the content
	dataFile string // the content on disk (BitTorrent seeding)
	torrent  string
	infoHash string
	// contentDir serves a built content (Config.Content) as fileName; "":
	// generated content.
	contentDir string
}

// Fixed addresses and ports inside the topology.
const (
	originPort   = 8080
	snPort       = 8002
	snUploadPort = 8001
	daemonPort   = 65001
	// Config.Telemetry: the metrics listeners and the sink's OTLP port.
	snMetricsPort     = 8004
	daemonMetricsPort = 65002
	otlpPort          = 4317
	trackerPort       = 6969
	fileName          = "bench.bin"
)

// NeedsDfly reports whether a scenario runs the dfly binaries.
func NeedsDfly(scenario string) bool { return scenario == Dfly || scenario == Locality }

// DflyAvailable reports whether the repository has the dfly commands the
// dfly scenarios need (cmd/supernode, cmd/dfdaemon, cmd/dfget), and which are missing.
func DflyAvailable(repo string) (bool, []string) {
	var missing []string
	for _, c := range []string{"supernode", "dfdaemon", "dfget"} {
		if _, err := os.Stat(filepath.Join(repo, "cmd", c)); err != nil {
			missing = append(missing, "cmd/"+c)
		}
	}
	return len(missing) == 0, missing
}

// FindRepo walks up from dir to the directory holding go.mod.
func FindRepo(dir string) (string, error) {
	d, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("no go.mod above %s: run from inside the dfly repository or pass --repo", dir)
		}
		d = parent
	}
}

// BuildBinaries builds the programs the scenarios need into binDir: always
// cmd/dforigin, and cmd/supernode, cmd/dfdaemon, cmd/dfget when dfly is set.
func BuildBinaries(ctx context.Context, repo, binDir string, dfly bool) (Binaries, error) {
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return Binaries{}, fmt.Errorf("create bin dir: %w", err)
	}
	build := func(pkg, name string) (string, error) {
		out := filepath.Join(binDir, name)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
		cmd.Dir = repo
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build %s: %w: %s", pkg, err, strings.TrimSpace(string(b)))
		}
		return out, nil
	}
	var bins Binaries
	var err error
	originPkg := "./cmd/dforigin"
	if bins.Origin, err = build(originPkg, "dforigin"); err != nil {
		return Binaries{}, err
	}
	if !dfly {
		return bins, nil
	}
	if ok, missing := DflyAvailable(repo); !ok {
		return Binaries{}, fmt.Errorf("dfly scenarios need %s, which the repository does not have yet", strings.Join(missing, ", "))
	}
	for _, c := range []struct {
		name string
		dst  *string
	}{{"supernode", &bins.Supernode}, {"dfdaemon", &bins.Dfdaemon}, {"dfget", &bins.Dfget}} {
		if *c.dst, err = build("./cmd/"+c.name, c.name); err != nil {
			return Binaries{}, err
		}
	}
	if bins.OTLPSink, err = build("./integration/netbench/cmd/otlpsink", "otlpsink"); err != nil {
		return Binaries{}, err
	}
	return bins, nil
}

// New validates cfg, builds the binaries and prepares the content (and, for
// BitTorrent, the data file and .torrent).
func New(ctx context.Context, cfg Config) (*Bench, error) {
	if err := Preflight(); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Size <= 0 || len(cfg.Ns) == 0 || len(cfg.Scenarios) == 0 {
		return nil, errors.New("netbench: size, host counts and scenarios must be set")
	}
	if cfg.PeerRate <= 0 || cfg.OriginRate <= 0 || cfg.InterIDCRate <= 0 {
		return nil, errors.New("netbench: peer, origin and inter-idc rates must be set")
	}
	if cfg.SupernodeRate <= 0 {
		cfg.SupernodeRate = cfg.OriginRate
	}
	if cfg.PieceExp == 0 {
		cfg.PieceExp = 20
	}
	dfly, bt := false, false
	for _, s := range cfg.Scenarios {
		if !slices.Contains(AllScenarios(), s) {
			return nil, fmt.Errorf("netbench: unknown scenario %q: want %s", s, strings.Join(AllScenarios(), ", "))
		}
		dfly = dfly || NeedsDfly(s)
		bt = bt || s == BitTorrent
	}
	if bt {
		for _, b := range []string{"aria2c", "opentracker", "mktorrent"} {
			if _, err := exec.LookPath(b); err != nil {
				return nil, fmt.Errorf("bittorrent scenario needs %s: apt-get install aria2 opentracker mktorrent: %w", b, err)
			}
		}
	}
	if err := os.MkdirAll(cfg.WorkDir, 0o755); err != nil {
		return nil, fmt.Errorf("create work dir: %w", err)
	}
	bins, err := BuildBinaries(ctx, cfg.Repo, cfg.BinDir, dfly)
	if err != nil {
		return nil, err
	}
	b := &Bench{cfg: cfg, bins: bins, content: origin.Content{Size: cfg.Size, Seed: cfg.Seed}}
	b.digest = strings.TrimPrefix(b.content.Digest("sha256"), "sha256:")
	if err := b.prepareContent(); err != nil {
		return nil, err
	}
	if bt {
		dataDir := filepath.Join(cfg.WorkDir, "seed")
		if err := os.MkdirAll(dataDir, 0o755); err != nil {
			return nil, fmt.Errorf("create seed dir: %w", err)
		}
		b.dataFile = filepath.Join(dataDir, fileName)
		if err := writeContent(b.dataFile, b.content); err != nil {
			return nil, err
		}
		announce := fmt.Sprintf("http://10.77.0.2:%d/announce", trackerPort)
		b.torrent = filepath.Join(cfg.WorkDir, fileName+".torrent")
		if b.infoHash, err = MakeTorrent(ctx, b.dataFile, announce, cfg.PieceExp, b.torrent); err != nil {
			return nil, err
		}
	}
	return b, nil
}

func writeContent(path string, c origin.Content) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write seed file: %w", err)
	}
	if _, err := io.Copy(f, io.NewSectionReader(c, 0, c.Size)); err != nil {
		f.Close()
		return fmt.Errorf("write seed file %s: %w", path, err)
	}
	return f.Close()
}

// Sweep runs every scenario for every N, calling progress after each run.
// A failed run is recorded (Errors) and the sweep goes on, unless ctx ends.
func (b *Bench) Sweep(ctx context.Context, progress func(Result)) ([]Result, error) {
	var results []Result
	for _, n := range b.cfg.Ns {
		for _, s := range b.cfg.Scenarios {
			for _, mode := range b.modes(s) {
				r, err := b.RunMode(ctx, s, n, mode)
				if err != nil {
					r.Errors = append(r.Errors, err.Error())
				}
				results = append(results, r)
				if progress != nil {
					progress(r)
				}
				if ctx.Err() != nil {
					return results, fmt.Errorf("sweep interrupted: %w", ctx.Err())
				}
				if errors.Is(err, ErrLeftover) {
					return results, err
				}
			}
		}
	}
	return results, nil
}

// hostRun is what one downloading host did.
type hostRun struct {
	host   *Host
	dir    string
	out    string
	report string
	start  time.Time
	end    time.Time
	err    error
}

// Run runs one scenario with n hosts: builds the topology, starts the
// services, starts all downloads at once, measures, verifies and tears
// everything down (also on error or when ctx ends).
func (b *Bench) Run(ctx context.Context, scenario string, n int) (Result, error) {
	return b.RunMode(ctx, scenario, n, "")
}

// RunMode is Run with the dfly processes' --compress mode ("": their default).
func (b *Bench) RunMode(ctx context.Context, scenario string, n int, compress string) (res Result, err error) {
	cfg := b.cfg
	res = Result{Scenario: scenario, N: n, SizeBytes: cfg.Size, PeerRate: cfg.PeerRate, OriginRate: cfg.OriginRate, Started: time.Now().UTC()}
	res.Content, res.Compress = cfg.Content, compress
	res.BoundSeconds = Bound(cfg.Size, n, cfg.OriginRate, cfg.PeerRate).Seconds()
	if err := CheckLeftovers(ctx); err != nil {
		return res, err
	}
	timeout := cfg.RunTimeout
	if timeout == 0 {
		timeout = 10*ClientServerTime(cfg.Size, n, cfg.OriginRate, cfg.PeerRate) + 60*time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	idcs := 1
	if scenario == Locality {
		idcs = 2
		res.InterIDCRate = cfg.InterIDCRate
	}
	topo, err := Build(ctx, Spec{Peers: n, IDCs: idcs, PeerRate: cfg.PeerRate, OriginRate: cfg.OriginRate,
		SupernodeRate: cfg.SupernodeRate, InterIDCRate: cfg.InterIDCRate, DynamicARP: cfg.DynamicARP}, cfg.Log)
	if err != nil {
		return res, err
	}
	runDir := filepath.Join(cfg.WorkDir, fmt.Sprintf("%s-n%d-%s", runName(scenario, compress), n, topo.Spec.Prefix))
	procs := &Procs{}
	defer func() {
		// Teardown on every path: processes by PID, then namespaces.
		var errs []error
		cpu, e := procs.StopAll(5 * time.Second)
		if e != nil {
			errs = append(errs, e)
		}
		res.ProcsCPUByName = map[string]float64{}
		for name, d := range cpu {
			res.ProcsCPUSeconds += d.Seconds()
			res.ProcsCPUByName[name] = round3(d.Seconds())
		}
		res.ProcsCPUSeconds = round3(res.ProcsCPUSeconds)
		if e := topo.Teardown(); e != nil {
			errs = append(errs, e)
		}
		if !cfg.KeepOutputs {
			removeBig(runDir)
		}
		if len(errs) > 0 {
			err = errors.Join(append([]error{err}, errs...)...)
		}
	}()
	hosts := make([]*hostRun, n)
	for i, p := range topo.Peers {
		dir := filepath.Join(runDir, p.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return res, fmt.Errorf("create host dir: %w", err)
		}
		hosts[i] = &hostRun{host: p, dir: dir, out: filepath.Join(dir, fileName), report: filepath.Join(dir, "report.json")}
	}
	for _, h := range []*Host{topo.Origin, topo.Supernode} {
		if err := os.MkdirAll(filepath.Join(runDir, h.Name), 0o755); err != nil {
			return res, fmt.Errorf("create host dir: %w", err)
		}
	}
	start := func(name string, h *Host, env []string, ready string, argv ...string) (*Proc, error) {
		p, err := StartProc(name, h.NS, filepath.Join(runDir, h.Name, name+".log"), env, ready, argv...)
		if err != nil {
			return nil, err
		}
		procs.Add(p)
		return p, nil
	}
	url := fmt.Sprintf("http://%s:%d/%s", topo.Origin.IP, originPort, fileName)

	// Services.
	var download func(h *hostRun) []string
	switch scenario {
	case Native, Dfly, Locality:
		o, err := start("dforigin", topo.Origin, nil, "origin listening",
			append([]string{b.bins.Origin, "--listen", fmt.Sprintf("%s:%d", topo.Origin.IP, originPort)}, b.originContent()...)...)
		if err != nil {
			return res, err
		}
		if err := o.WaitReady(ctx); err != nil {
			return res, err
		}
		download = func(h *hostRun) []string { return []string{"curl", "-sS", "--fail", "-o", h.out, url} }
	case BitTorrent:
		if download, err = b.startBitTorrent(ctx, topo, runDir, start); err != nil {
			return res, err
		}
	}
	if NeedsDfly(scenario) {
		sn := topo.Supernode
		// The flags of the dfly processes for Config.Telemetry.
		metrics := func(*Host, int) []string { return []string{"--metrics-listen", ""} }
		var tracing []string
		if b.cfg.Telemetry {
			sinkArgs := []string{b.bins.OTLPSink, "--listen", fmt.Sprintf("%s:%d", sn.IP, otlpPort),
				"--scrape", fmt.Sprintf("http://%s:%d/metrics", sn.IP, snMetricsPort)}
			for _, h := range hosts {
				sinkArgs = append(sinkArgs, "--scrape", fmt.Sprintf("http://%s:%d/metrics", h.host.IP, daemonMetricsPort))
			}
			sink, err := start("otlpsink", sn, nil, "otlpsink listening", sinkArgs...)
			if err != nil {
				return res, err
			}
			if err := sink.WaitReady(ctx); err != nil {
				return res, err
			}
			tracing = []string{"--otlp-endpoint", fmt.Sprintf("%s:%d", sn.IP, otlpPort), "--otlp-insecure"}
			metrics = func(h *Host, port int) []string {
				return append([]string{"--metrics-listen", fmt.Sprintf("%s:%d", h.IP, port)}, tracing...)
			}
		}
		snArgs := append(append([]string{b.bins.Supernode,
			"--listen", fmt.Sprintf("%s:%d", sn.IP, snPort),
			"--upload-listen", fmt.Sprintf("%s:%d", sn.IP, snUploadPort),
			"--advertise", fmt.Sprintf("%s:%d", sn.IP, snUploadPort),
			"--idc", sn.IDC,
			"--store", filepath.Join(runDir, sn.Name, "store")}, append(metrics(sn, snMetricsPort), compressArgs(compress)...)...), b.cfg.SupernodeArgs...)
		p, err := start("supernode", sn, nil, "supernode listening", snArgs...)
		if err != nil {
			return res, err
		}
		if err := p.WaitReady(ctx); err != nil {
			return res, err
		}
		daemons := make([]*Proc, n)
		for i, h := range hosts {
			addr := fmt.Sprintf("%s:%d", h.host.IP, daemonPort)
			args := append([]string{b.bins.Dfdaemon,
				"--supernode", fmt.Sprintf("%s:%d", sn.IP, snPort),
				"--listen", addr, "--advertise", addr,
				"--sock", filepath.Join(h.dir, "dfdaemon.sock"),
				"--store", filepath.Join(h.dir, "store"),
				"--idc", h.host.IDC}, append(append(metrics(h.host, daemonMetricsPort), compressArgs(compress)...), b.cfg.DaemonArgs...)...)
			if daemons[i], err = start("dfdaemon", h.host, nil, "dfdaemon ready", args...); err != nil {
				return res, err
			}
		}
		for _, d := range daemons {
			if err := d.WaitReady(ctx); err != nil {
				return res, err
			}
		}
		download = func(h *hostRun) []string {
			return append([]string{b.bins.Dfget, url, "-O", h.out, "--daemon-sock", filepath.Join(h.dir, "dfdaemon.sock"),
				"--digest", "sha256:" + b.digest, "--report-json", h.report}, tracing...)
		}
	}

	// Measure.
	before, err := b.snapshot(ctx, topo)
	if err != nil {
		return res, err
	}
	cpu0, err := ReadCPU()
	if err != nil {
		return res, err
	}
	if scenario == BitTorrent {
		err = b.runBitTorrentDownloads(ctx, hosts, download, start)
	} else {
		err = runDownloads(ctx, hosts, download, start)
	}
	if err != nil {
		return res, err
	}
	cpu1, cerr := ReadCPU()
	after, serr := b.snapshot(ctx, topo)
	if err := errors.Join(cerr, serr); err != nil {
		return res, err
	}
	res.CPU = Utilisation(cpu0, cpu1)
	size := float64(cfg.Size)
	res.OriginEgressBytes = after.originTx - before.originTx
	res.OriginEgressCopies = float64(res.OriginEgressBytes) / size
	if NeedsDfly(scenario) {
		res.SupernodeEgressCopies = float64(after.snTx-before.snTx) / size
	}
	if scenario == Locality {
		res.CrossIDCBytes = after.cross - before.cross
		res.CrossIDCCopies = float64(res.CrossIDCBytes) / size
	}
	res.PeerRxBytes = after.peersRx - before.peersRx
	res.PeerRxCopies = round3(float64(res.PeerRxBytes) / size / float64(n))
	if NeedsDfly(scenario) {
		if res.Compression, err = collectCompression(ctx, hosts); err != nil {
			res.Errors = append(res.Errors, fmt.Sprintf("compression counters: %v", err))
		}
	}
	b.finish(&res, hosts, NeedsDfly(scenario))
	return res, nil
}

// startBitTorrent starts the tracker (supernode host) and the seeder (origin
// host) and returns the per-host download command.
func (b *Bench) startBitTorrent(ctx context.Context, topo *Topology, runDir string,
	start func(string, *Host, []string, string, ...string) (*Proc, error)) (func(*hostRun) []string, error) {
	sn := topo.Supernode
	trDir := filepath.Join(runDir, sn.Name)
	// Debian's opentracker serves only whitelisted torrents; it chroots to -d.
	if err := os.WriteFile(filepath.Join(trDir, "whitelist"), []byte(b.infoHash+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("write tracker whitelist: %w", err)
	}
	if _, err := start("opentracker", sn, nil, "", "opentracker", "-i", sn.IP.String(),
		"-p", strconv.Itoa(trackerPort), "-P", strconv.Itoa(trackerPort), "-d", trDir, "-w", "whitelist"); err != nil {
		return nil, err
	}
	trAddr := fmt.Sprintf("%s:%d", sn.IP, trackerPort)
	if err := waitHTTP(ctx, topo.Origin.NS, trAddr); err != nil {
		return nil, fmt.Errorf("tracker not reachable: %w", err)
	}
	seedArgs := append([]string{"aria2c"}, aria2Args(filepath.Dir(b.dataFile))...)
	seedArgs = append(seedArgs, "--bt-seed-unverified=true", b.torrent)
	if _, err := start("aria2c-seed", topo.Origin, nil, "", seedArgs...); err != nil {
		return nil, err
	}
	for {
		c, err := ScrapeComplete(ctx, topo.Origin.NS, trAddr, b.infoHash)
		if err == nil && c >= 1 {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("the seeder never announced to the tracker (last: %v): %w", err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return func(h *hostRun) []string {
		return append(append([]string{"aria2c"}, aria2Args(h.dir)...),
			"--on-bt-download-complete="+filepath.Join(runDir, "done.sh"), b.torrent)
	}, nil
}

// aria2Args are the aria2c options of every BitTorrent host: seed forever,
// no DHT/LPD (the tracker is the only source of peers), quiet console.
func aria2Args(dir string) []string {
	return []string{"--no-conf=true", "--dir=" + dir, "--seed-ratio=0.0", "--enable-dht=false", "--enable-dht6=false",
		"--bt-enable-lpd=false", "--disable-ipv6=true", "--file-allocation=none", "--listen-port=6881",
		"--summary-interval=0", "--console-log-level=warn", "--show-console-readout=false", "--enable-color=false",
		"--check-certificate=false", "--bt-save-metadata=false", "--bt-stop-timeout=0"}
}

// waitHTTP waits until an HTTP server answers at addr, asked from inside ns.
func waitHTTP(ctx context.Context, ns, addr string) error {
	for {
		_, err := run(ctx, "ip", "netns", "exec", ns, "curl", "-sS", "-o", "/dev/null", "--max-time", "1", "http://"+addr+"/")
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last: %v)", addr, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// runDownloads starts one download per host at once and waits for all.
func runDownloads(ctx context.Context, hosts []*hostRun, argv func(*hostRun) []string,
	start func(string, *Host, []string, string, ...string) (*Proc, error)) error {
	procs := make([]*Proc, len(hosts))
	for i, h := range hosts {
		// dfget keeps its own store only when it runs without a daemon; keep
		// it per host (curl ignores the variable).
		p, err := start("download", h.host, []string{"DFLY_STORE=" + filepath.Join(h.dir, "dfget-store")}, "", argv(h)...)
		if err != nil {
			return err
		}
		procs[i] = p
		h.start = p.Started()
	}
	for i, p := range procs {
		h := hosts[i]
		h.err = p.Wait(ctx)
		if ctx.Err() != nil {
			return fmt.Errorf("downloads did not finish: %w", ctx.Err())
		}
		h.end = p.Ended()
	}
	return nil
}

// runBitTorrentDownloads starts aria2c on every host; each keeps seeding
// after it completes (the hook writes the completion time to a file) until
// every host is done.
func (b *Bench) runBitTorrentDownloads(ctx context.Context, hosts []*hostRun, argv func(*hostRun) []string,
	start func(string, *Host, []string, string, ...string) (*Proc, error)) error {
	if len(hosts) == 0 {
		return nil
	}
	hook := filepath.Join(filepath.Dir(hosts[0].dir), "done.sh")
	if err := os.WriteFile(hook, []byte("#!/bin/sh\ndate +%s.%N > \"$NB_DONE.tmp\" && mv \"$NB_DONE.tmp\" \"$NB_DONE\"\n"), 0o755); err != nil {
		return fmt.Errorf("write aria2 hook: %w", err)
	}
	procs := make([]*Proc, len(hosts))
	for i, h := range hosts {
		p, err := start("aria2c", h.host, []string{"NB_DONE=" + filepath.Join(h.dir, "done")}, "", argv(h)...)
		if err != nil {
			return err
		}
		procs[i] = p
		h.start = p.Started()
	}
	pending := len(hosts)
	for pending > 0 {
		pending = 0
		for i, h := range hosts {
			if !h.end.IsZero() || h.err != nil {
				continue
			}
			if b, err := os.ReadFile(filepath.Join(h.dir, "done")); err == nil {
				sec, ferr := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
				if ferr != nil {
					h.err = fmt.Errorf("bad completion time %q: %w", b, ferr)
					continue
				}
				h.end = time.Unix(0, int64(sec*1e9))
				continue
			}
			select {
			case <-procs[i].Done():
				h.err = fmt.Errorf("aria2c exited before completing (%v); log %s:\n%s", procs[i].Err(), procs[i].LogPath, procs[i].Tail())
				continue
			default:
			}
			pending++
		}
		if pending == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("bittorrent downloads did not finish (%d pending): %w", pending, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

type counterSnap struct {
	originTx, snTx, cross int64
	peersRx               int64 // sum over the peers (compress.go)
}

func (b *Bench) snapshot(ctx context.Context, topo *Topology) (counterSnap, error) {
	var s counterSnap
	o, err := Counters(ctx, topo.Origin.NS, "eth0")
	if err != nil {
		return s, err
	}
	sn, err := Counters(ctx, topo.Supernode.NS, "eth0")
	if err != nil {
		return s, err
	}
	s.originTx, s.snTx = o.TxBytes, sn.TxBytes
	if s.peersRx, err = peersRx(ctx, topo); err != nil {
		return s, err
	}
	if topo.Spec.IDCs == 2 {
		x, err := Counters(ctx, topo.BridgeNS, InterIDCPort)
		if err != nil {
			return s, err
		}
		s.cross = x.TxBytes + x.RxBytes
	}
	return s, nil
}

// finish fills times, percentiles, sha256 verification and dfget sources.
func (b *Bench) finish(res *Result, hosts []*hostRun, reports bool) {
	var ds []time.Duration
	res.SHA256OK = true
	var srcs Sources
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2)
	for _, h := range hosts {
		if h.err != nil {
			res.SHA256OK = false
			res.Errors = append(res.Errors, fmt.Sprintf("%s: %v", h.host.Name, h.err))
			continue
		}
		d := h.end.Sub(h.start)
		ds = append(ds, d)
		res.Times = append(res.Times, d.Seconds())
		res.Completed++
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			sum, err := fileSHA256(h.out)
			mu.Lock()
			defer mu.Unlock()
			if err != nil || sum != b.digest {
				res.SHA256OK = false
				res.Errors = append(res.Errors, fmt.Sprintf("%s: output sha256 %s (err %v), want %s", h.host.Name, sum, err, b.digest))
			}
		})
		if reports {
			mu.Lock()
			var r Sources
			if raw, err := os.ReadFile(h.report); err != nil {
				res.Errors = append(res.Errors, fmt.Sprintf("%s: no dfget report: %v", h.host.Name, err))
			} else if err := json.Unmarshal(raw, &r); err != nil {
				res.Errors = append(res.Errors, fmt.Sprintf("%s: bad dfget report: %v", h.host.Name, err))
			} else {
				srcs.Origin += r.Origin
				srcs.Seed += r.Seed
				srcs.Peers += r.Peers
			}
			mu.Unlock()
		}
	}
	wg.Wait()
	if reports {
		res.Sources = &srcs
	}
	if res.Completed == 0 {
		res.SHA256OK = false
		return
	}
	res.P50 = Percentile(ds, 50).Seconds()
	res.P99 = Percentile(ds, 99).Seconds()
	res.Max = Percentile(ds, 100).Seconds()
	if res.BoundSeconds > 0 {
		res.P50X = round3(res.P50 / res.BoundSeconds)
		res.P99X = round3(res.P99 / res.BoundSeconds)
		res.MaxX = round3(res.Max / res.BoundSeconds)
	}
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

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
	return hex.EncodeToString(h.Sum(nil)), nil
}

// removeBig deletes downloaded files and stores under a run directory and
// keeps the logs.
func removeBig(runDir string) {
	entries, err := os.ReadDir(runDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		d := filepath.Join(runDir, e.Name())
		_ = os.Remove(filepath.Join(d, fileName))
		_ = os.RemoveAll(filepath.Join(d, "store"))
		_ = os.RemoveAll(filepath.Join(d, "dfget-store"))
	}
}
