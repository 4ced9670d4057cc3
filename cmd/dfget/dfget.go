package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/cmd/internal/cli"
	"github.com/dfly-p2p/dfly/internal/directio"
	"github.com/dfly-p2p/dfly/internal/source"
	"github.com/dfly-p2p/dfly/internal/telemetry"
	"github.com/dfly-p2p/dfly/internal/tlsconf"
	"github.com/dfly-p2p/dfly/peer"
)

// Exit codes a script can rely on.
const (
	exitOK          = 0
	exitFailure     = 1 // anything not listed below
	exitUsage       = 2 // bad flags or arguments
	exitUnreachable = 3 // origin unreachable, timing out, or failing with 5xx after retries
	exitHTTP4xx     = 4 // origin refused the request (404, 403, 401, ...)
	exitDigest      = 5 // content does not match --digest or the origin's Content-MD5
	exitDisk        = 6 // disk full or store quota exceeded
	exitInterrupted = 130
)

const usageText = `Usage: dfget URL -O FILE [flags]

Downloads URL to FILE through dfly: the content is fetched in verified blocks
into a local block store, so an interrupted download resumes where it stopped
when the same command is run again. FILE appears only once it is complete and
verified.

Flags:
%s
Exit codes:
  0  success
  1  other failure
  2  usage error (bad flag, missing -O, bad --digest, output directory missing)
  3  origin unreachable, timing out, or failing (5xx) after retries
  4  origin refused the request (HTTP 4xx)
  5  digest mismatch (--digest, or the origin's Content-MD5)
  6  disk full or block-store quota exceeded
  130 interrupted
`

