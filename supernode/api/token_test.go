package api

import (
	"crypto/ed25519"
	"errors"
	"strings"
	"testing"
	"time"
)

func testKey(t testing.TB, seed byte) ed25519.PrivateKey {
	t.Helper()
	s := make([]byte, ed25519.SeedSize)
	for i := range s {
		s[i] = seed
	}
	return ed25519.NewKeyFromSeed(s)
}

func TestVerifyToken(t *testing.T) {
	k1, k2 := testKey(t, 1), testKey(t, 2)
	pub1, pub2 := k1.Public().(ed25519.PublicKey), k2.Public().(ed25519.PublicKey)
	now := time.Unix(1_700_000_000, 0)
	tok := SignToken(k1, TokenClaims{Task: "task", Host: "h1", Expires: now.Add(time.Hour)})
	expired := SignToken(k1, TokenClaims{Task: "task", Host: "h1", Expires: now.Add(-time.Second)})
	p := strings.Split(tok, ".")
	cases := []struct {
		name  string
		keys  []ed25519.PublicKey
		token string
		task  string
		want  error
	}{
		{"valid", []ed25519.PublicKey{pub1}, tok, "task", nil},
		{"valid under the previous key", []ed25519.PublicKey{pub2, pub1}, tok, "task", nil},
		{"other key", []ed25519.PublicKey{pub2}, tok, "task", ErrTokenSignature},
		{"no key", nil, tok, "task", ErrTokenSignature},
		{"other task", []ed25519.PublicKey{pub1}, tok, "other", ErrTokenTask},
		{"expired", []ed25519.PublicKey{pub1}, expired, "task", ErrTokenExpired},
		{"missing", []ed25519.PublicKey{pub1}, "", "task", ErrTokenMissing},
		{"old HMAC form", []ed25519.PublicKey{pub1}, strings.Repeat("ab", 32), "task", ErrTokenMalformed},
		{"bad version", []ed25519.PublicKey{pub1}, "v1." + p[1] + "." + p[2], "task", ErrTokenMalformed},
		{"two parts", []ed25519.PublicKey{pub1}, "v2." + p[1], "task", ErrTokenMalformed},
		{"bad base64", []ed25519.PublicKey{pub1}, "v2.%%%." + p[2], "task", ErrTokenMalformed},
		{"short signature", []ed25519.PublicKey{pub1}, "v2." + p[1] + ".AAAA", "task", ErrTokenMalformed},
		// A payload changed (another task or a later expiry) breaks the signature.
		{"forged payload", []ed25519.PublicKey{pub1}, "v2." + strings.Split(SignToken(k2, TokenClaims{Task: "task", Host: "h1", Expires: now.Add(time.Hour * 99)}), ".")[1] + "." + p[2], "task", ErrTokenSignature},
		{"huge", []ed25519.PublicKey{pub1}, strings.Repeat("a", 5000), "task", ErrTokenMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := VerifyToken(c.keys, c.token, c.task, now)
			if !errors.Is(err, c.want) {
				t.Fatalf("VerifyToken = %v, want %v", err, c.want)
			}
			if c.want == nil && (got.Host != "h1" || got.Task != "task" || !got.Expires.Equal(now.Add(time.Hour))) {
				t.Fatalf("claims %+v", got)
			}
		})
	}
}

// FuzzParseToken: tokens arrive from the network; parsing never panics and
// a token that verifies was signed by the key.
func FuzzParseToken(f *testing.F) {
	k := testKey(f, 3)
	pub := k.Public().(ed25519.PublicKey)
	f.Add(SignToken(k, TokenClaims{Task: "t", Host: "h", Expires: time.Unix(2e9, 0)}))
	f.Add("v2..")
	f.Add("v2.dA.AAAA")
	f.Add("")
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := ParseToken([]ed25519.PublicKey{pub}, tok)
		if err != nil {
			return
		}
		if again := SignToken(k, c); again != tok {
			// Same claims, deterministic Ed25519: a valid token is the one we sign.
			if _, err := ParseToken([]ed25519.PublicKey{pub}, again); err != nil {
				t.Fatalf("re-signed claims do not verify: %v", err)
			}
		}
	})
}
