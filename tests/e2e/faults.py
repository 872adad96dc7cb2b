#!/usr/bin/env python3
"""The fault suite: ftpgate under peer death, resource exhaustion, churn, reloads and loss,
in network namespaces (needs root). Exit status 0 when every check passed.

Internet clients (curl, ftplib) reach pyftpdlib servers in the DMZ through ftpgate's
publish role; the router's forward chain drops everything. Each case inflicts one fault
and checks what an operator must be able to rely on:

- peer death in each direction and mode (server killed mid-RETR, client killed mid-STOR,
  a data socket reset on either side of ftpgate): the client never gets a success reply
  for a cut transfer, and the transfer has exactly one log line and one
  `ftpgate_data_channels_total{outcome="failed"}`;
- data-port exhaustion and recovery; file-descriptor exhaustion and recovery (every
  client answered at once, `220` or `421`, and service back once they leave);
- a churn soak (descriptors, data ports and memory back to their baseline);
- reloads every half second under load (every file intact);
- packet loss and queueing delay. This kernel has no `sch_netem`: loss comes from an
  nftables rule (`numgen random mod 100 < N drop`) and delay from a `tbf` rate limit's
  queue, both inside the namespaces.

`--long` makes the soak five minutes instead of fifteen seconds.
"""
import json
import os
import re
import signal
import sys
import tempfile
import time

import lab

GATEWAY = "203.0.113.1"
SERVER = "10.0.1.10"
METRICS = "http://10.0.0.1:9464/metrics"

CONFIG = """
gateways:
  - name: pub
    listen: "203.0.113.1:2100"
    upstream: "10.0.1.10:2100"
    client_side: { address: 203.0.113.1 }
    server_side: { address: 10.0.1.1 }
    data_ports: "44000-44199"
  - name: small
    listen: "203.0.113.1:2200"
    upstream: "10.0.1.10:2200"
    client_side: { address: 203.0.113.1 }
    server_side: { address: 10.0.1.1 }
    data_ports: "44200-44203"
limits:
  data_accept_timeout: 3s
metrics:
  listen: "10.0.0.1:9464"
log:
  level: info
"""

# A second instance, started with few file descriptors.
FD_CONFIG = """
gateways:
  - name: fd
    listen: "203.0.113.1:2300"
    upstream: "10.0.1.10:2200"
    client_side: { address: 203.0.113.1 }
    server_side: { address: 10.0.1.1 }
    data_ports: "44300-44399"
log:
  level: info
"""

# Large enough that the server is still sending when the fault comes: socket buffers
# autotune up to tcp_rmem's maximum (32 MiB on this kernel) on each side of ftpgate.
BIG = 160 * 1024 * 1024


