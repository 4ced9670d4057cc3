package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestParseGenerate(t *testing.T) {
	cases := []struct {
		in   string
		name string
		size int64
		seed uint64
		ok   bool
	}{
		{"a=1M", "a", 1 << 20, 1, true},
		{"big.bin=256M:7", "big.bin", 256 << 20, 7, true},
		{"noeq", "", 0, 0, false},
		{"=1M", "", 0, 0, false},
		{"a/b=1M", "", 0, 0, false},
		{"a=xx", "", 0, 0, false},
		{"a=1M:x", "", 0, 0, false},
	}
	for _, c := range cases {
		sp, err := parseGenerate(c.in)
		if (err == nil) != c.ok || (c.ok && (sp.name != c.name || sp.c.Size != c.size || sp.c.Seed != c.seed)) {
			t.Errorf("parseGenerate(%q) = %+v, %v", c.in, sp, err)
		}
	}
}

func TestServes(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan int)
	go func() {
		done <- run(ctx, []string{"--listen", "127.0.0.1:0", "--generate", "x=1000:3", "--print-digests"}, pw, io.Discard)
		pw.Close()
	}()
	sc := bufio.NewScanner(pr)
	var url string
	for sc.Scan() {
		if u, ok := strings.CutPrefix(sc.Text(), "origin listening "); ok {
			url = u
			break
		}
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url + "/x")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if len(b) != 1000 || bytes.Equal(b[:10], make([]byte, 10)) {
		t.Fatalf("got %d bytes", len(b))
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d", code)
	}
	if code := run(context.Background(), []string{"--generate", "bad"}, io.Discard, io.Discard); code != 2 {
		t.Fatalf("bad flag exit %d", code)
	}
}

func TestFlags(t *testing.T) {
	var errb strings.Builder
	if code := run(context.Background(), []string{"--nope"}, io.Discard, &errb); code != 2 || !strings.Contains(errb.String(), "unknown flag: --nope") {
		t.Errorf("--nope: exit %d, stderr %q; want 2 naming the flag", code, errb.String())
	}
	if code := run(context.Background(), []string{"--help"}, io.Discard, io.Discard); code != 0 {
		t.Errorf("--help: exit %d, want 0", code)
	}
}
