package supernode

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAdminGuard(t *testing.T) {
	const token = "s3cret-debug-token-0123456789"
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("SECRET-STATE")) })
	h := adminGuard(token, ok)
	for _, tc := range []struct {
		name, remote, auth string
		want               int
	}{
		{"loopback v4", "127.0.0.1:5000", "", 200},
		{"loopback v6", "[::1]:5000", "", 200},
		{"remote without token", "10.0.0.7:5000", "", 401},
		{"remote wrong token", "10.0.0.7:5000", "Bearer nope", 401},
		{"remote token prefix", "10.0.0.7:5000", "Bearer " + token[:10], 401},
		{"remote basic auth", "10.0.0.7:5000", "Basic " + token, 401},
		{"remote right token", "10.0.0.7:5000", "Bearer " + token, 200},
		{"garbage remote addr", "nonsense", "", 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/debug/state", nil)
			r.RemoteAddr = tc.remote
			if tc.auth != "" {
				r.Header.Set("Authorization", tc.auth)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if w.Code != tc.want {
				t.Fatalf("status %d, want %d (body %q)", w.Code, tc.want, w.Body.String())
			}
			if tc.want == 401 && strings.Contains(w.Body.String(), "SECRET-STATE") {
				t.Fatalf("refusal leaked the body: %q", w.Body.String())
			}
			if tc.want == 401 && !strings.Contains(w.Body.String(), AdminTokenFile) {
				t.Errorf("refusal does not say where the token is: %q", w.Body.String())
			}
		})
	}
	if validBearer("Bearer ", "") {
		t.Error("an empty token admits callers")
	}
}

func TestLoadOrCreateAdminToken(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sub", AdminTokenFile)
	a, err := LoadOrCreateAdminToken(p)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	b, err := LoadOrCreateAdminToken(p)
	if err != nil || a != b {
		t.Fatalf("second load: %q, %v; want the same token %q", b, err, a)
	}
	if err := os.WriteFile(p, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateAdminToken(p); err == nil || !strings.Contains(err.Error(), "too short") {
		t.Fatalf("short token: %v, want a clear error", err)
	}
}