type options struct {
	output      string
	digest      string
	e2e         bool
	limitRate   string
	timeout     time.Duration
	concurrency int
	store       string
	quota       string
	headers     []string
	quiet       bool
	retries     int
	reportJSON  string
	logLevel    string
	supernode   string
	daemonSock  string
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o options
	fs := pflag.NewFlagSet("dfget", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVarP(&o.output, "output", "O", "", "write the content to `FILE` (required)")
	fs.StringVar(&o.digest, "digest", "", "verify the whole content against `ALGO:HEX` (sha256 or md5)")
	fs.BoolVar(&o.e2e, "e2e", false, "end-to-end encryption: the content travels between hosts and sits in their stores encrypted under a task key only hosts the supernode gives a token hold (needs a supernode; without one it is fetched in the clear, with a warning)")
	fs.StringVar(&o.limitRate, "limit-rate", "0", "cap the download rate, bytes/s (`RATE` like 10M); 0 = unlimited")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Second, "network timeout: connecting, waiting for headers, stalls")
	fs.IntVar(&o.concurrency, "concurrency", 8, "parallel block fetches")
	fs.StringVar(&o.store, "store", cli.DefaultStoreDir(), "block store `DIR` ($DFLY_STORE)")
	fs.StringVar(&o.quota, "quota", "0", "block store quota (`SIZE` like 50G); 0 = none")
	fs.StringArrayVarP(&o.headers, "header", "H", nil, "extra request header `'Name: value'` (repeatable)")
	fs.BoolVarP(&o.quiet, "quiet", "q", false, "print nothing but errors")
	fs.IntVar(&o.retries, "retries", 4, "retries per request on connection errors and 5xx")
	fs.StringVar(&o.reportJSON, "report-json", "", "write a JSON summary of the download to `FILE`")
	fs.StringVar(&o.logLevel, "log-level", "warn", "log level: debug, info, warn, error")
	fs.StringVar(&o.supernode, "supernode", "", "join the swarm of the supernode at `HOST:PORT` with an embedded peer")
	fs.StringVar(&o.daemonSock, "daemon-sock", "", "download through the dfdaemon listening on `PATH` (default: the local dfdaemon's socket when it answers and neither --store nor --supernode is given)")
	tlsFlags := cli.AddTLSFlags(fs, false)
	traceFlags := cli.AddTraceFlags(fs)
	help := fs.BoolP("help", "h", false, "show this help")
	usage := func() string { return fmt.Sprintf(usageText, fs.FlagUsages()) }

	if err := fs.Parse(args); err != nil {
		fmt.Fprintf(stderr, "dfget: %v\n\n%s", err, usage())
		return exitUsage
	}
	if *help {
		fmt.Fprint(stdout, usage())
		return exitOK
	}
	if fs.NArg() != 1 {
		fmt.Fprintf(stderr, "dfget: want exactly one URL, got %d arguments\n\n%s", fs.NArg(), usage())
		return exitUsage
	}
	url := fs.Arg(0)
	if err := validate(&o, url); err != nil {
		fmt.Fprintf(stderr, "dfget: %v\n", err)
		return exitUsage
	}
	rate, _ := cli.ParseSize(o.limitRate)
	quota, _ := cli.ParseSize(o.quota)
	hdr, _ := cli.ParseHeaders(o.headers)
	logger, err := cli.NewLogger(o.logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "dfget: %v\n", err)
		return exitUsage
	}

	var swarmTLS *tlsconf.Reloader
	if tlsFlags.Enabled() {
		if o.supernode == "" {
			fmt.Fprintln(stderr, "dfget: the --tls-* flags secure the embedded peer's swarm links: they need --supernode")
			return exitUsage
		}
		if swarmTLS, err = tlsFlags.Load(logger); err != nil {
			fmt.Fprintf(stderr, "dfget: %v\n", err)
			return exitUsage
		}
	}

	req := peer.Request{URL: url, Header: hdr, Digest: o.digest, E2E: o.e2e}
	tracing, err := traceFlags.Start(ctx, "dfget", logger)
	if err != nil {
		fmt.Fprintf(stderr, "dfget: %v\n", err)
		return exitUsage
	}
	defer cli.StopTracing(tracing, logger) // (after the span below ended)
	ctx, span := startSpan(ctx, tracing, url)
	defer span.End()
	d := downloader{o: o, req: req, stderr: stderr, log: logger, rate: rate, quota: quota, tls: swarmTLS, tracing: tracing}
	var sum string
	var res peer.Result
	client, err := d.daemon(ctx, fs.Changed("store") || fs.Changed("supernode"))
	if err == nil && client != nil {
		defer client.Close()
		sum, res, err = d.viaDaemon(ctx, client)
	} else if err == nil {
		sum, res, err = d.run(ctx)
	}
	if err != nil {
		fmt.Fprintf(stderr, "dfget: %v\n", err)
		telemetry.RecordError(ctx, err)
		return exitCode(ctx, err)
	}
	if !o.quiet {
		elapsed := res.Duration.Seconds()
		fmt.Fprintf(stderr, "dfget: saved %s (%s) in %.1fs, %s/s; from origin %s, seed %s, peers %s, local store %s; sha256:%s%s\n",
			o.output, cli.HumanBytes(res.Task.Length), elapsed, cli.HumanBytes(int64(float64(res.Task.Length)/max(elapsed, 1e-3))),
			cli.HumanBytes(res.Stats.BytesOrigin), cli.HumanBytes(res.Stats.BytesSeed), cli.HumanBytes(res.Stats.BytesPeers),
			cli.HumanBytes(res.Stats.BytesLocal), sum, verifiedNote(res.Task))
	}
	if o.reportJSON != "" {
		if err := writeReport(o.reportJSON, url, sum, res); err != nil {
			fmt.Fprintf(stderr, "dfget: %v\n", err)
			return exitFailure
		}
	}
	return exitOK
}

func verifiedNote(t blockstore.Task) string {
	if t.Verified {
		return " (verified against " + t.Digest + ")"
	}
	return " (every block verified; no whole-content digest declared)"
}

func validate(o *options, url string) error {
	if o.output == "" {
		return errors.New("missing -O FILE: where should the content go?")
	}
	if !strings.HasPrefix(url, "http://") && !strings.HasPrefix(url, "https://") {
		return fmt.Errorf("URL %q: only http:// and https:// URLs are supported", url)
	}
	if _, err := blockstore.NormalizeURL(url); err != nil {
		return err
	}
	if o.digest != "" {
		if _, _, err := blockstore.ParseDigest(o.digest); err != nil {
			return fmt.Errorf("--digest: %w", err)
		}
	}
	for name, v := range map[string]string{"--limit-rate": o.limitRate, "--quota": o.quota} {
		if _, err := cli.ParseSize(v); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	if _, err := cli.ParseHeaders(o.headers); err != nil {
		return fmt.Errorf("--header: %w", err)
	}
	if o.concurrency < 1 || o.concurrency > 256 {
		return fmt.Errorf("--concurrency %d: want 1 to 256", o.concurrency)
	}
	if o.timeout <= 0 {
		return fmt.Errorf("--timeout %v: want a positive duration", o.timeout)
	}
	if o.retries < 0 {
		return fmt.Errorf("--retries %d: want 0 or more", o.retries)
	}
	dir := filepath.Dir(o.output)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return fmt.Errorf("output directory %s does not exist", dir)
	}
	if fi, err := os.Stat(o.output); err == nil && fi.IsDir() {
		return fmt.Errorf("output %s is a directory", o.output)
	}
	return nil
}

