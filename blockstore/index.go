package blockstore

// The index (Badger) and what the store does when it and the data files
// disagree at Open.

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// quarantineDir is the subdirectory of the store where data files found
// without a task are moved rather than deleted.
const quarantineDir = "quarantine"

// checkIndex refuses to open a store whose Badger MANIFEST is missing while
// Badger's other files, or data files, are still there. Badger would start
// an empty index (deleting the tables the MANIFEST no longer names), and
// every task, its data file then taken for an orphan, would be lost. It
// runs before Badger opens the directory and changes nothing.
func checkIndex(dir string) error {
	manifest := filepath.Join(dir, badger.ManifestFilename)
	if _, err := os.Stat(manifest); err == nil {
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("open block store %s: check its index %s: %w", dir, manifest, err)
	}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil // a new store
	}
	if err != nil {
		return fmt.Errorf("open block store %s: list it: %w", dir, err)
	}
	index := 0
	for _, e := range ents {
		if ext := filepath.Ext(e.Name()); !e.IsDir() && (ext == ".sst" || ext == ".vlog" || ext == ".mem") {
			index++
		}
	}
	data, _ := filepath.Glob(filepath.Join(dir, dataDir, "*.blocks"))
	if index == 0 && len(data) == 0 {
		return nil // nothing to lose: a new (or empty) store
	}
	return fmt.Errorf("open block store %s: its index file %s is missing, but the store still holds %d index files (*.sst, *.vlog, *.mem) and %d data files: "+
		"opening it would start an empty index and lose every task, so nothing was changed. "+
		"Restore %s from a backup, or move %s aside (or delete it) to start with an empty store: %w",
		dir, manifest, index, len(data), manifest, dir, ErrIndexLost)
}

// settleOrphans deals with data files that no task accounts for. One whose
// task's deletion was interrupted (its tombstone is there) is removed, with
// the rest of that task's keys. Any other is not the store's to delete: the
// index may have lost its task (a restored or damaged index, metadata lost
// to a power cut without SyncWrites), so it is moved to DIR/quarantine for
// the operator to look at, and a warning says so on every Open while the
// quarantine holds files.
func (s *Store) settleOrphans() error {
	tombs, err := s.tombstones()
	if err != nil {
		return err
	}
	for _, id := range tombs {
		if _, live := s.tasks[id]; live {
			// Created again after a deletion that failed half-way: the
			// file is the new task's. Only the tombstone goes.
			err = s.db.Update(func(txn *badger.Txn) error { return txn.Delete(tombKey(id)) })
		} else {
			s.log.Info("finishing the deletion of a task interrupted before", "task", id)
			err = s.dropTask(id)
		}
		if err != nil {
			return fmt.Errorf("open block store %s: finish deleting task %s: %w", s.dir, id, err)
		}
	}
	dataPath := filepath.Join(s.dir, dataDir)
	ents, err := os.ReadDir(dataPath)
	if err != nil {
		return fmt.Errorf("list data files of store %s: %w", s.dir, err)
	}
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".blocks")
		if _, known := s.tasks[id]; ok && known {
			continue
		}
		if err := s.quarantine(filepath.Join(dataPath, e.Name())); err != nil {
			return err
		}
	}
	if q, _ := os.ReadDir(filepath.Join(s.dir, quarantineDir)); len(q) > 0 {
		s.log.Warn("the store's quarantine holds data files no task accounts for (the index may have lost their tasks); "+
			"delete them once you know they are not needed", "dir", filepath.Join(s.dir, quarantineDir), "files", len(q))
	}
	return nil
}

// quarantine moves path into DIR/quarantine, under a name not taken yet.
func (s *Store) quarantine(path string) error {
	qdir := filepath.Join(s.dir, quarantineDir)
	if err := os.MkdirAll(qdir, 0o755); err != nil {
		return fmt.Errorf("open block store %s: create %s for a data file no task accounts for (%s): %w", s.dir, qdir, path, err)
	}
	dst := filepath.Join(qdir, filepath.Base(path))
	for i := 1; ; i++ {
		if _, err := os.Lstat(dst); errors.Is(err, os.ErrNotExist) {
			break
		}
		dst = filepath.Join(qdir, fmt.Sprintf("%s.%s.%d", filepath.Base(path), time.Now().UTC().Format("20060102T150405"), i))
	}
	if err := os.Rename(path, dst); err != nil {
		return fmt.Errorf("open block store %s: move %s, which no task accounts for, to %s: %w; move it away by hand", s.dir, path, qdir, err)
	}
	s.log.Warn("moved a data file no task accounts for to the quarantine", "file", path, "to", dst)
	return nil
}

// tombstones lists the tasks whose deletion is under way (or was
// interrupted).
func (s *Store) tombstones() ([]string, error) {
	var ids []string
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("x/")})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			ids = append(ids, string(it.Item().Key()[2:]))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open block store %s: list interrupted deletions: %w", s.dir, err)
	}
	return ids, nil
}

// legacyBlock is a block whose bytes an older version kept inside Badger.
type legacyBlock struct {
	id  string
	idx int
}

// migrate moves blocks stored by older versions (bytes as Badger values)
// into the data files, one transaction per block, so that an interrupted
// migration resumes on the next Open and loses nothing.
func (s *Store) migrate(legacy []legacyBlock) error {
	if len(legacy) == 0 {
		return nil
	}
	s.log.Info("moving blocks out of Badger into data files (one-time migration)", "blocks", len(legacy))
	for _, lb := range legacy {
		st := s.tasks[lb.id]
		var data []byte
		err := s.db.View(func(txn *badger.Txn) error {
			item, err := txn.Get(blockKey(lb.id, lb.idx))
			if err != nil {
				return err
			}
			data, err = item.ValueCopy(nil)
			return err
		})
		if err == nil {
			err = s.writeLegacy(st, lb.idx, data)
		}
		if err == nil {
			err = s.db.Update(func(txn *badger.Txn) error { return txn.Set(blockKey(lb.id, lb.idx), nil) })
		}
		if err != nil {
			return fmt.Errorf("migrate block %d of task %s in %s to its data file: %w", lb.idx, lb.id, s.dir, err)
		}
	}
	if err := s.db.RunValueLogGC(0.3); err != nil && !errors.Is(err, badger.ErrNoRewrite) {
		s.log.Debug("value-log GC after migration", "err", err)
	}
	return nil
}

