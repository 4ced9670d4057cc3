package fs

import (
	"context"
	"errors"
	"io"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/dfly-p2p/dfly/internal/telemetry"
)

// startReadSpan starts the span of a FUSE read for one read in
// telemetry.BlockSampleEvery (the first, the 17th, ...): "fuse.read", the
// root of a trace sampled at the process's ratio, whose children are the
// engine's fetches of the blocks the read waited for. The other reads get
// a no-op span, so a sequential reader of a large file makes few traces.
func (r *Root) startReadSpan(ctx context.Context, name string, off int64, n int) (context.Context, trace.Span) {
	if !r.opt.Tracing.Enabled() || !telemetry.SampleBlock(int((r.reads.Add(1)-1)%telemetry.BlockSampleEvery)) {
		return ctx, trace.SpanFromContext(context.Background())
	}
	return r.opt.Tracing.Start(ctx, "fuse.read", trace.WithAttributes(
		attribute.String("dfly.file", name), attribute.Int64("dfly.offset", off), attribute.Int("dfly.length", n)))
}

// endReadSpan ends a read's span: reaching the end of the file with every
// byte asked for read is no error.
func endReadSpan(span trace.Span, n, want int, err error) {
	if errors.Is(err, io.EOF) && n == want {
		err = nil
	}
	telemetry.EndSpan(span, err)
}