// exitCode maps an error to the documented exit codes.
func exitCode(ctx context.Context, err error) int {
	var he *source.HTTPError
	switch {
	case ctx.Err() != nil:
		return exitInterrupted
	case errors.Is(err, blockstore.ErrDigestMismatch):
		return exitDigest
	case errors.Is(err, blockstore.ErrQuota), errors.Is(err, blockstore.ErrNoSpace), errors.Is(err, syscall.ENOSPC):
		return exitDisk
	case errors.As(err, &he) && he.Status >= 400 && he.Status < 500:
		return exitHTTP4xx
	case errors.As(err, &he), errors.Is(err, source.ErrUnreachable), errors.Is(err, context.DeadlineExceeded):
		return exitUnreachable
	case errors.Is(err, blockstore.ErrInvalid):
		return exitUsage
	case errors.Is(err, errDaemon):
		return daemonExitCode(err.Error())
	}
	return exitFailure
}

// errDaemon marks a failure reported by a dfdaemon; its text carries the
// daemon-side error, whose wording comes from the same error values.
var errDaemon = errors.New("dfdaemon")

type daemonError struct{ err error }

func (e daemonError) Error() string        { return e.err.Error() }
func (e daemonError) Unwrap() error        { return e.err }
func (e daemonError) Is(target error) bool { return target == errDaemon }

func daemonExitCode(msg string) int {
	for _, r := range []struct {
		sub  string
		code int
	}{
		{blockstore.ErrDigestMismatch.Error(), exitDigest},
		{blockstore.ErrQuota.Error(), exitDisk},
		{blockstore.ErrNoSpace.Error(), exitDisk},
		{"no space left on device", exitDisk},
		{source.ErrUnreachable.Error(), exitUnreachable},
		{"answered HTTP 4", exitHTTP4xx},
		{"answered HTTP 5", exitUnreachable},
	} {
		if strings.Contains(msg, r.sub) {
			return r.code
		}
	}
	return exitFailure
}

type downloader struct {
	o      options
	req    peer.Request
	stderr io.Writer
	log    *slog.Logger
	rate   int64
	quota  int64
	tls    *tlsconf.Reloader // the embedded peer's swarm links; nil = plain
	// tracing traces the embedded peer (engine, swarm) like dfdaemon's.
	tracing *telemetry.Tracing
}

// run downloads into the store and writes the verified output file; it
// returns the output's sha256.
func (d *downloader) run(ctx context.Context) (string, peer.Result, error) {
	key, err := cli.LoadStoreKey("") // a store encrypted at rest: its key in DFLY_STORE_KEY
	if err != nil {
		return "", peer.Result{}, err
	}
	store, err := blockstore.Open(d.o.store, blockstore.Options{Quota: d.quota, Key: key, Logger: d.log, GCInterval: -1})
	if err != nil {
		return "", peer.Result{}, err
	}
	defer store.Close()
	src := source.New(source.Options{Timeout: d.o.timeout, Retries: d.o.retries, Logger: d.log})
	if d.o.retries == 0 {
		src = source.New(source.Options{Timeout: d.o.timeout, Retries: -1, Logger: d.log})
	}
	cfg := peer.Config{Store: store, Source: src, Concurrency: d.o.concurrency, DownloadRate: d.rate, Logger: d.log, Tracing: d.tracing}
	if d.o.supernode != "" {
		// An embedded peer for the duration of the download: it fetches from
		// the swarm (falling back to the origin) but serves nobody.
		sw, err := peer.NewSwarm(ctx, peer.SwarmConfig{Supernode: d.o.supernode, Store: store, TLS: d.tls, Logger: d.log, Tracing: d.tracing})
		if err != nil {
			return "", peer.Result{}, err
		}
		defer sw.Close()
		cfg.Swarm = sw
	}
	eng, err := peer.New(cfg)
	if err != nil {
		return "", peer.Result{}, err
	}
	defer eng.Close()

	start := time.Now()
	task, err := eng.Open(ctx, d.req)
	if err != nil {
		return "", peer.Result{}, err
	}
	opened := time.Since(start)
	out, err := newOutput(d.o.output, d.log)
	if err != nil {
		return "", peer.Result{}, err
	}
	// The store computes the content's SHA-256 while verifying unless the
	// declared digest is MD5; only then must the output be hashed separately.
	out.hashing = strings.HasPrefix(task.Info().Digest, "md5:")
	defer out.abort()
	prog := newProgress(d.stderr, d.o.quiet)
	defer prog.finish()
	res, err := task.Download(ctx, peer.DownloadOptions{Progress: prog.update, Output: out})
	res.Open, res.Duration = opened, res.Duration+opened
	prog.finish()
	if err != nil {
		return "", res, err
	}
	if out.n != res.Task.Length {
		return "", res, fmt.Errorf("output %s: %d bytes written, the content has %d; not saved, run again: %w",
			d.o.output, out.n, res.Task.Length, blockstore.ErrIncomplete)
	}
	if err := out.commit(); err != nil {
		return "", res, err
	}
	if sum, ok := strings.CutPrefix(res.Task.Digest, "sha256:"); ok {
		return sum, res, nil
	}
	return out.sum(), res, nil
}