// writeLegacy writes a migrated block's bytes to its data file.
func (s *Store) writeLegacy(st *taskState, idx int, data []byte) error {
	df, err := s.files.acquire(&st.slot, s.dataPath(st.task.ID))
	if err != nil {
		return err
	}
	defer s.files.release(df)
	if _, err := df.f.WriteAt(data, int64(idx)*st.task.BlockSize); err != nil {
		return err
	}
	if s.opt.SyncWrites {
		return df.f.Sync()
	}
	return nil
}

func taskKey(id string) []byte { return []byte("t/" + id) }
func tombKey(id string) []byte { return []byte("x/" + id) }
func blockKey(id string, idx int) []byte {
	return binary.BigEndian.AppendUint32([]byte("b/"+id+"/"), uint32(idx))
}
func digestKey(id string, idx int) []byte {
	return binary.BigEndian.AppendUint32([]byte("d/"+id+"/"), uint32(idx))
}

// checkRecord refuses task metadata the store never writes: filed under
// another task's key, or an ID or a shape CreateTask refuses (a record
// claiming a huge block count would exhaust memory at Open).
func checkRecord(key []byte, t Task) error {
	if string(key) != string(taskKey(t.ID)) {
		return fmt.Errorf("record of task %q filed under another key: %w", t.ID, ErrInvalid)
	}
	if err := validID(t.ID); err != nil {
		return err
	}
	if t.Length < 0 || t.BlockSize <= 0 || t.BlockSize&(t.BlockSize-1) != 0 || t.NumBlocks() > MaxBlocks {
		return fmt.Errorf("task %s: length %d, block size %d: %w", t.ID, t.Length, t.BlockSize, ErrInvalid)
	}
	return nil
}

func validID(id string) error {
	if id == "" || len(id) > 200 || strings.ContainsAny(id, "/\x00") {
		return fmt.Errorf("task ID %q: must be 1-200 bytes without '/': %w", id, ErrInvalid)
	}
	return nil
}

// loadAll reads every task's metadata, bitmap and digests into memory and
// returns the blocks an older version stored inside Badger.
func (s *Store) loadAll() ([]legacyBlock, error) {
	var legacy []legacyBlock
	return legacy, s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("t/"), PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			var t Task
			if err := it.Item().Value(func(v []byte) error { return json.Unmarshal(v, &t) }); err != nil {
				return fmt.Errorf("load task metadata %s: %w", it.Item().Key(), err)
			}
			if err := checkRecord(it.Item().Key(), t); err != nil {
				return fmt.Errorf("load task metadata %s: %w", it.Item().Key(), err)
			}
			s.tasks[t.ID] = newTaskState(t, t.AccessedAt)
		}
		for id, st := range s.tasks {
			if err := loadBlocks(txn, s.log, id, st, &legacy); err != nil {
				return err
			}
		}
		return nil
	})
}

// demoteIncomplete makes pending the complete tasks that miss blocks (an
// older version dropped a block and demoted its task in two steps).
func (s *Store) demoteIncomplete() error {
	for id, st := range s.tasks {
		if st.bitmap.Count() == len(st.digests) {
			continue
		}
		if t, ok := demoted(st.task); ok {
			s.log.Warn("task marked complete misses blocks; it is pending again", "task", id, "missing", len(st.digests)-st.bitmap.Count())
			if err := s.writeTask(t); err != nil {
				return fmt.Errorf("open block store %s: %w", s.dir, err)
			}
			st.task = t
		}
	}
	return nil
}

func loadBlocks(txn *badger.Txn, log *slog.Logger, id string, st *taskState, legacy *[]legacyBlock) error {
	n := len(st.digests)
	bit := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("b/" + id + "/")})
	for bit.Rewind(); bit.Valid(); bit.Next() {
		k := bit.Item().Key()
		idx := int(binary.BigEndian.Uint32(k[len(k)-4:]))
		switch {
		case idx >= n:
		case st.task.Sealed: // the value is the block's seal record
			var rec sealRec
			err := bit.Item().Value(func(v []byte) (err error) { rec, err = decodeSeal(v); return err })
			if err != nil { // as good as missing: fetched again, and the record replaced
				log.Warn("block of an encrypted task has no readable seal record; it counts as missing", "task", id, "block", idx, "err", err)
				continue
			}
			st.seals[idx] = rec
			st.bitmap.Set(idx)
		default:
			st.bitmap.Set(idx)
			if bit.Item().ValueSize() > 0 {
				*legacy = append(*legacy, legacyBlock{id, idx})
			}
		}
	}
	bit.Close()
	dit := txn.NewIterator(badger.IteratorOptions{Prefix: []byte("d/" + id + "/"), PrefetchValues: true})
	defer dit.Close()
	for dit.Rewind(); dit.Valid(); dit.Next() {
		k := dit.Item().Key()
		idx := int(binary.BigEndian.Uint32(k[len(k)-4:]))
		if idx >= n {
			continue
		}
		v, err := dit.Item().ValueCopy(nil)
		if err != nil {
			return fmt.Errorf("load digest %d of task %s: %w", idx, id, err)
		}
		st.digests[idx] = v
	}
	return nil
}
