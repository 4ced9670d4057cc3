package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSendReceive runs a paced sender into a receiver on loopback and
// checks the receiver's log: monotonic totals that reach what was sent.
func TestSendReceive(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var log syncBuffer
	rctx, rcancel := context.WithCancel(context.Background())
	rdone := make(chan error, 1)
	go func() { rdone <- receive(rctx, ln, &log, 10*time.Millisecond) }()

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(context.Background())
	sdone := make(chan error, 1)
	go func() { sdone <- send(sctx, conn, 4<<20) }()
	deadline := time.Now().Add(30 * time.Second)
	for lastTotal(t, log.String()) < 256<<10 {
		if time.Now().After(deadline) {
			t.Fatalf("the receiver logged %d bytes in 30 s", lastTotal(t, log.String()))
		}
		time.Sleep(10 * time.Millisecond)
	}
	scancel()
	if err := <-sdone; err == nil {
		t.Fatal("send returned nil; want the context's error")
	}
	rcancel()
	if err := <-rdone; err != nil {
		t.Fatal(err)
	}
	prev := int64(-1)
	var prevT int64
	sc := bufio.NewScanner(strings.NewReader(log.String()))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		ts, _ := strconv.ParseInt(f[0], 10, 64)
		n, _ := strconv.ParseInt(f[1], 10, 64)
		if n < prev || ts <= prevT {
			t.Fatalf("log not monotonic at %q", sc.Text())
		}
		prev, prevT = n, ts
	}
}

func lastTotal(t *testing.T, log string) int64 {
	lines := strings.Split(strings.TrimSpace(log), "\n")
	f := strings.Fields(lines[len(lines)-1])
	if len(f) != 2 {
		return 0
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		t.Fatalf("bad log line %q", lines[len(lines)-1])
	}
	return n
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRunUsage(t *testing.T) {
	var stderr bytes.Buffer
	for _, args := range [][]string{nil, {"both"}, {"recv"}, {"send", "--rate", "16M", "--to", "127.0.0.1:1"}, {"send", "--bogus"}} {
		stderr.Reset()
		if code := run(context.Background(), args, io.Discard, &stderr); code == 0 {
			t.Errorf("run(%q) = 0, want a failure", args)
		}
	}
	// recv with a log file in a missing directory fails clearly.
	code := run(context.Background(), []string{"recv", "--listen", "127.0.0.1:0", "--log", filepath.Join(t.TempDir(), "no", "log")}, io.Discard, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "open the log") {
		t.Fatalf("recv with a bad log: exit %d, %q", code, stderr.String())
	}
}
