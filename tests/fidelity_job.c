/* A job that holds what zdtm found stasis's old container got wrong: /proc/self/maps open, a
 * pidfd to itself, SysV and POSIX shared memory, a file unlinked while open and a 4 MiB deleted
 * file still open. Every 20 ms it checks all of them and prints N (it counts on in both
 * shared memories), or "BAD what" and exits 1. Built by tests/fidelity.rs. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#define BIG (4 << 20)

static void bad(const char *what) {
    printf("BAD %s\n", what);
    fflush(stdout);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s DIR SHM-NAME\n", argv[0]);
        return 2;
    }
    char path[4096];
    setvbuf(stdout, NULL, _IOLBF, 0);

    int maps = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (maps < 0) bad("open /proc/self/maps");
    int pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    if (pidfd < 0) bad("pidfd_open");

    int sysv = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
    if (sysv < 0) bad("shmget");
    volatile long *a = shmat(sysv, NULL, 0);
    if (a == (void *)-1) bad("shmat");

    int px = shm_open(argv[2], O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (px < 0) bad("shm_open");
    if (ftruncate(px, 4096)) bad("ftruncate shm");
    volatile long *b = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, px, 0);
    if (b == MAP_FAILED) bad("mmap shm");

    snprintf(path, sizeof path, "%s/unlinked", argv[1]);
    int un = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (un < 0 || write(un, "still here", 10) != 10) bad("write unlinked");
    if (unlink(path)) bad("unlink");

    snprintf(path, sizeof path, "%s/big", argv[1]);
    int big = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (big < 0) bad("open big");
    char *chunk = malloc(BIG);
    if (!chunk) bad("malloc");
    for (int i = 0; i < BIG; i++) chunk[i] = (char)(i * 7 + 3);
    if (write(big, chunk, BIG) != BIG) bad("write big");
    if (unlink(path)) bad("unlink big");

    for (long n = 1;; n++) {
        char buf[64];
        if (pread(maps, buf, sizeof buf, 0) <= 0) bad("read /proc/self/maps");
        if (syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0)) bad("pidfd to self");
        if (pread(un, buf, 10, 0) != 10 || memcmp(buf, "still here", 10)) bad("unlinked file");
        char *back = malloc(BIG);
        if (!back || pread(big, back, BIG, 0) != BIG || memcmp(back, chunk, BIG))
            bad("deleted 4 MiB file");
        free(back);
        if (*a != n - 1 || *b != n - 1) bad("shared memory counters");
        *a = n;
        *b = n;
        printf("%ld\n", n);
        usleep(20000);
    }
}
