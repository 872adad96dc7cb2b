#!/usr/bin/env python3
"""End-to-end tests of ftpgate in network namespaces (needs root).

Topology (every address lives only inside namespaces this script creates):

    lan 10.0.0.2 --eth0-- lan0 10.0.0.1 [ router ] wan0 203.0.113.1 --eth0-- inet 203.0.113.10
                                           dmz0 10.0.1.1 --eth0-- dmz 10.0.1.10

The internet host has no route to private space, as on the real internet. With ftpgate
the router's forward chain drops everything, so ftpgate is the only path; the router
loads the very nftables files and configurations shipped in deploy/ and config/.
Without ftpgate (a NAT router with no FTP helper) the cells that NAT breaks must fail.

Every download and upload is checked by SHA-256 on both ends. Exit status 0 when every
cell had its expected outcome.
"""
import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DOWN_SIZE = 3 * 1024 * 1024 + 11
UP_SIZE = 2 * 1024 * 1024 + 5

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

# The explicit role needs no rules; the forward chain is closed to prove it.
FORWARD_DROP_RULES = """
table inet closed {
    chain forward { type filter hook forward priority filter; policy drop; }
}
"""


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def random_file(path, size):
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    return sha256_file(path)


class Topology:
    def __init__(self, work):
        tag = "fg%d" % (os.getpid() % 100000)
        self.ns = {role: "%s-%s" % (tag, role) for role in ("lan", "rtr", "inet", "dmz")}
        self.work = work
        self.procs = []

    def ip(self, *args):
        subprocess.run(["ip", *args], check=True)

    def run(self, where, cmd, **kw):
        return subprocess.run(["ip", "netns", "exec", self.ns[where], *cmd], **kw)

    def up(self):
        for name in self.ns.values():
            self.ip("netns", "add", name)
            self.ip("-n", name, "link", "set", "lo", "up")
        rtr = self.ns["rtr"]
        for side, peer, rtr_addr, peer_addr in (
            ("lan0", "lan", "10.0.0.1/24", "10.0.0.2/24"),
            ("wan0", "inet", "203.0.113.1/24", "203.0.113.10/24"),
            ("dmz0", "dmz", "10.0.1.1/24", "10.0.1.10/24"),
        ):
            self.ip("link", "add", side, "netns", rtr, "type", "veth",
                    "peer", "name", "eth0", "netns", self.ns[peer])
            self.ip("-n", rtr, "addr", "add", rtr_addr, "dev", side)
            self.ip("-n", rtr, "link", "set", side, "up")
            self.ip("-n", self.ns[peer], "addr", "add", peer_addr, "dev", "eth0")
            self.ip("-n", self.ns[peer], "link", "set", "eth0", "up")
        self.ip("-n", self.ns["lan"], "route", "add", "default", "via", "10.0.0.1")
        self.ip("-n", self.ns["dmz"], "route", "add", "default", "via", "10.0.1.1")
        self.run("rtr", ["sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)

    def spawn(self, where, cmd, log_name):
        log = open(os.path.join(self.work, log_name), "wb")
        p = subprocess.Popen(["ip", "netns", "exec", self.ns[where], *cmd],
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def router_rules(self, text=None, files=()):
        self.run("rtr", ["nft", "flush", "ruleset"], check=True)
        for f in files:
            self.run("rtr", ["nft", "-f", f], check=True)
        if text:
            self.run("rtr", ["nft", "-f", "-"], input=text.encode(), check=True)

    def down(self):
        for p in self.procs:
            try:
                self.stop(p)
            except ProcessLookupError:
                pass
        for name in self.ns.values():
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
            for pid in pids.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)


class Vsftpd:
    """vsftpd with anonymous download from / and upload into /upload."""

    def __init__(self, topo, where, address):
        self.root = os.path.join(topo.work, "ftproot-" + where)
        os.makedirs(os.path.join(self.root, "upload"))
        os.chmod(topo.work, 0o755)
        os.chmod(self.root, 0o755)
        shutil.chown(os.path.join(self.root, "upload"), "ftp", "ftp")
        empty = os.path.join(topo.work, "empty")
        os.makedirs(empty, exist_ok=True)
        conf = os.path.join(topo.work, "vsftpd-%s.conf" % where)
        with open(conf, "w") as f:
            f.write("\n".join([
                "listen=YES", "listen_ipv6=NO", "listen_address=" + address,
                "background=NO", "anonymous_enable=YES", "local_enable=NO",
                "write_enable=YES", "anon_upload_enable=YES", "anon_umask=022",
                "no_anon_password=YES", "anon_root=" + self.root,
                "pasv_enable=YES", "pasv_min_port=30000", "pasv_max_port=30999",
                "port_enable=YES", "connect_from_port_20=YES",
                "secure_chroot_dir=" + empty, "seccomp_sandbox=NO",
                "xferlog_enable=NO", "dirmessage_enable=NO", "hide_ids=YES",
                "vsftpd_log_file=" + os.path.join(topo.work, "vsftpd-%s.log" % where),
                "",
            ]))
        self.proc = topo.spawn(where, ["vsftpd", conf], "vsftpd-%s.out" % where)
        wait_port(topo, where, address, 21)
        self.down_sha = random_file(os.path.join(self.root, "down.bin"), DOWN_SIZE)
        os.chmod(os.path.join(self.root, "down.bin"), 0o644)


def wait_port(topo, where, host, port, timeout=10):
    probe = ("import socket,sys\ns=socket.socket()\ns.settimeout(1)\n"
             "sys.exit(s.connect_ex((%r,%d)))" % (host, port))
    deadline = time.time() + timeout
    while time.time() < deadline:
        if topo.run(where, ["python3", "-c", probe]).returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("nothing listens on %s:%d in %s" % (host, port, where))


class Ftpgate:
    def __init__(self, topo, binary, config, name, listen):
        self.proc = topo.spawn("rtr", [binary, "run", "--config", config], "ftpgate-%s.log" % name)
        self.log = os.path.join(topo.work, "ftpgate-%s.log" % name)
        host, port = listen.rsplit(":", 1)
        wait_port(topo, "rtr", host, int(port))


# Each client namespace's own address (curl's "--ftp-port -" is unreliable in 7.88).
CLIENT_ADDRESS = {"lan": "10.0.0.2", "inet": "203.0.113.10"}


def curl(topo, where, url, mode, extra, timeout=30):
    args = ["curl", "-sS", "-v", "--max-time", str(timeout), "--connect-timeout", "5"]
    args += ["--ftp-pasv"] if mode == "passive" else ["--ftp-port", CLIENT_ADDRESS[where]]
    return topo.run(where, args + extra + [url], capture_output=True, timeout=timeout + 10)


def lftp(topo, where, host, port, user, mode, commands, timeout=60):
    script = "; ".join([
        "set cmd:fail-exit yes", "set net:max-retries 1", "set net:timeout 15",
        "set net:reconnect-interval-base 1",
        "set ftp:passive-mode %s" % ("on" if mode == "passive" else "off"),
        "open -u '%s',guest -p %d ftp://%s" % (user, port, host),
    ] + commands)
    return topo.run(where, ["lftp", "-c", script], capture_output=True, timeout=timeout)


def data_connection_failed(curl_log):
    """Whether a curl -v log shows the failure NAT causes: the control session works (login
    succeeded) but no transfer ever starts, because the data connection could not be set
    up: the server refused a private address in PORT ("500 Illegal PORT command"), the
    client could not reach the announced port, or the server could not reach the client."""
    logged_in = "< 230" in curl_log
    asked_for_data = any(c in curl_log for c in ("> PORT", "> EPRT", "> PASV", "> EPSV"))
    transfer_started = "< 150" in curl_log or "< 125" in curl_log
    return logged_in and asked_for_data and not transfer_started


class Cell:
    """One client, one mode, one path: LIST, RETR (checked), STOR (checked)."""

    def __init__(self, name, client, mode, where, host, port, user, server, expect_ok):
        self.name, self.client, self.mode = name, client, mode
        self.group = ""
        self.where, self.host, self.port, self.user = where, host, port, user
        self.server, self.expect_ok = server, expect_ok

    def run(self, topo):
        work = topo.work
        tag = "%s-%s" % (self.group, self.name)
        up = os.path.join(work, "up-%s.bin" % tag)
        up_sha = random_file(up, UP_SIZE)
        got = os.path.join(work, "got-%s.bin" % tag)
        remote_up = "upload/up-%s.bin" % tag
        try:
            if self.client == "curl":
                user = urllib.parse.quote(self.user, safe="")
                base = "ftp://%s:guest@%s:%d/" % (user, self.host, self.port)
                timeout = 30 if self.expect_ok else 12
                steps = [
                    ("LIST", curl(topo, self.where, base, self.mode, [], timeout)),
                    ("RETR", curl(topo, self.where, base + "down.bin", self.mode, ["-o", got], timeout)),
                    ("STOR", curl(topo, self.where, base + remote_up, self.mode, ["-T", up], timeout)),
                ]
            else:
                steps = [("LIST+RETR+STOR", lftp(
                    topo, self.where, self.host, self.port, self.user, self.mode,
                    ["cls -1", "get down.bin -o %s" % got, "put %s -o %s" % (up, remote_up)]))]
        except subprocess.TimeoutExpired as e:
            return False, "timed out: %s" % (e.cmd,)
        for what, r in steps:
            if r.returncode != 0:
                log = r.stderr.decode(errors="replace")
                return False, "%s failed (%d)%s: %s" % (
                    what, r.returncode,
                    " at the data connection" if data_connection_failed(log) else "",
                    log.strip().splitlines()[-1][-200:] if log.strip() else "")
        listing = steps[0][1].stdout.decode(errors="replace")
        if "down.bin" not in listing:
            return False, "LIST lacks down.bin: %r" % listing[:200]
        if sha256_file(got) != self.server.down_sha:
            return False, "RETR: SHA-256 mismatch"
        stored = os.path.join(self.server.root, remote_up)
        if not os.path.exists(stored) or sha256_file(stored) != up_sha:
            return False, "STOR: SHA-256 mismatch or missing"
        return True, "LIST, RETR %d B, STOR %d B: SHA-256 ok" % (DOWN_SIZE, UP_SIZE)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ftpgate", required=True, help="path of the ftpgate binary")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("netns.py needs root (network namespaces, nftables)")
    for tool in ("ip", "nft", "vsftpd", "curl", "lftp"):
        if shutil.which(tool) is None:
            sys.exit("netns.py needs %s; run .ci/run or install it" % tool)

    work = tempfile.mkdtemp(prefix="ftpgate-e2e-")
    topo = Topology(work)
    results = []
    try:
        topo.up()
        inet_server = Vsftpd(topo, "inet", "203.0.113.10")
        dmz_server = Vsftpd(topo, "dmz", "10.0.1.10")

        def cells(prefix, where, host, port, user, server, expect):
            return [Cell("%s-%s-%s" % (prefix, client, mode), client, mode, where, host, port,
                         user, server, expect(mode))
                    for client in ("curl", "lftp") for mode in ("passive", "active")]

        def run_cells(group, cell_list):
            for c in cell_list:
                c.group = group
                ok, detail = c.run(topo)
                if not c.expect_ok and not ok and "at the data connection" not in detail:
                    # A cell expected to fail must fail for the reason NAT gives.
                    detail = "failed for another reason: " + detail
                    ok = None
                results.append((group, c, ok, detail))
                print("%-9s %-24s expected %-4s got %-4s %s" % (
                    group, c.name, "ok" if c.expect_ok else "fail",
                    {True: "ok", False: "fail", None: "?"}[ok], detail),
                    flush=True)

        # 1. The problem: a NAT router without an FTP helper.
        topo.router_rules(text=PLAIN_NAT_RULES)
        run_cells("no-alg", [
            c for c in cells("outbound", "lan", "203.0.113.10", 21, "anonymous", inet_server,
                             lambda m: m == "passive") if c.client == "curl"
        ] + [
            c for c in cells("publish", "inet", "203.0.113.1", 21, "anonymous", dmz_server,
                             lambda m: m == "active") if c.client == "curl"
        ])

        def through_ftpgate(name, config, listen, cell_list, files=(), text=None):
            topo.router_rules(text=text, files=[os.path.join(REPO, f) for f in files])
            gw = Ftpgate(topo, args.ftpgate, os.path.join(REPO, config), name, listen)
            run_cells("ftpgate", cell_list)
            topo.stop(gw.proc)

        # 2. Outbound transparent through ftpgate (REDIRECT, then TPROXY), forward closed.
        topo.run("rtr", ["sh", os.path.join(REPO, "deploy/outbound-policy-routing.sh")], check=True)
        through_ftpgate("outbound", "config/outbound.yaml", "10.0.0.1:2121",
                        cells("outbound", "lan", "203.0.113.10", 21, "anonymous", inet_server,
                              lambda m: True),
                        files=["deploy/nftables/outbound.nft"])
        through_ftpgate("outbound-tproxy", "config/outbound.yaml", "10.0.0.1:2121",
                        cells("tproxy", "lan", "203.0.113.10", 21, "anonymous", inet_server,
                              lambda m: True),
                        files=["deploy/nftables/outbound-tproxy.nft"])

        # 3. Publish through ftpgate, forward chain closed.
        through_ftpgate("publish", "config/publish.yaml", "203.0.113.1:21",
                        cells("publish", "inet", "203.0.113.1", 21, "anonymous", dmz_server,
                              lambda m: True),
                        files=["deploy/nftables/publish.nft"])

        # 4. Explicit proxy: no rules but a closed forward chain.
        through_ftpgate("explicit", "config/explicit.yaml", "10.0.0.1:2121",
                        cells("explicit", "lan", "10.0.0.1", 2121, "anonymous@203.0.113.10",
                              inet_server, lambda m: True),
                        text=FORWARD_DROP_RULES)
    finally:
        topo.down()
        bad = [r for r in results if r[1].expect_ok != r[2]]
        if bad or args.keep:
            print("logs kept in", work)
            for name in sorted(os.listdir(work)):
                if name.endswith((".log", ".out")) and bad:
                    print("---- %s" % name)
                    with open(os.path.join(work, name), errors="replace") as f:
                        print(f.read()[-4000:])
        else:
            shutil.rmtree(work, ignore_errors=True)
    passed = sum(1 for r in results if r[1].expect_ok == r[2])
    print("netns: %d passed, %d failed" % (passed, len(results) - passed))
    sys.exit(0 if results and passed == len(results) else 1)


if __name__ == "__main__":
    main()
