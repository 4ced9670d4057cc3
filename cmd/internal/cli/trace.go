package cli

import (
	"context"
	"log/slog"
	"time"

	"github.com/spf13/pflag"

	"github.com/dfly-p2p/dfly/internal/telemetry"
)

// TraceFlags are the tracing flags every dfly binary that does work has
// (docs/tracing.md).
type TraceFlags struct {
	Endpoint    string
	Insecure    bool
	SampleRatio float64
}

// AddTraceFlags registers --otlp-endpoint, --otlp-insecure and
// --trace-sample-ratio on fs.
func AddTraceFlags(fs *pflag.FlagSet) *TraceFlags {
	f := &TraceFlags{}
	fs.StringVar(&f.Endpoint, "otlp-endpoint", "", "tracing: send OpenTelemetry traces to the OTLP collector at `HOST:PORT` or URL (gRPC; default $"+
		telemetry.EnvTracesEndpoint+", else $"+telemetry.EnvEndpoint+"; none = tracing off, see docs/tracing.md)")
	fs.BoolVar(&f.Insecure, "otlp-insecure", false, "tracing: plain gRPC to the collector, without TLS (a collector on this host)")
	fs.Float64Var(&f.SampleRatio, "trace-sample-ratio", telemetry.DefaultSampleRatio, "tracing: fraction (0 to 1) of the traces this process starts that are recorded; "+
		"requests arriving inside a trace follow its caller's choice, and only one block in 16 gets spans of its own")
	return f
}

// Start starts the process's tracing as service (the component: dfget,
// dfdaemon, ...); it is off, at no cost, when no endpoint is configured.
// Stop it with StopTracing.
func (f *TraceFlags) Start(ctx context.Context, service string, log *slog.Logger) (*telemetry.Tracing, error) {
	t, err := telemetry.NewTracing(ctx, telemetry.TraceConfig{
		Endpoint: f.Endpoint, Insecure: f.Insecure, SampleRatio: f.SampleRatio, Service: service, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	if t.Enabled() {
		log.Info("tracing on", "otlp_endpoint", t.Endpoint(), "sample_ratio", f.SampleRatio)
	}
	return t, nil
}

// StopTracing flushes the spans not sent yet (waiting up to 5s for the
// collector) and stops t; failures are logged.
func StopTracing(t *telemetry.Tracing, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := t.Shutdown(ctx); err != nil {
		log.Warn("tracing: spans lost at exit", "err", err)
	}
}
