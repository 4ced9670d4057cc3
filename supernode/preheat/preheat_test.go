package preheat

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeSeeder completes a task after Seed when its gate is open.
type fakeSeeder struct {
	mu      sync.Mutex
	seeded  map[string]int // Seed calls per task
	headers map[string]http.Header
	blocks  int
	stall   bool              // never store anything
	fail    map[string]string // task → failure
}

func newFakeSeeder() *fakeSeeder {
	return &fakeSeeder{seeded: map[string]int{}, headers: map[string]http.Header{}, blocks: 4, fail: map[string]string{}}
}

func (f *fakeSeeder) Seed(_ context.Context, t Target) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seeded[t.TaskID]++
	f.headers[t.TaskID] = t.Header
	if msg := f.fail[t.TaskID]; msg != "" {
		return 0, errors.New(msg)
	}
	return 100, nil
}

func (f *fakeSeeder) Progress(id string) (int, int, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if msg := f.fail[id]; msg != "" {
		return 0, f.blocks, msg
	}
	if f.seeded[id] == 0 {
		return 0, 0, ""
	}
	if f.stall {
		return 1, f.blocks, ""
	}
	return f.blocks, f.blocks, ""
}

func (f *fakeSeeder) calls(id string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.seeded[id]
}

// fakeHosts: hosts hold a task fully once ordered.
type fakeHosts struct {
	mu       sync.Mutex
	live     []HostInfo
	orders   map[string]map[string]bool // host → task
	withdraw []string
	failHost string
}

func (f *fakeHosts) Live() []HostInfo { return f.live }
func (f *fakeHosts) Order(host, _ string, t Target) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.orders == nil {
		f.orders = map[string]map[string]bool{}
	}
	if f.orders[host] == nil {
		f.orders[host] = map[string]bool{}
	}
	f.orders[host][t.TaskID] = true
}
func (f *fakeHosts) Held(host, _, task string) (int, int, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if host == f.failHost {
		return 0, 4, "disk full"
	}
	if f.orders[host][task] {
		return 4, 4, ""
	}
	return 0, 0, ""
}
func (f *fakeHosts) Withdraw(job string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.withdraw = append(f.withdraw, job)
}

type fakeImages struct{ targets []Target }

func (f fakeImages) Resolve(_ context.Context, ref, _ string) ([]Target, error) {
	if ref == "missing" {
		return nil, errors.New("manifest unknown")
	}
	return f.targets, nil
}

func open(t *testing.T, dir string, s Seeder, h Hosts) *Manager {
	t.Helper()
	cfg := Config{Dir: dir, Seeder: s, Poll: 5 * time.Millisecond, Logger: slog.New(slog.DiscardHandler), Images: fakeImages{targets: []Target{
		{TaskID: "sha256-" + strings.Repeat("a", 64), URL: "http://reg/v2/app/blobs/sha256:" + strings.Repeat("a", 64), Digest: "sha256:" + strings.Repeat("a", 64)},
		{TaskID: "sha256-" + strings.Repeat("b", 64), URL: "http://reg/v2/app/blobs/sha256:" + strings.Repeat("b", 64), Digest: "sha256:" + strings.Repeat("b", 64)},
	}}}
	if h != nil {
		cfg.Hosts = h
	}
	m, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

func wait(t *testing.T, m *Manager, id string) Job {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	j, err := m.Wait(ctx, id)
	if err != nil {
		t.Fatalf("wait for %s: %v", id, err)
	}
	return j
}

func TestURLJobSucceedsAndKeepsNoCredential(t *testing.T) {
	dir := t.TempDir()
	s := newFakeSeeder()
	m := open(t, dir, s, nil)
	j, err := m.Submit(Request{Type: TypeURL, URL: "http://origin/file.bin", Headers: map[string]string{"Authorization": "Bearer MARKER-ph"}})
	if err != nil {
		t.Fatal(err)
	}
	j = wait(t, m, j.ID)
	if j.State != StateSucceeded || len(j.Layers) != 1 || j.Layers[0].Stored != 4 || j.Layers[0].State != StateSucceeded || j.Layers[0].Bytes != 100 {
		t.Fatalf("job %+v", j)
	}
	if got := s.headers[j.Layers[0].TaskID].Get("Authorization"); got != "Bearer MARKER-ph" {
		t.Fatalf("the seed got Authorization %q, want the request's", got)
	}
	b, err := os.ReadFile(filepath.Join(dir, j.ID+".json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "MARKER-ph") {
		t.Fatal("the credential was stored in the job file")
	}
	if l := m.List(); len(l) != 1 || l[0].ID != j.ID {
		t.Fatalf("list %+v", l)
	}
}

func TestJobResumesAfterRestart(t *testing.T) {
	dir := t.TempDir()
	s := newFakeSeeder()
	s.stall = true
	m := open(t, dir, s, nil)
	j, err := m.Submit(Request{Type: TypeImage, Image: "reg/app:v1"})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		g, _ := m.Get(j.ID)
		if len(g.Layers) == 2 && g.Layers[0].Stored == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job never started: %+v", g)
		}
		time.Sleep(5 * time.Millisecond)
	}
	m.Close() // the supernode stops mid-job

	s2 := newFakeSeeder()
	m2 := open(t, dir, s2, nil)
	g, err := m2.Get(j.ID)
	if err != nil {
		t.Fatalf("the job did not survive the restart: %v", err)
	}
	if g.Created.IsZero() || g.ID != j.ID {
		t.Fatalf("resumed job %+v", g)
	}
	g = wait(t, m2, j.ID)
	if g.State != StateSucceeded {
		t.Fatalf("resumed job %+v", g)
	}
	for _, l := range g.Layers {
		if s2.calls(l.TaskID) != 1 {
			t.Errorf("layer %s: %d seed calls after the restart, want 1", l.TaskID, s2.calls(l.TaskID))
		}
	}
}

