#!/usr/bin/env python3
"""`hoist worker` vs Prefect's process worker on the same server and pool setup.

Usage: python3 host/cli/benches/worker_compare.py --prefect-python VENV/bin/python
                                                  [--runs N] [--hoist PATH]

Starts `prefect server start` (SQLite, temporary PREFECT_HOME) on 127.0.0.1, a project
with a flow that prints a timestamp as its first line and a deployment with two pull
steps (set_working_directory, run_shell_script), and for each worker in turn: starts
it (Prefect's with a 1 s poll, as Hoist's), creates N flow runs one after another,
each only after the previous completed, and reads back from the run's logs when the
flow printed its first line. Figures: create -> first line (median), and the worker's
RSS (VmRSS from /proc, sampled every 50 ms during the measured runs; the warm-up
run, where Hoist compiles its built-in steps once into its cache, is left out). Ratios hoist/prefect.
"""
import argparse, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time, urllib.error, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

FLOW = '''import time
from prefect import flow


@flow(log_prints=True)
def hello():
    print(f"t={time.time()}")
'''


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def api(url, path, body=None, method=None):
    data = None if body is None else json.dumps(body).encode()
    for attempt in range(6):
        req = urllib.request.Request(url + path, data=data, method=method or ("POST" if data else "GET"),
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req) as r:
                text = r.read()
            return json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            # The SQLite server answers 503 under write contention: retry, as clients do.
            if e.code != 503 or attempt == 5:
                raise
            time.sleep(0.2 * 2 ** attempt)


def rss_mb(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--hoist", default=str(ROOT / "target" / "release" / "hoist"))
    ap.add_argument("--prefect-python", required=True)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hoist-worker-bench-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(work / "home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", PREFECT_SERVER_UI_ENABLED="false", PREFECT_API_URL=url,
               HOIST_HOME=str(work / "hoist-home"), PREFECT_WORKER_QUERY_SECONDS="1",
               PREFECT_WORKER_PREFETCH_SECONDS="10")
    server = subprocess.Popen([a.prefect_python, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {}
    try:
        for _ in range(900):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).read()
                break
            except Exception:
                time.sleep(0.1)
        proj = work / "proj"
        (proj / "flows").mkdir(parents=True)
        (proj / "flows" / "hello.py").write_text(FLOW)
        workers = {
            "hoist": [a.hoist, "worker", "start", "-p", "bench-hoist", "--poll-interval", "1",
                      "--python", a.prefect_python],
            "prefect": [a.prefect_python, "-m", "prefect", "worker", "start", "-p", "bench-prefect",
                        "--type", "process"],
        }
        for name in workers:
            pool = f"bench-{name}"
            api(url, "/work_pools/", {"name": pool, "type": "process"})
            (proj / "prefect.yaml").write_text(
                "deployments:\n- name: bench\n  entrypoint: flows/hello.py:hello\n"
                f"  work_pool: {{name: {pool}}}\n  pull:\n"
                f"  - prefect.deployments.steps.set_working_directory: {{directory: {proj}}}\n"
                "  - prefect.deployments.steps.run_shell_script: {script: echo pulled}\n")
            subprocess.run([a.hoist, "deploy", "--prefect-file", str(proj / "prefect.yaml")], cwd=proj, env=env,
                           check=True, capture_output=True)
            dep = api(url, f"/deployments/name/hello/bench")["id"]
            if name == "hoist":
                # Compile the two built-in steps into the component cache first, as any
                # earlier hoist command on the machine would have: a worker that compiles
                # keeps cranelift's memory for the rest of its life.
                for step in (["set_working_directory", "-i", f"directory={proj}"],
                             ["run_shell_script", "-i", "script=echo warm"]):
                    subprocess.run([a.hoist, "step", "run", *step, "--quiet"], cwd=proj, env=env,
                                   check=True, capture_output=True)
            w = subprocess.Popen(workers[name], cwd=proj, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            time.sleep(3)
            latencies, rss = [], 0.0
            try:
                for i in range(a.runs + 1):  # the first one warms caches (Hoist compiles its steps)
                    t0 = time.time()
                    run = api(url, f"/deployments/{dep}/create_flow_run", {})
                    while True:
                        r = api(url, f"/flow_runs/{run['id']}")
                        if i > 0:
                            rss = max(rss, rss_mb(w.pid))
                        if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                            break
                        time.sleep(0.05)
                    # The engine ships its logs in batches: they may land after the state.
                    first = []
                    for _ in range(100):
                        logs = api(url, "/logs/filter", {"logs": {"flow_run_id": {"any_": [run["id"]]}}})
                        first = [float(l["message"][2:]) for l in logs if l["message"].startswith("t=")]
                        if first:
                            break
                        time.sleep(0.1)
                    if r["state_type"] != "COMPLETED" or not first:
                        sys.exit(f"{name}: run ended {r['state_type']} without its first line")
                    latencies.append(first[0] - t0)
            finally:
                w.terminate()
                try:
                    w.wait(15)
                except subprocess.TimeoutExpired:
                    w.kill()
            results[name] = (latencies[1:], rss)
        print(f"flow run created -> its first line, {a.runs} runs each, same server, 1 s poll, 2 pull steps:")
        for name, (lat, rss) in results.items():
            print(f"  {name:8} median {statistics.median(lat):6.2f} s  (min {min(lat):.2f}, max {max(lat):.2f})"
                  f"  worker RSS (max) {rss:6.1f} MB")
        h, p = results["hoist"], results["prefect"]
        print(f"  hoist / prefect: latency {statistics.median(h[0]) / statistics.median(p[0]):.2f}x,"
              f" worker memory {h[1] / p[1]:.2f}x")
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
