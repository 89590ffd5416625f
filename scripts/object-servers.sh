# Object-storage servers for the vault's backend tests (lifeboat-testkit's S3Server and
# Azurite). Sourced after lib.sh (uses log and die); installs only what is missing.
#   s3s-fs 0.14.1: ~3.5 min to build on 2 cores (0.17 needs a newer rustc)
#   azurite (npm): ~35 s

need_object_servers() {
    if ! command -v s3s-fs >/dev/null && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" ]; then
        log "installing s3s-fs (cargo, a few minutes)"
        cargo install s3s-fs@0.14.1 --features binary --locked >&2 \
            || die "cargo install s3s-fs@0.14.1 failed"
    fi
    if ! command -v azurite-blob >/dev/null; then
        command -v npm >/dev/null || apt_need node nodejs npm npm
        log "installing azurite (npm)"
        npm install -g --no-fund --no-audit azurite@3 >&2 || die "npm install -g azurite failed"
    fi
}
