package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/dfly-p2p/dfly/cmd/internal/cli"
	"github.com/dfly-p2p/dfly/integration/origin"
)

const demoPeers = 4

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// demoSwarm: an origin, a supernode and four dfdaemons in two idcs on
// loopback; dfget runs on all four at once; the table says where every
// host's bytes came from and how many copies the origin sent.
func demoSwarm(ctx context.Context, cfg config, out io.Writer) error {
	o, err := origin.Start(origin.Options{})
	if err != nil {
		return err
	}
	defer o.Close()
	c := origin.Content{Size: cfg.size, Seed: 43}
	url := o.Add("image-layer.bin", c)
	want := c.Digest("sha256")
	fmt.Fprintf(out, "\n== P2P swarm: 1 origin, 1 supernode, %d dfdaemons (idc a, b) ==\norigin %s serving %s\n",
		demoPeers, url, cli.HumanBytes(c.Size))

	logs := filepath.Join(cfg.workDir, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return err
	}
	p := &procs{logs: logs}
	defer p.stop()

	grpcAddr, err := freePort()
	if err != nil {
		return err
	}
	upAddr, err := freePort()
	if err != nil {
		return err
	}
	if _, _, err := p.start(ctx, "supernode", filepath.Join(cfg.bin, "supernode"), "supernode listening",
		"--listen", grpcAddr, "--upload-listen", upAddr, "--advertise", upAddr, "--metrics-listen", "127.0.0.1:0",
		"--store", filepath.Join(cfg.workDir, "supernode-store"), "--upload-rate", "400M"); err != nil {
		return err
	}
	socks := make([]string, demoPeers)
	for i := range demoPeers {
		addr, err := freePort()
		if err != nil {
			return err
		}
		socks[i] = filepath.Join(cfg.workDir, fmt.Sprintf("peer%d.sock", i))
		idc := []string{"a", "b"}[i%2]
		if _, _, err := p.start(ctx, fmt.Sprintf("dfdaemon%d", i), filepath.Join(cfg.bin, "dfdaemon"), "dfdaemon ready",
			"--supernode", grpcAddr, "--listen", addr, "--advertise", addr, "--sock", socks[i],
			"--store", filepath.Join(cfg.workDir, fmt.Sprintf("peer%d-store", i)), "--idc", idc,
			"--upload-rate", "200M", "--metrics-listen", "127.0.0.1:0"); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "supernode and %d dfdaemons up; logs in %s (kept with --keep)\n\n", demoPeers, logs)

	o.ResetCounters()
	reports := make([]dfgetReport, demoPeers)
	errs := make([]error, demoPeers)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range demoPeers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep := filepath.Join(cfg.workDir, fmt.Sprintf("swarm%d.json", i))
			cmd := exec.CommandContext(ctx, filepath.Join(cfg.bin, "dfget"), url, "-O", filepath.Join(cfg.workDir, fmt.Sprintf("swarm%d.out", i)),
				"--daemon-sock", socks[i], "--digest", want, "--report-json", rep, "-q")
			if b, err := cmd.CombinedOutput(); err != nil {
				errs[i] = fmt.Errorf("dfget on peer %d: %v: %s", i, err, b)
				return
			}
			reports[i], errs[i] = readReport(rep)
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "%-8s %-4s %8s %12s %12s %12s %s\n", "peer", "idc", "time", "from origin", "from seed", "from peers", "sha256 verified")
	var origin, seed, peers int64
	ok := true
	for i, r := range reports {
		v := "yes"
		if "sha256:"+r.SHA256 != want || !r.Verified {
			v, ok = "NO", false
		}
		fmt.Fprintf(out, "peer%-4d %-4s %7.2fs %12s %12s %12s %s\n", i, []string{"a", "b"}[i%2], r.DurationSeconds,
			cli.HumanBytes(r.BytesOrigin), cli.HumanBytes(r.BytesSeed), cli.HumanBytes(r.BytesPeers), v)
		origin += r.BytesOrigin
		seed += r.BytesSeed
		peers += r.BytesPeers
	}
	recv := origin + seed + peers
	fmt.Fprintf(out, "\nall %d downloads done in %.2fs; origin egress %s = %.2f copies of the file (the seed fetched it once for everybody)\n",
		demoPeers, wall.Seconds(), cli.HumanBytes(o.BytesSent()), float64(o.BytesSent())/float64(c.Size))
	if recv > 0 {
		fmt.Fprintf(out, "bytes the peers received: %.0f%% from other peers, %.0f%% from the seed, %.0f%% straight from the origin (fallback)\n",
			100*float64(peers)/float64(recv), 100*float64(seed)/float64(recv), 100*float64(origin)/float64(recv))
	}
	if !ok {
		return fmt.Errorf("an output did not match %s", want)
	}
	return nil
}
