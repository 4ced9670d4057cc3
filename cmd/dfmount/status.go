package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/dfly-p2p/dfly/cmd/internal/cli"
	"github.com/dfly-p2p/dfly/fs/prefetch"
)

// mountStatus is what STORE/mounts/<key>.json holds.
type mountStatus struct {
	PID       int          `json:"pid"`
	Dir       string       `json:"dir"`
	UpdatedAt time.Time    `json:"updated_at"`
	Files     []fileStatus `json:"files"`
}

type fileStatus struct {
	Name     string             `json:"name"`
	URL      string             `json:"url"`
	Task     string             `json:"task"`
	Prefetch *prefetch.Progress `json:"prefetch,omitempty"` // nil with --prefetch=false
	// Without a prefetcher: blocks present and total.
	BlocksPresent int   `json:"blocks_present"`
	BlocksTotal   int   `json:"blocks_total"`
	Length        int64 `json:"length"`
	Complete      bool  `json:"complete"`
	Verified      bool  `json:"verified"`
	BytesOrigin   int64 `json:"bytes_origin"`
	BytesPeers    int64 `json:"bytes_peers"`
	BytesSeed     int64 `json:"bytes_seed"`
}

// statusPath is where the mount at dir (absolute) publishes its status.
func statusPath(store, dir string) string {
	sum := sha256.Sum256([]byte(filepath.Clean(dir)))
	return filepath.Join(store, "mounts", hex.EncodeToString(sum[:8])+".json")
}

func collectStatus(dir string, files []*mountedFile) mountStatus {
	st := mountStatus{PID: os.Getpid(), Dir: dir, UpdatedAt: time.Now().UTC()}
	for _, f := range files {
		info := f.task.Info()
		ts := f.task.Stats()
		fs := fileStatus{Name: f.name, URL: f.url, Task: f.task.ID(), BlocksTotal: info.NumBlocks(),
			BlocksPresent: info.NumBlocks() - len(f.task.Missing()), Length: info.Length,
			Complete: info.State == "complete", Verified: info.Verified,
			BytesOrigin: ts.BytesOrigin, BytesPeers: ts.BytesPeers, BytesSeed: ts.BytesSeed}
		if f.pf != nil {
			p := f.pf.Progress()
			fs.Prefetch = &p
		}
		st.Files = append(st.Files, fs)
	}
	return st
}

// statusLoop rewrites the status file every second (atomically, by rename)
// and logs progress every 10 seconds until ctx ends.
func statusLoop(ctx context.Context, path, dir string, files []*mountedFile, log *slog.Logger) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		log.Warn("cannot publish status; dfmount --status will not work", "dir", filepath.Dir(path), "err", err)
		return
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastLog := time.Now()
	warned := false
	for {
		st := collectStatus(dir, files)
		if err := writeStatus(path, st); err != nil && !warned {
			warned = true
			log.Warn("cannot publish status", "file", path, "err", err)
		}
		if time.Since(lastLog) >= 10*time.Second {
			lastLog = time.Now()
			for _, f := range st.Files {
				if p := f.Prefetch; p != nil && p.State != prefetch.StateDone {
					log.Info("prefetch progress", "file", f.Name, "state", p.State, "blocks", fmt.Sprintf("%d/%d", p.BlocksPresent, p.BlocksTotal),
						"rate", humanRate(p.BytesPerSec), "verified", p.Verified, "last_error", p.LastError)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func writeStatus(path string, st mountStatus) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readStatus(store, dir string) (mountStatus, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return mountStatus{}, err
	}
	path := statusPath(store, abs)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return mountStatus{}, fail(exitNotRunning, "no dfmount is serving %s (no %s; pass the mount's --store if it used another)", abs, path)
	}
	if err != nil {
		return mountStatus{}, err
	}
	var st mountStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return mountStatus{}, fmt.Errorf("status file %s: %w", path, err)
	}
	if st.PID <= 0 || syscall.Kill(st.PID, 0) == syscall.ESRCH {
		return st, fail(exitNotRunning, "dfmount for %s (pid %d) is not running; its last status is from %s; run dfmount again to remount",
			abs, st.PID, st.UpdatedAt.Format(time.RFC3339))
	}
	return st, nil
}

func doStatus(dir, store string, jsonOut bool, w io.Writer) error {
	st, err := readStatus(store, dir)
	if err != nil {
		return err
	}
	if jsonOut {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	fmt.Fprintf(w, "%s (pid %d, updated %s ago)\n", st.Dir, st.PID, time.Since(st.UpdatedAt).Round(time.Second))
	for _, f := range st.Files {
		present, total, rate, state, verified := f.BlocksPresent, f.BlocksTotal, 0.0, "off", f.Verified
		errMsg := ""
		if p := f.Prefetch; p != nil {
			present, total, rate, state, verified = p.BlocksPresent, p.BlocksTotal, p.BytesPerSec, string(p.State), p.Verified
			errMsg = p.Error
			if errMsg == "" && p.LastError != "" && p.State != prefetch.StateDone {
				errMsg = "last error: " + p.LastError
			}
		}
		pct := 100.0
		if total > 0 {
			pct = 100 * float64(present) / float64(total)
		}
		verdict := "no"
		switch {
		case verified:
			verdict = "yes"
		case f.Complete:
			verdict = "blocks only (no whole-content digest known)"
		}
		fmt.Fprintf(w, "  %s: %d/%d blocks (%.1f%%), prefetch %s, %s, complete %v, verified %s, from origin %s\n",
			f.Name, present, total, pct, state, humanRate(rate), f.Complete, verdict, cli.HumanBytes(f.BytesOrigin))
		if errMsg != "" {
			fmt.Fprintf(w, "    %s\n", errMsg)
		}
	}
	return nil
}

func humanRate(bps float64) string { return cli.HumanBytes(int64(bps)) + "/s" }
