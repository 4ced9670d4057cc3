package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/dfly-p2p/dfly/cmd/internal/cli"
	"github.com/dfly-p2p/dfly/supernode/preheat"
)

const preheatUsage = `usage:
  dfctl preheat --url URL [-H 'Name: value']... [--digest ALGO:HEX] [selector] [flags]
  dfctl preheat --image REF [--platform OS/ARCH|all] [selector] [flags]
                           start a preheat job on the supernode: the content goes into the
                           seed's cache and, with a selector, onto every matching dfdaemon
  dfctl preheat list       list jobs, newest first
  dfctl preheat status ID  show a job's per-layer and per-host progress
  dfctl preheat cancel ID  cancel a job

A selector is any of --idc, --rack, --host (repeatable) or --all-hosts.
The supernode API answers its own host (loopback) and callers with its
admin token (--token-file, default $DFLY_ADMIN_TOKEN; the supernode keeps
it in STORE/admin.token). A swarm with TLS: give the same --tls-ca (and,
with mutual TLS, --tls-cert/--tls-key) as the hosts. See docs/preheat.md.

Exit codes: 0 ok (with --wait: the job succeeded), 1 failure, 2 bad flags or arguments.

flags:
`

type preheatOptions struct {
	api, tokenFile       string
	url, digest, image   string
	platform, idc, rack  string
	headers, hosts       []string
	allHosts, wait, json bool
	timeout              time.Duration
	tls                  *cli.TLSFlags // the swarm's TLS, when the supernode's upload server uses it
}

func runPreheat(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := pflag.NewFlagSet("dfctl preheat", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	var o preheatOptions
	fs.StringVar(&o.api, "supernode-api", "http://127.0.0.1:8001", "the supernode's upload server URL, which serves the preheat API")
	fs.StringVar(&o.tokenFile, "token-file", "", "file with the supernode's admin token (default: $DFLY_ADMIN_TOKEN; none on the supernode's host)")
	fs.StringVar(&o.url, "url", "", "preheat this URL")
	fs.StringArrayVarP(&o.headers, "header", "H", nil, "header for the URL's origin, 'Name: value' (repeatable; never stored by the supernode)")
	fs.StringVar(&o.digest, "digest", "", "whole-content digest of --url, ALGO:HEX")
	fs.StringVar(&o.image, "image", "", "preheat the layers of this image reference (registry/repo:tag or @digest)")
	fs.StringVar(&o.platform, "platform", "", "with --image: os/arch[/variant] of an index to preheat, or all (default all)")
	fs.StringVar(&o.idc, "idc", "", "selector: dfdaemons announced with this idc")
	fs.StringVar(&o.rack, "rack", "", "selector: dfdaemons announced with this rack")
	fs.StringSliceVar(&o.hosts, "host", nil, "selector: this dfdaemon host id (repeatable)")
	fs.BoolVar(&o.allHosts, "all-hosts", false, "selector: every live dfdaemon")
	fs.BoolVar(&o.wait, "wait", false, "wait for the job to end, printing progress; exit 1 unless it succeeded")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Minute, "with --wait: give up after this long")
	fs.BoolVar(&o.json, "json", false, "print jobs as JSON")
	o.tls = cli.AddTLSFlags(fs, false)
	fs.Usage = func() { _, _ = fmt.Fprint(stderr, preheatUsage+fs.FlagUsages()) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		_, _ = fmt.Fprintf(stderr, "dfctl preheat: %v (see dfctl preheat --help)\n", err)
		return 2
	}
	c, err := newPreheatClient(o)
	if err != nil {
		_, _ = fmt.Fprintln(stderr, "dfctl preheat:", err)
		return 2
	}
	a := fs.Args()
	var job preheat.Job
	switch {
	case len(a) == 1 && a[0] == "list":
		var jobs []preheat.Job
		if err := c.do(ctx, http.MethodGet, "/api/v1/preheat", nil, &jobs); err != nil {
			_, _ = fmt.Fprintln(stderr, "dfctl preheat list:", err)
			return 1
		}
		if o.json {
			return printJSON(stdout, jobs)
		}
		for _, j := range jobs {
			_, _ = fmt.Fprintln(stdout, jobLine(j))
		}
		return 0
	case len(a) == 2 && (a[0] == "status" || a[0] == "cancel"):
		method := http.MethodGet
		if a[0] == "cancel" {
			method = http.MethodDelete
		}
		if err := c.do(ctx, method, "/api/v1/preheat/"+a[1], nil, &job); err != nil {
			_, _ = fmt.Fprintf(stderr, "dfctl preheat %s: %v\n", a[0], err)
			return 1
		}
	case len(a) == 0:
		req, err := o.request()
		if err != nil {
			_, _ = fmt.Fprintln(stderr, "dfctl preheat:", err)
			return 2
		}
		if err := c.do(ctx, http.MethodPost, "/api/v1/preheat", req, &job); err != nil {
			_, _ = fmt.Fprintln(stderr, "dfctl preheat:", err)
			return 1
		}
	default:
		fs.Usage()
		return 2
	}
	if o.wait && !job.Done() {
		wctx, cancel := context.WithTimeout(ctx, o.timeout)
		defer cancel()
		var err error
		if job, err = c.wait(wctx, job.ID, func(j preheat.Job) {
			if !o.json {
				_, _ = fmt.Fprintln(stdout, jobLine(j))
			}
		}); err != nil {
			_, _ = fmt.Fprintln(stderr, "dfctl preheat: wait:", err)
			return 1
		}
	}
	if o.json {
		printJSON(stdout, job)
	} else {
		printJob(stdout, job)
	}
	if o.wait && job.State != preheat.StateSucceeded {
		return 1
	}
	return 0
}

