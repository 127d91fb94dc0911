#!/usr/bin/env bash
# Two wireguard-go peers for the WireGuardKit host test (ffi/tests/wgkit_test.c), which calls
# it with system(): wg_peer.sh's rig, with a second peer in a namespace of its own.
#
#   wgkit_peers.sh up DIR    from the caller's network namespace (A): namespace B joined to A
#                            by a veth (A 192.168.79.1, B 192.168.79.2) with wireguard-go
#                            (10.79.0.2/24, UDP 51820), and namespace C by another (A
#                            192.168.80.1, C 192.168.80.2) with wireguard-go (10.79.0.3/24,
#                            UDP 51830). Both expect the key A's end has; neither knows A's
#                            endpoint (they learn it from its handshakes). DIR/keys holds, in
#                            hex as WireGuardKit writes keys: end_private, peer1_public,
#                            peer2_public. The state goes to DIR/state.
#   wgkit_peers.sh down DIR  stops both and deletes B and C (idempotent).
#
# wireguard-go's control socket is not per namespace: the interface names are unique per run.
set -euo pipefail
cmd=$1
dir=$2
sockdir=/var/run/wireguard

if [ "$cmd" = down ]; then
  [ -f "$dir/state" ] || exit 0
  # shellcheck disable=SC1091
  . "$dir/state"
  for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in $pids; do
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.01; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  for ifname in $ifnames; do rm -f "$sockdir/$ifname.sock"; done
  for ns in $namespaces; do ip netns del "$ns" 2>/dev/null || true; done
  rm -f "$dir/state"
  exit 0
fi

[ "$cmd" = up ] || { echo "usage: $0 up|down DIR" >&2; exit 2; }
id=$$
namespaces=""
ifnames=""
pids=""
save() { printf 'namespaces="%s"\nifnames="%s"\npids="%s"\n' "$namespaces" "$ifnames" "$pids" >"$dir/state"; }
hex() { base64 -d <<<"$1" | od -An -tx1 -v | tr -d ' \n'; }

umask 077
end_key=$(wg genkey)
end_public=$(wg pubkey <<<"$end_key")

# peer NAME UNDERLAY_NET TUNNEL_ADDRESS PORT: a namespace with wireguard-go in it, joined to
# A by a veth (A .1, the namespace .2 of UNDERLAY_NET); sets peer_public to its public key.
# (Not a command substitution: the state it saves must reach this shell.)
peer() {
  local name=$1 net=$2 address=$3 port=$4
  local ns="tpk$name$id" ifname="tpk$name$id" key
  ip netns add "$ns"
  namespaces="$namespaces $ns"
  save
  ip -n "$ns" link set lo up
  ip link add "tpkv$name" type veth peer name "tpkw$name" netns "$ns"
  ip addr add "$net.1/24" dev "tpkv$name"
  ip link set "tpkv$name" up
  ip -n "$ns" addr add "$net.2/24" dev "tpkw$name"
  ip -n "$ns" link set "tpkw$name" up
  rm -f "$sockdir/$ifname.sock"
  LOG_LEVEL=error ip netns exec "$ns" wireguard-go -f "$ifname" </dev/null >/dev/null 2>&1 &
  pids="$pids $!"
  ifnames="$ifnames $ifname"
  save
  for _ in $(seq 1 500); do
    [ -S "$sockdir/$ifname.sock" ] && ip netns exec "$ns" wg show "$ifname" >/dev/null 2>&1 && break
    sleep 0.01
  done
  key=$(wg genkey)
  printf '[Interface]\nPrivateKey = %s\nListenPort = %s\n\n[Peer]\nPublicKey = %s\nAllowedIPs = 10.79.0.1/32\n' \
    "$key" "$port" "$end_public" | ip netns exec "$ns" wg setconf "$ifname" /dev/stdin
  ip -n "$ns" addr add "$address/24" dev "$ifname"
  ip -n "$ns" link set "$ifname" mtu 1420 up
  peer_public=$(wg pubkey <<<"$key")
}

peer b 192.168.79 10.79.0.2 51820
peer1=$peer_public
peer c 192.168.80 10.79.0.3 51830
peer2=$peer_public
printf 'end_private=%s\npeer1_public=%s\npeer2_public=%s\n' \
  "$(hex "$end_key")" "$(hex "$peer1")" "$(hex "$peer2")" >"$dir/keys"
