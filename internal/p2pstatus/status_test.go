package p2pstatus

import (
	"testing"
	"time"
)

func TestParseWindow(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
		bad  bool
	}{
		{"", DefaultWindow, false},
		{"5m", 5 * time.Minute, false},
		{"30s", 30 * time.Second, false},
		{"1s", MinWindow, false},
		{"24h", MaxWindow, false},
		{"0s", 0, true},
		{"-5m", 0, true},
		{"five", 0, true},
		{"5", 0, true},
	} {
		got, err := ParseWindow(tc.in)
		if (err != nil) != tc.bad || got != tc.want {
			t.Errorf("ParseWindow(%q) = %v, %v; want %v (error %v)", tc.in, got, err, tc.want, tc.bad)
		}
	}
}

func TestBytes(t *testing.T) {
	b := Bytes{Local: 7, Origin: 10, Seed: 30, Peers: 60}
	if b.Fetched() != 100 || b.Swarm() != 90 {
		t.Errorf("Fetched %d Swarm %d, want 100 90", b.Fetched(), b.Swarm())
	}
	if got := b.Plus(Bytes{Local: 1, Origin: 2, Seed: 3, Peers: 4}); got != (Bytes{Local: 8, Origin: 12, Seed: 33, Peers: 64}) {
		t.Errorf("Plus = %+v", got)
	}
	if s := b.Share(); s != (Share{Peers: 0.6, Seed: 0.3, Origin: 0.1, Swarm: 0.9}) {
		t.Errorf("Share = %+v", s)
	}
	if s := (Bytes{Local: 5}).Share(); s != (Share{}) {
		t.Errorf("Share of nothing fetched = %+v, want zeros", s)
	}
}

func TestRedactURLs(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain words", "plain words"},
		{"GET https://reg.example/v2/x/blobs/sha256:ab: HTTP 404", "GET https://reg.example/v2/x/blobs/sha256:ab: HTTP 404"},
		{"download https://s3.example/b/k?X-Amz-Signature=secret&X-Amz-Credential=c: HTTP 403",
			"download https://s3.example/b/k: HTTP 403"},
		{`fetch "http://user:pw@origin/f#frag" failed`, `fetch "http://origin/f" failed`},
		{"two http://a/x?t=1 and https://b/y?u=2", "two http://a/x and https://b/y"},
		{"no scheme origin/f?sig=1", "no scheme origin/f?sig=1"},
		{"bad http://[::1/x?y", "bad [URL]"},
	} {
		if got := RedactURLs(tc.in); got != tc.want {
			t.Errorf("RedactURLs(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