// output is a temporary file beside the target that receives the verified
// content (hashing it on the way) and is renamed into place only on commit,
// so the target path only ever holds complete, verified content. It is
// named and locked as the daemon's are (peer.CreateOutputTemp), so a dfget
// killed with -9 leaves a file the next download of the same output removes.
type output struct {
	path    string
	f       *os.File
	w       *directio.File // writes f around the page cache (the store caches these bytes)
	h       hash.Hash
	hashing bool
	n       int64 // bytes written since the last rewind
	done    bool
}

func newOutput(path string, log *slog.Logger) (*output, error) {
	f, err := peer.CreateOutputTemp(path, log)
	if err != nil {
		return nil, err
	}
	return &output{path: path, f: f, w: directio.New(f), h: sha256.New()}, nil
}

func (o *output) Write(p []byte) (int, error) {
	n, err := o.w.Write(p)
	o.n += int64(n)
	if o.hashing {
		o.h.Write(p[:n])
	}
	if err != nil {
		return n, fmt.Errorf("write %s: %w", o.path, err)
	}
	return n, nil
}

// Seek and Truncate let the engine rewrite the output after a repair pass.
func (o *output) Seek(off int64, whence int) (int64, error) { return o.w.Seek(off, whence) }

func (o *output) Truncate(n int64) error {
	o.h.Reset()
	o.n = n
	return o.w.Truncate(n)
}

func (o *output) sum() string { return hex.EncodeToString(o.h.Sum(nil)) }

