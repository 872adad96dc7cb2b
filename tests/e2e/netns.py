#!/usr/bin/env python3
"""End-to-end tests of ftpgate's three roles in network namespaces (needs root).

With ftpgate the router's forward chain drops everything, so ftpgate is the only path;
the router loads the very nftables files and configurations shipped in deploy/ and
config/. Without ftpgate (a NAT router with no FTP helper) the cells that NAT breaks must
fail, and fail at the data connection. vsftpd serves; curl and lftp are the clients,
active and passive; every file is checked by SHA-256. Exit status 0 when every cell had
its expected outcome. The topology is described in lab.py.
"""
import sys
import tempfile
import time

import lab

# A NAT router without any FTP helper: LAN and DMZ may go out, port 21 is published to
# the DMZ server. This is the setup whose FTP breakage ftpgate exists to fix.
PLAIN_NAT_RULES = """
table inet plain_nat {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan0" oifname "wan0" accept
        iifname "dmz0" oifname "wan0" accept
        ct status dnat accept
    }
    chain prerouting {
        type nat hook prerouting priority dstnat;
        iifname "wan0" ip daddr 203.0.113.1 tcp dport 21 dnat ip to 10.0.1.10:21
    }
    chain postrouting {
        type nat hook postrouting priority srcnat;
        oifname "wan0" masquerade
    }
}
"""

OUTBOUND = lab.Path("lan", "203.0.113.10", 21, "anonymous")
PUBLISH = lab.Path("inet", "203.0.113.1", 21, "anonymous")
EXPLICIT = lab.Path("lan", "10.0.0.1", 2121, "anonymous@203.0.113.10")

CLIENTS = [lab.Client("curl", "EPSV"), lab.Client("curl", "PORT"),
           lab.Client("lftp", "PASV"), lab.Client("lftp", "PORT")]


def main():
    ap = lab.parser()
    args = ap.parse_args()
    lab.require_root_and_tools("netns.py")

    work = tempfile.mkdtemp(prefix="ftpgate-e2e-")
    topo = lab.Topology(work)
    results = []

    def run_cells(group, name, path, server, clients, expect_ok):
        for client in clients:
            tag = "%s-%s-%s-%s" % (group, name, client.tool, client.mode)
            ok, detail = lab.run_cell(topo, tag, client, path, server,
                                      timeout=20 if expect_ok(client) else 10)
            if not expect_ok(client) and not ok and lab.DATA_CONNECTION_FAILED not in detail:
                # A cell expected to fail must fail for the reason NAT gives.
                detail, ok = "failed for another reason: " + detail, None
            good = ok == expect_ok(client)
            results.append(good)
            print("%-8s %-9s %-10s expected %-4s got %-4s %s" % (
                group, name, client.label, "ok" if expect_ok(client) else "fail",
                {True: "ok", False: "fail", None: "?"}[ok], detail), flush=True)

    def check(name, ok, detail):
        results.append(ok)
        print("%-8s %-9s %-10s %-23s %s" % ("metrics", name, "", "ok" if ok else "FAIL", detail),
              flush=True)

    def check_metrics(name):
        """After the cells: the counters moved by exactly what the cells did (every cell
        stored one file and retrieved one, plus a listing; one rewrite per data channel)."""
        time.sleep(0.3)
        m = lab.scrape(topo)
        cells = len(CLIENTS)
        up = lab.metric(m, "ftpgate_relayed_bytes_total", direction="to_server")
        down = lab.metric(m, "ftpgate_relayed_bytes_total", direction="to_client")
        check(name, up == cells * lab.UP_SIZE, "to_server %s = %d STORs of %d B" % (up, cells, lab.UP_SIZE))
        check(name, down is not None and 0 <= down - cells * lab.DOWN_SIZE < 65536,
              "to_client %s = %d RETRs of %d B + listings" % (down, cells, lab.DOWN_SIZE))
        channels = lab.metric(m, "ftpgate_data_channels_total", outcome="ok")
        check(name, channels == 3 * cells, "data channels ok %s (3 per cell)" % channels)
        rewrites = lab.metric(m, "ftpgate_rewrites_total")
        check(name, rewrites == 3 * cells, "rewrites %s (one per data channel)" % rewrites)
        idle = (lab.metric(m, "ftpgate_sessions_active"), lab.metric(m, "ftpgate_data_ports_in_use"))
        check(name, idle == (0, 0), "sessions active, data ports in use: %s" % (idle,))

    def through_ftpgate(name, config, listen, path, server, files=(), text=None):
        topo.router_rules(text=text, files=files)
        gw = lab.Ftpgate(topo, args.ftpgate, config, name, listen)
        run_cells("ftpgate", name, path, server, CLIENTS, lambda c: True)
        check_metrics(name)
        gw.stop()
        with open(gw.log, errors="replace") as f:
            log = f.read()
        transfers = [l for l in log.splitlines() if "ftpgate::transfer" in l and "complete" in l]
        check(name, len(transfers) == 3 * len(CLIENTS),
              "%d transfer log lines (one per data transfer)" % len(transfers))
        # Clients log in with password "guest": it must never reach the log.
        check(name, "guest" not in log, "the password never appears in the log")

    try:
        topo.up()
        inet_server = lab.Vsftpd(topo, "inet", "203.0.113.10")
        dmz_server = lab.Vsftpd(topo, "dmz", "10.0.1.10")
        curl_only = [c for c in CLIENTS if c.tool == "curl"]

        # 1. The problem: a NAT router without an FTP helper.
        topo.router_rules(text=PLAIN_NAT_RULES)
        run_cells("no-alg", "outbound", OUTBOUND, inet_server, curl_only,
                  lambda c: c.mode in ("PASV", "EPSV"))
        run_cells("no-alg", "publish", PUBLISH, dmz_server, curl_only,
                  lambda c: c.mode in ("PORT", "EPRT"))

        # 2. Outbound transparent through ftpgate (REDIRECT, then TPROXY), forward closed.
        through_ftpgate("outbound", "config/outbound.yaml", "10.0.0.1:2121", OUTBOUND,
                        inet_server, files=["deploy/nftables/outbound.nft"])
        through_ftpgate("tproxy", "config/outbound-tproxy.yaml", "10.0.0.1:2121", OUTBOUND,
                        inet_server, files=["deploy/nftables/outbound-tproxy.nft"])
        # 3. Publish through ftpgate, forward chain closed.
        through_ftpgate("publish", "config/publish.yaml", "203.0.113.1:21", PUBLISH,
                        dmz_server, files=["deploy/nftables/publish.nft"])
        # 4. Explicit proxy: no rules but a closed forward chain.
        through_ftpgate("explicit", "config/explicit.yaml", "10.0.0.1:2121", EXPLICIT,
                        inet_server, text=lab.FORWARD_DROP_RULES)
    finally:
        topo.down()
    sys.exit(lab.finish(work, results, args.keep, "netns"))


if __name__ == "__main__":
    main()
