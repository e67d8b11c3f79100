//! An `LD_PRELOAD` shim for fault injection on the real syscall path, built
//! here with `cc`: rust std's `File::write_all` is libc `write` and
//! `File::sync_data` is libc `fdatasync` (`pwrite64`/`writev` are wrapped
//! too, in case a later std or store uses them). On `journal.wal` only:
//!
//! * `RMM_SHIM_FAIL_CALL=write|fdatasync`, `RMM_SHIM_FAIL_AT=k`,
//!   `RMM_SHIM_ERRNO=n` (default ENOSPC): the k-th such call fails;
//! * `RMM_SHIM_LOG=file`: one line per call, `kind k ok|failed epoch_ms`;
//! * `RMM_SHIM_PAUSE_ON=text`, `RMM_SHIM_PAUSE_FILE=f`: the first write
//!   holding `text` creates `f` and blocks until `f.go` exists;
//! * `RMM_SHIM_REFUSE_PORT=p`, `RMM_SHIM_REFUSE_WHILE=f`: while `f` exists,
//!   every `connect` to port p is refused (any socket, not only the log's).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::support::text;

const SHIM_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

static atomic_long writes, syncs;
static atomic_int paused;

static int is_wal(int fd) {
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return 0;
    path[n] = 0;
    /* RMM_SHIM_PATH_HAS=text: the files whose path holds `text` instead. */
    const char *has = getenv("RMM_SHIM_PATH_HAS");
    if (has && *has) return strstr(path, has) != NULL;
    const char *suffix = "/journal.wal";
    size_t s = strlen(suffix);
    return (size_t)n >= s && strcmp(path + n - s, suffix) == 0;
}

/* Counts calls of one kind on journal.wal; 1 when this one must fail. */
static int fail_now(int fd, const char *kind, atomic_long *counter) {
    if (!is_wal(fd)) return 0;
    long k = atomic_fetch_add(counter, 1) + 1;
    const char *log = getenv("RMM_SHIM_LOG");
    const char *want = getenv("RMM_SHIM_FAIL_CALL");
    const char *at = getenv("RMM_SHIM_FAIL_AT");
    int fail = want && at && strcmp(want, kind) == 0 && atol(at) == k;
    if (log) {
        FILE *f = fopen(log, "a");
        if (f) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            fprintf(f, "%s %ld %s %lld\n", kind, k, fail ? "failed" : "ok",
                    (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
            fclose(f);
        }
    }
    if (fail) {
        const char *e = getenv("RMM_SHIM_ERRNO");
        errno = e ? atoi(e) : ENOSPC;
    }
    return fail;
}

#define REAL(name) static __typeof__(name) *real; if (!real) real = dlsym(RTLD_NEXT, #name)

/* RMM_SHIM_PAUSE_ON=text: the first write of journal.wal holding `text`
   creates RMM_SHIM_PAUSE_FILE and waits until `<that file>.go` exists, so a
   test acts at an exact point of a run (the write, and with it the append,
   returns only then). */
static void pause_on(int fd, const void *buf, size_t len) {
    const char *pattern = getenv("RMM_SHIM_PAUSE_ON");
    const char *file = getenv("RMM_SHIM_PAUSE_FILE");
    if (!pattern || !file || atomic_load(&paused) || !is_wal(fd)) return;
    if (!memmem(buf, len, pattern, strlen(pattern))) return;
    if (atomic_exchange(&paused, 1)) return;
    FILE *f = fopen(file, "w");
    if (f) fclose(f);
    char go[4096];
    snprintf(go, sizeof go, "%s.go", file);
    while (access(go, F_OK) != 0) usleep(5000);
}

/* RMM_SHIM_REFUSE_PORT=p, RMM_SHIM_REFUSE_WHILE=f: while `f` exists, a
   connect to port p is refused (ECONNREFUSED), as when nothing listens. */
int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    REAL(connect);
    const char *port = getenv("RMM_SHIM_REFUSE_PORT");
    const char *file = getenv("RMM_SHIM_REFUSE_WHILE");
    if (port && file && addr && access(file, F_OK) == 0) {
        int p = -1;
        if (addr->sa_family == AF_INET) p = ntohs(((const struct sockaddr_in *)addr)->sin_port);
        if (addr->sa_family == AF_INET6) p = ntohs(((const struct sockaddr_in6 *)addr)->sin6_port);
        if (p == atoi(port)) { errno = ECONNREFUSED; return -1; }
    }
    return real(fd, addr, len);
}

ssize_t write(int fd, const void *buf, size_t len) {
    REAL(write);
    pause_on(fd, buf, len);
    if (fail_now(fd, "write", &writes)) return -1;
    return real(fd, buf, len);
}
ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off) {
    REAL(pwrite64);
    if (fail_now(fd, "write", &writes)) return -1;
    return real(fd, buf, len, off);
}
ssize_t writev(int fd, const struct iovec *iov, int n) {
    REAL(writev);
    if (fail_now(fd, "write", &writes)) return -1;
    return real(fd, iov, n);
}
int fdatasync(int fd) {
    REAL(fdatasync);
    if (fail_now(fd, "fdatasync", &syncs)) return -1;
    return real(fd);
}
"#;

/// The shim, built once (kept in the temp dir under a name that is the
/// hash of its source, so test processes share it and nothing piles up);
/// `None` (with the reason printed) when there is no C compiler.
pub fn shim() -> Option<&'static Path> {
    static SHIM: OnceLock<Option<PathBuf>> = OnceLock::new();
    SHIM.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        SHIM_C.hash(&mut h);
        let dir = std::env::temp_dir().join(format!("rmm-shim-{:016x}", h.finish()));
        let so = dir.join("walfail.so");
        if so.exists() {
            return Some(so);
        }
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join(format!("walfail-{}.c", std::process::id()));
        let tmp = dir.join(format!("walfail-{}.so", std::process::id()));
        std::fs::write(&src, SHIM_C).unwrap();
        let built = Command::new("cc").args(["-shared", "-fPIC", "-O1", "-o"]).arg(&tmp).arg(&src).arg("-ldl").output();
        let _ = std::fs::remove_file(&src);
        match built {
            Ok(out) if out.status.success() => {
                // Atomic: a test process beside this one sees all of it or nothing.
                std::fs::rename(&tmp, &so).unwrap();
                Some(so)
            }
            Ok(out) => panic!("the shim does not build: {}", text(&out.stderr)),
            Err(e) => {
                let why = format!("SKIPPED: no C compiler to build the LD_PRELOAD shim ({e}) — install gcc (apt-get install gcc)");
                assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
                eprintln!("{why}");
                None
            }
        }
    })
    .as_deref()
}

