package api

import "testing"

func TestTaskToken(t *testing.T) {
	k1, k2 := []byte("key-one"), []byte("key-two")
	tok := TaskToken(k1, "task")
	if len(tok) != 64 || tok != TaskToken(k1, "task") {
		t.Fatalf("token %q not a stable hex HMAC-SHA256", tok)
	}
	cases := []struct {
		key         []byte
		task, token string
		ok          bool
	}{
		{k1, "task", tok, true},
		{k2, "task", tok, false},
		{k1, "other", tok, false},
		{k1, "task", "zz", false},
		{k1, "task", "", false},
		{k1, "task", tok[:62], false},
	}
	for _, c := range cases {
		if got := ValidToken(c.key, c.task, c.token); got != c.ok {
			t.Errorf("ValidToken(%s, %s, %q) = %v, want %v", c.key, c.task, c.token, got, c.ok)
		}
	}
}
