#!/usr/bin/env python3
"""ftpgate on a router that already has a firewall (needs root), following
docs/operations.md: the operator's own accept-based ruleset with drop policies stays in
charge; `ftpgate nft --apply` (run by the systemd unit's commands, which this lab runs as
written in deploy/systemd/ftpgate.service) joins it; one process from config/router.yaml
serves all three roles at once.

- Before and after ftpgate's rules are loaded: an HTTP request from the LAN to the
  internet and an SSH connection from the LAN to the router work; SSH from the internet
  stays closed (nothing of the operator's policy changes).
- `ftpgate nft` says which chains it joined; applying twice leaves one jump in each.
- The outbound, explicit and published roles at once, passive and active, SHA-256 checked.
- A simulated reboot (ftpgate stopped, ruleset flushed, the operator's ruleset loaded
  again, the unit's commands run again) brings everything back; ftpgate removed the policy
  routing it installed when it stopped, and installed it again.
- Without privileges, start-up fails and names the capability and the key.
The topology is described in lab.py. Exit status 0 when every check passed.
"""
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time

import lab

# The operator's ruleset before ftpgate: default drop, accepts for what the router is for.
OPERATOR_RULES = """
flush ruleset
table inet filter {
    chain input {
        type filter hook input priority filter; policy drop;
        iif "lo" accept
        ct state established,related accept
        iifname "lan0" tcp dport 22 accept
        meta l4proto { icmp, ipv6-icmp } accept
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan0" oifname "wan0" accept
    }
}
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" masquerade
    }
}
"""

OUTBOUND = lab.Path("lan", "203.0.113.10", 21, "anonymous")
EXPLICIT = lab.Path("lan", "10.0.0.1", 2122, "anonymous@203.0.113.10")
PUBLISH = lab.Path("inet", "203.0.113.1", 21, "anonymous")

UNIT = os.path.join(lab.REPO, "deploy", "systemd", "ftpgate.service")

# The SSH daemon of the router, as far as a firewall can tell: a banner on tcp/22.
BANNER = ("import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
          "s.bind(('0.0.0.0',22))\ns.listen()\nwhile True:\n c,_=s.accept()\n"
          " c.sendall(b'SSH-2.0-lab\\r\\n')\n c.close()\n")
READ_BANNER = ("import socket,sys\ntry:\n c=socket.create_connection((%r,22),2)\n"
               " sys.exit(0 if c.recv(64).startswith(b'SSH-2.0') else 1)\n"
               "except OSError:\n sys.exit(2)")

# Configurations whose privileges an unprivileged process lacks (splice, so that the
# kernel path is not what refuses first).
TRANSPARENT_ONLY = """gateways:
  - name: lan
    listen: "10.0.0.1:2121"
    upstream: transparent
    client_side: { address: 10.0.0.1, interface: lan0 }
    server_side: { address: 203.0.113.1, interface: wan0 }
    data_ports: "40000-40999"
    client_source: server
metrics: { listen: "127.0.0.1:9465" }
"""
PUBLISH_ON_21 = """gateways:
  - name: public
    listen: "203.0.113.1:21"
    upstream: "10.0.1.10:21"
    client_side: { address: 203.0.113.1 }
    server_side: { address: 10.0.1.1 }
    data_ports: "42000-42999"
metrics: { listen: "127.0.0.1:9465" }
"""


