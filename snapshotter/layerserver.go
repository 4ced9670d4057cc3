package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/dfly-p2p/dfly/fs/estargz"
)

// A remote layer's FUSE mount is served by a layer server: a child process in its own
// session, so it outlives a crash or restart of the snapshotter and the overlays of
// running containers keep a working lower layer. The layer server owns no store: it
// reads the layer blob through the snapshotter's block-read API (a unix socket served
// by RemoteFS), verifying every chunk against the TOC itself; the snapshotter owns the
// block store, the peer engine and the prefetcher. While the snapshotter is down, the
// layer server's reads wait (up to LayerServerConfig.Wait) for it to come back.

// LayerServerCommand is the subcommand of dfly-snapshotter that runs a layer server.
const LayerServerCommand = "serve-layer"

const (
	fuseSuperMagic = 0x65735546
	maxReadLen     = 64 << 20
	readyLine      = "ready\n"
)

// fuseAlive reports whether mountpoint is a FUSE mount whose server answers.
func fuseAlive(mountpoint string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(mountpoint, &st); err != nil {
		return false
	}
	return st.Type == fuseSuperMagic
}

// serveBlocks answers GET /read?task=ID&off=N&len=N with the bytes of an open task.
// 404 means the task is not open (yet): the layer server retries.
func (f *RemoteFS) serveBlocks(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	off, err1 := strconv.ParseInt(q.Get("off"), 10, 64)
	n, err2 := strconv.Atoi(q.Get("len"))
	if err := errors.Join(err1, err2); err != nil || off < 0 || n < 0 || n > maxReadLen {
		http.Error(w, fmt.Sprintf("bad read request %q", r.URL.RawQuery), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	task := f.tasks[q.Get("task")]
	f.mu.Unlock()
	if task == nil {
		http.Error(w, "task not open", http.StatusNotFound)
		return
	}
	buf := make([]byte, n)
	got, err := task.ReadAt(r.Context(), buf, off)
	if err != nil && !errors.Is(err, io.EOF) {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	if errors.Is(err, io.EOF) {
		w.Header().Set("X-Dfly-EOF", "1")
	}
	w.Header().Set("Content-Length", strconv.Itoa(got))
	_, _ = w.Write(buf[:got])
}

// blockClient reads a task's bytes through the snapshotter's block-read API.
type blockClient struct {
	base context.Context // cancelled when the mount's connection is gone: reads end
	hc   *http.Client
	task string
	wait time.Duration
	log  *slog.Logger
}

func newBlockClient(base context.Context, sock, task string, wait time.Duration, log *slog.Logger) *blockClient {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	return &blockClient{base: base, hc: &http.Client{Transport: tr}, task: task, wait: wait, log: log}
}

// errRetry marks a failure worth retrying (the snapshotter is restarting).
var errRetry = errors.New("block-read API unavailable")

// ReadAt implements estargz.Blob, retrying while the snapshotter is unreachable.
func (c *blockClient) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(c.base, cancel)()
	deadline := time.Now().Add(c.wait)
	backoff := 50 * time.Millisecond
	for attempt := 0; ; attempt++ {
		n, err := c.readOnce(ctx, p, off)
		if !errors.Is(err, errRetry) {
			if attempt > 0 && err == nil {
				c.log.Info("block-read API is back", "task", c.task, "attempts", attempt+1)
			}
			return n, err
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("read %d bytes at %d of task %s: snapshotter unreachable for %v: %w", len(p), off, c.task, c.wait, err)
		}
		if attempt == 0 {
			c.log.Warn("block-read API unavailable; waiting for the snapshotter", "task", c.task, "err", err)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

func (c *blockClient) readOnce(ctx context.Context, p []byte, off int64) (int, error) {
	url := fmt.Sprintf("http://dfly/read?task=%s&off=%d&len=%d", c.task, off, len(p))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, fmt.Errorf("%w: %v", errRetry, err)
	}
	defer func() { _ = resp.Body.Close() }()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound, http.StatusServiceUnavailable:
		return 0, fmt.Errorf("%w: task %s not open in the snapshotter yet", errRetry, c.task)
	default:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return 0, fmt.Errorf("read task %s at %d: snapshotter answered %s: %s", c.task, off, resp.Status, b)
	}
	n, err := io.ReadFull(resp.Body, p)
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		if resp.Header.Get("X-Dfly-EOF") == "1" {
			return n, io.EOF
		}
		return n, fmt.Errorf("%w: short read from the snapshotter (%d of %d bytes)", errRetry, n, len(p))
	}
	return n, err
}

// LayerServerConfig is what one layer server needs.
type LayerServerConfig struct {
	API        string // the snapshotter's block-read socket
	Task       string // dfly task ID of the layer blob
	Layer      string // layer digest (for logs)
	TOC        digest.Digest
	Size       int64
	Mountpoint string
	// Wait bounds how long a read waits for an unreachable snapshotter (default 2m).
	Wait   time.Duration
	Logger *slog.Logger
}

// ServeLayer opens the layer through the block-read API (verifying its TOC), mounts it
// at cfg.Mountpoint, calls ready, and serves until the mount ends (unmounted, or its
// connection aborted) or ctx is cancelled (then it unmounts).
func ServeLayer(ctx context.Context, cfg LayerServerConfig, ready func()) error {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Wait <= 0 {
		cfg.Wait = 2 * time.Minute
	}
	log := cfg.Logger.With("layer", cfg.Layer)
	base, endReads := context.WithCancel(context.Background())
	defer endReads()
	blob := newBlockClient(base, cfg.API, cfg.Task, cfg.Wait, log)
	l, err := estargz.Open(ctx, blob, cfg.Size, cfg.TOC, estargz.Options{})
	if err != nil {
		return fmt.Errorf("layer %s: %w", cfg.Layer, err)
	}
	srv, err := l.Mount(cfg.Mountpoint, estargz.MountOptions{Logger: log})
	if err != nil {
		return fmt.Errorf("FUSE mount of layer %s at %s: %w", cfg.Layer, cfg.Mountpoint, err)
	}
	var st unix.Stat_t
	if err := unix.Stat(cfg.Mountpoint, &st); err != nil {
		_ = unmountFUSE(srv, cfg.Mountpoint, log)
		return fmt.Errorf("stat the new mount at %s: %w", cfg.Mountpoint, err)
	}
	conn := fmt.Sprintf("%s/%d", fusectlDir, unix.Minor(st.Dev))
	watch := true
	if err := mountFusectl(); err != nil {
		watch = false
	} else if _, err := os.Stat(conn); err != nil {
		watch = false
	}
	if !watch {
		log.Warn("cannot watch the FUSE connection; reads pending when it ends wait for the snapshotter", "connection", conn)
	}
	ready()
	done := make(chan struct{})
	go func() { srv.Wait(); close(done) }()
	// The server's request loops end when the connection does, but a read waiting for
	// an absent snapshotter would hold them for up to cfg.Wait: once the connection is
	// gone (nobody can read any more), end pending reads.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-done:
			log.Info("layer mount ended; layer server exits", "mountpoint", cfg.Mountpoint)
			return nil
		case <-tick.C:
			if _, err := os.Stat(conn); watch && errors.Is(err, os.ErrNotExist) {
				endReads()
			}
			continue
		case <-ctx.Done():
		}
		break
	}
	err = unmountFUSE(srv, cfg.Mountpoint, log)
	endReads()
	<-done
	return err
}

