package api

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The data plane's side of the protocol: every peer and the seed serve
// blocks at GET /blocks/{task_id}/{index}; requests carry a task token that
// the supernode issued (RegisterTaskResponse.token), responses the block's
// SHA-256.
const (
	// TokenHeader carries the task token on block requests.
	TokenHeader = "X-Dfly-Token"
	// DigestHeader carries the hex SHA-256 of the served block.
	DigestHeader = "X-Dfly-Digest"
	// HostSecretMetadata is the gRPC metadata key with which a host proves
	// that it is the host that first announced its host id (see the
	// supernode's host authentication).
	HostSecretMetadata = "dfly-host-secret"
)

// A task token says: the supernode allows Host to fetch blocks of Task
// until Expires. It is signed with the supernode's Ed25519 key; upload
// servers verify it with the public key the supernode hands out in
// AnnounceResponse.token_public_key, so a peer can check tokens but never
// mint one.
//
// Wire form: "v2." + base64url(task "\n" host "\n" unix-expiry) + "." +
// base64url(signature over tokenContext + the payload).
type TokenClaims struct {
	Task    string
	Host    string
	Expires time.Time
}

const (
	tokenVersion = "v2"
	tokenContext = "dfly task token v2\n"
	// maxTokenLen bounds what a verifier parses.
	maxTokenLen = 2048
)

// Errors of VerifyToken; upload servers answer 403 with their text.
var (
	ErrTokenMissing   = errors.New("no task token (" + TokenHeader + "); get one from the supernode's RegisterTask")
	ErrTokenMalformed = errors.New("malformed task token")
	ErrTokenSignature = errors.New("task token not signed by this swarm's supernode")
	ErrTokenExpired   = errors.New("task token expired; register the task again for a fresh one")
	ErrTokenTask      = errors.New("task token is for another task")
)

// SignToken returns the token for c under key.
func SignToken(key ed25519.PrivateKey, c TokenClaims) string {
	payload := c.Task + "\n" + c.Host + "\n" + strconv.FormatInt(c.Expires.Unix(), 10)
	sig := ed25519.Sign(key, []byte(tokenContext+payload))
	enc := base64.RawURLEncoding
	return tokenVersion + "." + enc.EncodeToString([]byte(payload)) + "." + enc.EncodeToString(sig)
}

// ParseToken checks a token's form and signature under any of keys and
// returns its claims (expiry and task are not checked; see VerifyToken).
func ParseToken(keys []ed25519.PublicKey, token string) (TokenClaims, error) {
	if token == "" {
		return TokenClaims{}, ErrTokenMissing
	}
	if len(token) > maxTokenLen {
		return TokenClaims{}, fmt.Errorf("%w: longer than %d bytes", ErrTokenMalformed, maxTokenLen)
	}
	ver, rest, ok := strings.Cut(token, ".")
	if !ok || ver != tokenVersion {
		return TokenClaims{}, fmt.Errorf("%w: want version %s", ErrTokenMalformed, tokenVersion)
	}
	p64, s64, ok := strings.Cut(rest, ".")
	if !ok {
		return TokenClaims{}, fmt.Errorf("%w: want three dot-separated parts", ErrTokenMalformed)
	}
	enc := base64.RawURLEncoding
	payload, err := enc.DecodeString(p64)
	if err != nil {
		return TokenClaims{}, fmt.Errorf("%w: payload: %v", ErrTokenMalformed, err)
	}
	sig, err := enc.DecodeString(s64)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return TokenClaims{}, fmt.Errorf("%w: signature", ErrTokenMalformed)
	}
	parts := strings.Split(string(payload), "\n")
	if len(parts) != 3 || parts[0] == "" {
		return TokenClaims{}, fmt.Errorf("%w: payload has %d fields, want task, host, expiry", ErrTokenMalformed, len(parts))
	}
	exp, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil {
		return TokenClaims{}, fmt.Errorf("%w: expiry %q", ErrTokenMalformed, parts[2])
	}
	signed := false
	for _, k := range keys {
		if len(k) == ed25519.PublicKeySize && ed25519.Verify(k, []byte(tokenContext+string(payload)), sig) {
			signed = true
			break
		}
	}
	if !signed {
		return TokenClaims{}, ErrTokenSignature
	}
	return TokenClaims{Task: parts[0], Host: parts[1], Expires: time.Unix(exp, 0)}, nil
}

// VerifyToken checks that token is signed by one of keys, names task and
// has not expired at now.
func VerifyToken(keys []ed25519.PublicKey, token, task string, now time.Time) (TokenClaims, error) {
	c, err := ParseToken(keys, token)
	if err != nil {
		return c, err
	}
	if c.Task != task {
		return c, ErrTokenTask
	}
	if !now.Before(c.Expires) {
		return c, fmt.Errorf("%w (expired %s)", ErrTokenExpired, c.Expires.UTC().Format(time.RFC3339))
	}
	return c, nil
}
