/* A fake libcuda.so.1 for tests/cuda.rs: the CUDA driver calls stasis's cuda-checkpoint mode
 * makes, with the real signatures. Each call appends one line "name arg..." to the file named by
 * FAKE_CUDA_LOG, and returns what the environment scripts:
 *   FAKE_CUDA_FAIL=name:code[,name:code]  that call returns the error code
 *   FAKE_CUDA_ABORT=name                  that call aborts the process (a driver crash)
 *   FAKE_CUDA_STATE=n                     cuCheckpointProcessGetState's state (default 0)
 *   FAKE_CUDA_TID=n                       cuCheckpointProcessGetRestoreThreadId's tid (default pid)
 *   FAKE_CUDA_VERSION=n                   cuDriverGetVersion's version (default 12080)
 *   FAKE_CUDA_GPUS=name;name              the devices (default none)
 * Built with -DOLD_DRIVER it lacks the checkpoint API, as drivers before 570 do.
 * cuInit starts a thread and keeps thread-local state, as the real library does, so the test
 * also covers loading a library that does both into the static stasis binary. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef struct { unsigned int timeoutMs; unsigned int reserved0; unsigned long long reserved1[7]; } LockArgs;
typedef struct { unsigned long long reserved[8]; } Args8;

static __thread int calls_on_this_thread;
static pthread_t worker;
static int initialised;

#include <stdarg.h>
static void record(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void record(const char *fmt, ...) {
  const char *path = getenv("FAKE_CUDA_LOG");
  if (!path) return;
  FILE *f = fopen(path, "a");
  if (!f) return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(f, fmt, ap);
  va_end(ap);
  fputc('\n', f);
  fclose(f);
  calls_on_this_thread++;
}

static CUresult scripted(const char *name) {
  const char *crash = getenv("FAKE_CUDA_ABORT");
  if (crash && !strcmp(crash, name)) abort();
  const char *s = getenv("FAKE_CUDA_FAIL");
  size_t n = strlen(name);
  while (s && *s) {
    if (!strncmp(s, name, n) && s[n] == ':') return atoi(s + n + 1);
    s = strchr(s, ',');
    if (s) s++;
  }
  return 0;
}

static int env_int(const char *name, int dflt) {
  const char *v = getenv(name);
  return v ? atoi(v) : dflt;
}

static void *idle(void *arg) { (void)arg; return NULL; }

CUresult cuInit(unsigned int flags) {
  record("cuInit %u", flags);
  if (!initialised) {
    if (pthread_create(&worker, NULL, idle, NULL)) return 304;
    pthread_join(worker, NULL);
    initialised = 1;
  }
  return scripted("cuInit");
}

CUresult cuDriverGetVersion(int *version) {
  record("cuDriverGetVersion");
  *version = env_int("FAKE_CUDA_VERSION", 12080);
  return scripted("cuDriverGetVersion");
}

CUresult cuGetErrorString(CUresult error, const char **str) {
  switch (error) {
  case 0: *str = "no error"; return 0;
  case 2: *str = "out of memory"; return 0;
  case 3: *str = "initialization error"; return 0;
  case 304: *str = "OS call failed or operation not supported on this OS"; return 0;
  case 999: *str = "unknown error"; return 0;
  default: *str = NULL; return 1; /* CUDA_ERROR_INVALID_VALUE, as the driver does */
  }
}

static int gpu_count(void) {
  const char *g = getenv("FAKE_CUDA_GPUS");
  if (!g || !*g) return 0;
  int n = 1;
  for (; *g; g++) n += *g == ';';
  return n;
}

CUresult cuDeviceGetCount(int *count) {
  record("cuDeviceGetCount");
  *count = gpu_count();
  return scripted("cuDeviceGetCount");
}

CUresult cuDeviceGet(CUdevice *dev, int ordinal) {
  record("cuDeviceGet %d", ordinal);
  if (ordinal < 0 || ordinal >= gpu_count()) return 101; /* CUDA_ERROR_INVALID_DEVICE */
  *dev = ordinal;
  return 0;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice dev) {
  record("cuDeviceGetName %d %d", len, dev);
  const char *g = getenv("FAKE_CUDA_GPUS");
  for (int i = 0; g && i < dev; i++) {
    g = strchr(g, ';');
    if (g) g++;
  }
  if (!g) return 101;
  int n = 0;
  while (g[n] && g[n] != ';' && n < len - 1) { name[n] = g[n]; n++; }
  name[n] = 0;
  return 0;
}

#ifndef OLD_DRIVER
static int zero(const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++)
    if (b[i]) return 0;
  return 1;
}

CUresult cuCheckpointProcessGetState(int pid, int *state) {
  record("cuCheckpointProcessGetState %d", pid);
  *state = env_int("FAKE_CUDA_STATE", 0);
  return scripted("cuCheckpointProcessGetState");
}

CUresult cuCheckpointProcessGetRestoreThreadId(int pid, int *tid) {
  record("cuCheckpointProcessGetRestoreThreadId %d", pid);
  *tid = env_int("FAKE_CUDA_TID", pid);
  return scripted("cuCheckpointProcessGetRestoreThreadId");
}

CUresult cuCheckpointProcessLock(int pid, LockArgs *args) {
  record("cuCheckpointProcessLock %d timeout=%u reserved=%s", pid, args ? args->timeoutMs : 0,
         args && !args->reserved0 && zero(args->reserved1, sizeof args->reserved1) ? "zero" : "set");
  return scripted("cuCheckpointProcessLock");
}

#define ACTION(fn)                                                                                 \
  CUresult fn(int pid, Args8 *args) {                                                              \
    record(#fn " %d reserved=%s", pid, args && zero(args, sizeof *args) ? "zero" : "set");       \
    return scripted(#fn);                                                                          \
  }
ACTION(cuCheckpointProcessCheckpoint)
ACTION(cuCheckpointProcessRestore)
ACTION(cuCheckpointProcessUnlock)
#endif
