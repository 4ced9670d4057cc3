package fs

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/telemetry"
	"github.com/dfly-p2p/dfly/peer"
)

// spanContent records whether each read's context carried a span, and fails
// reads with err.
type spanContent struct {
	mu     sync.Mutex
	traced []bool
	err    error
}

func (c *spanContent) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	c.mu.Lock()
	c.traced = append(c.traced, trace.SpanFromContext(ctx).IsRecording())
	c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	clear(p)
	return len(p), nil
}

func (c *spanContent) Fetch(context.Context, int, peer.Priority) error { return nil }

func (c *spanContent) Info() blockstore.Task {
	return blockstore.Task{ID: "t", Length: 64 << 20, BlockSize: 1 << 20}
}

// One FUSE read in 16 (the 1st, the 17th, ...) is a trace's root whose
// context reaches the content's ReadAt (the engine); a failed read's span
// says so; tracing off, no read is traced.
func TestReadSpans(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tr, err := telemetry.NewTracing(context.Background(), telemetry.TraceConfig{Service: "dfmount", SampleRatio: 1, Exporter: exp})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Shutdown(context.Background())
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tc := range []struct {
		name    string
		tracing *telemetry.Tracing
		err     error
		spans   int
	}{
		{"traced", tr, nil, 3},
		{"off", nil, nil, 0},
		{"failing", tr, errors.New("origin said 500"), 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exp.Reset()
			c := &spanContent{err: tc.err}
			root, err := NewRoot([]Entry{{Name: "f", Content: c}}, Options{Timeout: time.Minute, Readahead: -1, Logger: log, Tracing: tc.tracing})
			if err != nil {
				t.Fatal(err)
			}
			defer root.Close()
			f := &fileNode{root: root, name: "f", content: c}
			for i := range 40 {
				_, errno := f.Read(context.Background(), nil, make([]byte, 4096), int64(i)<<12)
				if (errno == syscall.EIO) != (tc.err != nil) {
					t.Fatalf("read %d: errno %v", i, errno)
				}
			}
			spans := exp.GetSpans()
			if len(spans) != tc.spans {
				t.Fatalf("%d spans for 40 reads, want %d", len(spans), tc.spans)
			}
			for i, traced := range c.traced {
				if want := tc.tracing != nil && i%16 == 0; traced != want {
					t.Errorf("read %d: ReadAt saw a span %v, want %v", i, traced, want)
				}
			}
			for _, s := range spans {
				if s.Name != "fuse.read" || s.Parent.IsValid() || (s.Status.Code == codes.Error) != (tc.err != nil) {
					t.Errorf("span %s parent %v status %v", s.Name, s.Parent.SpanID(), s.Status)
				}
			}
		})
	}
}

// Reaching the end of the file with every byte asked for read is no error.
func TestEndReadSpanEOF(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tr, err := telemetry.NewTracing(context.Background(), telemetry.TraceConfig{SampleRatio: 1, Exporter: exp})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Shutdown(context.Background())
	for _, tc := range []struct {
		n, want int
		err     error
		failed  bool
	}{{10, 10, io.EOF, false}, {5, 10, io.EOF, true}, {10, 10, nil, false}, {0, 10, errors.New("x"), true}} {
		exp.Reset()
		_, span := tr.Start(context.Background(), "fuse.read")
		endReadSpan(span, tc.n, tc.want, tc.err)
		if s := exp.GetSpans(); len(s) != 1 || (s[0].Status.Code == codes.Error) != tc.failed {
			t.Errorf("%+v: spans %+v", tc, s)
		}
	}
}
