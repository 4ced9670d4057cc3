package peer

import (
	"context"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/dfly-p2p/dfly/internal/flow"
)

// Flow control (dfdaemon --flow auto, --disk-backoff; internal/flow,
// docs/flow.md): a controller watches the host's interface and the disk
// under the store and moves the engine's download limit, the upload
// server's limit and the pace of background writes (preheats). The daemon
// resolves it before the swarm (newFlow: its ceiling sizes the swarm's
// receive buffers) and owns its goroutine (runFlow), stopped with the
// daemon's other goroutines on Close.

// newFlow resolves the controller when the options ask for flow control;
// an error (a missing ceiling, no interface, no disk statistics) refuses
// to start.
func (d *Daemon) newFlow(ctx context.Context) error {
	opt := d.cfg.Flow
	if !opt.Active() {
		return nil
	}
	opt.StoreDir, opt.Target, opt.Logger = d.cfg.StoreDir, d.cfg.Supernode, d.log
	opt.FixedDown, opt.FixedUp = d.cfg.DownloadRate, d.cfg.UploadRate
	opt.DownloadOnly = d.cfg.Supernode == "" // origin mode: no upload server
	c, err := flow.New(ctx, opt, flow.Hooks{
		Own: d.ownTraffic,
		SetLimits: func(down, up int64) {
			d.engine.SetDownloadRate(down)
			if d.upload != nil {
				d.upload.SetRate(up)
			}
			d.cfg.Metrics.flowAllowed(down, up)
		},
		SetBackground: func(bps int64) { d.engine.SetBackgroundRate(bps) },
	})
	if err != nil {
		return fmt.Errorf("dfdaemon: %w", err)
	}
	d.flow = c
	return nil
}

// runFlow sets the flow gauges to the fixed limits and runs the controller
// (if any) until sctx ends.
func (d *Daemon) runFlow(sctx context.Context) {
	d.cfg.Metrics.flowAllowed(d.cfg.DownloadRate, d.cfg.UploadRate)
	if d.flow == nil {
		return
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.flow.Run(sctx)
	}()
}

// receiveBuffer is the SO_RCVBUF of the swarm's block connections: sized
// from the download ceiling with --flow auto, else 0 (autotuning).
func (d *Daemon) receiveBuffer() int {
	if d.flow == nil {
		return 0
	}
	down, _ := d.flow.Ceilings()
	conns := d.cfg.Concurrency
	if conns <= 0 {
		conns = 8 // the engine's default
	}
	return flow.ReceiveBuffer(down, conns)
}

// receiveBufferControl returns a net.Dialer Control that sets SO_RCVBUF to
// size before the connection is made (so the window scale fits it); nil
// for size 0. A refusal is ignored: the connection then autotunes.
func receiveBufferControl(size int) func(network, address string, c syscall.RawConn) error {
	if size <= 0 {
		return nil
	}
	return func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, size) })
	}
}

// ownTraffic is dfly's own traffic on this host: bytes its downloads
// received and bytes its upload server sent.
func (d *Daemon) ownTraffic() flow.Counters {
	c := flow.Counters{Rx: uint64(max(d.engine.ReceivedBytes(), 0))}
	if d.upload != nil {
		c.Tx = uint64(max(d.upload.Stats().BytesServed, 0))
	}
	return c
}

// flowStatus is the controller's state for /v1/stats (nil without flow control).
func (d *Daemon) flowStatus() *flow.Status {
	if d.flow == nil {
		return nil
	}
	s := d.flow.Status()
	return &s
}
