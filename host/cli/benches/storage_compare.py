#!/usr/bin/env python3
"""Pulling a 200 MB folder from a local S3 server: Hoist's pull_from_s3 vs native clients.

Usage: python3 host/cli/benches/storage_compare.py [--runs N] [--mb MB] [--hoist PATH]

Starts `s3s-fs` (an S3-compatible server that checks SigV4 signatures; on PATH or
$HOIST_S3S_FS, see .ci/run for the install line) on 127.0.0.1 with a folder of 20 files
totalling --mb megabytes, then downloads the folder, alternating, with:
  - `hoist step run pull_from_s3` (the plugin signs and streams every object over wasi:http);
  - `curl --aws-sigv4`, one process fetching the same objects over one connection (the baseline),
    and the same with `--parallel --parallel-max 8` (Hoist downloads 8 objects at a time);
  - `aws s3 cp --recursive` (the AWS CLI, when installed), for reference.
Prints medians, throughput and the ratio hoist/curl (target: within 1.5×).
"""
import argparse, os, shutil, statistics, subprocess, sys, tempfile, time, socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
AK, SK = "BENCHKEY", "bench-secret-key-0001"

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port

def timed(cmd, cwd, env=None):
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return dt

def tree_bytes(d):
    return sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file())

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--hoist", default=str(ROOT / "target" / "release" / "hoist"))
    a = ap.parse_args()
    s3s = os.environ.get("HOIST_S3S_FS") or shutil.which("s3s-fs")
    if not s3s:
        sys.exit("s3s-fs not found: cargo install s3s-fs@0.14.1 --locked --features binary")
    work = Path(tempfile.mkdtemp(prefix="hoist-s3-bench-"))
    try:
        data = work / "s3" / "bkt" / "data"
        data.mkdir(parents=True)
        n = 20
        size = a.mb * 1_000_000 // n
        keys = []
        for i in range(n):
            (data / f"part-{i:02}.bin").write_bytes(os.urandom(size))
            keys.append(f"data/part-{i:02}.bin")
        total = tree_bytes(data)
        port = free_port()
        server = subprocess.Popen([s3s, "--host", "127.0.0.1", "--port", str(port),
                                   "--access-key", AK, "--secret-key", SK, str(work / "s3")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        try:
            creds = ('{"credentials": {"aws_access_key_id": "%s", "aws_secret_access_key": "%s", '
                     '"aws_client_parameters": {"endpoint_url": "%s"}}}' % (AK, SK, endpoint))
            hoist = [a.hoist, "step", "run", "pull_from_s3", "-i", "bucket=bkt", "-i", "folder=data",
                     "--inputs-json", creds, "--allow", f"net:{endpoint}"]
            curl = ["curl", "-sSf", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", f"{AK}:{SK}",
                    "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]
            for k in keys:
                curl += [f"{endpoint}/bkt/{k}", "-o", k.split("/")[1]]
            curl_par = curl[:1] + ["--parallel", "--parallel-max", "8"] + curl[1:]
            aws = shutil.which("aws")
            aws_cmd = [aws, "s3", "cp", "--recursive", "--quiet", "s3://bkt/data", ".",
                       "--endpoint-url", endpoint] if aws else None
            aws_env = dict(os.environ, AWS_ACCESS_KEY_ID=AK, AWS_SECRET_ACCESS_KEY=SK,
                           AWS_DEFAULT_REGION="us-east-1")
            res = {"hoist": [], "curl": [], "curl-par": [], "aws": []}
            for r in range(a.runs + 1):
                for name in ["hoist", "curl", "curl-par", "aws"]:
                    if name == "aws" and not aws_cmd:
                        continue
                    dest = work / f"out-{name}"
                    shutil.rmtree(dest, ignore_errors=True)
                    dest.mkdir()
                    cmd = {"hoist": hoist, "curl": curl, "curl-par": curl_par, "aws": aws_cmd}[name]
                    dt = timed(cmd, dest, aws_env if name == "aws" else None)
                    got = tree_bytes(dest)
                    if got != total:
                        sys.exit(f"{name} downloaded {got} bytes, expected {total}")
                    if r > 0:  # the first round warms caches
                        res[name].append(dt)
            # The bytes must be the same as the source.
            for k in keys:
                name = k.split("/")[1]
                if (work / "out-hoist" / name).read_bytes() != (data / name).read_bytes():
                    sys.exit(f"hoist's copy of {name} differs")
        finally:
            server.kill()
        med = {k: statistics.median(v) for k, v in res.items() if v}
        mb = total / 1e6
        print(f"pull a {mb:.0f} MB folder ({n} objects) from s3s-fs on loopback, median of {a.runs} alternated runs")
        for k, v in med.items():
            print(f"  {k:8} {v * 1000:8.1f} ms  {mb / v:7.1f} MB/s")
        print(f"  hoist / curl = {med['hoist'] / med['curl']:.2f}× (target ≤ 1.5×)")
        print(f"  hoist / curl --parallel-max 8 = {med['hoist'] / med['curl-par']:.2f}× (the same concurrency as hoist)")
        if "aws" in med:
            print(f"  hoist / aws s3 cp = {med['hoist'] / med['aws']:.2f}×")
    finally:
        shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    main()