// request builds the job request from the flags.
func (o preheatOptions) request() (preheat.Request, error) {
	var r preheat.Request
	switch {
	case o.url != "" && o.image != "":
		return r, errors.New("give --url or --image, not both")
	case o.url != "":
		r = preheat.Request{Type: preheat.TypeURL, URL: o.url, Digest: o.digest}
		for _, h := range o.headers {
			name, value, ok := strings.Cut(h, ":")
			if !ok || strings.TrimSpace(name) == "" {
				return r, fmt.Errorf("--header %q: want 'Name: value'", h)
			}
			if r.Headers == nil {
				r.Headers = map[string]string{}
			}
			r.Headers[strings.TrimSpace(name)] = strings.TrimSpace(value)
		}
	case o.image != "":
		if len(o.headers) > 0 || o.digest != "" {
			return r, errors.New("--header and --digest go with --url (image credentials come from the supernode's --registry-config)")
		}
		r = preheat.Request{Type: preheat.TypeImage, Image: o.image, Platform: o.platform}
	default:
		return r, errors.New("give --url URL or --image REF (or a subcommand: list, status ID, cancel ID)")
	}
	if o.idc != "" || o.rack != "" || len(o.hosts) > 0 || o.allHosts {
		r.Hosts = &preheat.Selector{IDC: o.idc, Rack: o.rack, Hosts: o.hosts, All: o.allHosts}
	}
	return r, r.Validate()
}

// preheatClient talks to the supernode's preheat API.
type preheatClient struct {
	base, token string
	hc          *http.Client
}

func newPreheatClient(o preheatOptions) (*preheatClient, error) {
	base := strings.TrimRight(o.api, "/")
	if !strings.HasPrefix(base, "http://") && !strings.HasPrefix(base, "https://") {
		base = "http://" + base
	}
	tok := os.Getenv("DFLY_ADMIN_TOKEN")
	if o.tokenFile != "" {
		b, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		tok = string(b)
	}
	hc := &http.Client{Timeout: time.Minute}
	if o.tls != nil && o.tls.Enabled() {
		r, err := o.tls.Load(slog.New(slog.DiscardHandler))
		if err != nil {
			return nil, err
		}
		hc.Transport = &http.Transport{DialTLSContext: r.DialTLS(&net.Dialer{Timeout: 10 * time.Second})}
		base = "https://" + strings.TrimPrefix(strings.TrimPrefix(base, "http://"), "https://")
	}
	return &preheatClient{base: base, token: strings.TrimSpace(tok), hc: hc}, nil
}

func (c *preheatClient) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return fmt.Errorf("supernode API %s: %w", c.base, err)
	}
	req.Header.Set("Content-Type", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("supernode API %s (is the supernode running? --supernode-api): %w", c.base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("read the supernode's answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return fmt.Errorf("supernode: %s (HTTP %d)", e.Error, resp.StatusCode)
		}
		return fmt.Errorf("supernode: HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("the supernode's answer is not JSON: %w", err)
	}
	return nil
}

// wait polls the job until it ends.
func (c *preheatClient) wait(ctx context.Context, id string, progress func(preheat.Job)) (preheat.Job, error) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last := ""
	for {
		var j preheat.Job
		if err := c.do(ctx, http.MethodGet, "/api/v1/preheat/"+id, nil, &j); err != nil {
			return j, err
		}
		if l := jobLine(j); l != last {
			progress(j)
			last = l
		}
		if j.Done() {
			return j, nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return j, ctx.Err()
		}
	}
}

// jobLine is a one-line summary of a job.
func jobLine(j preheat.Job) string {
	done, stored, blocks := 0, 0, 0
	for _, l := range j.Layers {
		if l.State == preheat.StateSucceeded {
			done++
		}
		stored += l.Stored
		blocks += l.Blocks
	}
	what := j.Request.URL
	if j.Request.Image != "" {
		what = j.Request.Image
	} else if j.Request.Type == preheat.TypeBlobs {
		what = fmt.Sprintf("%d pushed blobs", len(j.Request.Blobs))
	}
	s := fmt.Sprintf("%s  %-9s  seed %d/%d layers (%d/%d blocks)", j.ID, j.State, done, len(j.Layers), stored, blocks)
	if len(j.Hosts) > 0 {
		hd := 0
		for _, h := range j.Hosts {
			if h.State == preheat.StateSucceeded {
				hd++
			}
		}
		s += fmt.Sprintf("  hosts %d/%d", hd, len(j.Hosts))
	}
	return s + "  " + what
}

func printJob(w io.Writer, j preheat.Job) {
	_, _ = fmt.Fprintln(w, jobLine(j))
	if j.Error != "" {
		_, _ = fmt.Fprintln(w, "  error:", j.Error)
	}
	for _, l := range j.Layers {
		_, _ = fmt.Fprintf(w, "  layer %s  %-9s %d/%d blocks of %d bytes  %s\n", l.TaskID, l.State, l.Stored, l.Blocks, l.Bytes, l.Error)
	}
	for _, h := range j.Hosts {
		_, _ = fmt.Fprintf(w, "  host %s  %-9s %d/%d layers (%d bytes)  %s\n", h.Host, h.State, h.Done, h.Total, h.Bytes, h.Error)
	}
}

func printJSON(w io.Writer, v any) int {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return 1
	}
	return 0
}
