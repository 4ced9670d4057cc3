package compress

import (
	"errors"
	"testing"
	"time"
)

func TestAskRule(t *testing.T) {
	tests := []struct {
		name      string
		mode      Mode
		idle      float64
		idleKnown bool
		wireNs    float64
		decodeNs  float64
		want      bool
	}{
		{"off never asks", Off, 1, true, 1000, 1, false},
		{"always asks, even busy", Always, 0, true, 0.1, 10, true},
		{"100 Mbit/s link, idle CPU", Auto, 0.9, true, 640, 3, true},
		{"busy CPU", Auto, 0.2, true, 640, 3, false},
		{"just enough headroom", Auto, MinIdle, true, 640, 3, true},
		{"idle not known yet", Auto, 0, false, 640, 3, true},
		{"link not measured yet", Auto, 0.9, true, 0, 3, true},
		{"loopback: the link outruns decoding", Auto, 0.9, true, 5, 3, false},
		{"10 Gbit/s with 8 transfers", Auto, 0.9, true, 6.4, 3, false},
		{"decoding not measured: assumed 5 ns/B", Auto, 0.9, true, 41, 0, true},
		{"decoding not measured, fast link", Auto, 0.9, true, 39, 0, false},
		{"slow decoder", Auto, 0.9, true, 640, 100, false},
	}
	for _, tc := range tests {
		if got := ask(tc.mode, tc.idle, tc.idleKnown, tc.wireNs, tc.decodeNs); got != tc.want {
			t.Errorf("%s: ask = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestParseMode(t *testing.T) {
	for s, want := range map[string]Mode{"auto": Auto, "always": Always, "off": Off} {
		m, err := ParseMode(s)
		if err != nil || m != want || m.String() != s {
			t.Errorf("ParseMode(%q) = %v, %v", s, m, err)
		}
	}
	for _, s := range []string{"", "on", "AUTO", "zstd"} {
		if _, err := ParseMode(s); err == nil {
			t.Errorf("ParseMode(%q) accepted", s)
		}
	}
	if Mode(7).String() != "mode(7)" {
		t.Error("unknown mode string")
	}
}

func TestHostAskFollowsMeasurements(t *testing.T) {
	c := newCodec(t)
	idle := 0.9
	h := NewHost(HostConfig{Mode: Auto, Codec: c, Idle: func() (float64, bool) { return idle, true }, Logger: quiet()})
	if !h.Ask() {
		t.Fatal("nothing measured yet: ask")
	}
	h.Transferred(1<<20, time.Millisecond) // ~1 ns/B: loopback
	if h.Ask() {
		t.Fatal("a link of 1 GB/s per transfer is not the bottleneck")
	}
	for range 40 {
		h.Transferred(1<<20, 700*time.Millisecond) // 100 Mbit/s shared by 8
	}
	if !h.Ask() {
		t.Fatal("a slow link is the bottleneck")
	}
	idle = 0.1
	if h.Ask() {
		t.Fatal("asked with a busy CPU")
	}
	if got := h.Stats().Asked; got != 2 {
		t.Fatalf("Asked = %d, want 2", got)
	}
}

func TestHostReceivedServedAndKept(t *testing.T) {
	c := newCodec(t)
	forms := openForms(t, t.TempDir(), c)
	var saved int64
	var wanted []int
	h := NewHost(HostConfig{Mode: Always, Codec: c, Forms: forms, Logger: quiet(),
		OnSaved: func(n int64) { saved += n }, OnWanted: func(_ string, idx int) { wanted = append(wanted, idx) }})
	b := makeBlock(t, c, 256<<10, 7)
	n := int64(len(b.plain))
	plain, err := h.Decode(nil, b.form, len(b.plain))
	if err != nil || string(plain) != string(b.plain) {
		t.Fatalf("Decode: %v", err)
	}
	if _, err := h.Decode(nil, b.form[:10], len(b.plain)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Decode of a torn form: %v", err)
	}
	h.Received("u1", 0, b.digest, n, b.form, true)  // kept
	h.Received("u1", 1, b.digest, n, b.form, false) // a sealed store: counted, not kept
	h.Received("u1", 2, b.digest, n, nil, true)     // plain
	st := h.Stats()
	if st.BlocksCompressed != 2 || st.BytesPlain != 3*n || st.BytesWire != n+2*int64(len(b.form)) || st.SavedBytes != saved || st.KeptForms != 1 || st.CorruptBodies != 1 {
		t.Fatalf("stats %+v (saved %d)", st, saved)
	}
	if forms.Lookup("u1", 0, b.digest) != Compressed || forms.Lookup("u1", 1, b.digest) != Unknown {
		t.Fatal("kept the wrong forms")
	}
	f, m, ok := h.Open("u1", 0, b.digest)
	if !ok || m != int64(len(b.form)) {
		t.Fatal("Open of a kept form")
	}
	f.Close()
	h.Served(n, m)
	if _, _, ok := h.Open("u1", 3, b.digest); ok {
		t.Fatal("opened a form never kept")
	}
	_ = forms.PutNotWorth("u1", 4, b.digest, n)
	h.Open("u1", 4, b.digest) // tried already: nobody is told
	if len(wanted) != 1 || wanted[0] != 3 {
		t.Fatalf("OnWanted for %v, want block 3 only", wanted)
	}
	if st := h.Stats(); st.BlocksServedCompressed != 1 || st.ServedSavedBytes != n-m || st.SideStore.Forms != 1 {
		t.Fatalf("serving stats %+v", st)
	}
}

func TestNilHost(t *testing.T) {
	if NewHost(HostConfig{Mode: Off, Codec: newCodec(t)}) != nil || NewHost(HostConfig{Mode: Auto}) != nil {
		t.Fatal("NewHost made a host for Off or without a codec")
	}
	var h *Host
	h.Transferred(1, time.Second)
	h.Received("u1", 0, nil, 1, []byte{1}, true)
	h.Served(1, 1)
	if h.Ask() || h.Mode() != Off || h.Forms() != nil || h.Stats().Mode != "off" {
		t.Fatal("a nil host is not inert")
	}
	if _, _, ok := h.Open("u1", 0, nil); ok {
		t.Fatal("a nil host opened a form")
	}
	if _, err := h.Decode(nil, []byte{1}, 1); !errors.Is(err, ErrCorrupt) {
		t.Fatal("a nil host decoded")
	}
}
