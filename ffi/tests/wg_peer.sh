#!/usr/bin/env bash
# A wireguard-go peer for the C host test (ffi/tests/host_test.c), which calls it with
# system(): the same rig as tunpipe_testkit::wgpeer, in shell, for a C program.
#
#   wg_peer.sh up DIR    from the caller's network namespace (A): a namespace B joined to A
#                        by a veth (A 192.168.78.1, B 192.168.78.2), wireguard-go in B
#                        (10.78.0.2/24, UDP 51820) expecting the key it writes for A, and
#                        DIR/tunpipe.conf: the wg-quick text of A's end (10.78.0.1/24, UDP
#                        51821). The state goes to DIR/state.
#   wg_peer.sh down DIR  stops wireguard-go and deletes B (idempotent).
#
# wireguard-go's control socket is not per namespace: the interface name is unique per run.
set -euo pipefail
cmd=$1
dir=$2
sockdir=/var/run/wireguard

if [ "$cmd" = down ]; then
  [ -f "$dir/state" ] || exit 0
  # shellcheck disable=SC1091
  . "$dir/state"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.01; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$sockdir/$ifname.sock"
  ip netns del "$ns" 2>/dev/null || true
  rm -f "$dir/state"
  exit 0
fi

[ "$cmd" = up ] || { echo "usage: $0 up|down DIR" >&2; exit 2; }
id=$$
ns="tpcB$id"
ifname="tpcg$id"
ip netns add "$ns"
printf 'ns=%s\nifname=%s\npid=0\n' "$ns" "$ifname" >"$dir/state"
ip -n "$ns" link set lo up
ip link add tpcva type veth peer name tpcvb netns "$ns"
ip addr add 192.168.78.1/24 dev tpcva
ip link set tpcva up
ip -n "$ns" addr add 192.168.78.2/24 dev tpcvb
ip -n "$ns" link set tpcvb up

rm -f "$sockdir/$ifname.sock"
LOG_LEVEL=error ip netns exec "$ns" wireguard-go -f "$ifname" </dev/null >/dev/null 2>&1 &
pid=$!
printf 'ns=%s\nifname=%s\npid=%s\n' "$ns" "$ifname" "$pid" >"$dir/state"
for _ in $(seq 1 500); do
  [ -S "$sockdir/$ifname.sock" ] && ip netns exec "$ns" wg show "$ifname" >/dev/null 2>&1 && break
  sleep 0.01
done

umask 077
end_key=$(wg genkey)
peer_key=$(wg genkey)
printf '[Interface]\nPrivateKey = %s\nListenPort = 51820\n\n[Peer]\nPublicKey = %s\nAllowedIPs = 10.78.0.1/32\n' \
  "$peer_key" "$(wg pubkey <<<"$end_key")" | ip netns exec "$ns" wg setconf "$ifname" /dev/stdin
ip -n "$ns" addr add 10.78.0.2/24 dev "$ifname"
ip -n "$ns" link set "$ifname" mtu 1420 up

printf '# the C host test'"'"'s end\n[Interface]\nPrivateKey = %s\nAddress = 10.78.0.1/24\nListenPort = 51821\n\n[Peer]\nPublicKey = %s\nEndpoint = 192.168.78.2:51820\nAllowedIPs = 10.78.0.2/32\n' \
  "$end_key" "$(wg pubkey <<<"$peer_key")" >"$dir/tunpipe.conf"
