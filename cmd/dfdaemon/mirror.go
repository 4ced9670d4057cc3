package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/dfly-p2p/dfly/peer"
	"github.com/dfly-p2p/dfly/peer/mirror"
)

// runningMirror is the registry mirror's HTTP server; the zero value (no
// mirror) closes as a no-op.
type runningMirror struct {
	m    *mirror.Mirror
	srv  *http.Server
	done chan struct{}
}

// startMirror serves the registry mirror on --mirror-listen. A busy default
// address (another dfdaemon on this host) only disables the mirror with a
// warning; an address given explicitly must work.
func startMirror(o options, d *peer.Daemon, log *slog.Logger, mm *mirror.Metrics) (*runningMirror, string, error) {
	if o.mirrorListen == "" || o.mirrorListen == "off" {
		return &runningMirror{}, "off", nil
	}
	ln, err := net.Listen("tcp", o.mirrorListen)
	if err != nil {
		if !o.mirrorListenSet {
			log.Warn("registry mirror disabled: its default address is busy (another dfdaemon on this host?); pass --mirror-listen", "addr", o.mirrorListen, "err", err)
			return &runningMirror{}, "off", nil
		}
		return nil, "", fmt.Errorf("registry mirror cannot listen on %s (--mirror-listen): %w", o.mirrorListen, err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = o.cfg.TLS
	m, err := mirror.New(mirror.Config{Engine: d.Engine(), Registry: o.mirrorRegistry, Insecure: o.mirrorInsecure, Transport: tr, Logger: log, Metrics: mm, Tracing: o.cfg.Tracing,
		E2EPrivate: o.cfg.E2EPrivate})
	if err != nil {
		ln.Close()
		return nil, "", err
	}
	r := &runningMirror{m: m, srv: &http.Server{Handler: m, ReadHeaderTimeout: 10 * time.Second}, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		if err := r.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("registry mirror stopped", "err", err)
		}
	}()
	log.Info("registry mirror listening", "addr", ln.Addr().String(), "default_registry", o.mirrorRegistry)
	return r, ln.Addr().String(), nil
}

// close stops serving (requests in flight get a moment) and the mirror's
// background downloads.
func (r *runningMirror) close() {
	if r.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if r.srv.Shutdown(ctx) != nil {
		r.srv.Close()
	}
	<-r.done
	r.m.Close()
}
