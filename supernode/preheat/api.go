package preheat

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// The HTTP API (documented in docs/preheat.md):
//
//	POST   /api/v1/preheat        Request → 202 Job
//	GET    /api/v1/preheat        [Job], newest first
//	GET    /api/v1/preheat/{id}   Job
//	DELETE /api/v1/preheat/{id}   cancel → Job
//	POST   /api/v1/notifications/registry   distribution's notification envelope
//	POST   /api/v1/notifications/harbor     Harbor's webhook payload
//
// Errors are {"error": "..."} with 400 (bad request), 401, 404 or 500.

// maxBody bounds request bodies (a notification envelope of a big push is
// a few hundred KiB).
const maxBody = 4 << 20

// APIConfig configures the handler.
type APIConfig struct {
	// Auth wraps the job endpoints (the supernode's admin guard).
	Auth func(http.Handler) http.Handler
	// NotifySecret authenticates notification senders: they send
	// "Authorization: Bearer SECRET" (or the bare secret, as Harbor's auth
	// header field does). Empty: the notification endpoints refuse all.
	NotifySecret string
}

// Handler returns the preheat API.
func (m *Manager) Handler(cfg APIConfig) http.Handler {
	auth := cfg.Auth
	if auth == nil {
		auth = func(h http.Handler) http.Handler { return h }
	}
	mux := http.NewServeMux()
	mux.Handle("POST /api/v1/preheat", auth(http.HandlerFunc(m.serveSubmit)))
	mux.Handle("GET /api/v1/preheat", auth(http.HandlerFunc(m.serveList)))
	mux.Handle("GET /api/v1/preheat/{id}", auth(http.HandlerFunc(m.serveGet)))
	mux.Handle("DELETE /api/v1/preheat/{id}", auth(http.HandlerFunc(m.serveCancel)))
	notify := func(h http.HandlerFunc) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !notifyAuthorized(r.Header.Get("Authorization"), cfg.NotifySecret) {
				writeError(w, http.StatusUnauthorized, errors.New("notifications need Authorization: Bearer <the supernode's --notify-secret-file>"))
				return
			}
			h(w, r)
		})
	}
	mux.Handle("POST /api/v1/notifications/registry", notify(m.serveRegistryNotification))
	mux.Handle("POST /api/v1/notifications/harbor", notify(m.serveHarborWebhook))
	return mux
}

func notifyAuthorized(header, secret string) bool {
	if secret == "" {
		return false
	}
	got := strings.TrimSpace(header)
	if v, ok := strings.CutPrefix(got, "Bearer "); ok {
		got = strings.TrimSpace(v)
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(secret)) == 1
}

func (m *Manager) serveSubmit(w http.ResponseWriter, r *http.Request) {
	var req Request
	if err := decodeBody(r, &req); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	req.Source = "api"
	j, err := m.Submit(req)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusAccepted, j)
}

func (m *Manager) serveList(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, m.List())
}

func (m *Manager) serveGet(w http.ResponseWriter, r *http.Request) {
	j, err := m.Get(r.PathValue("id"))
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, j)
}

func (m *Manager) serveCancel(w http.ResponseWriter, r *http.Request) {
	j, err := m.Cancel(r.PathValue("id"))
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, j)
}

// notificationResult is what the notification endpoints answer.
type notificationResult struct {
	Jobs    []string `json:"jobs"`
	Ignored int      `json:"ignored"`
}

func (m *Manager) serveRegistryNotification(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	reqs, ignored, err := ParseRegistryEnvelope(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	m.submitAll(w, reqs, ignored, "registry")
}

func (m *Manager) serveHarborWebhook(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	reqs, ignored, err := ParseHarborWebhook(body)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	m.submitAll(w, reqs, ignored, "harbor")
}

func (m *Manager) submitAll(w http.ResponseWriter, reqs []Request, ignored int, source string) {
	res := notificationResult{Jobs: []string{}, Ignored: ignored}
	for _, req := range reqs {
		req.Source = source
		j, err := m.Submit(req)
		if err != nil {
			if errors.Is(err, ErrInvalid) {
				m.log.Warn("notification names content that cannot be preheated", "source", source, "err", err)
				res.Ignored++
				continue
			}
			writeError(w, http.StatusInternalServerError, err) // the sender retries
			return
		}
		res.Jobs = append(res.Jobs, j.ID)
	}
	writeJSON(w, http.StatusOK, res)
}

func readBody(r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxBody))
	if err != nil {
		return nil, fmt.Errorf("read request body (at most %d bytes): %w", maxBody, err)
	}
	return b, nil
}

func decodeBody(r *http.Request, v any) error {
	b, err := readBody(r)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("request body is not a preheat request (see docs/preheat.md): %w", err)
	}
	return nil
}

func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	}
	return http.StatusInternalServerError
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, map[string]string{"error": err.Error()})
}
