// Package readyproc starts a binary for an integration test and waits for
// its ready line: stdout is scanned for a line starting with a prefix,
// stderr goes to a log file, and the process dies with the test binary
// (Pdeathsig). The swarm and mirror tests share it.
package readyproc

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// Proc is a started binary.
type Proc struct {
	Name string
	Log  string // its stderr
	Cmd  *exec.Cmd
	done chan struct{}
	err  error // of Wait, valid once Done is closed
}

// Start runs argv with stderr to logPath and returns once a line of its
// stdout starts with ready (that line is returned), or an error when it
// exits first or is not ready within timeout (then it is killed).
func Start(name, logPath, ready string, timeout time.Duration, argv ...string) (*Proc, string, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, "", fmt.Errorf("create the log of %s: %w", name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = lf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		lf.Close()
		return nil, "", err
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &Proc{Name: name, Log: logPath, Cmd: cmd, done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		// Pdeathsig fires when the thread that started the child exits: keep
		// this goroutine on its thread for the child's life.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			lf.Close()
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, "", fmt.Errorf("start %s: %w", name, err)
	}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sent := false
		for sc.Scan() {
			if !sent && strings.HasPrefix(sc.Text(), ready) {
				lines <- sc.Text()
				sent = true
			}
		}
		if !sent {
			close(lines)
		}
	}()
	select {
	case line, ok := <-lines:
		if !ok {
			<-p.done
			return nil, "", fmt.Errorf("%s exited before it was ready (%v):\n%s", name, p.err, p.LogTail(6000))
		}
		return p, line, nil
	case <-time.After(timeout):
		p.Kill()
		return nil, "", fmt.Errorf("%s not ready within %v:\n%s", name, timeout, p.LogTail(6000))
	}
}

// Fields parses the key=value words of a ready line.
func Fields(line string) map[string]string {
	m := map[string]string{}
	for _, f := range strings.Fields(line) {
		if k, v, ok := strings.Cut(f, "="); ok {
			m[k] = v
		}
	}
	return m
}

// Done is closed when the process has exited; Err is then Wait's error.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the process's exit error (valid after Done).
func (p *Proc) Err() error { return p.err }

// Stop sends SIGTERM and waits; after grace it kills the process group.
// Safe to call more than once.
func (p *Proc) Stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.Kill()
	}
}

// Kill ends the process group at once, as a crash would, and waits.
func (p *Proc) Kill() {
	_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// LogTail is the last n bytes of the process's log.
func (p *Proc) LogTail(n int) string {
	b, err := os.ReadFile(p.Log)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", p.Log, err)
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