class Suite:
    def __init__(self, topo, binary, long):
        self.topo, self.binary, self.long = topo, binary, long
        self.results = []

    def check(self, name, ok, detail):
        self.results.append(ok)
        print("%-52s %-4s %s" % (name, "ok" if ok else "FAIL", detail), flush=True)

    def write(self, name, text):
        path = os.path.join(self.topo.work, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def metrics(self):
        return lab.scrape(self.topo, METRICS)

    def channels(self, outcome, gateway="pub"):
        return lab.metric(self.metrics(), "ftpgate_data_channels_total", gateway=gateway,
                          outcome=outcome) or 0

    def transfer_lines(self, name):
        with open(self.gw.log, errors="replace") as f:
            return [l for l in f if "ftpgate::transfer" in l and ("file=" + name) in l]

    def curl(self, url, mode, extra, log_name):
        mode_args = {"EPSV": ["--ftp-pasv"], "EPRT": ["--ftp-port", "203.0.113.10"]}[mode]
        return self.topo.spawn("inet", ["curl", "-sS", "-v", "--max-time", "60",
                                        "--limit-rate", "2M"] + mode_args + extra + [url],
                               log_name)

    # ---- peer death ---------------------------------------------------------------------

    def cut(self, case, direction, mode, fault):
        """One transfer of BIG bytes that FAULT cuts; checks what the client saw, the
        transfer log and the channel counter."""
        server = lab.PyFtpd(self.topo, "dmz", SERVER, 2100, args=["--passive-ports", "30000-30999"])
        name = "%s.bin" % case
        if direction == "RETR":
            server.add_file(name, BIG)
            url = "ftp://%s:2100/%s" % (GATEWAY, name)
            extra = ["-o", os.path.join(self.topo.work, "got-" + name)]
        else:
            src = os.path.join(self.topo.work, "src-" + name)
            lab.random_file(src, BIG)
            url = "ftp://%s:2100/upload/%s" % (GATEWAY, name)
            extra = ["-T", src]
        failed_before = self.channels("failed")
        ok_before = self.channels("ok")
        client = self.curl(url, mode, extra, "curl-%s.log" % case)
        time.sleep(1.5)
        fault(server, client)
        client.wait(60)
        time.sleep(1)
        with open(os.path.join(self.topo.work, "curl-%s.log" % case), errors="replace") as f:
            seen = f.read()
        lines = self.transfer_lines(name)
        failed = self.channels("failed") - failed_before
        ok = self.channels("ok") - ok_before
        server.stop(signal.SIGKILL)
        return seen, client.returncode, lines, failed, ok

    def peer_death(self):
        def kill_server(server, client):
            server.stop(signal.SIGKILL)

        def kill_client(server, client):
            self.topo.stop(client, signal.SIGKILL)

        def reset_server_side(server, client):
            # ftpgate's data connection to the server (not the control connection).
            self.topo.run("rtr", ["ss", "-K", "dst", SERVER, "dport", "!=", ":2100"],
                          capture_output=True)

        def reset_client_side(server, client):
            self.topo.run("rtr", ["ss", "-K", "src", GATEWAY, "sport", ">=", ":44000",
                                  "sport", "<=", ":44199"], capture_output=True)

        cases = [
            ("server-killed-retr-passive", "RETR", "EPSV", kill_server, True),
            ("server-killed-retr-active", "RETR", "EPRT", kill_server, True),
            ("client-killed-stor-passive", "STOR", "EPSV", kill_client, False),
            ("client-killed-stor-active", "STOR", "EPRT", kill_client, False),
            ("server-side-reset-stor", "STOR", "EPSV", reset_server_side, True),
            ("server-side-reset-retr", "RETR", "EPSV", reset_server_side, True),
            ("client-side-reset-retr", "RETR", "EPSV", reset_client_side, True),
        ]
        for case, direction, mode, fault, client_alive in cases:
            seen, rc, lines, failed, ok = self.cut(case, direction, mode, fault)
            replies = re.findall(r"^< (\d{3})", seen, re.M)
            if client_alive:
                # The client must learn that the transfer failed: an error exit, and never
                # a success reply after the transfer started.
                started = [i for i, r in enumerate(replies) if r.startswith("1")]
                after_start = replies[started[0] + 1:] if started else replies
                self.check("%s: client sees a failure" % case,
                           rc != 0 and not any(r.startswith("2") for r in after_start),
                           "curl exit %s, replies after 150: %s" % (rc, after_start))
            self.check("%s: one failed transfer line" % case,
                       len(lines) == 1 and 'outcome="failed"' in lines[0],
                       lines[0].strip()[-160:] if len(lines) == 1 else "%d lines" % len(lines))
            self.check("%s: counted once, as failed" % case, (failed, ok) == (1, 0),
                       "data channels failed +%d, ok +%d" % (failed, ok))

    def reset_upload_reply(self):
        """The issue-12 finding itself: ftpgate's server-facing data socket is reset during
        an upload; pyftpdlib takes the reset for the end of the file and says 226. A client
        that reads its control channel must be told 426, not 226."""
        server = lab.PyFtpd(self.topo, "dmz", SERVER, 2100, args=["--passive-ports", "30000-30999"])
        client = self.topo.spawn_capture(
            "inet", ["python3", os.path.join(lab.SUPPORT, "loadgen.py"), "stor", "--host",
                     GATEWAY, "--port", "2100", "--name", "upload/reset.bin", "--size",
                     str(BIG), "--rate", str(4 << 20)])
        time.sleep(1.5)
        self.topo.run("rtr", ["ss", "-K", "dst", SERVER, "dport", "!=", ":2100"],
                      capture_output=True)
        out, _ = client.communicate(timeout=60)
        result = json.loads(out.decode().strip().splitlines()[-1])
        stored = os.path.getsize(os.path.join(server.root, "upload", "reset.bin"))
        self.check("server-side reset during STOR: the client is told 426",
                   result["reply"].startswith("426"),
                   "reply %r after %d B sent; the server kept %d B" % (
                       result["reply"], result["sent"], stored))
        server.stop(signal.SIGKILL)

    # ---- exhaustion ---------------------------------------------------------------------

    def data_ports(self):
        """Four data ports; a fifth PASV gets 425, and after the accept timeout all are
        back and transfers work."""
        server = lab.PyFtpd(self.topo, "dmz", SERVER, 2200)
        sha = server.add_file("small.bin", 100_000)
        script = (
            "import ftplib, json\n"
            "out = []\n"
            "conns = []\n"
            "for i in range(5):\n"
            "    f = ftplib.FTP(timeout=10); f.connect('%s', 2200); f.login()\n"
            "    conns.append(f)\n"
            "    try:\n"
            "        out.append(f.sendcmd('PASV')[:3])\n"
            "    except ftplib.Error as e:\n"
            "        out.append(str(e)[:3])\n"
            "print(json.dumps(out))\n" % GATEWAY)
        r = self.topo.run("inet", ["python3", "-c", script], capture_output=True, text=True,
                          timeout=60)
        codes = json.loads(r.stdout or "[]")
        self.check("data ports exhausted: the fifth PASV gets 425",
                   codes == ["227"] * 4 + ["425"], "replies %s %s" % (codes, r.stderr[-200:]))
        time.sleep(3.5)
        in_use = lab.metric(self.metrics(), "ftpgate_data_ports_in_use", gateway="small")
        got = os.path.join(self.topo.work, "small-got.bin")
        r = self.topo.run("inet", ["curl", "-sS", "--ftp-pasv", "-o", got,
                                   "ftp://%s:2200/small.bin" % GATEWAY],
                          capture_output=True, text=True, timeout=30)
        self.check("data ports back after the accept timeout",
                   in_use == 0 and r.returncode == 0 and lab.sha256_file(got) == sha,
                   "in use %s, curl exit %d" % (in_use, r.returncode))
        server.stop()

    def descriptors(self):
        """ftpgate with 96 descriptors and 200 clients at once: everyone is answered at
        once (220 or 421), the log does not flood, and service returns."""
        server = lab.PyFtpd(self.topo, "dmz", SERVER, 2200)
        sha = server.add_file("small.bin", 100_000)
        config = self.write("fd.yaml", FD_CONFIG)
        gw = self.topo.spawn("rtr", ["prlimit", "--nofile=96:96", self.binary, "run",
                                     "--config", config], "ftpgate-fd.log")
        lab.wait_port(self.topo, "rtr", GATEWAY, 2300)
        r = self.topo.run("inet", ["python3", os.path.join(lab.SUPPORT, "loadgen.py"), "flood",
                                   "--host", GATEWAY, "--port", "2300", "--clients", "200",
                                   "--wait", "5"], capture_output=True, text=True, timeout=60)
        flood = json.loads(r.stdout.strip().splitlines()[-1])
        self.check("fd exhaustion: every client answered at once",
                   flood["silent"] == 0 and flood["other"] == 0 and flood["refused"] > 0
                   and flood["seconds"] < 5, str(flood))
        time.sleep(1)
        got = os.path.join(self.topo.work, "fd-got.bin")
        r = self.topo.run("inet", ["curl", "-sS", "--ftp-pasv", "-o", got,
                                   "ftp://%s:2300/small.bin" % GATEWAY],
                          capture_output=True, text=True, timeout=30)
        self.check("fd exhaustion: service back once clients leave",
                   r.returncode == 0 and lab.sha256_file(got) == sha,
                   "curl exit %d %s" % (r.returncode, r.stderr.strip()[-100:]))
        self.topo.stop(gw)
        with open(os.path.join(self.topo.work, "ftpgate-fd.log"), errors="replace") as f:
            log = f.read()
        lines = log.count("out of file descriptors")
        self.check("fd exhaustion: logged once per interval, not per connection",
                   1 <= lines <= 3, "%d log lines" % lines)
        server.stop()

    # ---- churn, reload, loss ------------------------------------------------------------

    def ftpgate_state(self):
        pid = self.gw.proc.pid
        # The namespace wrapper execs ftpgate, so the spawned process is ftpgate itself.
        fds = len(os.listdir("/proc/%d/fd" % pid))
        with open("/proc/%d/status" % pid) as f:
            rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
        m = self.metrics()
        return fds, rss, lab.metric(m, "ftpgate_data_ports_in_use", gateway="pub"), \
            lab.metric(m, "ftpgate_sessions_active", gateway="pub")

    def churn(self):
        seconds = 300 if self.long else 15
        server = lab.PyFtpd(self.topo, "dmz", SERVER, 2100)
        sha = server.add_file("churn.bin", 64 * 1024)
        args = ["python3", os.path.join(lab.SUPPORT, "loadgen.py"), "churn", "--host", GATEWAY,
                "--port", "2100", "--workers", "8", "--file", "churn.bin", "--sha256", sha]
        # Warm-up: the runtime's threads and buffers exist before the baseline.
        self.topo.run("inet", args + ["--seconds", "2"], capture_output=True, timeout=60)
        time.sleep(1)
        before = self.ftpgate_state()
        r = self.topo.run("inet", args + ["--seconds", str(seconds)], capture_output=True,
                          text=True, timeout=seconds + 120)
        result = json.loads(r.stdout.strip().splitlines()[-1])
        time.sleep(2)
        after = self.ftpgate_state()
        self.check("churn soak %ds: no failures" % seconds,
                   result["failures"] == 0 and result["sessions"] > 0,
                   "%d sessions, %d failed %s" % (result["sessions"], result["failures"],
                                                 result["first_failure"]))
        self.check("churn soak: fds, ports and sessions back to baseline",
                   after[0] <= before[0] + 2 and after[2:] == (0, 0),
                   "fds %d -> %d, ports in use %s, sessions %s" % (before[0], after[0],
                                                                   after[2], after[3]))
        self.check("churn soak: memory flat", after[1] <= before[1] + 5 * 1024,
                   "RSS %d -> %d KiB" % (before[1], after[1]))
        server.stop()

    def reload_under_load(self):
        server = lab.PyFtpd(self.topo, "dmz", SERVER, 2100)
        sha = server.add_file("reload.bin", 16 * 1024 * 1024)
        procs = []
        for i in range(8):
            out = os.path.join(self.topo.work, "reload-%d.bin" % i)
            mode = ["--ftp-pasv"] if i % 2 else ["--ftp-port", "203.0.113.10"]
            procs.append((self.topo.spawn("inet", ["curl", "-sS", "--limit-rate", "4M",
                                                   "--max-time", "60", "-o", out] + mode +
                                          ["ftp://%s:2100/reload.bin" % GATEWAY],
                                          "reload-%d.log" % i), out))
        reloads = 0
        while any(p.poll() is None for p, _ in procs) and reloads < 40:
            time.sleep(0.5)
            os.kill(self.gw.proc.pid, signal.SIGHUP)
            reloads += 1
        intact = 0
        for p, out in procs:
            p.wait(60)
            intact += p.returncode == 0 and lab.sha256_file(out) == sha
        self.check("reload every 0.5 s under load: files intact", intact == len(procs),
                   "%d of %d SHA-256 ok across %d reloads" % (intact, len(procs), reloads))
        server.stop()

    def loss(self):
        """2 % loss on the internet link and a 100 Mbit/s queue on the DMZ link."""
        server = lab.PyFtpd(self.topo, "dmz", SERVER, 2100)
        sha = server.add_file("lossy.bin", 8 * 1024 * 1024)
        lossy = ("table inet loss {\n"
                 "  chain out { type filter hook output priority 0; numgen random mod 100 < 2 drop; }\n"
                 "  chain in { type filter hook input priority 0; numgen random mod 100 < 2 drop; }\n"
                 "}\n")
        self.topo.run("inet", ["nft", "-f", "-"], input=lossy.encode(), check=True)
        self.topo.run("rtr", ["tc", "qdisc", "add", "dev", "dmz0", "root", "tbf", "rate",
                              "100mbit", "burst", "64kb", "latency", "50ms"], check=True)
        try:
            results = []
            for mode in ("--ftp-pasv", "--ftp-port"):
                extra = ["203.0.113.10"] if mode == "--ftp-port" else []
                got = os.path.join(self.topo.work, "lossy-got%s.bin" % mode)
                up = os.path.join(self.topo.work, "lossy-up%s.bin" % mode)
                up_sha = lab.random_file(up, 4 * 1024 * 1024)
                r1 = self.topo.run("inet", ["curl", "-sS", "--max-time", "120", mode] + extra +
                                   ["-o", got, "ftp://%s:2100/lossy.bin" % GATEWAY],
                                   capture_output=True, timeout=150)
                r2 = self.topo.run("inet", ["curl", "-sS", "--max-time", "120", mode] + extra +
                                   ["-T", up, "ftp://%s:2100/upload/lossy%s.bin" % (GATEWAY, mode)],
                                   capture_output=True, timeout=150)
                stored = os.path.join(server.root, "upload", "lossy%s.bin" % mode)
                results.append(r1.returncode == 0 and lab.sha256_file(got) == sha and
                               r2.returncode == 0 and os.path.exists(stored) and
                               lab.sha256_file(stored) == up_sha)
            self.check("2% loss and a queue: transfers intact, both modes", all(results),
                       "%d of %d modes SHA-256 ok" % (results.count(True), len(results)))
        finally:
            self.topo.run("inet", ["nft", "delete", "table", "inet", "loss"])
            self.topo.run("rtr", ["tc", "qdisc", "del", "dev", "dmz0", "root"])
            server.stop()

    def run(self):
        self.topo.router_rules(text=lab.FORWARD_DROP_RULES)
        config = self.write("faults.yaml", CONFIG)
        self.gw = lab.Ftpgate(self.topo, self.binary, config, "faults", GATEWAY + ":2100")
        self.peer_death()
        self.reset_upload_reply()
        self.data_ports()
        self.descriptors()
        self.churn()
        self.reload_under_load()
        self.loss()
        self.gw.stop()


def main():
    ap = lab.parser()
    ap.add_argument("--long", action="store_true", help="a five-minute soak")
    args = ap.parse_args()
    lab.require_root_and_tools("faults.py")
    work = tempfile.mkdtemp(prefix="ftpgate-faults-")
    topo = lab.Topology(work)
    suite = Suite(topo, args.ftpgate, args.long or os.environ.get("FTPGATE_FAULTS_LONG"))
    try:
        topo.up()
        suite.run()
    finally:
        topo.down()
    sys.exit(lab.finish(work, suite.results, args.keep, "faults"))


if __name__ == "__main__":
    main()
