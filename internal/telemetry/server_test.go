package telemetry

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestServer(t *testing.T) {
	reg := NewRegistry("test", "v0.0.1")
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "dfly_test_things_total", Help: "things"})
	reg.MustRegister(c)
	c.Add(3)
	var notReady error = errors.New("supernode unreachable")
	s, err := Listen("127.0.0.1:0", Handler(reg, func(context.Context) error { return notReady }), nil)
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + s.Addr()

	code, body := get(t, base+"/metrics")
	if code != 200 || !strings.Contains(body, "dfly_test_things_total 3") ||
		!strings.Contains(body, `dfly_build_info{component="test",version="v0.0.1"} 1`) ||
		!strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics = %d\n%s", code, body)
	}
	if code, body := get(t, base+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, body := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, "supernode unreachable") {
		t.Errorf("/readyz not ready = %d %q", code, body)
	}
	notReady = nil
	if code, body := get(t, base+"/readyz"); code != 200 {
		t.Errorf("/readyz ready = %d %q", code, body)
	}
	if code, _ := get(t, base+"/nothing"); code != 404 {
		t.Errorf("/nothing = %d, want 404", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Errorf("Close: %v", err)
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Error("server still answers after Close")
	}
}

func TestListenErrors(t *testing.T) {
	if _, err := Listen("", Handler(NewRegistry("x", "y")), nil); err == nil {
		t.Error("empty address accepted")
	}
	s, err := Listen("127.0.0.1:0", Handler(NewRegistry("x", "y")), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	if _, err := Listen(s.Addr(), Handler(NewRegistry("x", "y")), nil); err == nil || !strings.Contains(err.Error(), "--metrics-listen") {
		t.Errorf("second listener on %s: %v, want an error naming --metrics-listen", s.Addr(), err)
	}
}