class Lab:
    def __init__(self, topo, binary, work):
        self.topo, self.binary, self.work = topo, binary, work
        self.results = []
        self.config = os.path.join(work, "ftpgate.yaml")
        self.admin = os.path.join(work, "admin.sock")
        with open(os.path.join(lab.REPO, "config", "router.yaml")) as f:
            text = f.read()
        # The shipped file, but for where its admin socket goes.
        with open(self.config, "w") as f:
            f.write(text.replace("/run/ftpgate/admin.sock", self.admin))
        self.daemon = None

    def check(self, name, ok, detail=""):
        self.results.append(bool(ok))
        print("%-60s %-4s %s" % (name, "ok" if ok else "FAIL", detail), flush=True)

    def rtr(self, cmd, **kw):
        return self.topo.run("rtr", cmd, capture_output=True, text=True, **kw)

    def unit_commands(self):
        """The unit's ExecStartPre and ExecStart lines, for this binary and config."""
        pre, start = [], None
        with open(UNIT) as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key not in ("ExecStartPre", "ExecStart"):
                    continue
                value = value.lstrip("+-")
                value = value.replace("/usr/local/bin/ftpgate", self.binary)
                value = value.replace("/etc/ftpgate/ftpgate.yaml", self.config)
                if key == "ExecStartPre":
                    pre.append(value.split())
                else:
                    start = value.split()
        return pre, start

    def start_unit(self, label):
        """What systemd does at `systemctl start ftpgate`."""
        pre, start = self.unit_commands()
        for cmd in pre:
            r = self.rtr(cmd, timeout=30)
            if r.returncode != 0:
                self.check("%s: %s" % (label, " ".join(cmd[:2])), False, r.stderr.strip()[-200:])
                return False
        self.daemon = self.topo.spawn("rtr", start, "ftpgate-%s.log" % label)
        for host, port in (("10.0.0.1", 2121), ("10.0.0.1", 2122), ("203.0.113.1", 21)):
            lab.wait_port(self.topo, "rtr", host, port)
        return True

    def stop_unit(self):
        self.topo.stop(self.daemon)
        return self.daemon.returncode

    def http_ok(self):
        r = self.topo.run("lan", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                  "--max-time", "5", "http://203.0.113.10:8080/"],
                          capture_output=True, text=True)
        return r.stdout.strip() == "200"

    def ssh(self, where, address):
        return self.topo.run(where, ["python3", "-c", READ_BANNER % address]).returncode

    def routers_own_traffic(self, when):
        self.check("%s: HTTP from the LAN to the internet" % when, self.http_ok())
        self.check("%s: SSH from the LAN to the router" % when, self.ssh("lan", "10.0.0.1") == 0)
        self.check("%s: SSH from the internet stays closed" % when,
                   self.ssh("inet", "203.0.113.1") != 0)

    def jumps(self, chain):
        r = self.rtr(["nft", "-j", "list", "chain", "inet", "filter", chain])
        rules = [i["rule"] for i in json.loads(r.stdout)["nftables"] if "rule" in i]
        return sum(1 for rule in rules for e in rule["expr"] if "jump" in e)

    def policy_rule(self):
        return self.rtr(["ip", "rule", "show", "fwmark", "1", "lookup", "100"]).stdout.strip()

    def three_roles_at_once(self, label, servers):
        inet_server, dmz_server = servers
        for mode in ("EPSV", "PORT"):
            client = lab.Client("curl", mode)
            cells = [("outbound", OUTBOUND, inet_server), ("explicit", EXPLICIT, inet_server),
                     ("publish", PUBLISH, dmz_server)]
            outcome = {}

            def cell(name, path, server):
                outcome[name] = lab.run_cell(self.topo, "%s-%s-%s" % (label, name, mode),
                                             client, path, server)

            threads = [threading.Thread(target=cell, args=c) for c in cells]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for name, _, _ in cells:
                ok, detail = outcome[name]
                self.check("%s: %s, curl %s (three roles at once)" % (label, name, mode), ok, detail)