func TestSeedFailureFailsTheJob(t *testing.T) {
	s := newFakeSeeder()
	m := open(t, t.TempDir(), s, nil)
	id := "sha256-" + strings.Repeat("b", 64)
	s.fail[id] = "origin answered 500 Internal Server Error"
	j, err := m.Submit(Request{Type: TypeImage, Image: "reg/app:v1"})
	if err != nil {
		t.Fatal(err)
	}
	j = wait(t, m, j.ID)
	if j.State != StateFailed || !strings.Contains(j.Error, "500") || !strings.Contains(j.Error, "1 of 2") {
		t.Fatalf("job %+v, want failed naming the 500", j)
	}
	j2, _ := m.Submit(Request{Type: TypeImage, Image: "missing"})
	if j2 = wait(t, m, j2.ID); j2.State != StateFailed || !strings.Contains(j2.Error, "manifest unknown") {
		t.Fatalf("unresolvable image: %+v", j2)
	}
}

func TestHostSelector(t *testing.T) {
	h := &fakeHosts{live: []HostInfo{{"a1", "a", "r1"}, {"a2", "a", "r2"}, {"b1", "b", "r1"}}}
	m := open(t, t.TempDir(), newFakeSeeder(), h)
	j, err := m.Submit(Request{Type: TypeImage, Image: "reg/app:v1", Hosts: &Selector{IDC: "a"}})
	if err != nil {
		t.Fatal(err)
	}
	j = wait(t, m, j.ID)
	if j.State != StateSucceeded || len(j.Hosts) != 2 {
		t.Fatalf("job %+v", j)
	}
	for _, hp := range j.Hosts {
		if hp.Done != 2 || hp.Total != 2 || hp.State != StateSucceeded || hp.Bytes != 200 {
			t.Errorf("host %+v, want 2/2", hp)
		}
	}
	if len(h.orders["b1"]) != 0 {
		t.Fatal("a host in idc b got orders")
	}
	if len(h.withdraw) != 1 {
		t.Fatalf("orders withdrawn %v times, want once", h.withdraw)
	}
	h.failHost = "a2"
	j, _ = m.Submit(Request{Type: TypeImage, Image: "reg/app:v1", Hosts: &Selector{Hosts: []string{"a2"}}})
	if j = wait(t, m, j.ID); j.State != StateFailed || !strings.Contains(j.Error, "disk full") {
		t.Fatalf("failing host: %+v", j)
	}
	j, _ = m.Submit(Request{Type: TypeImage, Image: "reg/app:v1", Hosts: &Selector{IDC: "zz"}})
	if j = wait(t, m, j.ID); j.State != StateFailed || !strings.Contains(j.Error, "matches no live host") {
		t.Fatalf("empty selection: %+v", j)
	}
}

