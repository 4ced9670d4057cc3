package netbench

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"image/png"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dfly-p2p/dfly/internal/compress"
	"github.com/dfly-p2p/dfly/peer"
)

// tree makes a directory of a few text files (and a symlink) of about total bytes.
func tree(t *testing.T, total int) string {
	t.Helper()
	dir := t.TempDir()
	line := []byte("a line of text in a file of the tree\n")
	for i, name := range []string{"a.txt", "sub/b.txt", "sub/deeper/c.txt"} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, bytes.Repeat(line, total/3/len(line)+i), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("a.txt", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestBuildTar(t *testing.T) {
	dir := tree(t, 300<<10)
	out := filepath.Join(t.TempDir(), "bench.bin")
	const size = 200 << 10
	sum, err := BuildTar(out, size, []string{dir})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != size {
		t.Fatalf("tar of %d bytes, want exactly %d", len(b), size)
	}
	if h := sha256.Sum256(b); hex.EncodeToString(h[:]) != sum {
		t.Fatal("BuildTar's digest is not the file's")
	}
	// It is a tar of the tree (cut short): the entries read until the cut.
	tr := tar.NewReader(bytes.NewReader(b))
	var names []string
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, filepath.Base(h.Name))
	}
	if len(names) < 3 || names[0] != filepath.Base(dir) || names[1] != "a.txt" || names[2] != "link" {
		t.Fatalf("entries %v, want the tree in lexical order", names)
	}
	if again, _ := BuildTar(out, size, []string{dir}); again != sum {
		t.Fatal("the tar content is not deterministic")
	}
	if _, err := BuildTar(out, 10<<20, []string{dir}); err == nil || !strings.Contains(err.Error(), "hold only") {
		t.Fatalf("a tree smaller than the size: %v", err)
	}
}

func TestCutWriter(t *testing.T) {
	var b bytes.Buffer
	w := &cutWriter{w: &b, left: 5}
	if n, err := w.Write([]byte("abc")); n != 3 || err != nil {
		t.Fatal(n, err)
	}
	if n, err := w.Write([]byte("defg")); n != 2 || !errors.Is(err, errFull) {
		t.Fatal(n, err)
	}
	if n, err := w.Write([]byte("h")); n != 0 || !errors.Is(err, errFull) || b.String() != "abcde" {
		t.Fatal(n, err, b.String())
	}
}

func TestPrepareContent(t *testing.T) {
	dir := tree(t, 100<<10)
	tests := []struct {
		name string
		cfg  Config
		err  string
		args string
	}{
		{"random", Config{Size: 1000, Seed: 3}, "", "--generate bench.bin=1000:3"},
		{"tar", Config{Size: 50 << 10, Content: ContentTar, ContentDirs: []string{dir}}, "", "--dir"},
		{"unknown content", Config{Content: "zeros"}, "content", ""},
		{"tar and bittorrent", Config{Content: ContentTar, Scenarios: []string{Dfly, BitTorrent}}, "bittorrent", ""},
		{"bad mode", Config{Compress: []string{"off", "fast"}}, "--compress", ""},
	}
	for _, tc := range tests {
		tc.cfg.WorkDir, tc.cfg.Log = t.TempDir(), slog.New(slog.DiscardHandler)
		b := &Bench{cfg: tc.cfg}
		err := b.prepareContent()
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %v, want an error about %s", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := strings.Join(b.originContent(), " "); !strings.HasPrefix(got, tc.args) {
			t.Errorf("%s: origin flags %q, want %q...", tc.name, got, tc.args)
		}
		if tc.cfg.Content == ContentTar {
			fi, err := os.Stat(filepath.Join(b.contentDir, fileName))
			if err != nil || fi.Size() != tc.cfg.Size || len(b.digest) != 64 {
				t.Errorf("tar content: %v, digest %q", err, b.digest)
			}
		}
	}
}

