package chaos

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// outcome is one scenario's line in the results table.
type outcome struct {
	Scenario string
	Size     int64 // bytes of the main file
	Peers    int
	Took     time.Duration
	// OriginCopies is what the origin sent, in copies of the main file.
	OriginCopies float64
	// Refetched is the number of blocks fetched again that a store had held
	// (or had in flight) before the failure; -1 = not applicable.
	Refetched int
	// Rejected is the number of bad blocks (or bytes, see Note) refused
	// from liars; -1 = not applicable.
	Rejected int64
	Note     string
}

var (
	resultsMu sync.Mutex
	results   []outcome
)

// record adds a scenario's outcome to the table (logged at once).
func record(t *testing.T, o outcome) {
	t.Helper()
	o.Scenario = t.Name()
	t.Logf("result: %s", o.row())
	resultsMu.Lock()
	defer resultsMu.Unlock()
	results = append(results, o)
}

func dash(n int64) string {
	if n < 0 {
		return "–"
	}
	return fmt.Sprint(n)
}

func (o outcome) row() string {
	return fmt.Sprintf("| %s | %d MiB | %d | %.1f s | %.2f | %s | %s | %s |", o.Scenario, o.Size/mib, o.Peers, o.Took.Seconds(),
		o.OriginCopies, dash(int64(o.Refetched)), dash(o.Rejected), o.Note)
}

// writeResults prints the table and, with DFLY_CHAOS_OUT, writes it there.
func writeResults() {
	resultsMu.Lock()
	defer resultsMu.Unlock()
	if len(results) == 0 {
		return
	}
	sort.SliceStable(results, func(i, j int) bool { return results[i].Scenario < results[j].Scenario })
	var b strings.Builder
	fmt.Fprintf(&b, "Chaos suite, DFLY_CHAOS_SCALE=%d (%s)\n\n", scale(), time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	b.WriteString("| scenario | file | peers | time | origin copies | refetched blocks | liar blocks rejected | notes |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|\n")
	for _, o := range results {
		b.WriteString(o.row() + "\n")
	}
	if path := os.Getenv("DFLY_CHAOS_OUT"); path != "" {
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "chaos: write results:", err)
		}
	}
	if testing.Verbose() || os.Getenv("DFLY_CHAOS_OUT") != "" {
		fmt.Println(b.String())
	}
}
