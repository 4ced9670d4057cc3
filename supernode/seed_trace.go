package supernode

import (
	"context"
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/dfly-p2p/dfly/internal/telemetry"
)

// Tracing of the seed (docs/tracing.md). A run — resolving a task at its
// origin and fetching its blocks — is one "seed.fetch" span: a child of the
// RegisterTask server span whose registration started it, so that a cold
// download's trace holds the origin fetch it waited for. A registration that
// finds a run under way (or the task complete) is linked to that run's span
// both ways instead. Runs started without a registration (preheat jobs,
// repairs) are roots sampled at the process's ratio. Origin Range requests
// get a "seed.origin_range" child span for one block in
// telemetry.BlockSampleEvery.

// startRunSpan starts the span of a new run for req; ctx brings the
// registration's trace (if any). The returned context is the seed's own
// (cancelled by Close), holding the span.
func (s *Seed) startRunSpan(ctx context.Context, req SeedRequest) (context.Context, trace.Span) {
	parent := trace.ContextWithSpanContext(s.ctx, trace.SpanContextFromContext(ctx))
	return s.cfg.Tracing.Start(parent, "seed.fetch", trace.WithAttributes(
		attribute.String("dfly.task_id", req.TaskID), attribute.String("url.full", telemetry.RedactURL(req.URL))))
}

// linkRun links the registration in ctx and st's run (both ways), when both
// are traced.
func linkRun(ctx context.Context, st *seedTask) {
	reg := trace.SpanFromContext(ctx)
	if st.span == nil || !reg.SpanContext().IsValid() || !st.span.SpanContext().IsValid() {
		return
	}
	reg.AddLink(trace.Link{SpanContext: st.span.SpanContext(), Attributes: []attribute.KeyValue{attribute.String("dfly.link", "seed.fetch")}})
	st.span.AddLink(trace.Link{SpanContext: reg.SpanContext(), Attributes: []attribute.KeyValue{attribute.String("dfly.link", "registration")}})
}

// readRange fetches block b's bytes [off, off+n) from the origin.
func (s *Seed) readRange(ctx context.Context, b int, url string, h http.Header, off, n int64) ([]byte, error) {
	ctx, span := s.cfg.Tracing.StartBlock(ctx, "seed.origin_range", b, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.Int64("dfly.offset", off), attribute.Int64("dfly.length", n)))
	data, err := s.cfg.Source.ReadRange(ctx, url, h, off, n)
	telemetry.EndSpan(span, err)
	return data, err
}
