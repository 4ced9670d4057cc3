package snapshotter_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dfly-p2p/dfly/snapshotter"
)

// A real pull runs in integration/snapshotter against containerd; here the errors a
// user sees before containerd is involved.
func TestPullErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, ref, addr, want string
	}{
		{"no containerd socket", "localhost:5000/a:1", filepath.Join(dir, "none.sock"), "is containerd running"},
		{"bad reference", "UPPER CASE", filepath.Join(dir, "none.sock"), "parse image reference"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := snapshotter.Pull(context.Background(), tc.ref, &snapshotter.Resolver{}, snapshotter.PullOptions{Address: tc.addr})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Pull error = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}
