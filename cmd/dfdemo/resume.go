package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dfly-p2p/dfly/cmd/internal/cli"
	"github.com/dfly-p2p/dfly/integration/origin"
)

// dfgetReport is the part of dfget's --report-json the demo reads.
type dfgetReport struct {
	Bytes           int64   `json:"bytes"`
	DurationSeconds float64 `json:"duration_seconds"`
	BytesOrigin     int64   `json:"bytes_origin"`
	BytesSeed       int64   `json:"bytes_seed"`
	BytesPeers      int64   `json:"bytes_peers"`
	BytesLocal      int64   `json:"bytes_local"`
	SHA256          string  `json:"sha256"`
	Verified        bool    `json:"verified"`
}

func readReport(path string) (dfgetReport, error) {
	var r dfgetReport
	b, err := os.ReadFile(path)
	if err != nil {
		return r, fmt.Errorf("read dfget report: %w", err)
	}
	return r, json.Unmarshal(b, &r)
}

// demoResume: one origin, dfget once straight through, then once killed
// (SIGKILL) half-way and resumed.
func demoResume(ctx context.Context, cfg config, out io.Writer) error {
	o, err := origin.Start(origin.Options{})
	if err != nil {
		return err
	}
	defer o.Close()
	c := origin.Content{Size: cfg.size, Seed: 42}
	url := o.Add("release.bin", c)
	want := c.Digest("sha256")
	fmt.Fprintf(out, "== dfget from a loopback origin ==\norigin %s serving %s (%s)\n\n", url, cli.HumanBytes(c.Size), want)

	dfget := filepath.Join(cfg.bin, "dfget")
	run := func(name, store string, extra ...string) (dfgetReport, error) {
		outFile := filepath.Join(cfg.workDir, name+".out")
		rep := filepath.Join(cfg.workDir, name+".json")
		args := append([]string{url, "-O", outFile, "--store", store, "--digest", want, "--report-json", rep, "-q"}, extra...)
		cmd := exec.CommandContext(ctx, dfget, args...)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return dfgetReport{}, fmt.Errorf("dfget %s: %w", name, err)
		}
		return readReport(rep)
	}

	fmt.Fprintf(out, "%-28s %8s %12s %14s %s\n", "run", "time", "throughput", "from origin", "sha256 verified")
	row := func(name string, secs float64, bytes, fromOrigin int64, ok string) {
		fmt.Fprintf(out, "%-28s %7.2fs %10s/s %14s %s\n", name, secs, cli.HumanBytes(int64(float64(bytes)/max(secs, 1e-3))), cli.HumanBytes(fromOrigin), ok)
	}
	verdict := func(r dfgetReport) string {
		if "sha256:"+r.SHA256 == want && r.Verified {
			return "yes"
		}
		return "NO (" + r.SHA256 + ")"
	}

	o.ResetCounters()
	r1, err := run("straight", filepath.Join(cfg.workDir, "store-a"))
	if err != nil {
		return err
	}
	row("1. straight through", r1.DurationSeconds, r1.Bytes, o.BytesSent(), verdict(r1))

	// Second run: throttle so the kill lands mid-download, SIGKILL at ~50%.
	o.ResetCounters()
	store := filepath.Join(cfg.workDir, "store-b")
	start := time.Now()
	cmd := exec.CommandContext(ctx, dfget, url, "-O", filepath.Join(cfg.workDir, "killed.out"), "--store", store, "--limit-rate", "200M", "-q")
	if err := cmd.Start(); err != nil {
		return err
	}
	for o.BytesSent() < c.Size/2 {
		if ctx.Err() != nil || time.Since(start) > 5*time.Minute {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return fmt.Errorf("dfget did not reach 50%% (interrupted or too slow)")
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	killedAt := o.BytesSent()
	_, statErr := os.Stat(filepath.Join(cfg.workDir, "killed.out"))
	row("2a. killed -9 at ~50%", time.Since(start).Seconds(), killedAt, killedAt, "no output file: "+yesNo(os.IsNotExist(statErr)))

	o.ResetCounters()
	r2, err := run("resumed", store)
	if err != nil {
		return err
	}
	row("2b. same command again", r2.DurationSeconds, r2.Bytes-r2.BytesLocal, o.BytesSent(), verdict(r2))
	total := killedAt + o.BytesSent()
	fmt.Fprintf(out, "\nkilled + resumed run: origin sent %s in all = %.3f copies of the file (%s reused from the block store)\n",
		cli.HumanBytes(total), float64(total)/float64(c.Size), cli.HumanBytes(r2.BytesLocal))
	if verdict(r1) != "yes" || verdict(r2) != "yes" {
		return fmt.Errorf("an output did not match %s", want)
	}
	fmt.Fprintln(out, strings.Repeat("-", 78))
	return nil
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "NO"
}
