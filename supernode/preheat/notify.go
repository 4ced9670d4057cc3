package preheat

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"

	"github.com/dfly-p2p/dfly/blockstore"
)

// registryEnvelope is the part of distribution's notification envelope
// (application/vnd.docker.distribution.events.v1+json) preheat reads.
type registryEnvelope struct {
	Events []struct {
		Action string `json:"action"`
		Target struct {
			MediaType  string `json:"mediaType"`
			Digest     string `json:"digest"`
			Size       int64  `json:"size"`
			Length     int64  `json:"length"`
			Repository string `json:"repository"`
			URL        string `json:"url"`
			Tag        string `json:"tag"`
		} `json:"target"`
	} `json:"events"`
}

// ParseRegistryEnvelope turns a registry's notification envelope into
// preheat requests: the blobs its push events name become one blobs job
// (each layer is seeded as soon as its push arrives); a pushed manifest
// becomes an image job (it names blobs the registry mounted from another
// repository without a push, and the manifest's platforms). Pulls,
// deletes and events without a usable URL are ignored (counted).
func ParseRegistryEnvelope(body []byte) (reqs []Request, ignored int, err error) {
	var env registryEnvelope
	if err := json.Unmarshal(body, &env); err != nil {
		return nil, 0, fmt.Errorf("not a registry notification envelope: %w: %w", err, ErrInvalid)
	}
	var blobs []Target
	seen := map[string]bool{}
	for _, ev := range env.Events {
		t := ev.Target
		if ev.Action != "push" || t.URL == "" || t.Digest == "" {
			ignored++
			continue
		}
		u, err := url.Parse(t.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			ignored++
			continue
		}
		switch {
		case strings.Contains(u.Path, "/blobs/"):
			if _, err := blockstore.TaskIDForDigest(t.Digest); err != nil || seen[t.Digest] {
				ignored++
				continue
			}
			seen[t.Digest] = true
			size := t.Size
			if size == 0 {
				size = t.Length
			}
			blobs = append(blobs, Target{URL: t.URL, Digest: t.Digest, Size: size})
		case strings.Contains(u.Path, "/manifests/") && t.Repository != "":
			reqs = append(reqs, Request{Type: TypeImage, Image: u.Host + "/" + t.Repository + "@" + t.Digest})
		default:
			ignored++
		}
	}
	if len(blobs) > 0 {
		reqs = append([]Request{{Type: TypeBlobs, Blobs: blobs}}, reqs...)
	}
	return reqs, ignored, nil
}

// harborWebhook is the part of Harbor's webhook payload preheat reads.
type harborWebhook struct {
	Type      string `json:"type"`
	EventData struct {
		Resources []struct {
			Digest      string `json:"digest"`
			Tag         string `json:"tag"`
			ResourceURL string `json:"resource_url"`
		} `json:"resources"`
		Repository struct {
			RepoFullName string `json:"repo_full_name"`
		} `json:"repository"`
	} `json:"event_data"`
}

// ParseHarborWebhook turns a Harbor PUSH_ARTIFACT webhook into one image
// job per pushed artifact (by digest when Harbor gives it). Other event
// types are ignored.
func ParseHarborWebhook(body []byte) (reqs []Request, ignored int, err error) {
	var wh harborWebhook
	if err := json.Unmarshal(body, &wh); err != nil {
		return nil, 0, fmt.Errorf("not a Harbor webhook payload: %w: %w", err, ErrInvalid)
	}
	if wh.Type != "PUSH_ARTIFACT" && wh.Type != "pushImage" {
		return nil, len(wh.EventData.Resources) + 1, nil
	}
	for _, r := range wh.EventData.Resources {
		ref := r.ResourceURL
		if ref == "" {
			ignored++
			continue
		}
		if r.Digest != "" {
			if _, _, err := blockstore.ParseDigest(r.Digest); err != nil {
				ignored++
				continue
			}
			host, _, _ := strings.Cut(ref, "/")
			repo := wh.EventData.Repository.RepoFullName
			if repo == "" {
				// resource_url is HOST/REPO:TAG or HOST/REPO@DIGEST.
				rest := strings.TrimPrefix(ref, host+"/")
				if i := strings.IndexAny(rest, "@"); i >= 0 {
					rest = rest[:i]
				} else if i := strings.LastIndex(rest, ":"); i >= 0 {
					rest = rest[:i]
				}
				repo = rest
			}
			ref = host + "/" + repo + "@" + r.Digest
		}
		reqs = append(reqs, Request{Type: TypeImage, Image: ref})
	}
	return reqs, ignored, nil
}
