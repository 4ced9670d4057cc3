package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dfly-p2p/dfly/integration/origin"
)

// dfget's exit code for a full disk or an exceeded store quota.
const exitNoSpace = 6

// tmpfs mounts a tmpfs of size bytes at a new directory (unmounted by
// t.Cleanup); it skips the test unless running as root.
func tmpfs(t *testing.T, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs (a full disk); run as root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (a full disk) although root: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// fill writes a ballast file into dir until its filesystem is full.
func fill(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "ballast")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 256<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill %s: %v", dir, err)
			}
			return path
		}
	}
}

func noSpace(msg string) bool {
	m := strings.ToLower(msg)
	return strings.Contains(m, "no space") || strings.Contains(m, "free")
}

// TestChaosFullDisk: a daemon whose store sits on a 48 MiB filesystem.
// A 64 MiB file is refused at once with exit code 6 and an error saying
// there is no space; a 24 MiB file whose download finds the disk filled
// by something else half-way fails the same way — the daemon keeps running
// (Badger keeps its room) and serves other downloads once space is back,
// its store is consistent after a kill -9 and a restart, and the download
// resumes from what it held. A full output directory fails with exit 6
// too, leaving neither the output nor a temporary file. Without the free
// space checks the store would fill the disk under Badger's maps (the
// daemon would die); without the atomic output a partial file would stay.
func TestChaosFullDisk(t *testing.T) {
	storeDir := tmpfs(t, 48*mib)
	outDir := tmpfs(t, 8*mib)
	org := newOrigin(t)
	org.SetRate(16 * mib)
	big, mid, small := origin.Content{Size: 64 * mib, Seed: 31}, origin.Content{Size: 24 * mib, Seed: 32}, origin.Content{Size: 4 * mib, Seed: 33}
	bigURL, midURL, smallURL := org.Add("big.bin", big), org.Add("mid.bin", mid), org.Add("small.bin", small)
	sn := startSupernode(t, "0")
	d := startDaemon(t, sn, "tiny", storeDir)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	began := time.Now()
	dir := t.TempDir()

	r := dfget(ctx, d, bigURL, filepath.Join(dir, "big.out"))
	t.Logf("64 MiB into a 48 MiB store: exit %d: %s", r.code, r.msg)
	if r.code != exitNoSpace || !noSpace(r.msg) {
		t.Errorf("a file larger than the store's disk: exit %d, %q; want exit %d and an error saying there is no space", r.code, r.msg, exitNoSpace)
	}
	checkNoOutput(t, r.out)

	served := sn.seedServed(t)
	done := make(chan result, 1)
	go func() { done <- dfget(ctx, d, midURL, filepath.Join(dir, "mid.out")) }()
	var held int64
	waitFor(t, time.Minute, "the daemon to hold a third of the file", func() bool {
		held = d.stored()
		return held >= mid.Size/3
	})
	ballast := fill(t, storeDir)
	r = <-done
	t.Logf("disk filled at %d MiB: exit %d: %s", held/mib, r.code, r.msg)
	if r.code != exitNoSpace || !noSpace(r.msg) {
		t.Errorf("a disk filled mid-download: exit %d, %q; want exit %d and an error saying there is no space", r.code, r.msg, exitNoSpace)
	}
	checkNoOutput(t, r.out)
	// A block this host cannot store is not fetched again and again (each
	// parallel fetch gives up at once).
	if sent := sn.seedServed(t) - served; sent > mid.Size+8*mib {
		t.Errorf("the seed sent the daemon %.1f MiB of a %d MiB file it could not store: blocks refused by the full disk were fetched again",
			float64(sent)/mib, mid.Size/mib)
	}
	select {
	case <-d.Done():
		t.Fatalf("the daemon died on a full disk: %v", d.Err())
	default:
	}
	st := d.stats(t) // it still answers
	t.Logf("store on the full disk: %d MiB stored, %d blocks written", st.Store.Stored/mib, st.Store.BlocksWritten)

	d.Kill()
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	sc := inspectStore(t, d.store(), taskID(t, midURL), mid)
	t.Logf("after kill -9 the store holds %v", sc)
	d.restart(t)
	r = dfget(ctx, d, smallURL, filepath.Join(dir, "small.out"))
	checkExact(t, r, small.Digest("sha256"))
	r = dfget(ctx, d, midURL, filepath.Join(dir, "mid.out"))
	checkExact(t, r, mid.Digest("sha256"))
	if r.rep.BytesLocal < int64(sc.present)*sc.bs || r.rep.BytesLocal < held {
		t.Errorf("the resumed download reused %d MiB; the store held %d MiB (%d MiB when the disk filled)", r.rep.BytesLocal/mib, int64(sc.present)*sc.bs/mib, held/mib)
	}

	// The output's filesystem is full: 24 MiB into 8 MiB.
	out := filepath.Join(outDir, "mid.out")
	r = dfget(ctx, d, midURL, out)
	t.Logf("24 MiB output into an 8 MiB directory: exit %d: %s", r.code, r.msg)
	if r.code != exitNoSpace || !noSpace(r.msg) {
		t.Errorf("a full output directory: exit %d, %q; want exit %d and an error saying there is no space", r.code, r.msg, exitNoSpace)
	}
	checkNoOutput(t, out)
	d.stats(t)
	record(t, outcome{Size: mid.Size, Peers: 1, Took: time.Since(began), OriginCopies: float64(org.BytesSent()) / float64(big.Size+mid.Size+small.Size), Refetched: -1, Rejected: -1,
		Note: fmt.Sprintf("store on 48 MiB tmpfs: refused 64 MiB; filled at %d MiB, resumed %s", held/mib, sc)})
}

