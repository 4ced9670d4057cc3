package supernode

import (
	"context"
	"crypto/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/integration/origin"
	"github.com/dfly-p2p/dfly/internal/tlsconf"
	"github.com/dfly-p2p/dfly/internal/tlsconf/tlstest"
	"github.com/dfly-p2p/dfly/supernode/api"
)

func startTLSSupernode(t *testing.T, r *tlsconf.Reloader) *Supernode {
	t.Helper()
	sn, err := Start(Config{StoreDir: t.TempDir(), GRPCListen: "127.0.0.1:0", UploadListen: "127.0.0.1:0",
		Source: testSource(), Logger: testLogger(), SyncWait: 2 * time.Second, TLS: r})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	return sn
}

// announceWith calls Announce over a connection with creds.
func announceWith(sn *Supernode, creds grpc.DialOption) error {
	cc, err := grpc.NewClient(sn.GRPCAddr(), creds)
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, api.HostSecretMetadata, rand.Text())
	_, err = api.NewSchedulerClient(cc).Announce(ctx, &api.AnnounceRequest{Host: &api.Host{Id: "h", UploadAddr: "h.invalid:1"}})
	return err
}

// TestTLSLinks: with Config.TLS (mTLS) the control plane and the seed's
// upload server speak only TLS and only to clients with a certificate of
// the CA.
func TestTLSLinks(t *testing.T) {
	dir := t.TempDir()
	pki := tlstest.New(t, dir)
	sn := startTLSSupernode(t, pki.Reloader("supernode", true))
	client := pki.Reloader("client", false)
	anon, err := tlsconf.Load(tlsconf.Options{CAFile: pki.CAFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	other := tlstest.New(t, t.TempDir()).Reloader("intruder", false)
	for _, tc := range []struct {
		name  string
		creds grpc.DialOption
		ok    bool
	}{
		{"plain gRPC", grpc.WithTransportCredentials(insecure.NewCredentials()), false},
		{"TLS without a client certificate", grpc.WithTransportCredentials(anon.ClientCredentials(sn.GRPCAddr())), false},
		{"certificate of another CA", grpc.WithTransportCredentials(other.ClientCredentials(sn.GRPCAddr())), false},
		{"mTLS", grpc.WithTransportCredentials(client.ClientCredentials(sn.GRPCAddr())), true},
	} {
		if err := announceWith(sn, tc.creds); (err == nil) != tc.ok {
			t.Errorf("%s: Announce error %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	if resp, err := http.Get("http://" + sn.UploadAddr() + "/debug/state"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("plain HTTP to the TLS upload server answered 200")
		}
	}
	tr := &http.Transport{DialTLSContext: client.DialTLS(&net.Dialer{Timeout: 5 * time.Second})}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + sn.UploadAddr() + "/debug/state")
	if err != nil {
		t.Fatalf("https with a client certificate: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("https /debug/state: HTTP %d", resp.StatusCode)
	}
}

func TestTLSNeedsCertificate(t *testing.T) {
	pki := tlstest.New(t, t.TempDir())
	anon, err := tlsconf.Load(tlsconf.Options{CAFile: pki.CAFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Start(Config{StoreDir: t.TempDir(), GRPCListen: "127.0.0.1:0", UploadListen: "127.0.0.1:0", Logger: testLogger(), TLS: anon})
	if err == nil || !strings.Contains(err.Error(), "--tls-cert") {
		t.Fatalf("Start with TLS but no certificate: %v", err)
	}
}

// TestTLSAccusationCheck: the supernode checks an accused parent over
// HTTPS, presenting its certificate to an upload server that requires one.
func TestTLSAccusationCheck(t *testing.T) {
	pki := tlstest.New(t, t.TempDir())
	sn := startTLSSupernode(t, pki.Reloader("supernode", true))
	o := startOrigin(t)
	content := origin.Content{Size: 2 << 20, Seed: 9}
	url := o.Add("f.bin", content)
	id, _ := blockstore.TaskIDForURL(url, "", "")

	liar := httptest.NewUnstartedServer(blockServer(t, content, 1<<20, true).Config.Handler)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	liar.Listener = pki.Reloader("liar", true).NewListener(ln)
	liar.Start()
	t.Cleanup(liar.Close)

	cc, err := grpc.NewClient(sn.GRPCAddr(), grpc.WithTransportCredentials(pki.Reloader("peers", false).ClientCredentials(sn.GRPCAddr())),
		grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, o ...grpc.CallOption) error {
			return invoker(metadata.AppendToOutgoingContext(ctx, api.HostSecretMetadata, "secret-of-the-test-peers"), method, req, reply, cc, o...)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	c := api.NewSchedulerClient(cc)
	lp := newPeer(t, c, "liar", "")
	lp.host.UploadAddr = ln.Addr().String()
	lp.announce(false)
	lp.register(id, url)
	waitSeedComplete(t, sn, id)
	lp.sync(&api.SyncRequest{TaskId: id, Have: []int32{0, 1}})
	reporter := newPeer(t, c, "reporter", "")
	reporter.announce(false)
	reporter.register(id, url)
	reporter.sync(&api.SyncRequest{TaskId: id, Results: []*api.BlockResult{{Block: 0, ParentId: "liar", BadDigest: true}}})
	for deadline := time.Now().Add(20 * time.Second); !sn.Scheduler().Blocked(id, "liar"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the liar behind TLS was not blocked: the supernode's check did not reach it")
		}
	}
}

// TestAPIListenerForRegistries: in a mutual-TLS swarm, --api-listen serves
// the notification endpoints over TLS without client certificates (a
// registry has none of the swarm's), still behind the notification secret,
// while the upload server keeps refusing such clients.
func TestAPIListenerForRegistries(t *testing.T) {
	pki := tlstest.New(t, t.TempDir())
	sn, err := Start(Config{
		StoreDir: t.TempDir(), GRPCListen: "127.0.0.1:0", UploadListen: "127.0.0.1:0", APIListen: "127.0.0.1:0",
		Source: testSource(), Logger: testLogger(), TLS: pki.Reloader("supernode", true),
		Preheat: PreheatConfig{NotifySecret: "notify-secret-0123456789"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sn.Close()
	if sn.APIAddr() == "" {
		t.Fatal("no API listener")
	}
	anon, err := tlsconf.Load(tlsconf.Options{CAFile: pki.CAFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialTLSContext: anon.DialTLS(&net.Dialer{})}}
	post := func(addr, secret string) (int, error) {
		req, _ := http.NewRequest(http.MethodPost, "https://"+addr+"/api/v1/notifications/registry", strings.NewReader(`{"events":[]}`))
		req.Header.Set("Authorization", "Bearer "+secret)
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if code, err := post(sn.APIAddr(), "notify-secret-0123456789"); err != nil || code != http.StatusOK {
		t.Fatalf("notification on the API listener without a client certificate: %d, %v; want 200", code, err)
	}
	if code, err := post(sn.APIAddr(), "wrong"); err != nil || code != http.StatusUnauthorized {
		t.Fatalf("notification with a wrong secret: %d, %v; want 401", code, err)
	}
	if _, err := post(sn.UploadAddr(), "notify-secret-0123456789"); err == nil {
		t.Fatal("the mutual-TLS upload server accepted a client without a certificate")
	}
}