func (o *output) commit() error {
	if err := o.w.Flush(); err != nil {
		return err
	}
	if err := o.f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", o.path, err)
	}
	if err := os.Chmod(o.f.Name(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(o.f.Name(), o.path); err != nil {
		return fmt.Errorf("move output into place at %s: %w", o.path, err)
	}
	o.done = true
	if err := o.f.Close(); err != nil { // (releases the lock, now on the output)
		return fmt.Errorf("write %s: %w", o.path, err)
	}
	return nil
}

func (o *output) abort() {
	if !o.done {
		os.Remove(o.f.Name())
		o.f.Close()
	}
}

// daemon returns a client for the dfdaemon to use, or nil for an in-process
// download. An explicit --daemon-sock must answer; the default socket is
// used only when it answers and neither --store nor --supernode was given.
func (d *downloader) daemon(ctx context.Context, explicitLocal bool) (*peer.DaemonClient, error) {
	if d.o.daemonSock != "" {
		c, err := peer.DialDaemon(ctx, d.o.daemonSock)
		if errors.Is(err, peer.ErrNoDaemon) {
			return nil, fmt.Errorf("--daemon-sock %s: %w (is dfdaemon running?)", d.o.daemonSock, err)
		}
		if err != nil {
			return nil, fmt.Errorf("--daemon-sock %s: %w", d.o.daemonSock, err)
		}
		return c, nil
	}
	if explicitLocal {
		return nil, nil
	}
	c, err := peer.DialDaemon(ctx, peer.DefaultSocketPath())
	if errors.Is(err, peer.ErrNoDaemon) || errors.Is(err, syscall.EACCES) {
		return nil, nil // no local daemon (for this user): download in this process
	}
	if err != nil {
		// A daemon is there but does not answer: bypassing it would
		// download into another store behind its back.
		return nil, err
	}
	d.log.Info("using the local dfdaemon", "sock", peer.DefaultSocketPath())
	return c, nil
}

// viaDaemon has the daemon download into its shared store and write the
// verified output atomically.
func (d *downloader) viaDaemon(ctx context.Context, c *peer.DaemonClient) (string, peer.Result, error) {
	hdr := map[string]string{}
	for k := range d.req.Header {
		hdr[k] = d.req.Header.Get(k)
	}
	out, err := filepath.Abs(d.o.output)
	if err != nil {
		return "", peer.Result{}, err
	}
	prog := newProgress(d.stderr, d.o.quiet)
	defer prog.finish()
	r, err := c.Download(ctx, peer.DownloadRequest{URL: d.req.URL, Headers: hdr, Digest: d.req.Digest, Output: out, E2E: d.req.E2E}, func(ev peer.DownloadEvent) {
		p := peer.Progress{Done: ev.Done, Total: ev.Total}
		if ev.Stats != nil {
			p.Stats = *ev.Stats
		}
		prog.update(p)
	})
	if err != nil {
		return "", peer.Result{}, daemonError{err}
	}
	res := peer.Result{
		Task:     blockstore.Task{ID: r.TaskID, Length: r.Length, Digest: r.Digest, Verified: r.Verified, State: blockstore.StateComplete},
		Stats:    peer.TaskStats{BytesLocal: r.BytesLocal, BytesOrigin: r.BytesOrigin, BytesSeed: r.BytesSeed, BytesPeers: r.BytesPeers},
		Duration: time.Duration(r.DurationMS) * time.Millisecond,
		Fallback: r.Fallbacks,
	}
	return r.SHA256, res, nil
}

type report struct {
	URL             string  `json:"url"`
	Output          string  `json:"output"`
	TaskID          string  `json:"task_id"`
	Bytes           int64   `json:"bytes"`
	DurationSeconds float64 `json:"duration_seconds"`
	BytesOrigin     int64   `json:"bytes_origin"`
	BytesSeed       int64   `json:"bytes_seed"`
	BytesPeers      int64   `json:"bytes_peers"`
	BytesLocal      int64   `json:"bytes_local"`
	Fallbacks       int64   `json:"fallbacks"`
	SHA256          string  `json:"sha256"`
	Digest          string  `json:"digest"`
	Verified        bool    `json:"verified"`
}

func writeReport(path, url, sum string, res peer.Result) error {
	b, _ := json.MarshalIndent(report{URL: url, TaskID: res.Task.ID, Bytes: res.Task.Length, DurationSeconds: res.Duration.Seconds(),
		BytesOrigin: res.Stats.BytesOrigin, BytesSeed: res.Stats.BytesSeed, BytesPeers: res.Stats.BytesPeers,
		BytesLocal: res.Stats.BytesLocal, Fallbacks: res.Fallback, SHA256: sum, Digest: res.Task.Digest, Verified: res.Task.Verified}, "", "  ")
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write report %s: %w", path, err)
	}
	return nil
}

// progress renders a bar on a terminal and periodic lines otherwise.
type progress struct {
	w        io.Writer
	quiet    bool
	tty      bool
	start    time.Time
	last     time.Time
	lastDone int64
	finished bool
}

func newProgress(w io.Writer, quiet bool) *progress {
	p := &progress{w: w, quiet: quiet, start: time.Now()}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
	}
	return p
}

func (p *progress) update(pr peer.Progress) {
	if p.quiet || p.finished {
		return
	}
	now := time.Now()
	interval := 2 * time.Second
	if p.tty {
		interval = 200 * time.Millisecond
	}
	if now.Sub(p.last) < interval && pr.Done < pr.Total {
		return
	}
	p.last = now
	el := now.Sub(p.start).Seconds()
	rate := float64(pr.Done-pr.Stats.BytesLocal) / max(el, 1e-3)
	eta := "?"
	if rate > 0 {
		eta = (time.Duration(float64(pr.Total-pr.Done)/rate) * time.Second).Round(time.Second).String()
	}
	pct := 100.0
	if pr.Total > 0 {
		pct = 100 * float64(pr.Done) / float64(pr.Total)
	}
	if p.tty {
		const width = 30
		fill := int(pct / 100 * width)
		fmt.Fprintf(p.w, "\r[%s%s] %5.1f%% %s/%s %s/s ETA %s   ", strings.Repeat("=", fill), strings.Repeat(" ", width-fill),
			pct, cli.HumanBytes(pr.Done), cli.HumanBytes(pr.Total), cli.HumanBytes(int64(rate)), eta)
	} else {
		fmt.Fprintf(p.w, "dfget: %5.1f%% %s of %s, %s/s, ETA %s\n", pct, cli.HumanBytes(pr.Done), cli.HumanBytes(pr.Total), cli.HumanBytes(int64(rate)), eta)
	}
	p.lastDone = pr.Done
}

func (p *progress) finish() {
	if !p.finished && p.tty && !p.quiet {
		fmt.Fprintln(p.w)
	}
	p.finished = true
}
