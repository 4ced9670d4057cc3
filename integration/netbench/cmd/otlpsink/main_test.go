package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	collectorpb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

func TestSinkCountsSpans(t *testing.T) {
	s := &sink{}
	req := &collectorpb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{
		ScopeSpans: []*tracepb.ScopeSpans{{Spans: make([]*tracepb.Span, 3)}, {Spans: make([]*tracepb.Span, 2)}},
	}}}
	if _, err := s.Export(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if s.spans.Load() != 5 || s.exports.Load() != 1 {
		t.Fatalf("spans %d exports %d, want 5 and 1", s.spans.Load(), s.exports.Load())
	}
}

func TestScraper(t *testing.T) {
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("dfly_x 1\n")) }))
	defer ok.Close()
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", 500) }))
	defer bad.Close()
	sc := &scraper{urls: []string{ok.URL, bad.URL}, every: 10 * time.Millisecond, client: http.DefaultClient}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	sc.run(ctx)
	if sc.scrapes.Load() == 0 || sc.bytes.Load() != 9*sc.scrapes.Load() || sc.errors.Load() == 0 {
		t.Fatalf("scrapes %d bytes %d errors %d", sc.scrapes.Load(), sc.bytes.Load(), sc.errors.Load())
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{{"--nope"}, {"extra"}, {"--scrape-interval", "0s"}} {
		if got := run(args); got != 2 {
			t.Errorf("run(%q) = %d, want 2", args, got)
		}
	}
	if got := run([]string{"--help"}); got != 0 {
		t.Errorf("--help = %d, want 0", got)
	}
}
