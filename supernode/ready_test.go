package supernode

import (
	"context"
	"strings"
	"testing"
)

// TestReady: a started supernode is ready; a closed one is not, and says
// why; a cancelled check is not ready either.
func TestReady(t *testing.T) {
	sn := startSupernode(t, t.TempDir(), SchedulerConfig{})
	if err := sn.Ready(context.Background()); err != nil {
		t.Fatalf("a running supernode is not ready: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := sn.Ready(ctx); err == nil {
		t.Fatal("ready with a cancelled context")
	}
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sn.Ready(context.Background()); err == nil || !strings.Contains(err.Error(), "shutting down") {
		t.Fatalf("a closed supernode: %v, want not ready (shutting down)", err)
	}
}

// TestReadyWhenGRPCStopped: a gRPC server that stopped serving makes the
// supernode not ready though the rest runs.
func TestReadyWhenGRPCStopped(t *testing.T) {
	sn := startSupernode(t, t.TempDir(), SchedulerConfig{})
	defer sn.Close()
	sn.grpcSrv.Stop()
	<-sn.grpcDone
	if err := sn.Ready(context.Background()); err == nil || !strings.Contains(err.Error(), "gRPC") {
		t.Fatalf("gRPC stopped: %v, want not ready naming gRPC", err)
	}
}

// TestReadyWhenStoreClosed: a closed store makes the supernode not ready.
func TestReadyWhenStoreClosed(t *testing.T) {
	sn := startSupernode(t, t.TempDir(), SchedulerConfig{})
	defer sn.Close()
	if err := sn.store.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sn.Ready(context.Background()); err == nil || !strings.Contains(err.Error(), "store") {
		t.Fatalf("store closed: %v, want not ready naming the store", err)
	}
}
