package preheat

import (
	"strings"
	"testing"
)

func TestParseRegistryEnvelope(t *testing.T) {
	d1, d2, dm := "sha256:"+strings.Repeat("1", 64), "sha256:"+strings.Repeat("2", 64), "sha256:"+strings.Repeat("9", 64)
	blob := func(d string) string {
		return `{"action":"push","target":{"mediaType":"application/octet-stream","digest":"` + d + `","length":5,"repository":"app","url":"http://reg:5000/v2/app/blobs/` + d + `"}}`
	}
	man := `{"action":"push","target":{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"` + dm + `","repository":"team/app","url":"http://reg:5000/v2/team/app/manifests/` + dm + `","tag":"v1"}}`
	pull := `{"action":"pull","target":{"digest":"` + d1 + `","url":"http://reg:5000/v2/app/blobs/` + d1 + `"}}`
	reqs, ignored, err := ParseRegistryEnvelope([]byte(`{"events":[` + blob(d1) + `,` + blob(d2) + `,` + blob(d1) + `,` + man + `,` + pull + `]}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(reqs) != 2 || ignored != 2 {
		t.Fatalf("reqs %+v ignored %d, want a blobs job and an image job, 2 ignored (a duplicate and a pull)", reqs, ignored)
	}
	if reqs[0].Type != TypeBlobs || len(reqs[0].Blobs) != 2 || reqs[0].Blobs[0].Size != 5 {
		t.Fatalf("blobs job %+v", reqs[0])
	}
	if reqs[1].Type != TypeImage || reqs[1].Image != "reg:5000/team/app@"+dm {
		t.Fatalf("image job %+v", reqs[1])
	}
	for _, r := range reqs {
		if err := r.Validate(); err != nil {
			t.Fatalf("parsed request does not validate: %v", err)
		}
	}
	for _, bad := range []string{`[]`, `{"events":`, `"x"`} {
		if _, _, err := ParseRegistryEnvelope([]byte(bad)); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
	if reqs, ign, err := ParseRegistryEnvelope([]byte(`{"events":[{"action":"push","target":{"digest":"nope","url":"http://r/v2/a/blobs/nope"}}]}`)); err != nil || len(reqs) != 0 || ign != 1 {
		t.Fatalf("bad digest: %v %d %v", reqs, ign, err)
	}
}

func TestParseHarborWebhook(t *testing.T) {
	d := "sha256:" + strings.Repeat("7", 64)
	for _, tc := range []struct {
		name, body string
		want       []string
		ignored    int
	}{
		{"by digest", `{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"digest":"` + d + `","tag":"v1","resource_url":"harbor.example.com/library/app:v1"}],"repository":{"repo_full_name":"library/app"}}}`,
			[]string{"harbor.example.com/library/app@" + d}, 0},
		{"digest, no repo name", `{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"digest":"` + d + `","resource_url":"h:8443/p/a:v2"}]}}`,
			[]string{"h:8443/p/a@" + d}, 0},
		{"tag only", `{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"resource_url":"h/p/a:v3"}]}}`, []string{"h/p/a:v3"}, 0},
		{"pull event", `{"type":"PULL_ARTIFACT","event_data":{"resources":[{"resource_url":"h/p/a:v3"}]}}`, nil, 2},
		{"bad digest", `{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"digest":"x","resource_url":"h/p/a:v3"}]}}`, nil, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reqs, ign, err := ParseHarborWebhook([]byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range reqs {
				got = append(got, r.Image)
				if r.Type != TypeImage {
					t.Errorf("type %q", r.Type)
				}
			}
			if strings.Join(got, " ") != strings.Join(tc.want, " ") || ign != tc.ignored {
				t.Fatalf("got %v ignored %d, want %v ignored %d", got, ign, tc.want, tc.ignored)
			}
		})
	}
}

// FuzzNotifications: whatever a sender posts, the parsers never panic and
// every request they produce validates (so Submit never sees garbage).
func FuzzNotifications(f *testing.F) {
	d := "sha256:" + strings.Repeat("1", 64)
	f.Add([]byte(`{"events":[{"action":"push","target":{"digest":"` + d + `","url":"http://r/v2/a/blobs/` + d + `","repository":"a"}}]}`))
	f.Add([]byte(`{"events":[{"action":"push","target":{"digest":"` + d + `","url":"http://r/v2/a/manifests/` + d + `","repository":"a"}}]}`))
	f.Add([]byte(`{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"digest":"` + d + `","resource_url":"h/p/a:v1"}]}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, parse := range []func([]byte) ([]Request, int, error){ParseRegistryEnvelope, ParseHarborWebhook} {
			reqs, ignored, err := parse(body)
			if err != nil {
				if len(reqs) != 0 {
					t.Fatal("requests with an error")
				}
				continue
			}
			if ignored < 0 {
				t.Fatal("negative ignored count")
			}
			for _, r := range reqs {
				if r.Type == TypeImage {
					if r.Image == "" {
						t.Fatal("image request without an image")
					}
					continue
				}
				if err := r.Validate(); err != nil {
					t.Fatalf("parsed %+v does not validate: %v", r, err)
				}
			}
		}
	})
}

// FuzzDecodeJob: a job file on disk, whatever its bytes, either decodes
// into a job run can drive or is refused.
func FuzzDecodeJob(f *testing.F) {
	f.Add([]byte(`{"id":"ph-1","state":"running","request":{"type":"url","url":"http://o/x"}}`))
	f.Add([]byte(`{"id":"ph-1","state":"succeeded","request":{}}`))
	f.Add([]byte(`{"id":"../x","state":"queued"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		j, err := decodeJob(b)
		if err != nil {
			return
		}
		if j.ID == "" || strings.ContainsAny(j.ID, "/\\") {
			t.Fatalf("accepted job id %q", j.ID)
		}
		if !j.Done() {
			r := j.Request
			if err := r.Validate(); err != nil {
				t.Fatalf("accepted an unfinished job that does not validate: %v", err)
			}
		}
	})
}