// TestChaosCorruptStore: a daemon holding two complete files is stopped;
// one file's data file is truncated (losing its second half and cutting a
// block), the other gets bytes flipped in three blocks. Restarted, the
// daemon serves only good bytes — a peer downloading both from it receives
// no bad block and outputs exact — and its own downloads refetch exactly
// the damaged blocks, no more. Its store is then whole again. Without
// verification on first read the peer would receive bad blocks (or the
// outputs would be wrong); without per-block repair the daemon would fetch
// the whole files again.
func TestChaosCorruptStore(t *testing.T) {
	size := int64(16*scale()) * mib
	nb := int(size / mib)
	org := newOrigin(t)
	c1, c2 := origin.Content{Size: size, Seed: 41}, origin.Content{Size: size, Seed: 42}
	url1, url2 := org.Add("trunc.bin", c1), org.Add("flip.bin", c2)
	sn := startSupernode(t, "4M") // the seed is slow: the damaged daemon is the preferred parent
	a := startDaemon(t, sn, "damaged", "")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	began := time.Now()
	dir := t.TempDir()
	checkExact(t, dfget(ctx, a, url1, filepath.Join(dir, "a1")), c1.Digest("sha256"))
	checkExact(t, dfget(ctx, a, url2, filepath.Join(dir, "a2")), c2.Digest("sha256"))
	a.Stop(10 * time.Second)

	id1, id2 := taskID(t, url1), taskID(t, url2)
	keep := nb / 2
	if err := os.Truncate(filepath.Join(a.store(), "data", id1+".blocks"), int64(keep)*mib+mib/2); err != nil {
		t.Fatal(err)
	}
	flipped := []int{2, nb/2 + 1, nb - 1}
	f, err := os.OpenFile(filepath.Join(a.store(), "data", id2+".blocks"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range flipped {
		off := int64(b)*mib + 12345
		p := make([]byte, 1)
		if _, err := f.ReadAt(p, off); err != nil {
			t.Fatal(err)
		}
		p[0] ^= 0x5a
		if _, err := f.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	damaged := (nb - keep) + len(flipped)

	a.restart(t)
	b := startDaemon(t, sn, "reader", "")
	for _, u := range []struct {
		url  string
		want string
	}{{url1, c1.Digest("sha256")}, {url2, c2.Digest("sha256")}} {
		checkExact(t, dfget(ctx, b, u.url, filepath.Join(dir, "b")), u.want)
	}
	bs := b.stats(t)
	fromDamaged := bs.Swarm.BytesByParent["damaged"]
	t.Logf("the reader got %.1f MiB from the damaged daemon, %d bad blocks", float64(fromDamaged)/mib, bs.Swarm.BadBlocks)
	if bs.Swarm.BadBlocks != 0 {
		t.Errorf("the damaged daemon served %d bad blocks; it must serve only verified bytes", bs.Swarm.BadBlocks)
	}
	if fromDamaged == 0 {
		t.Error("the reader got nothing from the damaged daemon: the test proves nothing about what it serves")
	}

	var refetched int64
	for _, u := range []struct {
		url, want string
		bad       int
	}{{url1, c1.Digest("sha256"), nb - keep}, {url2, c2.Digest("sha256"), len(flipped)}} {
		r := dfget(ctx, a, u.url, filepath.Join(dir, "a"))
		checkExact(t, r, u.want)
		refetched += r.rep.fetched()
		if r.rep.fetched() != int64(u.bad)*mib {
			t.Errorf("%s: the damaged daemon fetched %.1f MiB again, want exactly its %d damaged blocks", u.url, float64(r.rep.fetched())/mib, u.bad)
		}
	}
	as := a.stats(t)
	t.Logf("damaged daemon: %d corrupt blocks found, %d foreign changes", as.Store.Corrupt, as.Store.ForeignChanges)
	a.Stop(10 * time.Second)
	for _, x := range []struct {
		id string
		c  origin.Content
	}{{id1, c1}, {id2, c2}} {
		if sc := inspectStore(t, a.store(), x.id, x.c); sc.present != sc.total {
			t.Errorf("after the repair the store holds %v", sc)
		}
	}
	record(t, outcome{Size: 2 * size, Peers: 2, Took: time.Since(began), OriginCopies: float64(org.BytesSent()) / float64(2*size),
		Refetched: int(refetched / mib), Rejected: bs.Swarm.BadBlocks,
		Note: fmt.Sprintf("%d damaged blocks (truncated + %d flipped), the reader got %d MiB from the damaged store", damaged, len(flipped), fromDamaged/mib)})
}
