package chaos

import (
	"context"
	"crypto/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/supernode/api"
)

// claimer is a host that lies about what it holds: it announces every block
// of a task to the supernode (over the real control plane, with its own
// host secret) but holds none; its upload server answers every block
// request with 404. It needs no test hook in dfdaemon: the lie is in what
// it says, and anybody can say anything to the supernode.
type claimer struct {
	id       string
	srv      *httptest.Server
	requests atomic.Int64
}

// startClaimer announces a full bitmap of the content at url (size bytes)
// every second until the test ends.
func startClaimer(t *testing.T, sn *supernode, id, url string, size int64) *claimer {
	t.Helper()
	c := &claimer{id: id}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.requests.Add(1)
		http.Error(w, "block not held", http.StatusNotFound)
	}))
	t.Cleanup(c.srv.Close)
	secret := rand.Text()
	conn, err := grpc.NewClient(sn.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, o ...grpc.CallOption) error {
			return invoker(metadata.AppendToOutgoingContext(ctx, api.HostSecretMetadata, secret), method, req, reply, cc, o...)
		}))
	if err != nil {
		t.Fatal(err)
	}
	client := api.NewSchedulerClient(conn)
	tid := taskID(t, url)
	bs := blockstore.BlockSizeFor(size)
	bm := blockstore.NewBitmap(blockstore.NumBlocks(size, bs))
	for i := range blockstore.NumBlocks(size, bs) {
		bm.Set(i)
	}
	req := &api.AnnounceRequest{
		Host: &api.Host{Id: id, UploadAddr: c.srv.Listener.Addr().String(), UploadCapacity: 1 << 30},
		Held: []*api.HeldTask{{TaskId: tid, Url: url, Length: size, BlockSize: bs, Bitmap: bm}},
	}
	announce := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := client.Announce(ctx, req)
		return err
	}
	if err := announce(); err != nil {
		t.Fatalf("claimer: announce: %v", err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				_ = announce() // the supernode may be busy; the next one counts
			}
		}
	})
	t.Cleanup(func() { close(stop); wg.Wait(); conn.Close() })
	return c
}

// slowLink is a reverse proxy in front of a daemon's upload server that
// paces every answer through one shared rate (the daemon's congested link)
// and counts the block requests it forwards.
type slowLink struct {
	ln       net.Listener
	requests atomic.Int64
	lim      *rate.Limiter
}

// freePort returns a loopback address that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startSlowLink serves on a new loopback address, forwarding to backend at
// bytesPerSec.
func startSlowLink(t *testing.T, backend string, bytesPerSec int) *slowLink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &slowLink{ln: ln, lim: rate.NewLimiter(rate.Limit(bytesPerSec), 16<<10)}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: backend})
	rp.FlushInterval = -1
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		rp.ServeHTTP(&pacedWriter{ResponseWriter: w, lim: s.lim, ctx: r.Context()}, r)
	})}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return s
}

func (s *slowLink) addr() string { return s.ln.Addr().String() }

type pacedWriter struct {
	http.ResponseWriter
	lim *rate.Limiter
	ctx context.Context
}

func (p *pacedWriter) Write(b []byte) (int, error) {
	written := 0
	for len(b) > 0 {
		n := min(len(b), p.lim.Burst())
		if err := p.lim.WaitN(p.ctx, n); err != nil {
			return written, err
		}
		m, err := p.ResponseWriter.Write(b[:n])
		written += m
		if err != nil {
			return written, err
		}
		if f, ok := p.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		b = b[n:]
	}
	return written, nil
}

// Flush lets the reverse proxy flush through the pacing.
func (p *pacedWriter) Flush() {
	if f, ok := p.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
