package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestSummarizeFuzzRuns: .ci/fuzz's output (go test -json -fuzz, one run
// per target). Each run is one test; a crasher fails the summary and its
// input is listed by its path in the module.
func TestSummarizeFuzzRuns(t *testing.T) {
	in := strings.Join([]string{
		`fuzz: ./p FuzzA for 10s`,
		`{"Action":"run","Package":"example.com/m/p","Test":"FuzzA"}`,
		`{"Action":"output","Package":"example.com/m/p","Test":"FuzzA","Output":"fuzz: elapsed: 0s, gathering baseline coverage: 0/4 completed\n"}`,
		`{"Action":"output","Package":"example.com/m/p","Test":"FuzzA","Output":"--- PASS: FuzzA (10.01s)\n"}`,
		`{"Action":"pass","Package":"example.com/m/p","Test":"FuzzA","Elapsed":10.01}`,
		`{"Action":"pass","Package":"example.com/m/p","Elapsed":10.1}`,
		`{"Action":"run","Package":"example.com/m/p","Test":"FuzzB"}`,
		`{"Action":"output","Package":"example.com/m/p","Test":"FuzzB","Output":"fuzz: minimizing 40-byte failing input file\n"}`,
		`{"Action":"output","Package":"example.com/m/p","Test":"FuzzB","Output":"--- FAIL: FuzzB (0.16s)\n"}`,
		`{"Action":"output","Package":"example.com/m/p","Test":"FuzzB","Output":"    --- FAIL: FuzzB (0.00s)\n"}`,
		`{"Action":"output","Package":"example.com/m/p","Test":"FuzzB","Output":"        b_test.go:5: too long\n"}`,
		`{"Action":"output","Package":"example.com/m/p","Test":"FuzzB","Output":"    Failing input written to testdata/fuzz/FuzzB/81476e3145e0ed8c\n"}`,
		`{"Action":"fail","Package":"example.com/m/p","Test":"FuzzB","Elapsed":0.16}`,
		`{"Action":"fail","Package":"example.com/m/p","Elapsed":0.2}`,
		// The unit run of a fuzz target (its seeds) is an ordinary test.
		`{"Action":"pass","Package":"example.com/m/q","Test":"FuzzC"}`,
		`{"Action":"pass","Package":"example.com/m/q","Elapsed":0.1}`,
	}, "\n")
	var out bytes.Buffer
	code := summarize(strings.NewReader(in), &out)
	s := out.String()
	for _, want := range []string{
		"ok    example.com/m/p FuzzA (fuzzed) 10.1s", "FAIL  example.com/m/p FuzzB (fuzzed) 0.2s", "ok    example.com/m/q 0.1s",
		"=== FAIL example.com/m/p FuzzB", "too long", "  example.com/m/p/testdata/fuzz/FuzzB/81476e3145e0ed8c\n",
		"fuzz: 2 targets fuzzed, 1 failed\n", "tests: 2 passed, 1 failed, 0 skipped\n", "fuzz: ./p FuzzA for 10s",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if !strings.HasSuffix(s, "tests: 2 passed, 1 failed, 0 skipped\n") {
		t.Fatalf("the tests line is not the last:\n%s", s)
	}
}
