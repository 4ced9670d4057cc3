package netbench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Proc is a process started inside a network namespace. Its stdout and
// stderr go to a log file; it can signal readiness by printing a line.
type Proc struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	started time.Time
	ended   time.Time     // valid after done
	cpu     time.Duration // user+system CPU time; valid after done

	ready chan struct{} // closed on the first line starting with the ready prefix
	done  chan struct{} // closed when the process has exited and was reaped
	err   error         // exit error, valid after done

	mu   sync.Mutex
	tail []string // last lines of output
	head []string // first lines of output
	n    int      // lines of output
}

// StartProc starts argv inside namespace ns (through `ip netns exec`, which
// execs the program, so the PID is the program's). readyPrefix, if not empty,
// is the start of the line that tells the program is ready (see WaitReady).
func StartProc(name, ns, logPath string, env []string, readyPrefix string, argv ...string) (*Proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: open log: %w", name, err)
	}
	args := append([]string{"netns", "exec", ns}, argv...)
	cmd := exec.Command("ip", args...)
	cmd.Env = append(os.Environ(), env...)
	// Own process group: a terminal Ctrl-C reaches only the harness, which
	// then stops its children in order; Stop signals the whole group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	p := &Proc{Name: name, LogPath: logPath, cmd: cmd, ready: make(chan struct{}), done: make(chan struct{})}
	p.started = time.Now()
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s (%s): %w", name, strings.Join(argv, " "), err)
	}
	copied := make(chan struct{})
	go func() { // owned by p: ends when the process's output is closed
		defer close(copied)
		defer logf.Close()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		isReady := false
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			p.record(line)
			if !isReady && readyPrefix != "" && strings.HasPrefix(line, readyPrefix) { // (not an indented usage line)
				isReady = true
				close(p.ready)
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	go func() { // owned by p: ends when the process exits
		p.err = cmd.Wait()
		p.ended = time.Now()
		if ps := cmd.ProcessState; ps != nil {
			p.cpu = ps.UserTime() + ps.SystemTime()
		}
		pw.Close()
		<-copied
		close(p.done)
	}()
	return p, nil
}

// PID is the process ID.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Started is when the process was started.
func (p *Proc) Started() time.Time { return p.started }

// Ended is when the process exited; valid after Done.
func (p *Proc) Ended() time.Time { return p.ended }

// CPU is the user+system CPU time the process used; valid after Done.
func (p *Proc) CPU() time.Duration { return p.cpu }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the exit error (nil for exit status 0); valid after Done.
func (p *Proc) Err() error { return p.err }

// Tail returns the last lines the process printed.
func (p *Proc) Tail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}

// record keeps line for Tail and Output.
func (p *Proc) record(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n++; len(p.head) < 3 {
		p.head = append(p.head, line)
	}
	p.tail = append(p.tail, line)
	if len(p.tail) > 20 {
		p.tail = p.tail[1:]
	}
}

// Output returns the first and the last lines of the output (where a
// program that fails says why: an error before its usage text, or after).
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch first := p.n - len(p.tail) + 1; { // line number of the tail's first line
	case first <= 1:
		return strings.Join(p.tail, "\n")
	case first <= len(p.head)+1:
		return strings.Join(p.head[:first-1], "\n") + "\n" + strings.Join(p.tail, "\n")
	default:
		return strings.Join(p.head, "\n") + "\n...\n" + strings.Join(p.tail, "\n")
	}
}

// WaitReady waits for the ready line, the process's exit (an error) or ctx.
func (p *Proc) WaitReady(ctx context.Context) error {
	select {
	case <-p.ready:
		return nil
	case <-p.done:
		return fmt.Errorf("%s exited before it was ready (%v); log %s:\n%s", p.Name, p.err, p.LogPath, p.Output())
	case <-ctx.Done():
		return fmt.Errorf("%s not ready: %w; log %s:\n%s", p.Name, ctx.Err(), p.LogPath, p.Tail())
	}
}

// Wait waits for the process to exit or ctx to end.
func (p *Proc) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		if p.err != nil {
			return fmt.Errorf("%s failed: %w; log %s:\n%s", p.Name, p.err, p.LogPath, p.Tail())
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s: %w", p.Name, ctx.Err())
	}
}

// Stop sends SIGTERM to the process group, then SIGKILL after grace, and
// waits until the process is reaped.
func (p *Proc) Stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = unix.Kill(-p.PID(), unix.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	_ = unix.Kill(-p.PID(), unix.SIGKILL)
	<-p.done
}

// Procs is a set of processes stopped together.
type Procs struct {
	mu    sync.Mutex
	procs []*Proc
}

// Add records p.
func (s *Procs) Add(p *Proc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.procs = append(s.procs, p)
}

// StopAll stops every process (in parallel, SIGKILL after the grace period)
// and reports those still alive afterwards. It returns the CPU time they
// used, summed by process name.
func (s *Procs) StopAll(grace time.Duration) (map[string]time.Duration, error) {
	s.mu.Lock()
	procs := s.procs
	s.procs = nil
	s.mu.Unlock()
	var wg sync.WaitGroup
	for i := len(procs) - 1; i >= 0; i-- {
		wg.Go(func() { procs[i].Stop(grace) })
	}
	wg.Wait()
	var errs []error
	cpu := map[string]time.Duration{}
	for _, p := range procs {
		cpu[p.Name] += p.CPU()
		if alive(p.PID()) {
			errs = append(errs, fmt.Errorf("%s (pid %d) still alive after stop", p.Name, p.PID()))
		}
	}
	return cpu, errors.Join(errs...)
}
