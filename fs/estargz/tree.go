package estargz

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

const (
	whiteoutPrefix = ".wh."
	opaqueWhiteout = ".wh..wh..opq"
	// OpaqueXattr marks an overlayfs opaque directory.
	OpaqueXattr = "trusted.overlay.opaque"
	blockSize   = 512
	attrTimeout = time.Hour
)

// MountOptions tune a mount.
type MountOptions struct {
	Logger *slog.Logger
	// Debug turns on go-fuse's request log.
	Debug bool
}

// Mount serves the layer read-only at dir. The caller unmounts with the returned
// server's Unmount (and waits with Wait).
func (l *Layer) Mount(dir string, opt MountOptions) (*fuse.Server, error) {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	root := l.newTree(opt.Logger)
	to := attrTimeout
	return gofs.Mount(dir, root, &gofs.Options{
		EntryTimeout:    &to,
		AttrTimeout:     &to,
		NegativeTimeout: &to,
		MountOptions: fuse.MountOptions{
			AllowOther:    true,
			FsName:        "dfly-estargz",
			Name:          "dfly",
			DirectMount:   true,
			MaxReadAhead:  128 << 10,
			Debug:         opt.Debug,
			DisableXAttrs: false,
			Options:       []string{"ro"},
		},
	})
}

// tree holds what every node needs.
type tree struct {
	l   *Layer
	log *slog.Logger
	ino uint64
	// inodes maps a TOC entry to its inode so hardlinks share one inode.
	inodes map[*estargz.TOCEntry]*gofs.Inode
}

type node struct {
	gofs.Inode
	t    *tree
	e    *estargz.TOCEntry
	ino  uint64
	xatt map[string][]byte
	// whiteout is true for a ".wh.NAME" entry presented as a 0/0 char device.
	whiteout bool
}

var (
	_ gofs.NodeOnAdder     = (*node)(nil)
	_ gofs.NodeGetattrer   = (*node)(nil)
	_ gofs.NodeOpener      = (*node)(nil)
	_ gofs.NodeReader      = (*node)(nil)
	_ gofs.NodeReadlinker  = (*node)(nil)
	_ gofs.NodeGetxattrer  = (*node)(nil)
	_ gofs.NodeListxattrer = (*node)(nil)
	_ gofs.NodeStatfser    = (*node)(nil)
)

func (l *Layer) newTree(log *slog.Logger) *node {
	t := &tree{l: l, log: log, inodes: map[*estargz.TOCEntry]*gofs.Inode{}}
	rootEnt, ok := l.r.Lookup("")
	if !ok {
		rootEnt = &estargz.TOCEntry{Type: "dir", Mode: 0o755, NumLink: 1}
	}
	t.ino = 1
	return t.newNode(rootEnt, 1)
}

func (t *tree) newNode(e *estargz.TOCEntry, ino uint64) *node {
	return &node{t: t, e: e, ino: ino, xatt: e.Xattrs}
}

// OnAdd builds the whole tree from the TOC once the root is mounted; the TOC is in
// memory already, so this costs no I/O.
func (n *node) OnAdd(ctx context.Context) {
	n.t.inodes[n.e] = &n.Inode
	n.addChildren(ctx)
}

func (n *node) addChildren(ctx context.Context) {
	if n.e.Type != "dir" || n.whiteout { // a whiteout (even of a directory) has no children
		return
	}
	var names []string
	children := map[string]*estargz.TOCEntry{}
	n.e.ForeachChild(func(base string, ent *estargz.TOCEntry) bool {
		names = append(names, base)
		children[base] = ent
		return true
	})
	sort.Strings(names)
	root := n.ino == 1
	for _, base := range names {
		ent := children[base]
		if root && formatArtefact(base) {
			continue // eStargz's own files, not the image's
		}
		if base == opaqueWhiteout {
			if n.xatt == nil || n.xatt[OpaqueXattr] == nil {
				x := make(map[string][]byte, len(n.xatt)+1)
				for k, v := range n.xatt {
					x[k] = v
				}
				x[OpaqueXattr] = []byte("y")
				n.xatt = x
			}
			continue
		}
		name := base
		whiteout := false
		if strings.HasPrefix(base, whiteoutPrefix) {
			name = strings.TrimPrefix(base, whiteoutPrefix)
			whiteout = true
		}
		if !whiteout {
			if in, ok := n.t.inodes[ent]; ok { // hardlink to an inode we made already
				if ent.Type == "dir" && n.GetChild(name) != in {
					// A second name for a directory (a TOC's hardlink to one)
					// would make a loop of the tree: left out.
					n.t.log.Warn("eStargz TOC links a second name to a directory; left out", "dir", n.e.Name, "name", name)
					continue
				}
				n.AddChild(name, in, true)
				continue
			}
		}
		n.t.ino++
		child := n.t.newNode(ent, n.t.ino)
		child.whiteout = whiteout
		in := n.NewPersistentInode(ctx, child, gofs.StableAttr{Mode: child.fileType(), Ino: child.ino})
		if !whiteout {
			n.t.inodes[ent] = in
		}
		n.AddChild(name, in, true)
		child.addChildren(ctx)
	}
}