def main():
    ap = lab.parser()
    args = ap.parse_args()
    lab.require_root_and_tools("router.py", ("setpriv",))
    work = tempfile.mkdtemp(prefix="ftpgate-router-")
    os.chmod(work, 0o755)
    topo = lab.Topology(work)
    l = Lab(topo, os.path.abspath(args.ftpgate), work)
    try:
        # No policy routing from the lab: ftpgate must install it itself.
        topo.up(policy_routing=False)
        topo.spawn("inet", ["python3", "-m", "http.server", "8080", "--bind", "203.0.113.10",
                            "--directory", work], "http.log")
        topo.spawn("rtr", ["python3", "-c", BANNER], "ssh.log")
        lab.wait_port(topo, "inet", "203.0.113.10", 8080)
        lab.wait_port(topo, "rtr", "127.0.0.1", 22)
        servers = (lab.Vsftpd(topo, "inet", "203.0.113.10"), lab.Vsftpd(topo, "dmz", "10.0.1.10"))

        topo.router_rules(text=OPERATOR_RULES)
        l.routers_own_traffic("operator's ruleset alone")

        # What ftpgate nft would load, and where.
        r = l.rtr([l.binary, "nft", "--config", l.config])
        l.check("ftpgate nft says which chains it joins",
                r.returncode == 0 and "joined inet filter input" in r.stderr
                and "joined inet filter forward" in r.stderr, r.stderr.strip().replace("\n", "; "))
        l.check("ftpgate nft: no base chain of its own drops",
                "policy drop" not in r.stdout and "flush ruleset" not in r.stdout)

        # systemctl start ftpgate, as the unit says.
        if not l.start_unit("boot1"):
            return lab.finish(work, l.results, args.keep, "router")
        l.check("ftpgate installed its policy routing", l.policy_rule() != "", l.policy_rule())
        # A reload (or a second start) applies the rules again: nothing is added twice.
        # (The kernel path's own table changes by itself; these do not.)
        tables = [["nft", "list", "table", "inet", t] for t in ("filter", "ftpgate_rules")]
        before = [l.rtr(t).stdout for t in tables]
        r = l.rtr([l.binary, "nft", "--config", l.config, "--apply"])
        after = [l.rtr(t).stdout for t in tables]
        l.check("applying twice leaves one jump in input and forward",
                r.returncode == 0 and (l.jumps("input"), l.jumps("forward")) == (1, 1),
                "jumps: input %d, forward %d" % (l.jumps("input"), l.jumps("forward")))
        l.check("applying twice changes nothing in inet filter and inet ftpgate_rules",
                before == after and "ftpgate_input" in after[0])
        l.routers_own_traffic("with ftpgate's rules")
        l.three_roles_at_once("boot1", servers)
        r = l.rtr([l.binary, "sessions", "--socket", l.admin])
        l.check("ftpgate sessions answers on the configured socket", r.returncode == 0,
                r.stderr.strip())

        # A reboot: the process ends, the ruleset and policy routing are gone; then
        # nftables.service loads the operator's ruleset and the unit starts ftpgate.
        code = l.stop_unit()
        l.check("ftpgate stops cleanly", code == 0, "exit %s" % code)
        l.check("stopping removed the policy routing it installed", l.policy_rule() == "",
                l.policy_rule())
        l.rtr(["nft", "flush", "ruleset"])
        topo.router_rules(text=OPERATOR_RULES)
        if not l.start_unit("boot2"):
            return lab.finish(work, l.results, args.keep, "router")
        l.check("after the reboot: one jump in input and forward",
                (l.jumps("input"), l.jumps("forward")) == (1, 1))
        l.check("after the reboot: policy routing installed again", l.policy_rule() != "")
        l.routers_own_traffic("after the reboot")
        l.three_roles_at_once("boot2", servers)
        l.stop_unit()

        # Privileges are checked at start-up, not at the first transfer.
        for name, text, wanted in (
                ("client_source: server without CAP_NET_ADMIN", TRANSPARENT_ONLY,
                 ("client_source", "CAP_NET_ADMIN")),
                ("a listener on port 21 without CAP_NET_BIND_SERVICE", PUBLISH_ON_21,
                 ("203.0.113.1:21", "CAP_NET_BIND_SERVICE")),
                ("relay: kernel without CAP_NET_ADMIN (config/router.yaml)", None,
                 ("relay: kernel", "CAP_NET_ADMIN"))):
            path = os.path.join(work, "unprivileged.yaml")
            if text is None:
                shutil.copy(os.path.join(lab.REPO, "config", "router.yaml"), path)
            else:
                with open(path, "w") as f:
                    f.write(text)
            os.chmod(path, 0o644)
            started = time.time()
            r = l.rtr(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                       "--inh-caps=-all", l.binary, "run", "--config", path], timeout=20)
            last = (r.stderr.strip().splitlines() or ["exit %d" % r.returncode])[-1]
            l.check("refused at start: " + name,
                    r.returncode != 0 and all(w in r.stderr for w in wanted)
                    and time.time() - started < 10, re.sub(r"\x1b\[[0-9;]*m", "", last)[-200:])
    finally:
        topo.down()
    return lab.finish(work, l.results, args.keep, "router")


if __name__ == "__main__":
    sys.exit(main())
