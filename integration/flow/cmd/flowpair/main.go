// Command flowpair is the host's own traffic in the flow-control test
// (integration/flow): one steady TCP flow, a sender paced at a fixed rate
// and a receiver that logs how many bytes it has received.
//
//	flowpair recv --listen ADDR --log FILE   prints "flowpair listening ADDR";
//	                                         appends "UNIXNANO BYTES" to FILE every 100 ms
//	flowpair send --to ADDR --rate 16mbit    prints "flowpair sending"
//
// Both run until SIGINT or SIGTERM. The sender's socket buffer is small
// (and its pacing makes up at most 100 ms): when the network cannot carry
// its rate it falls behind and never catches up, so the receiver's goodput
// is the share the flow got.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/time/rate"

	iflow "github.com/dfly-p2p/dfly/internal/flow"
)

const chunk = 16 << 10

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || (args[0] != "recv" && args[0] != "send") {
		fmt.Fprintln(stderr, "usage: flowpair recv --listen ADDR --log FILE | flowpair send --to ADDR --rate RATE")
		return 2
	}
	fs := flag.NewFlagSet("flowpair "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "", "recv: address to listen on")
	logPath := fs.String("log", "", "recv: file to append \"UNIXNANO BYTES\" lines to")
	every := fs.Duration("every", 100*time.Millisecond, "recv: interval of the log lines")
	to := fs.String("to", "", "send: address to send to")
	rateFlag := fs.String("rate", "16mbit", "send: rate in bits (e.g. 16mbit)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	var err error
	switch args[0] {
	case "recv":
		err = recvMain(ctx, *listen, *logPath, *every, stdout)
	case "send":
		err = sendMain(ctx, *to, *rateFlag, stdout)
	}
	if err != nil && ctx.Err() == nil {
		fmt.Fprintln(stderr, "flowpair:", err)
		return 1
	}
	return 0
}

func recvMain(ctx context.Context, addr, logPath string, every time.Duration, stdout io.Writer) error {
	if addr == "" || logPath == "" {
		return errors.New("recv needs --listen and --log")
	}
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open the log: %w", err)
	}
	defer f.Close()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	fmt.Fprintln(stdout, "flowpair listening", ln.Addr())
	return receive(ctx, ln, f, every)
}

// receive accepts connections on ln and counts the bytes of all of them,
// writing the total to log every interval, until ctx ends; it closes ln
// and returns once every connection is closed.
func receive(ctx context.Context, ln net.Listener, log io.Writer, every time.Duration) error {
	var total atomic.Int64
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx) // on return: close ln and the connections, then wait
	defer cancel()
	stopLn := context.AfterFunc(ctx, func() { ln.Close() })
	defer stopLn()
	wg.Go(func() { // stops when ctx closes ln
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { // stops when the sender, or ctx, closes c
				defer c.Close()
				stop := context.AfterFunc(ctx, func() { c.Close() })
				defer stop()
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					total.Add(int64(n))
					if err != nil {
						return
					}
				}
			})
		}
	})
	w := bufio.NewWriter(log)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return w.Flush()
		case now := <-t.C:
			fmt.Fprintf(w, "%d %d\n", now.UnixNano(), total.Load())
			if err := w.Flush(); err != nil {
				return fmt.Errorf("write the log: %w", err)
			}
		}
	}
}

func sendMain(ctx context.Context, addr, rateS string, stdout io.Writer) error {
	bps, ok, err := iflow.ParseBitRate(rateS)
	if err == nil && (!ok || bps <= 0) {
		err = fmt.Errorf("rate %q: want bits, e.g. 16mbit", rateS)
	}
	if err != nil {
		return err
	}
	var conn net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; {
		var d net.Dialer
		if conn, err = d.DialContext(ctx, "tcp", addr); err == nil {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("connect to %s: %w", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	defer conn.Close()
	fmt.Fprintln(stdout, "flowpair sending", addr)
	return send(ctx, conn, bps)
}

// send writes to conn at bytesPerSec until ctx ends. Its socket buffer is
// small (64 KiB): what the network did not carry in time is not sent later
// from a backlog, as a live stream would not.
func send(ctx context.Context, conn net.Conn, bytesPerSec int64) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if tc, ok := conn.(*net.TCPConn); ok {
		if err := tc.SetWriteBuffer(64 << 10); err != nil {
			return fmt.Errorf("set the send buffer: %w", err)
		}
	}
	// A burst of 100 ms of the rate: a sender the scheduler kept waiting
	// (a loaded machine) catches up on its own delay, not the network's.
	lim := rate.NewLimiter(rate.Limit(bytesPerSec), int(max(bytesPerSec/10, chunk)))
	buf := make([]byte, chunk)
	for {
		if err := lim.WaitN(ctx, chunk); err != nil {
			return err
		}
		if _, err := conn.Write(buf); err != nil {
			return fmt.Errorf("send: %w", err)
		}
	}
}
