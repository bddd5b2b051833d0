#!/usr/bin/env python3
"""`hoist worker` vs Prefect's process worker on the same server and pool setup.

Usage: python3 host/cli/benches/worker_compare.py --prefect-python VENV/bin/python
                                                  [--runs N] [--queued N] [--window S] [--hoist PATH]

Starts `prefect server start` (SQLite, temporary PREFECT_HOME) on 127.0.0.1, a project
with a flow that prints a timestamp as its first line and a deployment with two pull
steps (set_working_directory, run_shell_script), and for each worker in turn: starts
it (Prefect's with a 1 s poll, as Hoist's), creates N flow runs one after another,
each only after the previous completed, and reads back from the run's logs when the
flow printed its first line. Figures: create -> first line (median), and the worker's
RSS (VmRSS from /proc, sampled every 50 ms during the measured runs; the warm-up
run, where Hoist compiles its built-in steps once into its cache, is left out). Ratios hoist/prefect.

Then, per worker, --queued runs (default 100) created at once with `--limit 8`: the time
from the first creation until all are COMPLETED.

Hoist's worker runs as users run it: woken by the pool's events stream
(`/api/events/out`), polling every 10 s besides.

Last, what waiting for runs costs the server (CPU seconds of the server's process over
--window seconds, no runs created): nothing connected (the baseline), Hoist's worker
with `--no-events` polling every second, and Hoist's worker as it runs by default (the
events stream, a poll every 10 s); each with its heartbeat every 10 s.
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
    for attempt in range(12):
        req = urllib.request.Request(url + path, data=data, method=method or ("POST" if data else "GET"),
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req) as r:
                text = r.read()
            return json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            # The SQLite server answers 503 under write contention: retry, as clients do.
            if e.code != 503 or attempt == 11:
                raise
            time.sleep(min(0.2 * 2 ** attempt, 3))


def rss_mb(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cost(server, seconds, start=None):
    """The server's CPU seconds over `seconds`, with `start()`'s process running."""
    p = start() if start else None
    time.sleep(2)
    before = cpu_seconds(server.pid)
    time.sleep(seconds)
    used = cpu_seconds(server.pid) - before
    if p and p.poll() is not None:
        sys.exit(f"the measured client {p.args} exited early ({p.returncode})")
    if p:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
    return used


def queued(url, dep, n):
    """Create `n` runs at once; seconds until all have ended, and how many COMPLETED (the
    others' states are printed: on SQLite a worker can lose a run to a 503)."""
    t0 = time.time()
    ids = [api(url, f"/deployments/{dep}/create_flow_run", {})["id"] for _ in range(n)]
    final = ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"]
    while api(url, "/flow_runs/count", {"flow_runs": {"id": {"any_": ids},
                                                      "state": {"type": {"any_": final}}}}) < n:
        time.sleep(0.5)
    took = time.time() - t0
    bad = api(url, "/flow_runs/filter", {"flow_runs": {"id": {"any_": ids}, "state": {"type": {
        "any_": final[1:]}}}})
    for r in bad:
        print(f"  not completed: {r['state_type']}: {r['state']['message'][:200]}", file=sys.stderr)
    return took, n - len(bad)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--hoist", default=str(ROOT / "target" / "release" / "hoist"))
    ap.add_argument("--prefect-python", required=True)
    ap.add_argument("--queued", type=int, default=100)
    ap.add_argument("--window", type=float, default=30)
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
            "hoist": [a.hoist, "worker", "start", "-p", "bench-hoist", "--python", a.prefect_python,
                      "--limit", "8"],
            "prefect": [a.prefect_python, "-m", "prefect", "worker", "start", "-p", "bench-prefect",
                        "--type", "process", "--limit", "8"],
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
                print(f"{name}: {a.queued} runs queued...", file=sys.stderr)
                queue_time = queued(url, dep, a.queued) if a.queued else (0.0, 0)
            finally:
                w.terminate()
                try:
                    w.wait(15)
                except subprocess.TimeoutExpired:
                    w.kill()
            results[name] = (latencies[1:], rss, queue_time)
            print(f"{name}: {results[name]}", file=sys.stderr)
        print(f"flow run created -> its first line, {a.runs} runs each, same server, 1 s poll, 2 pull steps:")
        for name, (lat, rss, _) in results.items():
            print(f"  {name:8} median {statistics.median(lat):6.2f} s  (min {min(lat):.2f}, max {max(lat):.2f})"
                  f"  worker RSS (max) {rss:6.1f} MB")
        for name, (lat, rss, (qt, ok)) in results.items():
            print(f"  {name:8} {a.queued} runs queued at once, --limit 8: all ended after {qt:6.1f} s,"
                  f" {ok} COMPLETED")
        h, p = results["hoist"], results["prefect"]
        print(f"  hoist / prefect: latency {statistics.median(h[0]) / statistics.median(p[0]):.2f}x,"
              f" worker memory {h[1] / p[1]:.2f}x" + (f", {a.queued} queued {h[2][0] / p[2][0]:.2f}x" if a.queued else ""))
        idle = server_cost(server, a.window)
        waiting = {}
        for mode, extra in (("poll", ["--no-events", "--poll-interval", "1"]), ("events", [])):
            api(url, "/work_pools/", {"name": f"bench-{mode}", "type": "process"})
            waiting[mode] = server_cost(server, a.window, lambda: subprocess.Popen(
                [a.hoist, "worker", "start", "-p", f"bench-{mode}", "--python", a.prefect_python, *extra],
                cwd=proj, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        print(f"server CPU while a worker waits for runs, {a.window:.0f} s window:")
        print(f"  nothing connected (baseline)         {idle:6.2f} s")
        for mode, label in (("poll", "hoist worker --no-events, 1 s poll"), ("events", "hoist worker, events + 10 s poll")):
            used = waiting[mode]
            print(f"  {label:36} {used:6.2f} s  ({(used - idle) / a.window * 100:.1f}% of a core over baseline)")
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
