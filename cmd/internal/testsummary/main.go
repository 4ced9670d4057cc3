// Command testsummary reads `go test -json` on stdin and prints a compact
// report: one line per package, the output of every failed test, every
// skipped test with its reason, and a closing line
//
//	tests: N passed, N failed, N skipped
//
// A fuzz run (.ci/fuzz: go test -fuzz, whose output has "fuzz: " lines)
// counts as one test; a closing line "fuzz: N targets fuzzed, N failed"
// counts the runs, and the input of every crasher (written by go test to
// the package's testdata/fuzz/) is listed by its path.
//
// It exits 1 when any test or package (including a build) failed.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"sort"
	"strings"
)

func main() { os.Exit(summarize(os.Stdin, os.Stdout)) }

// event is one line of `go test -json`.
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	Elapsed    float64
	ImportPath string
}

type result struct {
	passed, failed, skipped int
	pkgFailed               []string
	failures                []string // rendered output of failed tests
	skips                   []string
	fuzzed, fuzzFailed      int      // fuzz runs (each is also one test)
	crashers                []string // inputs that made a fuzz run fail
}

// crasherLine is how go test -fuzz names the input it saved.
var crasherLine = regexp.MustCompile(`Failing input written to (\S+)`)

// moduleDir maps an import path to its directory relative to the current
// directory when that is the module's root (go.mod), else returns it as is.
func moduleDir() func(pkg string) string {
	mod := ""
	if b, err := os.ReadFile("go.mod"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if m, ok := strings.CutPrefix(strings.TrimSpace(l), "module "); ok {
				mod = strings.Trim(strings.TrimSpace(m), `"`)
				break
			}
		}
	}
	return func(pkg string) string {
		if mod != "" && pkg == mod {
			return "."
		}
		if rel, ok := strings.CutPrefix(pkg, mod+"/"); mod != "" && ok {
			return rel
		}
		return pkg
	}
}

func summarize(in io.Reader, out io.Writer) int {
	r := result{}
	outputs := map[string]*strings.Builder{} // pkg/test → output
	key := func(e event) string { return e.Package + " " + e.Test }
	fuzzing := map[string]bool{}    // pkg/test → its output says it fuzzed
	lastFuzz := map[string]string{} // pkg → the fuzz target its result is of
	dirOf := moduleDir()
	testFailed := map[string]int{} // pkg → tests failed in its current run
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
			fmt.Fprintln(out, string(line)) // not JSON (e.g. a build error printed by go): pass through
			continue
		}
		switch e.Action {
		case "build-output":
			fmt.Fprint(out, e.Output)
		case "build-fail":
			r.pkgFailed = append(r.pkgFailed, e.ImportPath+" (build failed)")
		case "output":
			b := outputs[key(e)]
			if b == nil {
				b = &strings.Builder{}
				outputs[key(e)] = b
			}
			if b.Len() < 256<<10 {
				b.WriteString(e.Output)
			}
			if e.Test != "" && strings.HasPrefix(e.Output, "fuzz: ") {
				fuzzing[key(e)] = true
			}
		case "pass", "fail", "skip":
			if e.Test == "" { // package result
				name := e.Package
				if f := lastFuzz[e.Package]; f != "" {
					name += " " + f + " (fuzzed)"
					delete(lastFuzz, e.Package)
				}
				switch e.Action {
				case "pass":
					fmt.Fprintf(out, "ok    %s %.1fs\n", name, e.Elapsed)
				case "skip":
					fmt.Fprintf(out, "--    %s (no tests)\n", e.Package)
				case "fail":
					fmt.Fprintf(out, "FAIL  %s %.1fs\n", name, e.Elapsed)
					r.pkgFailed = append(r.pkgFailed, e.Package)
					if b := outputs[key(e)]; b != nil && testFailed[e.Package] == 0 && strings.TrimSpace(b.String()) != "" && !strings.Contains(b.String(), "--- FAIL") {
						r.failures = append(r.failures, fmt.Sprintf("=== %s (package output)\n%s", e.Package, tail(b.String(), 60)))
					}
				}
				// A package's output and failures are of this run only
				// (.ci/fuzz runs a package once per target).
				delete(outputs, key(e))
				delete(testFailed, e.Package)
				continue
			}
			if fuzzing[key(e)] && !strings.Contains(e.Test, "/") && e.Action != "skip" {
				delete(fuzzing, key(e))
				lastFuzz[e.Package] = e.Test
				r.fuzzed++
				if e.Action == "fail" {
					r.fuzzFailed++
					if b := outputs[key(e)]; b != nil {
						for _, m := range crasherLine.FindAllStringSubmatch(b.String(), -1) {
							r.crashers = append(r.crashers, path.Join(dirOf(e.Package), m[1]))
						}
					}
				}
			}
			switch e.Action {
			case "pass":
				r.passed++
			case "fail":
				r.failed++
				testFailed[e.Package]++
				r.failures = append(r.failures, fmt.Sprintf("=== FAIL %s %s\n%s", e.Package, e.Test, tail(outputs[key(e)].String(), 80)))
			case "skip":
				r.skipped++
				r.skips = append(r.skips, fmt.Sprintf("%s %s: %s", e.Package, e.Test, skipReason(outputs[key(e)])))
			}
			delete(outputs, key(e))
		}
	}
	if len(r.skips) > 0 {
		sort.Strings(r.skips)
		fmt.Fprintln(out, "\nskipped:")
		for _, s := range r.skips {
			fmt.Fprintln(out, "  "+s)
		}
	}
	for _, f := range r.failures {
		fmt.Fprintln(out, "\n"+f)
	}
	if len(r.pkgFailed) > 0 {
		fmt.Fprintf(out, "\nfailed packages: %s\n", strings.Join(r.pkgFailed, ", "))
	}
	if len(r.crashers) > 0 {
		fmt.Fprintln(out, "\nfuzz crashers (re-run: go test -run=FuzzName/FILE ./DIR; commit them as regression seeds once fixed):")
		for _, c := range r.crashers {
			fmt.Fprintln(out, "  "+c)
		}
	}
	if r.fuzzed > 0 {
		fmt.Fprintf(out, "\nfuzz: %d targets fuzzed, %d failed\n", r.fuzzed, r.fuzzFailed)
	}
	fmt.Fprintf(out, "\ntests: %d passed, %d failed, %d skipped\n", r.passed, r.failed, r.skipped)
	if r.failed > 0 || len(r.pkgFailed) > 0 {
		return 1
	}
	return 0
}

func tail(s string, lines int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(ls) > lines {
		ls = append([]string{fmt.Sprintf("... (%d lines cut)", len(ls)-lines)}, ls[len(ls)-lines:]...)
	}
	return strings.Join(ls, "\n")
}

func skipReason(b *strings.Builder) string {
	if b == nil {
		return "(no reason given)"
	}
	var last string
	for _, l := range strings.Split(b.String(), "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "=== ") && !strings.HasPrefix(l, "--- SKIP") {
			last = l
		}
	}
	if last == "" {
		return "(no reason given)"
	}
	return last
}
