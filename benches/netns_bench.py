#!/usr/bin/env python3
"""ftpgate benchmark: measured side by side in one run, in the namespace lab of
tests/e2e/lab.py (needs root). Prints the tables; --write-doc FILE also writes them into
FILE between the results markers.

1. Throughput of one transfer (download and upload, passive and active, outbound and
   publish roles), vsftpd (sendfile) serving, curl as the client, through: direct routing
   (no NAT), the kernel FTP helper, ftpgate with the portable copy relay, ftpgate with
   splice, ftpgate with relay: kernel (nftables forwards the data connections). Median of
   --runs; MB/s and the ratio to the kernel helper.
2. Data-channel setup latency: PASV (and PORT) sent -> first byte of a tiny RETR, median and
   p99 over --latency-n transfers, ftpgate (splice and kernel paths) vs the kernel helper.
3. Scale: --sessions idle control sessions through ftpgate: how many held, ftpgate's RSS,
   RSS per session.
4. --transfers concurrent small transfers through ftpgate: all SHA-256 checked, total time.
5. CPU seconds (user+sys) of ftpgate per GiB relayed, per relay.

Run: cargo build --release && sudo python3 benches/netns_bench.py --ftpgate target/release/ftpgate
"""
import argparse
import datetime
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
import interop  # noqa: E402  (the kernel helper ruleset)
import lab  # noqa: E402

CLIENT_TOOL = os.path.join(HERE, "support", "ftpbench.py")
MB = 1_000_000
TICKS = os.sysconf("SC_CLK_TCK")

GATEWAY_CONFIGS = {
    "outbound": """
gateways:
  - name: lan
    listen: "10.0.0.1:2121"
    upstream: transparent
    client_side: {{ address: 10.0.0.1 }}
    server_side: {{ address: 203.0.113.1 }}
    data_ports: "40000-40999"
    client_source: server
    allow_clients: ["10.0.0.0/24"]
    relay: {relay}
limits: {{ max_sessions: 30000, max_sessions_per_client: 30000 }}
log: {{ level: warn }}
""",
    "publish": """
gateways:
  - name: public
    listen: "203.0.113.1:21"
    upstream: "10.0.1.10:21"
    client_side: {{ address: 203.0.113.1 }}
    server_side: {{ address: 10.0.1.1 }}
    data_ports: "40000-40999"
    relay: {relay}
limits: {{ max_sessions: 30000, max_sessions_per_client: 30000 }}
log: {{ level: warn }}
""",
    "explicit": """
gateways:
  - name: proxy
    listen: "10.0.0.1:2121"
    upstream: "user@host"
    client_side: {{ address: 10.0.0.1 }}
    server_side: {{ address: 203.0.113.1 }}
    data_ports: "41000-41999"
    relay: {relay}
limits: {{ max_sessions: 30000, max_sessions_per_client: 30000 }}
log: {{ level: warn }}
""",
}

