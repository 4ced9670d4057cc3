package preheat

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// jobStore keeps one JSON file per job, DIR/<id>.json, each replaced
// atomically (write a temporary file, fsync, rename), so a crash leaves
// either the old or the new version of a job, never a torn one.
type jobStore struct{ dir string }

func openJobStore(dir string) (*jobStore, error) {
	if dir == "" {
		return nil, fmt.Errorf("preheat: no job directory: %w", ErrInvalid)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("preheat: create job directory: %w", err)
	}
	return &jobStore{dir: dir}, nil
}

func (s *jobStore) path(id string) string { return filepath.Join(s.dir, id+".json") }

func (s *jobStore) save(j Job) error {
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return fmt.Errorf("encode preheat job %s: %w", j.ID, err)
	}
	tmp := s.path(j.ID) + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("save preheat job %s: %w", j.ID, err)
	}
	_, werr := f.Write(append(b, '\n'))
	serr := f.Sync()
	cerr := f.Close()
	if err := firstErr(werr, serr, cerr); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save preheat job %s (is the disk full?): %w", j.ID, err)
	}
	if err := os.Rename(tmp, s.path(j.ID)); err != nil {
		return fmt.Errorf("save preheat job %s: %w", j.ID, err)
	}
	return nil
}

// loadAll reads every job. A file that does not decode is renamed to
// NAME.bad (kept for the operator, never deleted) and skipped.
func (s *jobStore) loadAll(log *slog.Logger) ([]Job, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("preheat: read job directory: %w", err)
	}
	var out []Job
	for _, e := range ents {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.dir, name))
		if err != nil {
			return nil, fmt.Errorf("preheat: read job %s: %w", name, err)
		}
		j, err := decodeJob(b)
		if err == nil && j.ID+".json" != name {
			err = fmt.Errorf("file %s holds job %q", name, j.ID)
		}
		if err != nil {
			log.Error("preheat: unreadable job file set aside", "file", name, "err", err)
			_ = os.Rename(filepath.Join(s.dir, name), filepath.Join(s.dir, name+".bad"))
			continue
		}
		out = append(out, j)
	}
	return out, nil
}

// decodeJob parses a job file and checks what run relies on.
func decodeJob(b []byte) (Job, error) {
	var j Job
	if err := json.Unmarshal(b, &j); err != nil {
		return Job{}, fmt.Errorf("decode job: %w", err)
	}
	if j.ID == "" || strings.ContainsAny(j.ID, "/\\") {
		return Job{}, fmt.Errorf("job id %q: %w", j.ID, ErrInvalid)
	}
	switch j.State {
	case StateQueued, StateRunning, StateSucceeded, StateFailed, StateCanceled:
	default:
		return Job{}, fmt.Errorf("job %s: state %q: %w", j.ID, j.State, ErrInvalid)
	}
	if !j.Done() {
		r := j.Request
		if err := r.Validate(); err != nil {
			return Job{}, fmt.Errorf("job %s: %w", j.ID, err)
		}
	}
	return j, nil
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