func TestModesAndLabels(t *testing.T) {
	b := &Bench{cfg: Config{Compress: []string{"off", "auto"}}}
	if got := b.modes(Dfly); len(got) != 2 || got[0] != "off" {
		t.Fatalf("dfly modes %v", got)
	}
	if got := b.modes(Native); len(got) != 1 || got[0] != "" {
		t.Fatalf("native modes %v", got)
	}
	if got := (&Bench{}).modes(Dfly); len(got) != 1 || got[0] != "" {
		t.Fatalf("modes without --compress %v", got)
	}
	if compressArgs("") != nil || strings.Join(compressArgs("auto"), " ") != "--compress auto" {
		t.Fatal("compressArgs")
	}
	if runName(Dfly, "") != "dfly" || runName(Dfly, "off") != "dfly-compress-off" {
		t.Fatal("runName")
	}
	for _, tc := range []struct {
		r    Result
		want string
	}{
		{Result{Scenario: Dfly}, "dfly"},
		{Result{Scenario: Dfly, Content: ContentRandom, Compress: "off"}, "dfly compress=off"},
		{Result{Scenario: Dfly, Content: ContentTar, Compress: "auto"}, "dfly/tar compress=auto"},
		{Result{Scenario: Native, Content: ContentTar}, "native/tar"},
	} {
		if got := tc.r.Label(); got != tc.want {
			t.Errorf("Label = %q, want %q", got, tc.want)
		}
	}
}

// fakeDaemon answers the local API's ping and stats on a unix socket.
func fakeDaemon(t *testing.T, dir string, st peer.DaemonStats) {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(dir, "dfdaemon.sock"))
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/ping", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, _ *http.Request) { _ = json.NewEncoder(w).Encode(st) })
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
}

func TestCollectCompression(t *testing.T) {
	var hosts []*hostRun
	for i, c := range []*compress.Stats{
		{Asked: 10, BlocksCompressed: 8, BytesPlain: 10 << 20, BytesWire: 4 << 20},
		nil, // a daemon with --compress off
		{Asked: 5, BlocksCompressed: 5, BytesPlain: 10 << 20, BytesWire: 3 << 20},
	} {
		dir := t.TempDir()
		fakeDaemon(t, dir, peer.DaemonStats{Compression: c})
		hosts = append(hosts, &hostRun{host: &Host{Name: string(rune('a' + i))}, dir: dir})
	}
	tot, err := collectCompression(context.Background(), hosts)
	if err != nil {
		t.Fatal(err)
	}
	if *tot != (CompressionTotals{Asked: 15, BlocksCompressed: 13, BytesPlain: 20 << 20, BytesWire: 7 << 20}) {
		t.Fatalf("totals %+v", *tot)
	}
	hosts = append(hosts, &hostRun{host: &Host{Name: "gone"}, dir: t.TempDir()})
	if _, err := collectCompression(context.Background(), hosts); err == nil || !strings.Contains(err.Error(), "gone") {
		t.Fatalf("a daemon that is gone: %v", err)
	}
}

func TestPlotAll(t *testing.T) {
	dir := t.TempDir()
	var results []Result
	for _, mode := range []string{"off", "auto", "always"} {
		results = append(results, Result{Scenario: Dfly, Content: ContentTar, Compress: mode, N: 5, SizeBytes: 300e6, BoundSeconds: 25,
			Times: []float64{30, 28, 33, 31, 29}, P50: 30, P99: 33, Completed: 5, PeerRxBytes: 1575e6, PeerRxCopies: 1.05, SHA256OK: true})
	}
	results = append(results, Result{Scenario: Dfly, N: 5, Completed: 0})
	path := filepath.Join(dir, "results.png")
	if err := PlotAll(path, results, "test"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, CompressionPlotPath(path)} {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := png.Decode(f); err != nil {
			t.Errorf("%s is not a PNG: %v", p, err)
		}
		f.Close()
	}
	plain := filepath.Join(dir, "plain.png")
	if err := PlotAll(plain, []Result{{Scenario: Dfly, N: 5, Completed: 1, Times: []float64{1}, P50: 1, P99: 1}}, "t"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(CompressionPlotPath(plain)); !os.IsNotExist(err) {
		t.Fatal("a compression plot for a sweep without compression")
	}
	if err := PlotCompression(filepath.Join(dir, "x.png"), []Result{{Scenario: Dfly}}, "t"); err == nil {
		t.Fatal("a plot of no completed run")
	}
	var out bytes.Buffer
	if err := WriteTable(&out, results); err != nil || !strings.Contains(out.String(), "dfly/tar compress=always") || !strings.Contains(out.String(), "1.050") {
		t.Fatalf("table: %v\n%s", err, out.String())
	}
}
