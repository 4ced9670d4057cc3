//go:build bench

// The image benchmark is built only with -tags bench (make bench-image), so
// it is no skipped test in make test.

package mirror

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestBenchImage is the "image" benchmark (make bench-image): N hosts in
// network namespaces (100 Mbit/s each, the registry 1 Gbit/s) pull the same
// 219 MB ordinary image at once with ctr, straight from the registry
// (native) and through their dfly mirrors, for each N in
// DFLY_BENCH_IMAGE (default "5,10,20"). It prints, and appends to
// DFLY_BENCH_OUT if set, a table of pull times over the physical bound
// and the registry's egress in copies of the image. It takes minutes.
func TestBenchImage(t *testing.T) {
	spec := os.Getenv("DFLY_BENCH_IMAGE")
	if spec == "" {
		spec = "5,10,20"
	}
	var ns []int
	for _, f := range strings.Split(spec, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 40 {
			t.Fatalf("DFLY_BENCH_IMAGE=%q: want a comma-separated list of host counts 1..40", spec)
		}
		ns = append(ns, n)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n| N | mode | p50 / bound | p99 / bound | max / bound | registry egress (copies) |\n| --- | --- | --- | --- | --- | --- |\n")
	for _, n := range ns {
		modes := []bool{false, true}
		if os.Getenv("DFLY_BENCH_MODES") == "dfly" { // experiments: skip the native rows
			modes = []bool{true}
		}
		for _, dfly := range modes {
			var r fleetResult
			name := fmt.Sprintf("N=%d/native", n)
			if dfly {
				name = fmt.Sprintf("N=%d/dfly", n)
			}
			t.Run(name, func(t *testing.T) { r = runFleetWith(t, n, dfly, "1.6") })
			if r.hosts == 0 {
				t.Fatalf("%s did not complete", name)
			}
			// The bound for the swarm: max(S/Bo, S/Bp, N·S/(Bo+N·Bp)); with
			// Bo = 10·Bp that is S/Bp. Native needs max(S/Bp, N·S/Bo).
			bound := r.bound
			mode := "dfly mirror"
			if !dfly {
				mode = "native"
			}
			p50, p99, mx := quantiles(r.took)
			fmt.Fprintf(&b, "| %d | %s | %.2f | %.2f | %.2f | %.2f |\n", n, mode, p50.Seconds()/bound.Seconds(), p99.Seconds()/bound.Seconds(),
				mx.Seconds()/bound.Seconds(), float64(r.bytes)/float64(r.layers))
		}
	}
	t.Log(b.String())
	if out := os.Getenv("DFLY_BENCH_OUT"); out != "" {
		f, err := os.OpenFile(out, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fmt.Fprintf(f, "image benchmark %s (219 MB, 100 Mbit/s hosts, 1 Gbit/s registry; bound = image/host link = %.1fs)%s",
			time.Now().UTC().Format(time.RFC3339), float64(219e6*8)/100e6, b.String())
	}
}
