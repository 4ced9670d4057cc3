package peer

// Tracing of the peer (docs/tracing.md; the spans' helpers are
// internal/telemetry's):
//
//   - dfdaemon's local API: POST /v1/download is a server span
//     "dfdaemon.download", a child of the caller's trace (dfget injects
//     its context into the request: DaemonClient.Download) or a root.
//   - The engine: "engine.open" (Engine.Open: resolving the task through
//     the swarm or the origin) and "engine.download" (Task.Download), children
//     of the caller's span, or roots (preheats).
//   - The swarm: RegisterTask calls carry the trace of the Open that needed
//     them over gRPC; Sync rounds carry the trace of the latest block fetch
//     of the task, one round in telemetry.BlockSampleEvery (the first
//     included). Heartbeats are never traced.
//   - Blocks: one block in telemetry.BlockSampleEvery (by index) gets a
//     client span "peer.get_block" per parent tried, whose context goes with
//     the GET; upload servers make a server span only for requests that
//     carry one. A download of N blocks makes about N/16 block spans.

import (
	"context"
	"net/http"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/dfly-p2p/dfly/internal/telemetry"
	"github.com/dfly-p2p/dfly/supernode/api"
)

// startOpenSpan starts the span of one Engine.Open.
func (e *Engine) startOpenSpan(ctx context.Context, req Request) (context.Context, trace.Span) {
	if !e.cfg.Tracing.Enabled() {
		return ctx, trace.SpanFromContext(context.Background())
	}
	id, _ := req.ID()
	return e.cfg.Tracing.Start(ctx, "engine.open", trace.WithAttributes(
		attribute.String("dfly.task_id", id), attribute.String("url.full", telemetry.RedactURL(req.URL))))
}

// startDownloadSpan starts the span of one Task.Download.
func (t *Task) startDownloadSpan(ctx context.Context) (context.Context, trace.Span) {
	if !t.e.cfg.Tracing.Enabled() {
		return ctx, trace.SpanFromContext(context.Background())
	}
	return t.e.cfg.Tracing.Start(ctx, "engine.download", trace.WithAttributes(attribute.String("dfly.task_id", t.id)))
}

// endDownloadSpan records where a download's bytes came from and ends its span.
func endDownloadSpan(span trace.Span, res Result, err error) {
	if span.IsRecording() {
		span.SetAttributes(
			attribute.Int64("dfly.length", res.Task.Length),
			attribute.Int64("dfly.bytes.local", res.Stats.BytesLocal),
			attribute.Int64("dfly.bytes.origin", res.Stats.BytesOrigin),
			attribute.Int64("dfly.bytes.seed", res.Stats.BytesSeed),
			attribute.Int64("dfly.bytes.peers", res.Stats.BytesPeers),
			attribute.Int64("dfly.origin_fallbacks", res.Fallback),
		)
	}
	telemetry.EndSpan(span, err)
}

// annotateDownload records a local-API download's request and outcome on
// the span in ctx.
func annotateDownload(ctx context.Context, dr DownloadRequest, res DownloadResult, err error) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(attribute.String("url.full", telemetry.RedactURL(dr.URL)), attribute.String("dfly.task_id", res.TaskID),
		attribute.Int64("dfly.length", res.Length), attribute.Bool("dfly.verified", res.Verified))
	telemetry.RecordError(ctx, err)
}

// blockAttrs are the attributes of a block's spans.
func blockAttrs(task string, idx int) []attribute.KeyValue {
	return []attribute.KeyValue{attribute.String("dfly.task_id", task), attribute.Int("dfly.block", idx)}
}

// startBlockSpan starts the client span of one GET of block idx from p, for
// sampled blocks inside a trace (telemetry.StartBlock).
func (st *swarmTask) startBlockSpan(ctx context.Context, p *api.Parent, idx int) (context.Context, trace.Span) {
	if !st.s.cfg.Tracing.Enabled() {
		return ctx, trace.SpanFromContext(context.Background())
	}
	return st.s.cfg.Tracing.StartBlock(ctx, "peer.get_block", idx, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(
		attribute.String("dfly.task_id", st.id), attribute.String("dfly.parent", p.GetHostId()), attribute.Bool("dfly.parent.seed", p.GetIsSeed()),
		attribute.String("server.address", p.GetUploadAddr())))
}

// injectBlock sends span's context with a block GET: only a block span's,
// so that the parent makes a server span for sampled blocks only.
func injectBlock(ctx context.Context, span trace.Span, h http.Header) {
	if span.SpanContext().IsValid() {
		telemetry.Inject(ctx, h)
	}
}

// swarmTrace is the trace a task's Sync rounds carry: the span context of
// the latest block fetch made inside a trace.
type swarmTrace struct {
	mu     sync.Mutex
	sc     trace.SpanContext
	rounds int
}

// note remembers the trace of ctx, if it carries one.
func (t *swarmTrace) note(ctx context.Context) {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		t.mu.Lock()
		t.sc = sc
		t.mu.Unlock()
	}
}

// round returns the context of the next Sync round: ctx, with the noted
// trace for one round in telemetry.BlockSampleEvery.
func (t *swarmTrace) round(ctx context.Context) context.Context {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.sc.IsValid() {
		return ctx
	}
	n := t.rounds
	t.rounds++
	if !telemetry.SampleBlock(n) {
		return ctx
	}
	return trace.ContextWithSpanContext(ctx, t.sc)
}

// untraced is ctx without its span: work that outlives the caller (the
// swarm's heartbeats and loops) must not join the caller's trace.
func untraced(ctx context.Context) context.Context {
	return trace.ContextWithSpanContext(ctx, trace.SpanContext{})
}
