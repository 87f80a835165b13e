# test/lib/cluster.sh: start and stop a throwaway PostgreSQL cluster for tests,
# demos and benchmarks. Source it, then:
#
#   cluster_start DIR PORT [postgresql.conf lines...]   initdb into DIR, start on PORT
#   cluster_stop DIR                                    stop it (fast), keep files
#   cluster_psql ARGS...                                psql against the cluster
#
# The server always runs as the `postgres` OS user (initdb refuses root). When
# this script runs as root it switches with runuser; otherwise it runs as the
# invoking user, who must then be able to initdb. The socket lives in DIR, and
# the server listens on 127.0.0.1 only.

PG_BINDIR=${PG_BINDIR:-$(pg_config --bindir)}

as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

cluster_start() {
  local dir=$1 port=$2; shift 2
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
  as_postgres "$PG_BINDIR/initdb" -D "$dir/data" -U postgres --auth=trust \
    --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log"; return 1; }
  {
    echo "port = $port"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$dir'"
    echo "max_connections = 100"
    echo "timezone = 'UTC'"
    for line in "$@"; do echo "$line"; done
  } >>"$dir/data/postgresql.conf"
  as_postgres "$PG_BINDIR/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null ||
    { cat "$dir/server.log"; return 1; }
  export PGHOST=$dir PGPORT=$port PGUSER=postgres PGDATABASE=postgres
}

cluster_stop() {
  local dir=$1
  [ -f "$dir/data/postmaster.pid" ] || return 0
  as_postgres "$PG_BINDIR/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}

cluster_psql() {
  psql -X -v ON_ERROR_STOP=1 -q "$@"
}

# free_port [FIRST LAST]: print a TCP port on 127.0.0.1 that nothing listens on,
# from FIRST..LAST (default 54330..54429).
free_port() {
  local p first=${1:-54330} last=${2:-54429}
  for p in $(seq "$first" "$last"); do
    if ! (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null && [ ! -e "/tmp/.s.PGSQL.$p" ]; then
      echo "$p"; return 0
    fi
  done
  echo "no free port in $first-$last" >&2; return 1
}
