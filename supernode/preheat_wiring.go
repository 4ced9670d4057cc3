package supernode

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/dfly-p2p/dfly/blockstore"
	"github.com/dfly-p2p/dfly/internal/oci"
	"github.com/dfly-p2p/dfly/supernode/preheat"
)

// PreheatConfig configures the supernode's preheat jobs (docs/preheat.md).
type PreheatConfig struct {
	// Registry resolves image references (credentials, plain-HTTP
	// registries); nil: an anonymous resolver.
	Registry *oci.Resolver
	// NotifySecret authenticates registry notifications and Harbor
	// webhooks; empty: those endpoints refuse every sender.
	NotifySecret string
}

// seedAdapter is the seed as preheat sees it.
type seedAdapter struct{ seed *Seed }

func (a seedAdapter) Seed(ctx context.Context, t preheat.Target) (int64, error) {
	meta, err := a.seed.Ensure(ctx, SeedRequest{TaskID: t.TaskID, URL: t.URL, Header: t.Header, Digest: t.Digest})
	if err != nil {
		return 0, err
	}
	return meta.Length, nil
}

func (a seedAdapter) Progress(taskID string) (stored, total int, failure string) {
	state, stored, total := a.seed.TaskState(taskID)
	if state == SeedFailed {
		if err := a.seed.Err(taskID); err != nil {
			failure = err.Error()
		} else {
			failure = "the seed failed the task"
		}
	}
	return stored, total, failure
}

// imageAdapter resolves images with dfly's one OCI resolver: the blobs a
// pull fetches, each with its blob URL and Authorization.
type imageAdapter struct{ r *oci.Resolver }

func (a imageAdapter) Resolve(ctx context.Context, ref, platform string) ([]preheat.Target, error) {
	blobs, err := a.r.ImageBlobs(ctx, ref, platform)
	if err != nil {
		return nil, err
	}
	out := make([]preheat.Target, 0, len(blobs))
	for _, b := range blobs {
		id, err := blockstore.TaskIDForDigest(b.Digest)
		if err != nil {
			return nil, fmt.Errorf("image %s names blob %q: %w", ref, b.Digest, err)
		}
		loc, err := a.r.Blob(ctx, ref, b.Digest)
		if err != nil {
			return nil, err
		}
		out = append(out, preheat.Target{TaskID: id, URL: loc.URL, Digest: b.Digest, Size: b.Size, Header: loc.Header})
	}
	return out, nil
}

// startPreheat opens the job manager (StoreDir/preheat) and mounts its API
// on the upload server's mux.
func (s *Supernode) startPreheat(adminToken string) error {
	r := s.cfg.Preheat.Registry
	if r == nil {
		r = &oci.Resolver{}
	}
	s.orders = newHostOrders(s.sched, s.cfg.SeedID)
	m, err := preheat.Open(preheat.Config{
		Dir: filepath.Join(s.cfg.StoreDir, "preheat"), Seeder: seedAdapter{s.seed}, Images: imageAdapter{r}, Hosts: s.orders, Logger: s.log,
	})
	if err != nil {
		return fmt.Errorf("preheat jobs: %w", err)
	}
	s.preheat = m
	api := m.Handler(preheat.APIConfig{
		Auth:         func(h http.Handler) http.Handler { return adminGuard(adminToken, h) },
		NotifySecret: s.cfg.Preheat.NotifySecret,
	})
	s.upload.Handle("/api/v1/", api)
	s.api = api
	return nil
}

// listenAPI opens Config.APIListen: the preheat API and the notification
// endpoints again, plain or, in a TLS swarm, TLS without client
// certificates (registries' webhook senders cannot present the swarm's),
// so a mutual-TLS upload server does not lock registries out. The admin
// guard and the notification secret still apply.
func (s *Supernode) listenAPI() error {
	if s.cfg.APIListen == "" {
		return nil
	}
	ln, err := net.Listen("tcp", s.cfg.APIListen)
	if err != nil {
		return fmt.Errorf("listen for the API on %s (--api-listen): %w", s.cfg.APIListen, err)
	}
	if s.cfg.TLS != nil {
		tc := s.cfg.TLS.ServerConfig()
		tc.ClientAuth, tc.VerifyConnection = tls.NoClientCert, nil
		ln = tls.NewListener(ln, tc)
	}
	s.apiLn = ln
	s.apiSrv = &http.Server{Handler: s.api, ReadHeaderTimeout: 10 * time.Second}
	return nil
}

// APIAddr is the address of the API listener ("" without one).
func (s *Supernode) APIAddr() string {
	if s.apiLn == nil {
		return ""
	}
	return s.apiLn.Addr().String()
}

// Preheat returns the job manager.
func (s *Supernode) Preheat() *preheat.Manager { return s.preheat }