// RunLayerServer is the "serve-layer" subcommand. With --detach it starts itself again
// (without --detach) in a new session and returns at once, so the server is not a child
// of the snapshotter (nobody has to reap it; it survives the snapshotter). The ready
// line is written to fd 3 once the layer is mounted.
func RunLayerServer(ctx context.Context, args []string, stderr io.Writer) int {
	fset := pflag.NewFlagSet(LayerServerCommand, pflag.ContinueOnError)
	fset.SetOutput(stderr)
	var cfg LayerServerConfig
	var toc, level string
	var detach bool
	fset.StringVar(&cfg.API, "api", "", "block-read socket of the snapshotter")
	fset.StringVar(&cfg.Task, "task", "", "task ID of the layer blob")
	fset.StringVar(&cfg.Layer, "layer", "", "layer digest")
	fset.StringVar(&toc, "toc", "", "TOC digest of the layer")
	fset.Int64Var(&cfg.Size, "size", 0, "blob size in bytes")
	fset.StringVar(&cfg.Mountpoint, "mountpoint", "", "where to mount the layer")
	fset.DurationVar(&cfg.Wait, "wait", 2*time.Minute, "how long a read waits for an unreachable snapshotter")
	fset.StringVar(&level, "log-level", "info", "debug, info, warn or error")
	fset.BoolVar(&detach, "detach", false, "start the server in a new session and return")
	if err := fset.Parse(args); err != nil {
		return 2
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		_, _ = fmt.Fprintf(stderr, "invalid --log-level %q\n", level)
		return 2
	}
	d, err := digest.Parse(toc)
	if err != nil || cfg.API == "" || cfg.Task == "" || cfg.Mountpoint == "" || cfg.Size <= 0 {
		_, _ = fmt.Fprintf(stderr, "%s needs --api, --task, --size, --mountpoint and a valid --toc\n", LayerServerCommand)
		return 2
	}
	cfg.TOC = d
	readyFile := os.NewFile(3, "ready")
	if detach {
		return detachLayerServer(readyFile, stderr)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl})).With("pid", os.Getpid())
	if readyFile != nil { // the starter kills us by this pid if we do not get ready in time
		_, _ = fmt.Fprintf(readyFile, "pid %d\n", os.Getpid())
	}
	err = ServeLayer(ctx, cfg, func() {
		if readyFile != nil {
			_, _ = readyFile.WriteString(readyLine)
			_ = readyFile.Close()
		}
	})
	if err != nil {
		cfg.Logger.Error("layer server failed", "err", err)
		return 1
	}
	return 0
}

// detachLayerServer re-executes this program without --detach in a new session.
func detachLayerServer(ready *os.File, stderr io.Writer) int {
	exe, err := os.Executable()
	if err != nil {
		_, _ = fmt.Fprintf(stderr, "find own executable: %v\n", err)
		return 1
	}
	var args []string
	for _, a := range os.Args[1:] {
		if a != "--detach" {
			args = append(args, a)
		}
	}
	cmd := exec.Command(exe, args...)
	cmd.Stderr = stderr
	if ready != nil {
		cmd.ExtraFiles = []*os.File{ready}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		_, _ = fmt.Fprintf(stderr, "start layer server: %v\n", err)
		return 1
	}
	_ = cmd.Process.Release()
	return 0
}
