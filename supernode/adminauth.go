package supernode

import (
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

// AdminTokenFile is the file in the supernode's store directory that holds
// the bearer token for its operator endpoints (GET /debug/state, the
// preheat API), made at the first start (mode 0600, so only the
// supernode's user can read it).
const AdminTokenFile = "admin.token"

// adminGuard admits an operator request when it comes from the supernode's
// own host (a loopback address) or carries "Authorization: Bearer TOKEN"
// with the store's admin token. /debug/state names every task's origin URL
// (a signed URL is a credential) and every host, and the preheat API makes
// the seed and the hosts fetch, so servers that peers reach from anywhere
// must not serve them to anyone who asks.
func adminGuard(token string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fromLoopback(r) || validBearer(r.Header.Get("Authorization"), token) {
			next.ServeHTTP(w, r)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="dfly-supernode"`)
		http.Error(w, "operator endpoints (debug state, preheat) need the supernode's host (loopback) "+
			"or send Authorization: Bearer <token from "+AdminTokenFile+" in the supernode's --store>", http.StatusUnauthorized)
	})
}

// fromLoopback reports whether the request's peer address is a loopback address.
func fromLoopback(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// validBearer reports whether the Authorization header value is "Bearer token"
// (compared in constant time; an empty token admits nobody).
func validBearer(header, token string) bool {
	got, ok := strings.CutPrefix(header, "Bearer ")
	if !ok || token == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(token)) == 1
}

// LoadOrCreateAdminToken returns the token in path, creating a random one
// (mode 0600, written atomically) when the file does not exist.
func LoadOrCreateAdminToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		tok := strings.TrimSpace(string(b))
		if len(tok) < 16 {
			return "", fmt.Errorf("admin token %s is too short (%d characters, want at least 16); delete it to make a new one", path, len(tok))
		}
		return tok, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("read admin token: %w", err)
	}
	tok := rand.Text()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", fmt.Errorf("create directory for admin token: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(tok+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write admin token: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("install admin token: %w", err)
	}
	return tok, nil
}
