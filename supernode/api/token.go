package api

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
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
)

// TaskToken is the token of a task under key: hex HMAC-SHA256(key, taskID).
func TaskToken(key []byte, taskID string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(taskID))
	return hex.EncodeToString(m.Sum(nil))
}

// ValidToken reports whether token is the task's token under key, in constant time.
func ValidToken(key []byte, taskID, token string) bool {
	got, err := hex.DecodeString(token)
	if err != nil {
		return false
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(taskID))
	return hmac.Equal(got, m.Sum(nil))
}
