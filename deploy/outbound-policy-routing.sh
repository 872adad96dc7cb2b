#!/bin/sh
# Policy routing for client_source: server (config/outbound.yaml): packets marked by
# deploy/nftables/outbound.nft (answers to ftpgate's transparent sockets) are delivered
# locally instead of being forwarded. Idempotent.
set -eu
MARK=${MARK:-1}
TABLE=${TABLE:-100}
ip rule show | grep -q "fwmark 0x$(printf %x "$MARK") lookup $TABLE" ||
    ip rule add fwmark "$MARK" lookup "$TABLE"
ip route replace local 0.0.0.0/0 dev lo table "$TABLE"
if [ -e /proc/net/if_inet6 ]; then
    ip -6 rule show | grep -q "fwmark 0x$(printf %x "$MARK") lookup $TABLE" ||
        ip -6 rule add fwmark "$MARK" lookup "$TABLE"
    ip -6 route replace local ::/0 dev lo table "$TABLE"
fi
