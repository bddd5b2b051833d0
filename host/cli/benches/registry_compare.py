#!/usr/bin/env python3
"""The plugin registry under load: `hoist registry serve` (SQLite, and PostgreSQL) beside
Debian's `docker-registry` (Distribution, the OCI registry teams already run), in one run.

Usage: python3 host/cli/benches/registry_compare.py [--seconds S] [--connections C]
       [--hoist PATH] [--no-postgres]

Needs `cargo build --release` (the hoist binary), `wrk` and `docker-registry` (Debian), and
PostgreSQL's server (Debian `postgresql`) for the PostgreSQL half. Publishes the trivial
test step (built here for wasm32-wasip2) as acme/echo@1.0.0 to each registry (the same OCI
artifact: config + component blob + manifest), then runs `wrk` against:
  - the version list: hoist's `GET /api/v1/packages/acme/echo` (digests, capabilities,
    signatures) beside Distribution's nearest, `GET /v2/acme/echo/tags/list`;
  - the manifest: `GET /v2/acme/echo/manifests/1.0.0` on each (the OCI path installs use).
Prints requests per second and p99 latency, and each figure as a ratio to Distribution's.
Targets (issue: registry): >= 10,000 req/s and p99 < 10 ms on 2 cores.
Then installs a 2 MB plugin (the trivial step padded with a custom section) end to end and
breaks the time down: resolve (the version list), download (the blob), and the whole
`hoist plugin install` (resolve, download, verify, precompile, review, write).
"""
import argparse, json, hashlib, os, re, shutil, socket, subprocess, sys, tempfile, time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, what, proc=None):
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                sys.exit(f"{what} exited with {proc.returncode}")
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port}")


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def digest(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def leb128(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def padded(wasm, size):
    """The component with a custom section appended, `size` bytes in all (still valid)."""
    name = b"hoist-bench-padding"
    body_len = max(0, size - len(wasm) - 1 - 5 - 1 - len(name))
    body = leb128(len(name)) + name + os.urandom(body_len)
    return wasm + b"\x00" + leb128(len(body)) + body


def oci_push(base, repo, tag, wasm, token=None):
    """Push a Wasm artifact (config + layer + manifest) the way any OCI client does."""
    def req(method, url, data=b"", ctype="application/octet-stream"):
        r = urllib.request.Request(url, data=data, method=method)
        r.add_header("Content-Type", ctype)
        if token:
            r.add_header("Authorization", f"Bearer {token}")
        return urllib.request.urlopen(r)
    config = json.dumps({"architecture": "wasm", "os": "wasip2",
                         "layerDigests": [digest(wasm)]}).encode()
    for blob in (config, wasm):
        loc = req("POST", f"{base}/v2/{repo}/blobs/uploads/").headers["Location"]
        url = loc if loc.startswith("http") else base + loc
        url += ("&" if "?" in url else "?") + "digest=" + digest(blob)
        req("PUT", url, blob)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/wasm",
        "config": {"mediaType": "application/vnd.wasm.config.v0+json",
                   "digest": digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/wasm", "digest": digest(wasm), "size": len(wasm)}],
    }).encode()
    req("PUT", f"{base}/v2/{repo}/manifests/{tag}", manifest,
        "application/vnd.oci.image.manifest.v1+json")


def wrk(url, seconds, connections):
    p = run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
             "-H", "Accept: application/vnd.oci.image.manifest.v1+json", url])
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", p.stdout).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", p.stdout)
    p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", p.stdout)
    if non2xx:
        sys.exit(f"{url}: {non2xx.group(1)} error answers:\n{p.stdout}")
    return rps, p99


