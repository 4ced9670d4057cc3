package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestSummarize(t *testing.T) {
	in := strings.Join([]string{
		`{"Action":"run","Package":"p","Test":"TestA"}`,
		`{"Action":"output","Package":"p","Test":"TestA","Output":"=== RUN TestA\n"}`,
		`{"Action":"pass","Package":"p","Test":"TestA"}`,
		`{"Action":"output","Package":"p","Test":"TestB","Output":"    b_test.go:9: boom\n"}`,
		`{"Action":"fail","Package":"p","Test":"TestB"}`,
		`{"Action":"output","Package":"p","Test":"TestC","Output":"    c_test.go:3: needs root\n"}`,
		`{"Action":"output","Package":"p","Test":"TestC","Output":"--- SKIP: TestC (0.00s)\n"}`,
		`{"Action":"skip","Package":"p","Test":"TestC"}`,
		`{"Action":"fail","Package":"p","Elapsed":1.5}`,
		`{"Action":"pass","Package":"q","Test":"TestD"}`,
		`{"Action":"pass","Package":"q","Elapsed":0.1}`,
		`{"ImportPath":"r","Action":"build-output","Output":"r/x.go:1: syntax error\n"}`,
		`{"ImportPath":"r","Action":"build-fail"}`,
		`not json at all`,
	}, "\n")
	var out bytes.Buffer
	code := summarize(strings.NewReader(in), &out)
	s := out.String()
	for _, want := range []string{
		"tests: 2 passed, 1 failed, 1 skipped\n", "p TestC: c_test.go:3: needs root", "=== FAIL p TestB", "boom",
		"FAIL  p 1.5s", "ok    q 0.1s", "r/x.go:1: syntax error", "r (build failed)", "not json at all",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	out.Reset()
	if code := summarize(strings.NewReader(`{"Action":"pass","Package":"q","Test":"TestD"}`), &out); code != 0 || !strings.Contains(out.String(), "tests: 1 passed, 0 failed, 0 skipped") {
		t.Fatalf("clean run: %d %s", code, out.String())
	}
}
