#!/bin/sh
# Regenerates the Go code for scheduler.proto with pinned generators.
# Requires protoc (Debian: protobuf-compiler). Installs the pinned plugins
# into $GEN_BIN (default: $(go env GOPATH)/bin) if they are missing or of
# another version, then runs protoc. Run from anywhere.
set -eu

PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.5.1

here=$(cd "$(dirname "$0")" && pwd)
GEN_BIN=${GEN_BIN:-$(go env GOPATH)/bin}
mkdir -p "$GEN_BIN"

command -v protoc >/dev/null 2>&1 || {
	echo "gen.sh: protoc not found; install it with: apt-get install -y protobuf-compiler" >&2
	exit 1
}

if ! "$GEN_BIN/protoc-gen-go" --version 2>/dev/null | grep -q "$PROTOC_GEN_GO_VERSION\$"; then
	GOBIN="$GEN_BIN" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
fi
if ! "$GEN_BIN/protoc-gen-go-grpc" --version 2>/dev/null | grep -q "${PROTOC_GEN_GO_GRPC_VERSION#v}\$"; then
	GOBIN="$GEN_BIN" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
fi

cd "$here"
PATH="$GEN_BIN:$PATH" protoc -I . \
	--go_out=. --go_opt=paths=source_relative \
	--go-grpc_out=. --go-grpc_opt=paths=source_relative \
	scheduler.proto
