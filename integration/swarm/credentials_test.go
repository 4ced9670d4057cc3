package swarm

import (
	"bytes"
	"context"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/peer"
)

// tapProxy is a TCP proxy that records every byte clients send through it:
// put in front of an upload server (the daemon advertises the proxy), it
// sees every block request other peers make to that host.
type tapProxy struct {
	ln     net.Listener
	target atomic.Value // string: HOST:PORT to forward to
	mu     sync.Mutex
	seen   bytes.Buffer
	back   bytes.Buffer // what the server answered
	conns  atomic.Int64
	wg     sync.WaitGroup
}

func newTapProxy(t *testing.T) *tapProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tapProxy{ln: ln}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.conns.Add(1)
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.relay(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *tapProxy) addr() string { return p.ln.Addr().String() }

func (p *tapProxy) relay(c net.Conn) {
	defer c.Close()
	target, _ := p.target.Load().(string)
	up, err := net.DialTimeout("tcp", target, 5*time.Second)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(io.MultiWriter(c, replies{p}), up)
		c.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	io.Copy(io.MultiWriter(up, p), c)
	up.(*net.TCPConn).CloseWrite()
	<-done
}

// Write records what a client sent.
func (p *tapProxy) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen.Write(b)
}

// replies records what the server answered.
type replies struct{ p *tapProxy }

func (r replies) Write(b []byte) (int, error) {
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	return r.p.back.Write(b)
}

// answered is everything the server sent its clients.
func (p *tapProxy) answered() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.back.Bytes())
}

func (p *tapProxy) recorded() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.seen.Bytes())
}

// TestCredentialsNeverLeak: origin credentials given to dfget (--header)
// and to the local API reach the origin and nothing else a peer can see
// or an operator keeps: not the block requests peers make to each other
// and to the seed (recorded on the wire), not the logs (at debug level),
// not any file of any store, not the supernode's /debug/state, not the
// daemons' /v1/tasks and /v1/stats, not dfget's report.
func TestCredentialsNeverLeak(t *testing.T) {
	const marker = "MARKER-c0ffee-5ecret"
	auth := "Bearer " + marker
	o := newOrigin(t)
	c := origin.Content{Size: 12 << 20, Seed: 91}
	o.Add("creds.bin", c)
	ao := newAuthOrigin(t, o, auth)
	url := ao.srv.URL + "/creds.bin"
	want := c.Digest("sha256")

	// The supernode at debug level, its seed's upload server behind a tap.
	snTap := newTapProxy(t)
	snDir := t.TempDir()
	snUpload := freeAddr(t)
	snTap.target.Store(snUpload)
	p, line := start(t, "supernode", "supernode", "supernode listening",
		"--listen", "127.0.0.1:0", "--upload-listen", snUpload, "--advertise", snTap.addr(), "--metrics-listen", "127.0.0.1:0",
		"--store", filepath.Join(snDir, "store"), "--log-level", "debug")
	sn := &supernode{proc: p, dir: snDir, grpc: field(line, "grpc"), upload: snUpload}

	var ds []*daemon
	var taps []*tapProxy
	for _, id := range []string{"cred-a", "cred-b", "cred-c"} {
		tap := newTapProxy(t)
		listen := freeAddr(t) // the ready line names the advertised address: the tap
		tap.target.Store(listen)
		d := startDaemon(t, sn, id, "", "--listen", listen, "--advertise", tap.addr(), "--log-level", "debug")
		ds, taps = append(ds, d), append(taps, tap)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	outDir := t.TempDir()

	// A through the dfget binary with --header, then B and C at once
	// through the local API: they take blocks from A and the seed.
	out := filepath.Join(outDir, "a.out")
	rep := out + ".report.json"
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "dfget"), "--daemon-sock", ds[0].sock, "--header", "Authorization: "+auth,
		"--log-level", "debug", "-O", out, "--report-json", rep, url)
	dfgetOut, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("dfget: %v: %s", err, dfgetOut)
	}
	if got := fileSHA256(t, out); got != want {
		t.Fatalf("dfget output %s, want %s", got, want)
	}
	res := downloadRequests(ctx, t, ds[1:], peer.DownloadRequest{URL: url, Headers: map[string]string{"Authorization": auth}}, nil)
	var fromPeers int64
	for _, r := range res {
		checkExact(t, r, want)
		fromPeers += r.res.BytesPeers
	}
	if fromPeers == 0 {
		t.Fatal("B and C took nothing from peers: the daemons' taps saw no block requests, the test proves nothing")
	}
	var tapped int
	for _, tp := range append(taps, snTap) {
		tapped += bytes.Count(tp.recorded(), []byte("GET /blocks/"))
	}
	if tapped == 0 {
		t.Fatal("no block request went through the taps")
	}
	t.Logf("%d block requests recorded on the wire", tapped)

	// Everything an observer can ask for while the swarm runs.
	var seen []struct{ what, data string }
	add := func(what string, b []byte) { seen = append(seen, struct{ what, data string }{what, string(b)}) }
	add("dfget's output", dfgetOut)
	if b, err := os.ReadFile(rep); err == nil {
		add("dfget's report", b)
	} else {
		t.Fatal(err)
	}
	for i, tp := range taps {
		add("block requests to "+ds[i].id, tp.recorded())
	}
	add("block requests to the seed", snTap.recorded())
	resp, err := http.Get("http://" + sn.upload + "/debug/state")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	add("/debug/state", b)
	for _, d := range ds {
		for _, path := range []string{"/v1/tasks", "/v1/stats"} {
			b, err := localGet(ctx, d.sock, path)
			if err != nil {
				t.Fatalf("%s %s: %v", d.id, path, err)
			}
			add(d.id+" "+path, b)
		}
	}
	for _, s := range seen {
		if strings.Contains(s.data, marker) {
			t.Errorf("the credential appears in %s", s.what)
		}
	}
	// Logs and every file of every store, after a clean stop.
	sn.stop()
	roots := []string{sn.dir, filepath.Dir(sn.Log)}
	for _, d := range ds {
		d.stop()
		roots = append(roots, filepath.Dir(d.sock), filepath.Dir(d.Log))
	}
	var files int
	for _, root := range roots {
		filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return nil
			}
			files++
			if data, err := os.ReadFile(path); err == nil && strings.Contains(string(data), marker) {
				t.Errorf("the credential appears in %s", path)
			}
			return nil
		})
	}
	if files < 8 {
		t.Fatalf("only %d files checked: the store and log paths are wrong", files)
	}
}

// localGet GETs path from a dfdaemon's local API.
func localGet(ctx context.Context, sock, path string) ([]byte, error) {
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://dfdaemon"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// freeAddr returns a loopback address with a port nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
