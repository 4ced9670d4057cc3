package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// procs starts child processes and stops every one of them on Stop.
type procs struct {
	mu   sync.Mutex
	list []*proc
	logs string
}

// proc is one started process; exited is closed once Wait returned.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

// start runs bin with args, logging to logs/NAME.log, and waits until a
// line of its stdout or stderr starts with ready (or it exits, or 60s pass).
func (p *procs) start(ctx context.Context, name, bin string, ready string, args ...string) (*exec.Cmd, string, error) {
	logf, err := os.Create(filepath.Join(p.logs, name+".log"))
	if err != nil {
		return nil, "", err
	}
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw := io.Pipe()
	cmd.Stdout = io.MultiWriter(pw, logf)
	cmd.Stderr = io.MultiWriter(pw, logf)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, "", fmt.Errorf("start %s: %w", name, err)
	}
	pr0 := &proc{cmd: cmd, exited: make(chan struct{})}
	p.mu.Lock()
	p.list = append(p.list, pr0)
	p.mu.Unlock()
	lines := make(chan string, 16)
	go func() { // drains the pipe for the life of the process
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		close(lines)
	}()
	go func() { // closes the pipe when the process exits
		_ = cmd.Wait()
		pw.Close()
		logf.Close()
		close(pr0.exited)
	}()
	timeout := time.NewTimer(60 * time.Second)
	defer timeout.Stop()
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				return nil, "", fmt.Errorf("%s exited before it was ready; see %s", name, logf.Name())
			}
			if strings.HasPrefix(l, ready) {
				go func() { // keep draining
					for range lines {
					}
				}()
				return cmd, l, nil
			}
		case <-timeout.C:
			return nil, "", fmt.Errorf("%s not ready after 60s; see %s", name, logf.Name())
		case <-ctx.Done():
			return nil, "", ctx.Err()
		}
	}
}

// stop sends SIGTERM to every process group, then SIGKILL after a grace
// period, and waits for every process to be reaped.
func (p *procs) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.list {
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, c := range p.list {
		select {
		case <-c.exited:
		case <-time.After(time.Until(deadline)):
			_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
			<-c.exited
		}
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL) // stragglers in the group
	}
	p.list = nil
}