# role -> (client namespace, server namespace, server address, host the client dials
#          through a gateway or NAT, rule file for ftpgate, gateway listen address)
ROLES = {
    "outbound": ("lan", "inet", "203.0.113.10", "203.0.113.10",
                 "deploy/nftables/outbound.nft", "10.0.0.1:2121"),
    "publish": ("inet", "dmz", "10.0.1.10", "203.0.113.1",
                "deploy/nftables/publish.nft", "203.0.113.1:21"),
}
# Where the explicit proxy listens (used only for the idle-session scale test).
EXPLICIT_LISTEN = "10.0.0.1:2121"
PATHS = ["direct", "kernel", "ftpgate-copy", "ftpgate-splice", "ftpgate-kernel"]
# The data paths of ftpgate whose setup latency is measured against the kernel helper.
LATENCY_PATHS = ["ftpgate-splice", "ftpgate-kernel"]


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_busy_seconds():
    """CPU time all cores spent not idle (user, system, interrupts, softirq), in seconds."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle, iowait = values[3], values[4]
    return (sum(values[:8]) - idle - iowait) / TICKS


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Bench:
    def __init__(self, topo, args):
        self.topo, self.args = topo, args
        self.results = {}

    def start_ftpgate(self, role, relay, name):
        config = os.path.join(self.topo.work, "%s.yaml" % name)
        with open(config, "w") as f:
            f.write(GATEWAY_CONFIGS[role].format(relay=relay))
        proc = self.topo.spawn("rtr", ["sh", "-c", 'ulimit -n "$(ulimit -Hn)" && exec "$0" run --config "$1"',
                                       self.args.ftpgate, config], "ftpgate-%s.log" % name)
        listen = EXPLICIT_LISTEN if role == "explicit" else ROLES[role][5]
        host, port = listen.rsplit(":", 1)
        lab.wait_port(self.topo, "rtr", host, int(port))
        return proc

    def set_path(self, role, path):
        """Router state for a path; returns (ftpgate process or None, host, port). Every
        path starts from an empty conntrack table: entries a previous path left in
        TIME_WAIT (another path's NAT bindings for the same server port 20) would make
        the next path's connections collide with them, which is not what is measured."""
        client_ns, _, server_addr, nat_host, rules, listen = ROLES[role]
        self.topo.run("rtr", ["conntrack", "-F"], capture_output=True, check=True)
        if path == "direct":
            self.topo.router_rules()
            return None, server_addr, 21
        if path == "kernel":
            self.topo.router_rules(text=interop.KERNEL_RULES)
            return None, nat_host, 21
        self.topo.router_rules(files=[rules])
        proc = self.start_ftpgate(role, path.split("-")[1], "%s-%s" % (role, path))
        return proc, nat_host, 21

    def curl(self, role, host, direction, mode, server, n):
        client_ns = ROLES[role][0]
        url = "ftp://%s/" % host
        args = ["curl", "-sS", "--max-time", "300", "-w", "%{speed_download} %{speed_upload}"]
        args += ["--ftp-pasv"] if mode == "passive" else ["--ftp-port", lab.CLIENT_ADDRESS[client_ns]]
        if direction == "download":
            args += ["-o", "/dev/null", url + "big.bin"]
        else:
            args += ["-T", self.upload_file, url + "upload/up-%d.bin" % n]
        r = self.topo.run(client_ns, args, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("curl %s %s %s: %s" % (role, direction, mode, r.stderr.strip()))
        down, up = (float(x) for x in r.stdout.split())
        if direction == "upload":
            os.remove(os.path.join(server.root, "upload", "up-%d.bin" % n))
        return (down if direction == "download" else up) / MB

    def throughput(self):
        """Every run is a round over all paths, so that drift of the machine is spread
        evenly over them; medians pool the rounds."""
        size = self.args.size_mib * 1024 * 1024
        self.upload_file = os.path.join(self.topo.work, "upload.bin")
        with open(self.upload_file, "wb") as f:
            f.truncate(size)  # sparse: reading it costs no disk
        paths = self.args.paths.split(",")
        cpu = {p: [0.0, 0] for p in paths if p.startswith("ftpgate")}
        machine = {p: [0.0, 0] for p in paths}
        speeds = {}
        counter = 0
        for role, (client_ns, server_ns, server_addr, *_rest) in ROLES.items():
            if role not in self.args.roles.split(","):
                continue
            server = lab.Vsftpd(self.topo, server_ns, server_addr)
            with open(os.path.join(server.root, "big.bin"), "wb") as f:
                f.truncate(size)
            os.chmod(os.path.join(server.root, "big.bin"), 0o644)
            for _ in range(self.args.runs):
                for path in paths:
                    proc, host, _ = self.set_path(role, path)
                    before = cpu_seconds(proc.pid) if proc else 0
                    machine_before = machine_busy_seconds()
                    for direction in ("download", "upload"):
                        for mode in ("passive", "active"):
                            counter += 1
                            speeds.setdefault((role, direction, mode, path), []).append(
                                self.curl(role, host, direction, mode, server, counter))
                    machine[path][0] += machine_busy_seconds() - machine_before
                    machine[path][1] += 4 * size
                    if proc:
                        cpu[path][0] += cpu_seconds(proc.pid) - before
                        cpu[path][1] += 4 * size
                        self.topo.stop(proc)
            server.stop()
        for (role, direction, mode, path), values in speeds.items():
            self.results[("throughput", role, direction, mode, path)] = statistics.median(values)
            print("throughput %-8s %-8s %-7s %-14s %8.0f MB/s  (runs: %s)" % (
                role, direction, mode, path, statistics.median(values),
                " ".join("%.0f" % v for v in values)), flush=True)
        for path, (secs, nbytes) in cpu.items():
            self.results[("cpu", path)] = secs / (nbytes / (1 << 30))
            print("cpu %-14s %.2f s/GiB" % (path, self.results[("cpu", path)]), flush=True)
        for path, (secs, nbytes) in machine.items():
            self.results[("machine", path)] = secs / (nbytes / (1 << 30))
            print("machine %-14s %.2f s/GiB" % (path, self.results[("machine", path)]), flush=True)

    def latency(self):
        """Rounds alternate the paths, each taking a share of the samples; median and p99
        pool all rounds."""
        role, rounds = "outbound", 8
        server = lab.Vsftpd(self.topo, "inet", "203.0.113.10")
        with open(os.path.join(server.root, "tiny.bin"), "wb") as f:
            f.write(b"x" * 100)
        os.chmod(os.path.join(server.root, "tiny.bin"), 0o644)
        samples = {}
        per_round = max(1, self.args.latency_n // rounds)
        for _ in range(rounds):
            for path in ["kernel"] + LATENCY_PATHS:
                proc, host, port = self.set_path(role, path)
                for mode in ("PASV", "PORT"):
                    r = self.topo.run("lan", ["python3", CLIENT_TOOL, "latency", host, str(port),
                                              "anonymous", mode, str(per_round), "tiny.bin"],
                                      capture_output=True, text=True)
                    if r.returncode != 0:
                        raise RuntimeError("latency %s %s: %s" % (path, mode, r.stderr[-500:]))
                    samples.setdefault((mode, path), []).extend(json.loads(r.stdout)["samples_ms"])
                if proc:
                    self.topo.stop(proc)
        for (mode, path), values in samples.items():
            values.sort()
            out = {"n": len(values), "median_ms": statistics.median(values),
                   "p99_ms": values[int(len(values) * 0.99) - 1]}
            self.results[("latency", mode, path)] = out
            print("latency %-5s %-14s median %.3f ms  p99 %.3f ms  (n=%d)" % (
                mode, path, out["median_ms"], out["p99_ms"], out["n"]), flush=True)
        server.stop()

    def big_pyftpd(self):
        """pyftpdlib with room for tens of thousands of connections."""
        root = tempfile.mkdtemp(dir=self.topo.work, prefix="pyroot-")
        proc = self.topo.spawn("inet", [
            "sh", "-c", 'ulimit -n "$(ulimit -Hn)" && exec python3 "$0" --host 203.0.113.10 --port 21 '
            '--root "$1" --passive-ports 30000-39999 --max-cons 30000',
            os.path.join(lab.SUPPORT, "ftpserver.py"), root], "pyftpdlib-scale.log")
        lab.wait_port(self.topo, "inet", "203.0.113.10", 21)
        return proc, root

    def scale(self):
        """Idle sessions with an upstream each (outbound role, as many as the open-file
        limit allows: two descriptors per session), and --sessions idle sessions in the
        explicit role (greeted, not yet logged in: one descriptor each)."""
        import resource
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        connected = min(self.args.sessions, (hard - 200) // 2)
        server, _ = self.big_pyftpd()
        self.topo.router_rules(files=[ROLES["outbound"][4]])
        self.results[("scale", "connected")] = self.hold_sessions(
            "outbound", "203.0.113.10", connected)
        self.topo.stop(server)
        self.topo.router_rules(text=lab.FORWARD_DROP_RULES)
        self.results[("scale", "explicit")] = self.hold_sessions(
            "explicit", "10.0.0.1", self.args.sessions, port=2121)
        self.results[("scale", "fd_limit")] = hard

    def hold_sessions(self, role, host, n, port=21):
        gw = self.start_ftpgate(role, "splice", "scale-" + role)
        time.sleep(0.5)
        base = rss_kib(gw.pid)
        log_name = "idle-%s.log" % role
        client = self.topo.spawn("lan", ["python3", CLIENT_TOOL, "idle", host, str(port),
                                         "anonymous", str(n)], log_name)
        log = os.path.join(self.topo.work, log_name)
        deadline = time.time() + 300
        held = None
        while time.time() < deadline and held is None:
            time.sleep(1)
            with open(log) as f:
                for line in f:
                    if line.startswith("{"):
                        held = json.loads(line)
        if held is None:
            raise RuntimeError("idle client did not report")
        time.sleep(2)
        rss = rss_kib(gw.pid)
        per = (rss - base) * 1024 / max(held["held"], 1)
        out = {"asked": n, "held": held["held"], "base_kib": base, "rss_kib": rss,
               "per_session_bytes": per}
        print("scale %s: %d of %d sessions held; ftpgate RSS %d KiB (idle %d KiB): %.0f bytes/session"
              % (role, held["held"], n, rss, base, per), flush=True)
        self.topo.stop(client)
        self.topo.stop(gw)
        return out

    def many(self):
        server, root = self.big_pyftpd()
        manifest = {}
        for i in range(self.args.transfers):
            name = "small-%d.bin" % i
            data = os.urandom(16 * 1024 + i)
            with open(os.path.join(root, name), "wb") as f:
                f.write(data)
            manifest[name] = hashlib.sha256(data).hexdigest()
        path = os.path.join(self.topo.work, "manifest.json")
        with open(path, "w") as f:
            json.dump(manifest, f)
        self.topo.router_rules(files=[ROLES["outbound"][4]])
        gw = self.start_ftpgate("outbound", "splice", "many")
        r = self.topo.run("lan", ["python3", CLIENT_TOOL, "many", "203.0.113.10", "21",
                                  "anonymous", path], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("many: " + r.stderr[-500:])
        out = json.loads(r.stdout)
        self.results[("many",)] = out
        print("concurrent: %d transfers, %d ok, %d corrupt or failed, %.2f s" % (
            out["transfers"], out["ok"], out["corrupt_or_failed"], out["seconds"]), flush=True)
        self.topo.stop(gw)
        self.topo.stop(server)

    def tables(self):
        out = []
        if any(k[0] == "throughput" for k in self.results):
            out += ["### Throughput of one transfer (MB/s, median of %d; ratio to the kernel helper)"
                    % self.args.runs, "",
                    "| role | direction | mode | direct | kernel helper | ftpgate copy | ftpgate splice "
                    "| ftpgate kernel |",
                    "|---|---|---|---|---|---|---|---|"]
            for role in ROLES:
                for direction in ("download", "upload"):
                    for mode in ("passive", "active"):
                        k = self.results.get(("throughput", role, direction, mode, "kernel"))
                        cells = []
                        for path in PATHS:
                            v = self.results.get(("throughput", role, direction, mode, path))
                            if v is None:
                                cells.append("—")
                            elif path == "kernel" or k is None:
                                cells.append("%.0f" % v)
                            else:
                                cells.append("%.0f (%.2f×)" % (v, v / k))
                        if any(c != "—" for c in cells):
                            out.append("| %s | %s | %s | %s |" % (role, direction, mode, " | ".join(cells)))
            out += ["", "CPU of the ftpgate process per GiB relayed (user+sys): " + ", ".join(
                "%s %.2f s" % (p, self.results[("cpu", p)]) for p in PATHS if ("cpu", p) in self.results) + ".",
                "", "CPU of the whole machine per GiB moved (client, server, kernel forwarding or "
                "ftpgate, all on the same cores): " + ", ".join(
                "%s %.2f s" % (p, self.results[("machine", p)]) for p in PATHS
                if ("machine", p) in self.results) + ".", ""]
        if any(k[0] == "latency" for k in self.results):
            out += ["### Data-channel setup (command sent → first byte of a 100-byte RETR, %d transfers)"
                    % self.args.latency_n, "",
                    "| mode | kernel helper median / p99 | ftpgate splice median / p99 (ratio) "
                    "| ftpgate kernel median / p99 (ratio) |",
                    "|---|---|---|---|"]
            for mode in ("PASV", "PORT"):
                k = self.results[("latency", mode, "kernel")]
                cells = ["%.3f / %.3f ms" % (k["median_ms"], k["p99_ms"])]
                for path in LATENCY_PATHS:
                    g = self.results[("latency", mode, path)]
                    cells.append("%.3f / %.3f ms (%.2f×)" % (
                        g["median_ms"], g["p99_ms"], g["median_ms"] / k["median_ms"]))
                out.append("| %s | %s |" % (mode, " | ".join(cells)))
            out.append("")
        if ("scale", "explicit") in self.results:
            out += ["### Idle control sessions", "",
                    "| sessions | held | ftpgate RSS before → with them | per session |",
                    "|---|---|---|---|"]
            for key, label in (("connected", "outbound role, each with its upstream connection"),
                               ("explicit", "explicit role, greeted, before login (no upstream yet)")):
                s = self.results[("scale", key)]
                out.append("| %d, %s | %d | %d → %d KiB | **%.1f KiB** |" % (
                    s["asked"], label, s["held"], s["base_kib"], s["rss_kib"],
                    s["per_session_bytes"] / 1024))
            out += ["", "The open-file limit here is %d descriptors per process (hard, and "
                    "CAP_SYS_RESOURCE is not available), which caps sessions with an upstream "
                    "at about half of it." % self.results[("scale", "fd_limit")], ""]
        if ("many",) in self.results:
            m = self.results[("many",)]
            out += ["### Concurrent small transfers", "",
                    "%d transfers of 16 KiB at once: %d SHA-256 ok, %d corrupt or failed, %.2f s in all."
                    % (m["transfers"], m["ok"], m["corrupt_or_failed"], m["seconds"]), ""]
        return "\n".join(out)


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) // (1024 * 1024)
    return "%d × %s, %d GiB, Linux %s" % (os.cpu_count(), model, mem, platform.release())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ftpgate", required=True)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--latency-n", type=int, default=1000)
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--transfers", type=int, default=1000)
    ap.add_argument("--only", default="throughput,latency,scale,many")
    ap.add_argument("--roles", default="outbound,publish", help="throughput: roles to measure")
    ap.add_argument("--paths", default=",".join(PATHS), help="throughput: paths to measure")
    ap.add_argument("--write-doc")
    args = ap.parse_args()
    lab.require_root_and_tools("netns_bench.py", ("conntrack",))
    # Transfers live in RAM: the disk is not what is measured.
    work = tempfile.mkdtemp(prefix="ftpgate-bench-", dir="/dev/shm")
    topo = lab.Topology(work)
    bench = Bench(topo, args)
    started = time.time()
    try:
        topo.up()
        # Direct routing needs the internet host to reach private space.
        for net in ("10.0.0.0/24", "10.0.1.0/24"):
            topo.ip("-n", topo.ns["inet"], "route", "add", net, "via", "203.0.113.1")
        for section in args.only.split(","):
            getattr(bench, section)()
    finally:
        topo.down()
        shutil.rmtree(work, ignore_errors=True)
    tables = bench.tables()
    print()
    print(tables)
    if args.write_doc:
        begin, end = "<!-- results:begin -->", "<!-- results:end -->"
        with open(args.write_doc) as f:
            doc = f.read()
        body = "\n".join([
            begin,
            "Measured %s on %s, in %.0f s, by `sudo python3 benches/netns_bench.py --ftpgate "
            "target/release/ftpgate --write-doc docs/benchmarks.md` (size %d MiB, %d runs)."
            % (datetime.date.today().isoformat(), machine(), time.time() - started,
               args.size_mib, args.runs),
            "",
            tables,
            end,
        ])
        doc = doc[:doc.index(begin)] + body + doc[doc.index(end) + len(end):]
        with open(args.write_doc, "w") as f:
            f.write(doc)


if __name__ == "__main__":
    main()
