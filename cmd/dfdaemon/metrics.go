package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dfly-p2p/dfly/internal/telemetry"
)

// defaultMetricsListen is --metrics-listen's default: loopback only, since
// /metrics names the host's tasks' traffic.
const defaultMetricsListen = "127.0.0.1:65002"

// runningMetrics is the /metrics, /healthz, /readyz listener; the zero
// value (none) closes as a no-op.
type runningMetrics struct{ srv *telemetry.Server }

// startMetrics serves reg and the readiness checks on --metrics-listen ("":
// none). A busy default address (another dfdaemon on this host) only
// disables the listener with a warning; an address given explicitly must work.
func startMetrics(addr string, explicit bool, reg *prometheus.Registry, log *slog.Logger, ready ...telemetry.Check) (*runningMetrics, string, error) {
	if addr == "" {
		return &runningMetrics{}, "", nil
	}
	srv, err := telemetry.Listen(addr, telemetry.Handler(reg, ready...), log)
	if err != nil {
		if !explicit {
			log.Warn("metrics listener disabled: its default address is busy (another dfdaemon on this host?); pass --metrics-listen", "addr", addr, "err", err)
			return &runningMetrics{}, "", nil
		}
		return nil, "", fmt.Errorf("start the metrics listener: %w", err)
	}
	log.Info("metrics listening", "addr", srv.Addr())
	return &runningMetrics{srv: srv}, srv.Addr(), nil
}

// close stops the listener, giving scrapes in flight a moment.
func (r *runningMetrics) close(log *slog.Logger) {
	if r.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := r.srv.Close(ctx); err != nil {
		log.Debug("metrics listener shutdown", "err", err)
	}
}

// metricsField formats the ready line's metrics=ADDR ("" when off).
func metricsField(addr string) string {
	if addr == "" {
		return ""
	}
	return " metrics=" + addr
}