class Postgres:
    def __init__(self, work):
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not bins:
            raise FileNotFoundError("no PostgreSQL server (apt-get install postgresql)")
        self.bin = bins[-1].parent
        # Its own directory under /tmp: the server may run as `nobody`, who cannot enter
        # the (0700) work directory.
        self.dir = Path(tempfile.mkdtemp(prefix="hoist-registry-bench-pg-"))
        self.root = os.geteuid() == 0
        if self.root:
            os.chown(self.dir, 65534, 65534)
        self.data = self.dir / "data"
        self.port = free_port()
        self.sh("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.sh("pg_ctl", "-D", self.data, "-o", opts, "-w", "-l", self.dir / "log", "start")
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def sh(self, tool, *args):
        cmd = [str(self.bin / tool), *map(str, args)]
        run((["runuser", "-u", "nobody", "--"] if self.root else []) + cmd)

    def stop(self):
        try:
            self.sh("pg_ctl", "-D", self.data, "-m", "immediate", "stop")
        except SystemExit:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--hoist", default=str(ROOT / "target" / "release" / "hoist"))
    ap.add_argument("--no-postgres", action="store_true")
    a = ap.parse_args()
    for tool in ("wrk", "docker-registry"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install {tool}")
    if not Path(a.hoist).is_file():
        sys.exit(f"{a.hoist} not found: cargo build --release")
    # The profile the built-in steps use (small): the 2 MB plugin is this, padded.
    run(["cargo", "build", "-q", "-p", "trivial", "--target", "wasm32-wasip2", "--profile", "plugin"],
        cwd=ROOT)
    wasm = (ROOT / "target/wasm32-wasip2/plugin/trivial.wasm").read_bytes()

    work = Path(tempfile.mkdtemp(prefix="hoist-registry-bench-"))
    procs, pg = [], None
    env = dict(os.environ, HOIST_HOME=str(work / "home"), HOIST_CACHE_DIR=str(work / "cache"))
    try:
        registries = []  # (label, base URL)

        def hoist_registry(label, extra):
            port = free_port()
            data = work / f"data-{len(procs)}"
            p = subprocess.Popen([a.hoist, "registry", "serve", "--addr", f"127.0.0.1:{port}",
                                  "--data-dir", str(data), *extra], env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(p)
            wait_port(port, label, p)
            token = run([a.hoist, "registry", "token", "create", "--namespace", "acme",
                         "--data-dir", str(data), *extra], env=env).stdout.split()[-1]
            oci_push(f"http://127.0.0.1:{port}", "acme/echo", "1.0.0", wasm, token)
            registries.append((label, f"http://127.0.0.1:{port}", token))

        hoist_registry("hoist (SQLite)", [])
        if not a.no_postgres:
            try:
                pg = Postgres(work)
                hoist_registry("hoist (PostgreSQL)", ["--database-url", pg.url])
            except FileNotFoundError as e:
                print(f"PostgreSQL half skipped: {e}")
        dport = free_port()
        (work / "distribution.yml").write_text(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {work / 'distribution'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{dport}\n")
        procs.append(subprocess.Popen(["docker-registry", "serve", str(work / "distribution.yml")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_port(dport, "docker-registry", procs[-1])
        base = f"http://127.0.0.1:{dport}"
        oci_push(base, "acme/echo", "1.0.0", wasm)

        rows = []
        for label, url, _ in registries:
            rows.append((label, "version list", *wrk(f"{url}/api/v1/packages/acme/echo", a.seconds, a.connections)))
            rows.append((label, "manifest", *wrk(f"{url}/v2/acme/echo/manifests/1.0.0", a.seconds, a.connections)))
        d_list = wrk(f"{base}/v2/acme/echo/tags/list", a.seconds, a.connections)
        d_man = wrk(f"{base}/v2/acme/echo/manifests/1.0.0", a.seconds, a.connections)
        rows.append(("distribution", "version list (tags/list)", *d_list))
        rows.append(("distribution", "manifest", *d_man))

        print(f"\nregistry GETs, wrk -t2 -c{a.connections} -d{a.seconds}s, {os.cpu_count()} cores, one run")
        print(f"{'registry':<20} {'request':<26} {'req/s':>9} {'p99 ms':>8}  {'req/s vs distribution':>22}")
        for label, what, rps, p99 in rows:
            base_rps = d_list[0] if what.startswith("version list") else d_man[0]
            print(f"{label:<20} {what:<26} {rps:>9.0f} {p99:>8.2f}  {rps / base_rps:>21.2f}x")

        # A 2 MB plugin, end to end, from the SQLite registry.
        label, url, token = registries[0]
        big = padded(wasm, 2_000_000)
        oci_push(url, "acme/big", "1.0.0", big, token)
        t = time.perf_counter()
        versions = json.load(urllib.request.urlopen(f"{url}/api/v1/packages/acme/big"))
        resolve = time.perf_counter() - t
        t = time.perf_counter()
        blob = urllib.request.urlopen(f"{url}/v2/acme/big/blobs/{digest(big)}").read()
        download = time.perf_counter() - t
        assert blob == big and versions["versions"][0]["component_digest"] == digest(big)
        t = time.perf_counter()
        run([a.hoist, "plugin", "install", "acme/big@1.0.0", "--registry", url], env=env)
        whole = time.perf_counter() - t
        print(f"\ninstall of a {len(big) / 1e6:.1f} MB plugin from {label}:")
        print(f"  resolve (version list)  {resolve * 1e3:8.1f} ms")
        print(f"  download (blob)         {download * 1e3:8.1f} ms")
        print(f"  whole `hoist plugin install` (resolve, download, verify, precompile, review, write)"
              f" {whole * 1e3:8.1f} ms; the rest (verify + precompile + write + process start)"
              f" {(whole - resolve - download) * 1e3:.1f} ms")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        if pg:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
