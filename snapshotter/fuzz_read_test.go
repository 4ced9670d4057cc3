package snapshotter

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/dfly-p2p/dfly/peer"
)

// FuzzServeBlocksQuery: the layer servers' /read query, whatever it holds,
// is a 400 (malformed, negative, or over maxReadLen) or a 404 (no such open
// task) from a RemoteFS with no task open — never a panic, never a buffer
// sized by an unchecked length.
func FuzzServeBlocksQuery(f *testing.F) {
	f.Add("task=sha256-aa&off=0&len=4096")
	f.Add("task=x&off=-1&len=1")
	f.Add("task=x&off=0&len=99999999999")
	f.Add("off=1&len=1&len=2")
	f.Add("%zz")
	fs := &RemoteFS{tasks: map[string]*peer.Task{}}
	f.Fuzz(func(t *testing.T, rawQuery string) {
		r := httptest.NewRequest(http.MethodGet, "/read", nil)
		r.URL.RawQuery = rawQuery
		w := httptest.NewRecorder()
		fs.serveBlocks(w, r)
		switch w.Code {
		case http.StatusBadRequest, http.StatusNotFound:
		default:
			t.Fatalf("query %q: HTTP %d", rawQuery, w.Code)
		}
		if w.Code == http.StatusNotFound {
			q, _ := url.ParseQuery(rawQuery)
			if q.Get("off") == "" || q.Get("len") == "" {
				t.Fatalf("query %q without off/len passed validation", rawQuery)
			}
		}
	})
}
