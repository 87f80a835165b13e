"""test/lib/clusterkit.py: throwaway clusters of a test's own, for the tests
that need more than the cluster test/run gives them (a second cluster, a
standby, a crash). Same conventions as test/lib/cluster.sh, which does the
work: initdb as the postgres OS user into <path>/data, a free port from a
range, the socket and server.log in <path>.
"""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINDIR = "/usr/lib/postgresql/15/bin"


def as_postgres(cmd):
    """cmd run as the postgres OS user when we are root."""
    return (["runuser", "-u", "postgres", "--"] + cmd) if os.geteuid() == 0 else cmd


def bash(script):
    """Run script after sourcing test/lib/cluster.sh; its last output line."""
    p = subprocess.run(["bash", "-c", "set -e; source test/lib/cluster.sh; " + script], cwd=ROOT,
                       capture_output=True, text=True, env=dict(os.environ, PG_BINDIR=BINDIR))
    if p.returncode != 0:
        raise RuntimeError("%s: %s %s" % (script, p.stdout, p.stderr))
    return p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""


def start_cluster(path, ports, *settings):
    """initdb and start a cluster in path with the given postgresql.conf
    lines, on a free port of the range ports = (low, high); returns the port."""
    port = int(bash("free_port %d %d" % ports))
    bash("cluster_start %s %d %s" % (path, port, " ".join('"%s"' % s for s in settings)))
    return port


def stop_cluster(path):
    """Stop the cluster in path if it runs (fast shutdown)."""
    data = os.path.join(path, "data")
    if os.path.exists(os.path.join(data, "postmaster.pid")):
        subprocess.run(as_postgres([BINDIR + "/pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "30", "stop"]),
                       capture_output=True, text=True)


def log_tail(path, lines=15):
    """The last lines of the cluster's server log, or []."""
    log = os.path.join(path, "server.log")
    if not os.path.exists(log):
        return []
    with open(log, errors="replace") as f:
        return [line.rstrip() for line in f.readlines()[-lines:]]
