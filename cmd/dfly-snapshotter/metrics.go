package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dfly-p2p/dfly/internal/telemetry"
)

// defaultMetricsListen is --metrics-listen's default (dfdaemon's is 65002).
const defaultMetricsListen = "127.0.0.1:65003"

// startMetrics serves reg and the readiness checks on addr ("": none, a nil
// server). A busy default address only disables the listener with a
// warning; an address given explicitly must work.
func startMetrics(addr string, explicit bool, reg *prometheus.Registry, log *slog.Logger, ready ...telemetry.Check) (*telemetry.Server, error) {
	if addr == "" {
		return nil, nil
	}
	srv, err := telemetry.Listen(addr, telemetry.Handler(reg, ready...), log)
	if err != nil {
		if !explicit {
			log.Warn("metrics listener disabled: its default address is busy (another dfly-snapshotter on this host?); pass --metrics-listen", "addr", addr, "err", err)
			return nil, nil
		}
		return nil, fmt.Errorf("start the metrics listener: %w", err)
	}
	return srv, nil
}

// stopMetrics stops a listener startMetrics started (nil: none).
func stopMetrics(srv *telemetry.Server, log *slog.Logger) {
	if srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := srv.Close(ctx); err != nil {
		log.Debug("metrics listener shutdown", "err", err)
	}
}

// addrOf is a listener's address for logs ("off" when there is none).
func addrOf(srv *telemetry.Server) string {
	if srv == nil {
		return "off"
	}
	return srv.Addr()
}
