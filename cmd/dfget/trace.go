package main

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/dfly-p2p/dfly/internal/telemetry"
)

// startSpan starts dfget's root span, "dfget": the whole download, through
// a dfdaemon (which joins the trace: the local API request carries it), an
// embedded peer or the origin. See docs/tracing.md.
func startSpan(ctx context.Context, t *telemetry.Tracing, url string) (context.Context, trace.Span) {
	return t.Start(ctx, "dfget", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("url.full", telemetry.RedactURL(url))))
}
