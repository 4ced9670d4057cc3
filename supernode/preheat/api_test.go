package preheat

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestAPI(t *testing.T) {
	m := open(t, t.TempDir(), newFakeSeeder(), nil)
	guard := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Header.Get("Authorization") != "Bearer admin" {
				http.Error(w, "no", http.StatusUnauthorized)
				return
			}
			h.ServeHTTP(w, r)
		})
	}
	srv := httptest.NewServer(m.Handler(APIConfig{Auth: guard, NotifySecret: "s3cret"}))
	defer srv.Close()
	do := func(method, path, auth, body string) (int, string) {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if c, _ := do("POST", "/api/v1/preheat", "", `{"type":"url","url":"http://o/x"}`); c != 401 {
		t.Fatalf("submit without the admin token: %d", c)
	}
	c, b := do("POST", "/api/v1/preheat", "Bearer admin", `{"type":"url","url":"http://o/x"}`)
	if c != 202 {
		t.Fatalf("submit: %d %s", c, b)
	}
	var j Job
	if err := json.Unmarshal([]byte(b), &j); err != nil || j.ID == "" {
		t.Fatalf("submit answer %s: %v", b, err)
	}
	wait(t, m, j.ID)
	if c, b := do("GET", "/api/v1/preheat/"+j.ID, "Bearer admin", ""); c != 200 || !strings.Contains(b, `"succeeded"`) {
		t.Fatalf("get: %d %s", c, b)
	}
	if c, b := do("GET", "/api/v1/preheat", "Bearer admin", ""); c != 200 || !strings.Contains(b, j.ID) {
		t.Fatalf("list: %d %s", c, b)
	}
	for _, tc := range []struct {
		method, path, body string
		want               int
	}{
		{"POST", "/api/v1/preheat", `{"type":"url"}`, 400},
		{"POST", "/api/v1/preheat", `{"type":"url","url":"http://o/x","bogus":1}`, 400},
		{"POST", "/api/v1/preheat", `not json`, 400},
		{"GET", "/api/v1/preheat/ph-nope", "", 404},
		{"DELETE", "/api/v1/preheat/ph-nope", "", 404},
		{"DELETE", "/api/v1/preheat/" + j.ID, "", 200},
	} {
		if c, b := do(tc.method, tc.path, "Bearer admin", tc.body); c != tc.want || !strings.HasPrefix(strings.TrimSpace(b), "{") && !strings.HasPrefix(strings.TrimSpace(b), "[") {
			t.Errorf("%s %s %s: %d %s, want %d and JSON", tc.method, tc.path, tc.body, c, b, tc.want)
		}
	}

	env := `{"events":[{"action":"push","target":{"mediaType":"application/octet-stream","digest":"sha256:` + strings.Repeat("d", 64) +
		`","size":10,"repository":"app","url":"http://127.0.0.1:5000/v2/app/blobs/sha256:` + strings.Repeat("d", 64) + `"}}]}`
	for _, auth := range []string{"", "Bearer wrong", "Bearer admin"} {
		if c, _ := do("POST", "/api/v1/notifications/registry", auth, env); c != 401 {
			t.Errorf("notification with %q: %d, want 401", auth, c)
		}
	}
	for _, auth := range []string{"Bearer s3cret", "s3cret"} {
		c, b := do("POST", "/api/v1/notifications/registry", auth, env)
		if c != 200 || !strings.Contains(b, `"ph-`) {
			t.Errorf("notification with %q: %d %s", auth, c, b)
		}
	}
	if c, _ := do("POST", "/api/v1/notifications/harbor", "Bearer s3cret", `{"type":"PUSH_ARTIFACT"`); c != 400 {
		t.Errorf("truncated harbor payload: %d, want 400", c)
	}
	m2 := open(t, t.TempDir(), newFakeSeeder(), nil)
	srv2 := httptest.NewServer(m2.Handler(APIConfig{}))
	defer srv2.Close()
	req, _ := http.NewRequest("POST", srv2.URL+"/api/v1/notifications/registry", strings.NewReader(env))
	req.Header.Set("Authorization", "Bearer ")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 401 {
		t.Fatalf("no secret configured: %v %v, want 401", resp, err)
	}
}
