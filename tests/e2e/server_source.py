#!/usr/bin/env python3
"""The published server sees the real client address (`server_source: client`), needs root.

The router publishes the DMZ's vsftpd (defaults: `pasv_promiscuous=NO`,
`port_promiscuous=NO`, so it checks that data peers are the control peer) on its public
address; its rules come from `ftpgate nft --full` for the lab's configuration, and the
daemon installs its own policy routing. Internet clients at two addresses use curl in
EPSV, PASV, EPRT and PORT; every file is checked by SHA-256; vsftpd's own log must name the
clients' addresses and never the gateway's, as it does behind the kernel's FTP helper with
DNAT (the baseline, in the same run). The topology is described in lab.py. Exit
status 0 when every check passed.
"""
import os
import subprocess
import sys
import tempfile
import time

import lab
from interop import KERNEL_RULES

CONFIG = """gateways:
  - name: public
    listen: "203.0.113.1:21"
    upstream: "10.0.1.10:21"
    client_side: { address: 203.0.113.1, interface: wan0 }
    server_side: { address: 10.0.1.1, interface: dmz0 }
    data_ports: "42000-42099"
    server_source: client
    relay: %(relay)s
  - name: public-pure
    listen: "203.0.113.1:2121"
    upstream: "10.0.1.10:2121"
    client_side: { address: 203.0.113.1, interface: wan0 }
    server_side: { address: 10.0.1.1, interface: dmz0 }
    data_ports: "42100-42199"
    server_source: client
    relay: %(relay)s
metrics:
  listen: "127.0.0.1:9464"
admin:
  socket: %(admin)s
log:
  level: info
"""

PUBLISH = lab.Path("inet", "203.0.113.1", 21, "anonymous")
PUBLISH_PURE = lab.Path("inet", "203.0.113.1", 2121, "anonymous")

# A control session kept open from the internet host, for `ftpgate sessions`.
HOLD = ("import socket,time\ns=socket.create_connection(('203.0.113.1',21))\n"
        "s.recv(100)\ntime.sleep(3)\n")
SECOND = "203.0.113.11"


class LoggingVsftpd(lab.Vsftpd):
    """vsftpd with its log on: it names each client's address."""

    def command(self):
        cmd = super().command()
        conf = cmd[1]
        with open(conf) as f:
            text = f.read()
        text = text.replace("xferlog_enable=NO", "xferlog_enable=YES\nxferlog_std_format=NO")
        with open(conf, "w") as f:
            f.write(text)
        return cmd

    def log(self):
        path = os.path.join(self.topo.work, "vsftpd-%s.log" % self.where)
        with open(path, errors="replace") as f:
            return f.read()


