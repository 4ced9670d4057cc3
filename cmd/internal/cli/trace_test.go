package cli

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/dfly-p2p/dfly/internal/telemetry"
)

func TestTraceFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		enabled bool
		want    string // error substring; "" = ok
	}{
		{"off by default", nil, nil, false, ""},
		{"endpoint flag", []string{"--otlp-endpoint", "127.0.0.1:4317", "--otlp-insecure"}, nil, true, ""},
		{"endpoint from the environment", nil, map[string]string{telemetry.EnvEndpoint: "http://127.0.0.1:4317"}, true, ""},
		{"traces endpoint from the environment", nil, map[string]string{telemetry.EnvTracesEndpoint: "http://127.0.0.1:4317"}, true, ""},
		{"ratio", []string{"--otlp-endpoint", "c:4317", "--trace-sample-ratio", "1"}, nil, true, ""},
		{"ratio out of range", []string{"--otlp-endpoint", "c:4317", "--trace-sample-ratio", "2"}, nil, false, "--trace-sample-ratio"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(telemetry.EnvEndpoint, "")
			t.Setenv(telemetry.EnvTracesEndpoint, "")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
			f := AddTraceFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			tr, err := f.Start(context.Background(), "dfget", log)
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Start error %v, want %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer StopTracing(tr, log)
			if tr.Enabled() != tc.enabled || strings.Contains(logs.String(), "tracing on") != tc.enabled {
				t.Fatalf("enabled %v, logs %q; want enabled %v", tr.Enabled(), logs.String(), tc.enabled)
			}
		})
	}
}

func TestTraceFlagsDefaultsAndHelp(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	f := AddTraceFlags(fs)
	if f.SampleRatio != 0.1 || f.Endpoint != "" || f.Insecure {
		t.Fatalf("defaults %+v", f)
	}
	help := fs.FlagUsages()
	for _, want := range []string{"--otlp-endpoint HOST:PORT", "--otlp-insecure", "--trace-sample-ratio float", "(default 0.1)", "docs/tracing.md", "OTEL_EXPORTER_OTLP_ENDPOINT"} {
		if !strings.Contains(help, want) {
			t.Errorf("help lacks %q:\n%s", want, help)
		}
	}
	StopTracing(nil, slog.Default()) // a nil (off) tracing stops quietly
}
