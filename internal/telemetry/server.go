// Package telemetry holds what every dfly process shares to be operated: the
// Prometheus registry and the HTTP server of /metrics, /healthz and /readyz
// (server.go), and OpenTelemetry tracing (trace.go).
//
// Nothing here is package-level state: a process makes one Registry, hands it
// (as a prometheus.Registerer) to the components that count, and serves it.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns a registry with the Go runtime and process collectors
// and a dfly_build_info gauge naming the component and its version.
func NewRegistry(component, version string) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "dfly_build_info",
		Help:        "Always 1; the labels name the dfly component and its version.",
		ConstLabels: prometheus.Labels{"component": component, "version": version},
	})
	info.Set(1)
	reg.MustRegister(info)
	return reg
}

// Check reports whether a process can do its job; nil means yes. /readyz
// answers 503 with the error's text when it does not.
type Check func(ctx context.Context) error

// Handler serves:
//
//	GET /metrics  the registry in the Prometheus text (or OpenMetrics) format
//	GET /healthz  200 "ok" while the process serves HTTP (liveness)
//	GET /readyz   200 "ok" when ready (every check nil), else 503 and the reasons
func Handler(reg *prometheus.Registry, ready ...Check) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		EnableOpenMetrics: true,
		ErrorLog:          nil,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		var errs []error
		for _, c := range ready {
			if c == nil {
				continue
			}
			if err := c(ctx); err != nil {
				errs = append(errs, err)
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := errors.Join(errs...); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// Server is a running /metrics, /healthz, /readyz listener.
type Server struct {
	ln  net.Listener
	srv *http.Server
	err chan error
}

// Listen starts serving h on addr ("" is refused: callers skip the server).
// The returned Server is stopped with Close.
func Listen(addr string, h http.Handler, log *slog.Logger) (*Server, error) {
	if addr == "" {
		return nil, errors.New("telemetry: empty listen address")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listener on %s: %w (pick another --metrics-listen, or \"\" to disable)", addr, err)
	}
	s := &Server{
		ln:  ln,
		srv: &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second},
		err: make(chan error, 1),
	}
	go func() {
		err := s.srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		if err != nil && log != nil {
			log.Error("metrics server stopped", "addr", ln.Addr().String(), "err", err)
		}
		s.err <- err
	}()
	return s, nil
}

// Addr is the address the server listens on (useful with port 0).
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Close stops the server, waiting up to ctx for requests in flight.
func (s *Server) Close(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		_ = s.srv.Close()
	}
	if serr := <-s.err; err == nil {
		err = serr
	}
	return err
}
