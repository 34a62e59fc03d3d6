/* Preloaded into every dynamically linked program of a `gvisor` sandbox (/etc/ld.so.preload).
 *
 * runsc 0.0~20221219 (Debian bookworm's) refuses AT_NO_AUTOMOUNT in statx(2) and
 * newfstatat(2) with EINVAL (fixed upstream in 2023), and bookworm's coreutils pass it:
 * `ls`, `stat` and `find` fail on every path. gVisor has no automounts, so the flag means
 * nothing there; these wrappers clear it and make the system call themselves. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef AT_NO_AUTOMOUNT
#define AT_NO_AUTOMOUNT 0x800
#endif

int statx(int dirfd, const char *restrict path, int flags, unsigned int mask,
          struct statx *restrict buf) {
    return (int)syscall(SYS_statx, dirfd, path, flags & ~AT_NO_AUTOMOUNT, mask, buf);
}

int fstatat(int dirfd, const char *restrict path, struct stat *restrict buf, int flags) {
    return (int)syscall(SYS_newfstatat, dirfd, path, buf, flags & ~AT_NO_AUTOMOUNT);
}

int fstatat64(int dirfd, const char *restrict path, struct stat64 *restrict buf, int flags) {
    return (int)syscall(SYS_newfstatat, dirfd, path, buf, flags & ~AT_NO_AUTOMOUNT);
}
