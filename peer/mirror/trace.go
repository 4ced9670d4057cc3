package mirror

import (
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// startSpan starts the span of one mirror request (docs/tracing.md): a
// server span "mirror.request" with the request's kind (blob, manifest,
// other); the returned function ends it with what the mirror did (p2p,
// passthrough, error). Off, w and r come back unchanged.
func (m *Mirror) startSpan(w http.ResponseWriter, r *http.Request, kind string) (http.ResponseWriter, *http.Request, func(result string)) {
	w, r, end := m.cfg.Tracing.HTTPServerSpan(w, r, "mirror.request", false, attribute.String("dfly.mirror.kind", kind))
	return w, r, func(result string) {
		trace.SpanFromContext(r.Context()).SetAttributes(attribute.String("dfly.mirror.result", result))
		end()
	}
}