// formatArtefact reports whether a name at a layer's root is a file of the
// eStargz format rather than of the image (the prefetch landmarks and the
// TOC): a container must see exactly the files it would see with the
// overlayfs snapshotter.
func formatArtefact(name string) bool {
	switch name {
	case estargz.PrefetchLandmark, estargz.NoPrefetchLandmark, estargz.TOCTarName:
		return true
	}
	return false
}

func (n *node) fileType() uint32 {
	if n.whiteout {
		return syscall.S_IFCHR
	}
	switch n.e.Type {
	case "dir":
		return syscall.S_IFDIR
	case "reg":
		return syscall.S_IFREG
	case "symlink":
		return syscall.S_IFLNK
	case "char":
		return syscall.S_IFCHR
	case "block":
		return syscall.S_IFBLK
	case "fifo":
		return syscall.S_IFIFO
	}
	return syscall.S_IFREG
}

func (n *node) fill(out *fuse.Attr) {
	out.Ino = n.ino
	out.Mode = n.fileType() | uint32(n.e.Mode)&0o7777
	out.Owner = fuse.Owner{Uid: uint32(n.e.UID), Gid: uint32(n.e.GID)}
	nlink := n.e.NumLink
	if nlink < 1 {
		nlink = 1
	}
	out.Nlink = uint32(nlink)
	mt := n.e.ModTime()
	out.SetTimes(&mt, &mt, &mt)
	out.Blksize = 4096
	switch {
	case n.whiteout:
		out.Mode = syscall.S_IFCHR
		out.Rdev = 0
	case n.e.Type == "reg":
		out.Size = uint64(n.e.Size)
		out.Blocks = (out.Size + blockSize - 1) / blockSize
	case n.e.Type == "symlink":
		out.Size = uint64(len(n.e.LinkName))
		out.Mode = syscall.S_IFLNK | 0o777 // Linux symlinks have no permissions of their own
	case n.e.Type == "char" || n.e.Type == "block":
		out.Rdev = uint32(unix.Mkdev(uint32(n.e.DevMajor), uint32(n.e.DevMinor)))
	case n.e.Type == "dir":
		out.Size = 4096
	}
}

// Getattr reports the TOC's metadata.
func (n *node) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.fill(&out.Attr)
	out.SetTimeout(attrTimeout)
	return 0
}

// Open allows read-only opens of regular files.
func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if n.e.Type != "reg" || n.whiteout {
		return nil, 0, syscall.EINVAL
	}
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND) != 0 {
		return nil, 0, syscall.EROFS
	}
	return nil, fuse.FOPEN_KEEP_CACHE, 0
}

// Read returns verified bytes of the file, or EIO.
func (n *node) Read(ctx context.Context, f gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= n.e.Size {
		return fuse.ReadResultData(nil), 0
	}
	if rem := n.e.Size - off; int64(len(dest)) > rem {
		dest = dest[:rem]
	}
	got, err := n.t.l.ReadFile(ctx, n.e.Name, dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		if ctx.Err() != nil { // the reader was interrupted: let the kernel retry or give up
			return nil, syscall.EINTR
		}
		n.t.log.Error("eStargz read failed", "file", n.e.Name, "off", off, "len", len(dest), "err", err)
		return nil, syscall.EIO
	}
	return fuse.ReadResultData(dest[:got]), 0
}

// Readlink returns a symlink's target.
func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	if n.e.Type != "symlink" {
		return nil, syscall.EINVAL
	}
	return []byte(n.e.LinkName), 0
}

// Getxattr returns one extended attribute from the TOC.
func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	v, ok := n.xatt[attr]
	if !ok || n.whiteout {
		return 0, syscall.ENODATA
	}
	if len(dest) == 0 {
		return uint32(len(v)), 0
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

// Listxattr lists the entry's extended attribute names.
func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	if n.whiteout {
		return 0, 0
	}
	names := make([]string, 0, len(n.xatt))
	for k := range n.xatt {
		names = append(names, k)
	}
	sort.Strings(names)
	var buf []byte
	for _, k := range names {
		buf = append(buf, k...)
		buf = append(buf, 0)
	}
	if len(dest) == 0 {
		return uint32(len(buf)), 0
	}
	if len(dest) < len(buf) {
		return uint32(len(buf)), syscall.ERANGE
	}
	return uint32(copy(dest, buf)), 0
}

// Statfs reports a read-only filesystem the size of the blob.
func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize = 4096
	out.Frsize = 4096
	out.Blocks = uint64(n.t.l.size+4095) / 4096
	out.NameLen = 255
	return 0
}
