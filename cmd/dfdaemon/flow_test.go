package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/dfly-p2p/dfly/internal/flow"
)

func TestFlowFlags(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
		want flow.Options
		err  string
	}{
		{name: "default: fixed limits only", args: nil, want: flow.Options{}},
		{name: "auto, ceiling in bits for both directions", args: []string{"--flow", "auto", "--flow-ceiling", "100mbit"},
			want: flow.Options{Mode: flow.Auto, CeilingDown: 12_500_000, CeilingUp: 12_500_000}},
		{name: "auto, DOWN,UP in bytes and bits, interface", args: []string{"--flow=auto", "--flow-ceiling", "12M,20mbit", "--flow-iface", "eth1"},
			want: flow.Options{Mode: flow.Auto, CeilingDown: 12 << 20, CeilingUp: 2_500_000, Iface: "eth1"}},
		{name: "disk backoff alone", args: []string{"--disk-backoff", "80"}, want: flow.Options{DiskBackoff: 80}},
		{name: "unknown mode", args: []string{"--flow", "smart"}, err: "--flow: invalid flow mode"},
		{name: "ceiling without auto", args: []string{"--flow-ceiling", "1gbit"}, err: "need --flow auto"},
		{name: "interface without auto", args: []string{"--flow", "fixed", "--flow-iface", "eth0"}, err: "need --flow auto"},
		{name: "three rates", args: []string{"--flow", "auto", "--flow-ceiling", "1,2,3"}, err: "want RATE or DOWN,UP"},
		{name: "zero ceiling", args: []string{"--flow", "auto", "--flow-ceiling", "0"}, err: "must be above 0"},
		{name: "bad rate", args: []string{"--flow", "auto", "--flow-ceiling", "fastmbit"}, err: "invalid rate"},
		{name: "bad size", args: []string{"--flow", "auto", "--flow-ceiling", "10Q"}, err: "invalid size"},
		{name: "disk backoff above 100", args: []string{"--disk-backoff", "101"}, err: "want a percentage"},
	} {
		t.Run(c.name, func(t *testing.T) {
			o, err := parseFlags(c.args, io.Discard)
			if c.err != "" {
				var ue *usageError
				if !errors.As(err, &ue) || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("parseFlags = %v, want a usage error with %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.cfg.Flow != c.want {
				t.Fatalf("flow options %+v, want %+v", o.cfg.Flow, c.want)
			}
		})
	}
}

func TestFlowHelp(t *testing.T) {
	var out bytes.Buffer
	if code := run(context.Background(), []string{"--help"}, io.Discard, &out); code != 0 {
		t.Fatalf("--help exit %d", code)
	}
	for _, f := range []string{"--flow string", "--flow-ceiling", "--flow-iface", "--disk-backoff", "docs/flow.md"} {
		if !strings.Contains(out.String(), f) {
			t.Errorf("--help does not document %s", f)
		}
	}
}