func TestCancel(t *testing.T) {
	s := newFakeSeeder()
	s.stall = true
	m := open(t, t.TempDir(), s, nil)
	j, _ := m.Submit(Request{Type: TypeURL, URL: "http://origin/x"})
	c, err := m.Cancel(j.ID)
	if err != nil || c.State != StateCanceled {
		t.Fatalf("cancel: %+v, %v", c, err)
	}
	if g, _ := m.Get(j.ID); g.State != StateCanceled {
		t.Fatalf("after cancel: %+v", g)
	}
	if _, err := m.Cancel("nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("cancel unknown: %v", err)
	}
}

func TestValidate(t *testing.T) {
	d := "sha256:" + strings.Repeat("c", 64)
	for _, tc := range []struct {
		name string
		req  Request
		ok   bool
	}{
		{"url", Request{Type: TypeURL, URL: "https://o/x"}, true},
		{"url with digest", Request{Type: TypeURL, URL: "https://o/x", Digest: d}, true},
		{"url bad digest", Request{Type: TypeURL, URL: "https://o/x", Digest: "md9:zz"}, false},
		{"url relative", Request{Type: TypeURL, URL: "/x"}, false},
		{"url ftp", Request{Type: TypeURL, URL: "ftp://o/x"}, false},
		{"url bad header", Request{Type: TypeURL, URL: "http://o/x", Headers: map[string]string{"A B": "v"}}, false},
		{"image", Request{Type: TypeImage, Image: "reg/app:v1"}, true},
		{"image empty", Request{Type: TypeImage}, false},
		{"image and url", Request{Type: TypeImage, Image: "a", URL: "http://o/x"}, false},
		{"blobs", Request{Type: TypeBlobs, Blobs: []Target{{URL: "http://r/v2/a/blobs/" + d, Digest: d}}}, true},
		{"blobs bad digest", Request{Type: TypeBlobs, Blobs: []Target{{URL: "http://r/v2/a/blobs/x", Digest: "x"}}}, false},
		{"blobs none", Request{Type: TypeBlobs}, false},
		{"no type", Request{URL: "http://o/x"}, false},
		{"odd type", Request{Type: "torrent"}, false},
		{"empty selector", Request{Type: TypeURL, URL: "http://o/x", Hosts: &Selector{}}, false},
		{"selector", Request{Type: TypeURL, URL: "http://o/x", Hosts: &Selector{Rack: "r7"}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.req.Validate()
			if (err == nil) != tc.ok {
				t.Fatalf("Validate: %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
		})
	}
}

func TestSelectorMatches(t *testing.T) {
	for _, tc := range []struct {
		sel           Selector
		id, idc, rack string
		want          bool
	}{
		{Selector{IDC: "a"}, "h", "a", "r1", true},
		{Selector{IDC: "a"}, "h", "b", "r1", false},
		{Selector{IDC: "a", Rack: "r7"}, "h", "a", "r1", false},
		{Selector{IDC: "a", Rack: "r7"}, "h", "a", "r7", true},
		{Selector{Rack: "r7"}, "h", "b", "r7", true},
		{Selector{Hosts: []string{"h"}}, "h", "", "", true},
		{Selector{Hosts: []string{"h"}}, "g", "", "", false},
		{Selector{All: true}, "g", "", "", true},
		{Selector{}, "g", "a", "r", false},
	} {
		if got := tc.sel.Matches(tc.id, tc.idc, tc.rack); got != tc.want {
			t.Errorf("%+v.Matches(%s,%s,%s) = %v, want %v", tc.sel, tc.id, tc.idc, tc.rack, got, tc.want)
		}
	}
}

func TestCorruptJobFileSetAside(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ph-x.json"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	m := open(t, dir, newFakeSeeder(), nil)
	if len(m.List()) != 0 {
		t.Fatal("a corrupt job was loaded")
	}
	if _, err := os.Stat(filepath.Join(dir, "ph-x.json.bad")); err != nil {
		t.Fatalf("the corrupt file was not kept aside: %v", err)
	}
}
