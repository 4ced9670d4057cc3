package main

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/peer"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
		check   func(t *testing.T, o options)
	}{
		{name: "defaults", args: nil, check: func(t *testing.T, o options) {
			if o.cfg.Listen != "0.0.0.0:8003" || o.cfg.MaxUploads != 16 || o.cfg.Sock != peer.DefaultSocketPath() || o.cfg.UploadRate != 0 {
				t.Fatalf("defaults %+v", o.cfg)
			}
		}},
		{name: "sizes and labels", args: []string{"--supernode", "sn:8002", "--upload-rate", "24M", "--download-rate", "1G", "--quota", "20G",
			"--idc", "east", "--rack", "r1", "--advertise", "10.0.0.1:8003", "--debug-corrupt-uploads"}, check: func(t *testing.T, o options) {
			c := o.cfg
			if c.Supernode != "sn:8002" || c.UploadRate != 24<<20 || c.DownloadRate != 1<<30 || c.Quota != 20<<30 ||
				c.IDC != "east" || c.Rack != "r1" || c.Advertise != "10.0.0.1:8003" || !c.CorruptUploads {
				t.Fatalf("parsed %+v", c)
			}
		}},
		{name: "metrics listener", args: nil, check: func(t *testing.T, o options) {
			if o.metricsListen != "127.0.0.1:65002" || o.metricsListenSet {
				t.Fatalf("default --metrics-listen %q (set %v), want 127.0.0.1:65002", o.metricsListen, o.metricsListenSet)
			}
		}},
		{name: "metrics listener off", args: []string{"--metrics-listen", ""}, check: func(t *testing.T, o options) {
			if o.metricsListen != "" || !o.metricsListenSet {
				t.Fatalf("--metrics-listen '': %q (set %v)", o.metricsListen, o.metricsListenSet)
			}
		}},
		{name: "bad size", args: []string{"--upload-rate", "fast"}, wantErr: "--upload-rate"},
		{name: "unknown flag", args: []string{"--nope"}, wantErr: "unknown flag"},
		{name: "stray argument", args: []string{"extra"}, wantErr: "unexpected arguments"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseFlags(tc.args, io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, o)
		})
	}
}

func TestRunExitCodes(t *testing.T) {
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"--log-level", "loud"}, io.Discard, &stderr); code != 2 {
		t.Fatalf("bad log level: exit %d, want 2 (%s)", code, stderr.String())
	}
	stderr.Reset()
	if code := run(context.Background(), []string{"--bogus"}, io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "Usage:") {
		t.Fatalf("bad flag: exit %d, want 2 with usage; stderr %q", code, stderr.String())
	}
	if code := run(context.Background(), []string{"--help"}, io.Discard, io.Discard); code != 0 {
		t.Fatalf("--help: exit %d", code)
	}
	// A store directory that cannot be created is a runtime failure.
	if code := run(context.Background(), []string{"--store", "/proc/nope/store", "--sock", filepath.Join(t.TempDir(), "s")}, io.Discard, io.Discard); code != 1 {
		t.Fatalf("unusable store: exit %d, want 1", code)
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
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

func TestRunServesUntilCancelled(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "d.sock")
	ctx, cancel := context.WithCancel(context.Background())
	var stdout syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--sock", sock, "--store", filepath.Join(dir, "store"), "--log-level", "error"}, &stdout, io.Discard)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(stdout.String(), "dfdaemon ready sock="+sock) {
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("no ready line; stdout %q", stdout.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	c, err := peer.DialDaemon(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Stats(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.Close()
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d after cancellation, want 0", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("dfdaemon did not stop")
	}
	if _, err := peer.DialDaemon(context.Background(), sock); err == nil {
		t.Fatal("socket still answers after shutdown")
	}
}