def main():
    ap = lab.parser()
    args = ap.parse_args()
    lab.require_root_and_tools("server_source.py")
    work = tempfile.mkdtemp(prefix="ftpgate-srcsrv-")
    os.chmod(work, 0o755)
    topo = lab.Topology(work)
    results = []

    def check(name, ok, detail=""):
        results.append(bool(ok))
        print("%-58s %-4s %s" % (name, "ok" if ok else "FAIL", detail), flush=True)

    binary = os.path.abspath(args.ftpgate)
    admin = os.path.join(work, "admin.sock")
    try:
        topo.up(policy_routing=False)
        topo.ip("-n", topo.ns["inet"], "addr", "add", SECOND + "/24", "dev", "eth0")
        server = LoggingVsftpd(topo, "dmz", "10.0.1.10")
        pure = lab.PureFtpd(topo, "dmz", "10.0.1.10", port=2121)
        for relay in ("splice", "kernel"):
            config = os.path.join(work, "publish-%s.yaml" % relay)
            with open(config, "w") as f:
                f.write(CONFIG % {"admin": admin, "relay": relay})
            rules = subprocess.run([binary, "nft", "--full", "--config", config],
                                   capture_output=True, text=True, check=True).stdout
            topo.router_rules(text=rules)
            gw = topo.spawn("rtr", [binary, "run", "--config", config], "ftpgate-%s.log" % relay)
            lab.wait_port(topo, "rtr", "203.0.113.1", 21)
            seen = len(server.log())
            for mode in ("EPSV", "PASV", "EPRT", "PORT"):
                ok, detail = lab.run_cell(topo, "%s-%s" % (relay, mode),
                                          lab.Client("curl", mode), PUBLISH, server)
                check("%s: vsftpd, curl %s" % (relay, mode), ok, detail)
            for mode in ("EPSV", "PORT"):
                ok, detail = lab.run_cell(topo, "%s-pure-%s" % (relay, mode),
                                          lab.Client("curl", mode), PUBLISH_PURE, pure)
                check("%s: pure-ftpd, curl %s" % (relay, mode), ok, detail)
            # ftpgate sessions shows the source used toward the server.
            hold = topo.spawn("inet", ["python3", "-c", HOLD], "hold.log")
            time.sleep(1)
            r = topo.run("rtr", [binary, "sessions", "--socket", admin], capture_output=True,
                         text=True)
            topo.stop(hold)
            check("%s: ftpgate sessions shows the client's address as source" % relay,
                  "source=203.0.113.10:" in r.stdout, r.stdout.strip().replace("\n", "; "))
            # A second client, from another address.
            out = os.path.join(work, "second-%s.bin" % relay)
            r = topo.run("inet", ["curl", "-sS", "--max-time", "20", "--interface", SECOND,
                                  "-o", out, "ftp://203.0.113.1/down.bin"],
                         capture_output=True, text=True)
            check("%s: a second client from %s" % (relay, SECOND),
                  r.returncode == 0 and lab.sha256_file(out) == server.down_sha,
                  r.stderr.strip())
            log = server.log()[seen:]
            check("%s: vsftpd's log names the first client" % relay, '"203.0.113.10"' in log)
            check("%s: vsftpd's log names the second client" % relay, '"%s"' % SECOND in log)
            check("%s: vsftpd's log never names the gateway" % relay, '"10.0.1.1"' not in log,
                  "%d lines" % len(log.splitlines()))
            if relay == "kernel":
                # Without the policy routing (removed by hand): a clear refusal, no hang.
                for family in ("-4", "-6"):
                    topo.run("rtr", ["ip", family, "rule", "del", "fwmark", "1", "lookup",
                                     "100"], capture_output=True)
                r = topo.run("inet", ["curl", "-sS", "-v", "--max-time", "40",
                                      "ftp://203.0.113.1/down.bin", "-o", "/dev/null"],
                             capture_output=True, text=True)
                check("without its policy routing a session fails with 421, no hang",
                      r.returncode != 0 and "< 421" in r.stderr,
                      (r.stderr.strip().splitlines() or [""])[-1][:150])
            topo.stop(gw)
            with open(os.path.join(work, "ftpgate-%s.log" % relay), errors="replace") as f:
                gwlog = f.read()
            carried = gwlog.count('path="%s"' % relay)
            check("%s: every transfer carried by %s" % (relay, relay),
                  carried >= 18 and gwlog.count("ftpgate::transfer") == carried,
                  "%d transfer lines" % carried)
        # The baseline, in the same run: the kernel's FTP helper behind DNAT.
        seen = len(server.log())
        topo.router_rules(text=KERNEL_RULES)
        for mode in ("EPSV", "PORT"):
            ok, detail = lab.run_cell(topo, "helper-%s" % mode, lab.Client("curl", mode),
                                      PUBLISH, server)
            check("kernel helper (DNAT), curl %s" % mode, ok, detail)
        check("behind the helper too, vsftpd's log names the client",
              '"203.0.113.10"' in server.log()[seen:])
    finally:
        topo.down()
    return lab.finish(work, results, args.keep, "server_source")


if __name__ == "__main__":
    sys.exit(main())
