// Package preheat runs the supernode's preheat jobs: content (a URL, an
// image reference, or the blobs a registry push notification names) is
// fetched into the seed's cache ahead of the first pull and, when the job
// names a host selector, onto every matching dfdaemon at background
// priority. Jobs are persisted one JSON file each and survive a restart of
// the supernode: an unfinished job resumes where it was (the seed keeps
// what it fetched), it is not started over.
//
// The package decides what to fetch and tracks progress; fetching is the
// seed's (Seeder) and the hosts' (Hosts) business, and image references are
// resolved by dfly's one OCI resolver (Images).
package preheat

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
)

// Job states.
const (
	StateQueued    = "queued"
	StateRunning   = "running"
	StateSucceeded = "succeeded"
	StateFailed    = "failed"
	StateCanceled  = "canceled"
)

// Request types.
const (
	TypeURL   = "url"   // one URL (with headers)
	TypeImage = "image" // an image reference: manifest or index → platforms → blobs
	TypeBlobs = "blobs" // explicit blobs (registry notifications)
)

// ErrInvalid marks a request that cannot be a job.
var ErrInvalid = errors.New("invalid preheat request")

// ErrNotFound marks an unknown job id.
var ErrNotFound = errors.New("no such preheat job")

// Request is what a client asks for (POST /api/v1/preheat).
type Request struct {
	Type string `json:"type"`
	// URL and Headers (TypeURL): the content and the headers its origin
	// needs. Sensitive headers (Authorization, Cookie, ...) are used while
	// the job runs and never stored: a job resumed after a restart goes on
	// without them.
	URL     string            `json:"url,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
	Digest  string            `json:"digest,omitempty"` // optional whole-content digest of URL
	Tag     string            `json:"tag,omitempty"`
	// Image and Platform (TypeImage): a reference (tag or digest) and
	// os/arch[/variant] or "" / "all" for every platform of an index.
	Image    string `json:"image,omitempty"`
	Platform string `json:"platform,omitempty"`
	// Blobs (TypeBlobs): registry blob URLs with their digests.
	Blobs []Target `json:"blobs,omitempty"`
	// Hosts selects the dfdaemons that also fetch the content; nil: the
	// seed's cache only.
	Hosts *Selector `json:"hosts,omitempty"`
	// Source says who asked (api, registry, harbor), for the job list.
	Source string `json:"source,omitempty"`
}

// Selector picks live dfdaemons by their announced labels: every
// condition given must hold (IDC and Rack), or the host is named in
// Hosts; All picks every host.
type Selector struct {
	IDC   string   `json:"idc,omitempty"`
	Rack  string   `json:"rack,omitempty"`
	Hosts []string `json:"hosts,omitempty"`
	All   bool     `json:"all,omitempty"`
}

// Matches reports whether a host with these labels is selected.
func (s Selector) Matches(id, idc, rack string) bool {
	if slices.Contains(s.Hosts, id) {
		return true
	}
	if s.All {
		return true
	}
	if s.IDC == "" && s.Rack == "" {
		return false
	}
	return (s.IDC == "" || s.IDC == idc) && (s.Rack == "" || s.Rack == rack)
}

func (s Selector) empty() bool { return !s.All && s.IDC == "" && s.Rack == "" && len(s.Hosts) == 0 }

// String is the selector in the label=value form dfctl takes.
func (s Selector) String() string {
	var p []string
	if s.All {
		p = append(p, "all")
	}
	if s.IDC != "" {
		p = append(p, "idc="+s.IDC)
	}
	if s.Rack != "" {
		p = append(p, "rack="+s.Rack)
	}
	if len(s.Hosts) > 0 {
		p = append(p, "hosts="+strings.Join(s.Hosts, ","))
	}
	return strings.Join(p, " ")
}

// Target is one piece of content a job preheats: a task of the swarm.
type Target struct {
	TaskID string `json:"task_id"`
	URL    string `json:"url"`
	Digest string `json:"digest,omitempty"`
	Tag    string `json:"tag,omitempty"`
	Size   int64  `json:"size,omitempty"`
	// Header is what the origin needs, in memory only.
	Header http.Header `json:"-"`
}

// Layer is a job's progress on one target at the seed.
type Layer struct {
	Target
	State  string `json:"state"`
	Blocks int    `json:"blocks"` // total blocks (0 until known)
	Stored int    `json:"stored"` // blocks the seed holds
	Bytes  int64  `json:"bytes"`  // content length (0 until known)
	Error  string `json:"error,omitempty"`
}

// HostProgress is a job's progress on one selected host.
type HostProgress struct {
	Host   string `json:"host"`
	State  string `json:"state"`
	Done   int    `json:"layers_done"`
	Total  int    `json:"layers_total"`
	Blocks int    `json:"blocks_held"`
	Bytes  int64  `json:"bytes_held"` // of the content's bytes (from blocks held)
	Error  string `json:"error,omitempty"`
}

// Job is a preheat and its progress.
type Job struct {
	ID       string         `json:"id"`
	Request  Request        `json:"request"` // header values removed
	State    string         `json:"state"`
	Error    string         `json:"error,omitempty"`
	Created  time.Time      `json:"created"`
	Updated  time.Time      `json:"updated"`
	Finished time.Time      `json:"finished,omitzero"`
	Layers   []Layer        `json:"layers"`
	Hosts    []HostProgress `json:"hosts,omitempty"`
	// HostsMatched is set once the selector was applied (the host list is
	// fixed then, so a resumed job keeps its targets).
	HostsMatched bool `json:"hosts_matched,omitempty"`
}

// Done reports whether the job has ended.
func (j Job) Done() bool {
	return j.State == StateSucceeded || j.State == StateFailed || j.State == StateCanceled
}

// clone deep-copies a job (callers get copies, never the manager's own).
func (j Job) clone() Job {
	c := j
	c.Layers = slices.Clone(j.Layers)
	c.Hosts = slices.Clone(j.Hosts)
	c.Request.Blobs = slices.Clone(j.Request.Blobs)
	if j.Request.Hosts != nil {
		s := *j.Request.Hosts
		s.Hosts = slices.Clone(s.Hosts)
		c.Request.Hosts = &s
	}
	if j.Request.Headers != nil {
		c.Request.Headers = make(map[string]string, len(j.Request.Headers))
		for k, v := range j.Request.Headers {
			c.Request.Headers[k] = v
		}
	}
	return c
}

// Validate checks a request and fills in the task ids of its targets.
func (r *Request) Validate() error {
	switch r.Type {
	case TypeURL:
		if err := checkURL(r.URL); err != nil {
			return err
		}
		if r.Image != "" || len(r.Blobs) > 0 {
			return fmt.Errorf("a url preheat names no image or blobs: %w", ErrInvalid)
		}
		if r.Digest != "" {
			if _, _, err := blockstore.ParseDigest(r.Digest); err != nil {
				return fmt.Errorf("digest %q: %w", r.Digest, ErrInvalid)
			}
		}
		for k := range r.Headers {
			if k == "" || strings.ContainsAny(k, " :\r\n") {
				return fmt.Errorf("header name %q: %w", k, ErrInvalid)
			}
		}
	case TypeImage:
		if r.Image == "" {
			return fmt.Errorf("an image preheat needs image (a reference such as registry/repo:tag): %w", ErrInvalid)
		}
		if r.URL != "" || len(r.Blobs) > 0 {
			return fmt.Errorf("an image preheat names no url or blobs: %w", ErrInvalid)
		}
	case TypeBlobs:
		if len(r.Blobs) == 0 {
			return fmt.Errorf("a blobs preheat needs at least one blob: %w", ErrInvalid)
		}
		for i := range r.Blobs {
			b := &r.Blobs[i]
			if err := checkURL(b.URL); err != nil {
				return err
			}
			id, err := blockstore.TaskIDForDigest(b.Digest)
			if err != nil {
				return fmt.Errorf("blob %s: digest %q: %w", b.URL, b.Digest, ErrInvalid)
			}
			b.TaskID = id
		}
	case "":
		return fmt.Errorf("type is required: url, image or blobs: %w", ErrInvalid)
	default:
		return fmt.Errorf("type %q: want url, image or blobs: %w", r.Type, ErrInvalid)
	}
	if r.Hosts != nil && r.Hosts.empty() {
		return fmt.Errorf("hosts selects no host: give idc, rack, hosts or all: %w", ErrInvalid)
	}
	return nil
}

func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("url %q: want an absolute http or https URL: %w", s, ErrInvalid)
	}
	return nil
}
