package supernode

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/dfly-p2p/dfly/supernode/api"
)

// hostAuth binds host ids to the secret of the process that first used
// them (trust on first use), for as long as the host stays live: a call
// for a bound id with another secret is refused, so one host cannot Sync,
// report bad blocks or Leave in another's name. A binding ends when the
// host leaves or has been silent for ttl (then the id is free again, as
// after a supernode restart). Mutual TLS (host identity from a
// certificate) is the stronger form of the same check.
type hostAuth struct {
	ttl time.Duration
	now func() time.Time

	mu    sync.Mutex
	hosts map[string]hostBinding
}

type hostBinding struct {
	secret [sha256.Size]byte
	seen   time.Time
}

func newHostAuth(ttl time.Duration, now func() time.Time) *hostAuth {
	if now == nil {
		now = time.Now
	}
	return &hostAuth{ttl: ttl, now: now, hosts: map[string]hostBinding{}}
}

// check binds hostID to secret or verifies an existing binding.
func (a *hostAuth) check(hostID, secret string) error {
	if secret == "" {
		return status.Errorf(codes.Unauthenticated, "host %q sent no %s metadata; upgrade dfdaemon/dfget to a version that authenticates its host", hostID, api.HostSecretMetadata)
	}
	sum := sha256.Sum256([]byte(secret))
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if b, ok := a.hosts[hostID]; ok && now.Sub(b.seen) <= a.ttl && subtle.ConstantTimeCompare(b.secret[:], sum[:]) != 1 {
		return status.Errorf(codes.Unauthenticated,
			"host id %q is in use by another live process (it proved a different host secret); give each host a unique id, or wait %s after the old process stopped",
			hostID, a.ttl.Round(time.Second))
	}
	a.hosts[hostID] = hostBinding{secret: sum, seen: now}
	return nil
}

// forget ends a binding (the host left).
func (a *hostAuth) forget(hostID string) {
	a.mu.Lock()
	delete(a.hosts, hostID)
	a.mu.Unlock()
}

// expire drops bindings silent for longer than ttl.
func (a *hostAuth) expire() {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, b := range a.hosts {
		if now.Sub(b.seen) > a.ttl {
			delete(a.hosts, id)
		}
	}
}

// hostIDOf is the host a control-plane request speaks for.
type hostIDOf interface{ GetHostId() string }

// interceptor authenticates every call that names a host (all of them:
// Announce names it in Host.Id).
func (a *hostAuth) interceptor(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	var hostID string
	switch r := req.(type) {
	case *api.AnnounceRequest:
		hostID = r.GetHost().GetId()
	case hostIDOf:
		hostID = r.GetHostId()
	}
	if hostID == "" {
		return handler(ctx, req) // the handler answers InvalidArgument
	}
	var secret string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(api.HostSecretMetadata); len(v) > 0 {
			secret = v[0]
		}
	}
	if err := a.check(hostID, secret); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// grants records which hosts the origin accepted for which private tasks
// in this process (RegisterTask with their own credentials), so that Sync
// hands parents and digests of private content only to them. Grants end
// with the host (Leave, expiry) or the process.
type grants struct {
	mu sync.Mutex
	m  map[string]map[string]bool // host → task → granted
}

func newGrants() *grants { return &grants{m: map[string]map[string]bool{}} }

func (g *grants) grant(task, host string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.m[host] == nil {
		g.m[host] = map[string]bool{}
	}
	g.m[host][task] = true
}

func (g *grants) granted(task, host string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.m[host][task]
}

// forget drops a host's grants.
func (g *grants) forget(host string) {
	g.mu.Lock()
	delete(g.m, host)
	g.mu.Unlock()
}
