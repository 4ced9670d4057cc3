// Command otlpsink stands in for an operator's telemetry stack in netbench's
// telemetry runs (`netbench --telemetry`): an OTLP/gRPC trace receiver that
// counts and drops spans, and a Prometheus-like scraper that fetches every
// --scrape URL each --scrape-interval. On SIGTERM/SIGINT it prints one line:
//
//	otlpsink done spans=N exports=N scrapes=N scrape_bytes=N scrape_errors=N
//
// Usage: otlpsink --listen ADDR [--scrape URL]... [--scrape-interval 1s]
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	collectorpb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
)

type sink struct {
	collectorpb.UnimplementedTraceServiceServer
	spans, exports atomic.Int64
}

func (s *sink) Export(_ context.Context, req *collectorpb.ExportTraceServiceRequest) (*collectorpb.ExportTraceServiceResponse, error) {
	s.exports.Add(1)
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			s.spans.Add(int64(len(ss.GetSpans())))
		}
	}
	return &collectorpb.ExportTraceServiceResponse{}, nil
}

type scraper struct {
	urls                   []string
	every                  time.Duration
	client                 *http.Client
	scrapes, bytes, errors atomic.Int64
}

func (s *scraper) run(ctx context.Context) {
	t := time.NewTicker(s.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var wg sync.WaitGroup
		for _, u := range s.urls {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.scrape(ctx, u)
			}()
		}
		wg.Wait()
	}
}

func (s *scraper) scrape(ctx context.Context, url string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		s.errors.Add(1)
		return
	}
	resp, err := s.client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			s.errors.Add(1)
		}
		return
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		s.errors.Add(1)
		return
	}
	s.scrapes.Add(1)
	s.bytes.Add(n)
}

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	fs := pflag.NewFlagSet("otlpsink", pflag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:4317", "OTLP/gRPC listen address")
	urls := fs.StringSlice("scrape", nil, "metrics URL to scrape every --scrape-interval; repeatable")
	every := fs.Duration("scrape-interval", time.Second, "scrape interval")
	fs.Usage = func() {
		fmt.Fprintln(os.Stderr, "Usage: otlpsink --listen ADDR [--scrape URL]... [--scrape-interval 1s]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 || *every <= 0 {
		fs.Usage()
		return 2
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "otlpsink: %v\n", err)
		return 1
	}
	s := &sink{}
	srv := grpc.NewServer()
	collectorpb.RegisterTraceServiceServer(srv, s)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	sc := &scraper{urls: *urls, every: *every, client: &http.Client{Timeout: 5 * time.Second}}
	var wg sync.WaitGroup
	if len(sc.urls) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc.run(ctx)
		}()
	}
	fmt.Printf("otlpsink listening otlp=%s scrape_targets=%d\n", ln.Addr(), len(sc.urls))
	select {
	case <-ctx.Done():
	case err := <-served:
		fmt.Fprintf(os.Stderr, "otlpsink: %v\n", err)
		return 1
	}
	wg.Wait()
	srv.GracefulStop()
	fmt.Printf("otlpsink done spans=%d exports=%d scrapes=%d scrape_bytes=%d scrape_errors=%d\n",
		s.spans.Load(), s.exports.Load(), sc.scrapes.Load(), sc.bytes.Load(), sc.errors.Load())
	return 0
}
