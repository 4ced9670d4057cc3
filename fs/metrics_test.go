package fs

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/peer"
)

// fakeContent answers reads with zeros, or with err, or blocks until the
// read's context ends (stuck).
type fakeContent struct {
	err   error
	stuck bool
}

func (c *fakeContent) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if c.stuck {
		<-ctx.Done()
		return 0, ctx.Err()
	}
	if c.err != nil {
		return 0, c.err
	}
	clear(p)
	return len(p), nil
}

func (c *fakeContent) Fetch(context.Context, int, peer.Priority) error { return c.err }

func (c *fakeContent) Info() blockstore.Task {
	return blockstore.Task{ID: "t", Length: 4 << 20, BlockSize: 1 << 20}
}

// TestReadMetrics: every answered read is timed, EIO answers are counted,
// interrupted reads (EINTR, retried by the kernel) are neither.
func TestReadMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	if n := testutil.CollectAndCount(reg); n != 2 {
		t.Fatalf("%d series at start, want 2", n)
	}
	ok, bad, stuck := &fakeContent{}, &fakeContent{err: errors.New("origin said 500")}, &fakeContent{stuck: true}
	root, err := NewRoot([]Entry{{Name: "ok", Content: ok}, {Name: "bad", Content: bad}, {Name: "stuck", Content: stuck}},
		Options{Timeout: time.Minute, Readahead: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	read := func(c Content, ctx context.Context) syscall.Errno {
		f := &fileNode{root: root, name: "x", content: c}
		_, errno := f.Read(ctx, nil, make([]byte, 4096), 0)
		return errno
	}
	count := func() (reads uint64, eio float64) {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			switch mf.GetName() {
			case "dfly_fuse_read_duration_seconds":
				reads = mf.GetMetric()[0].GetHistogram().GetSampleCount()
			case "dfly_fuse_read_errors_total":
				eio = mf.GetMetric()[0].GetCounter().GetValue()
			}
		}
		return reads, eio
	}
	interrupted, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name  string
		c     Content
		ctx   context.Context
		errno syscall.Errno
		reads uint64
		eio   float64
	}{
		{"read served", ok, context.Background(), 0, 1, 0},
		{"fetch failed: EIO", bad, context.Background(), syscall.EIO, 2, 1},
		{"interrupted: EINTR, not counted", stuck, interrupted, syscall.EINTR, 2, 1},
	} {
		if errno := read(tc.c, tc.ctx); errno != tc.errno {
			t.Fatalf("%s: errno %v, want %v", tc.name, errno, tc.errno)
		}
		if reads, eio := count(); reads != tc.reads || eio != tc.eio {
			t.Fatalf("%s: %d reads timed, %v EIO; want %d, %v", tc.name, reads, eio, tc.reads, tc.eio)
		}
	}
	var nilMetrics *Metrics
	nilMetrics.read(time.Second, syscall.EIO) // no-op
}
