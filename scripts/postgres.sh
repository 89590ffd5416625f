# PostgreSQL for the server's PostgreSQL tests. Sourced after lib.sh (uses log, die and
# apt_need); installs Debian's postgresql when missing, starts its cluster, and makes a
# test-only role that may create databases (each test makes its own). Exports
# LIFEBOAT_TEST_POSTGRES, which those tests read.

need_postgres() {
    apt_need /usr/lib/postgresql/*/bin/postgres postgresql pg_ctlcluster postgresql-common
    local version
    version=$(ls /usr/lib/postgresql | sort -n | tail -1)
    [ -n "$version" ] || die "PostgreSQL is installed but no server version was found"
    if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main"' | grep -q .; then
        log "creating PostgreSQL cluster $version/main"
        pg_createcluster "$version" main >&2 || die "pg_createcluster $version main failed"
    fi
    if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" && $4 == "online"' | grep -q .; then
        log "starting PostgreSQL $version/main"
        pg_ctlcluster "$version" main start >&2 || die "pg_ctlcluster $version main start failed"
    fi
    local port
    port=$(pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $3}')
    su postgres -c "psql -q -p $port -tAc \"SELECT 1 FROM pg_roles WHERE rolname = 'lifeboat_test'\"" | grep -q 1 \
        || su postgres -c "psql -q -p $port -c \"CREATE ROLE lifeboat_test LOGIN CREATEDB PASSWORD 'lifeboat_test'\"" >&2 \
        || die "creating the PostgreSQL role lifeboat_test failed"
    # Databases left by earlier runs (each test makes its own).
    local db
    for db in $(su postgres -c "psql -q -p $port -tAc \"SELECT datname FROM pg_database WHERE datname LIKE 'lifeboat_test_%'\""); do
        su postgres -c "psql -q -p $port -c 'DROP DATABASE IF EXISTS $db WITH (FORCE)'" >/dev/null 2>&1 || true
    done
    export LIFEBOAT_TEST_POSTGRES="postgres://lifeboat_test:lifeboat_test@127.0.0.1:$port/postgres"
}
