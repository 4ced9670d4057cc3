// Package mirror is the test harness of dfdaemon's registry mirror and its baseline
// tests: a real registry (Debian's docker-registry) behind a counting reverse proxy,
// generated multi-layer gzip images pushed to it, private containerd 1.6 and 2.x
// daemons with registry hosts configured through certs.d/<registry>/hosts.toml, and
// the clients that pull through them (ctr, crictl, nerdctl). Everything a test starts
// is owned by that test and stopped by t.Cleanup. See README.md.
package mirror

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ToolsDir is where .ci/install-go-tools puts the Go-built tools: $DFLY_GO_TOOLS,
// else $(go env GOPATH)/bin, else ~/go/bin.
func ToolsDir() string {
	if d := os.Getenv("DFLY_GO_TOOLS"); d != "" {
		return d
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		if gp, _, _ := strings.Cut(strings.TrimSpace(string(out)), ":"); gp != "" {
			return filepath.Join(gp, "bin")
		}
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, "go", "bin")
}

// findTool returns the path of a Go-built tool (crictl, nerdctl): ToolsDir first,
// then PATH; the error says how to get it.
func findTool(name string) (string, error) {
	p := filepath.Join(ToolsDir(), name)
	if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
		return p, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s not found in %s or PATH: build it with .ci/install-go-tools", name, ToolsDir())
}

// RequireRoot skips t unless it runs as root (containerd, mounts, namespaces).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mirror integration tests need root (containerd, overlay mounts, network namespaces); not running as root")
	}
}

// shortTempDir makes a temporary directory with a short path (unix socket paths are
// limited to 108 bytes, and t.TempDir paths hold the test name), removed at cleanup
// unless DFLY_KEEP_TEST_DIR is set.
func shortTempDir(t testing.TB, prefix string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatalf("create a temporary directory: %v", err)
	}
	t.Cleanup(func() {
		if os.Getenv("DFLY_KEEP_TEST_DIR") != "" {
			t.Logf("kept %s (DFLY_KEEP_TEST_DIR)", dir)
			return
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("remove %s: %v", dir, err)
		}
	})
	return dir
}

// proc is a child process. Its owner calls stop (registered with t.Cleanup by whoever
// starts it). The goroutine that waits for it is locked to the OS thread that started
// it, so that Pdeathsig (SIGKILL when the test binary dies) fires only when the test
// binary really dies, not when some other goroutine retires that thread.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // of Wait, valid after done
}

// startProc starts argv with output appended to logPath, in its own process group.
func startProc(logPath string, env []string, argv ...string) (*proc, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log of %s: %w", argv[0], err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &proc{name: filepath.Base(argv[0]), cmd: cmd, log: logPath, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			_ = lf.Close()
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		_ = lf.Close()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", strings.Join(argv, " "), err)
	}
	return p, nil
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig to the process and waits for it; after grace it kills its whole
// process group. Safe to call more than once.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// logTail returns the last n bytes of the process's log.
func (p *proc) logTail(n int) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", p.log, err)
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// waitUntil polls ok every 100 ms until it returns nil, the process p (if not nil)
// exits, or timeout passes; the error says what it waited for and the last failure.
func waitUntil(ctx context.Context, what string, timeout time.Duration, p *proc, ok func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := ok()
		if err == nil {
			return nil
		}
		if p != nil && p.exited() {
			return fmt.Errorf("%s: %s exited (%v) before it was ready; its log ends:\n%s", what, p.name, p.err, p.logTail(4000))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not ready after %v: %w", what, timeout, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// runCmd runs argv and returns its stdout; the error holds the command line, the exit
// status and stderr.
func runCmd(ctx context.Context, env []string, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = env
	cmd.WaitDelay = 5 * time.Second
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w\nstdout: %s\nstderr: %s", strings.Join(argv, " "), err,
			strings.TrimSpace(out.String()), strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// inNetNS returns argv run in network namespace ns (by name under /run/netns, "" =
// this one) with nsenter --net, which, unlike `ip netns exec`, keeps the mount
// namespace (mounts stay visible to containerd and the host).
func inNetNS(ns string, argv ...string) []string {
	if ns == "" {
		return argv
	}
	return append([]string{"nsenter", "--net=/run/netns/" + ns}, argv...)
}

// freeLoopbackAddr returns a 127.0.0.1 address with a port that was free a moment ago.
func freeLoopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free loopback port: %w", err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		return "", fmt.Errorf("find a free loopback port: %w", err)
	}
	return addr, nil
}

// ListenIn listens on TCP addr inside network namespace ns ("" = this one). The
// listener keeps the namespace it was created in; the calling thread returns to its
// own namespace (or, if that fails, is discarded with its goroutine).
func ListenIn(ns, addr string) (net.Listener, error) {
	if ns == "" {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", addr, err)
		}
		return l, nil
	}
	type result struct {
		l   net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("open this thread's network namespace: %w", err)}
			return
		}
		defer func() { _ = unix.Close(orig) }()
		fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("open network namespace %s (create it with ip netns add): %w", ns, err)}
			return
		}
		defer func() { _ = unix.Close(fd) }()
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("enter network namespace %s: %w", ns, err)}
			return
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			err = fmt.Errorf("listen on %s in network namespace %s: %w", addr, ns, err)
		}
		ch <- result{l, err}
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		} // else: stay locked; the thread ends with this goroutine
	}()
	r := <-ch
	return r.l, r.err
}

// NewNetNS creates a network namespace with only its loopback interface up, named
// "dfmr<pid>-<suffix>", and deletes it at cleanup (after killing what still runs in
// it). Traffic inside it never leaves the machine.
func NewNetNS(t testing.TB, suffix string) string {
	t.Helper()
	RequireRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skipf("network namespaces need ip (Debian package iproute2): %v", err)
	}
	if _, err := exec.LookPath("nsenter"); err != nil {
		t.Skipf("running in network namespaces needs nsenter (Debian package util-linux): %v", err)
	}
	ns := fmt.Sprintf("dfmr%d-%s", os.Getpid(), suffix)
	ctx := context.Background()
	if _, err := runCmd(ctx, nil, "ip", "netns", "add", ns); err != nil {
		t.Fatalf("create network namespace: %v", err)
	}
	t.Cleanup(func() {
		out, _ := runCmd(ctx, nil, "ip", "netns", "pids", ns)
		for _, f := range strings.Fields(out) {
			var pid int
			if _, err := fmt.Sscan(f, &pid); err == nil && pid > 0 && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		if _, err := runCmd(ctx, nil, "ip", "netns", "del", ns); err != nil {
			t.Errorf("delete network namespace %s: %v", ns, err)
		}
	})
	if _, err := runCmd(ctx, nil, "ip", "-n", ns, "link", "set", "lo", "up"); err != nil {
		t.Fatalf("bring up loopback in %s: %v", ns, err)
	}
	return ns
}
