/*
 * writev_vs_send: what one small WebSocket frame costs the kernel written
 * as header + payload with writev(2) against the same bytes copied into one
 * buffer and written with send(2) -- the measurement behind COALESCE_MAX in
 * crates/switchboard/src/ws/writer.rs (docs/BENCHMARKS.md, "Profiles and
 * fixes").
 *
 *   cc -O2 -o /tmp/writev_vs_send bench/micro/writev_vs_send.c -lpthread
 *   taskset -c 0 /tmp/writev_vs_send 32      # payload bytes (default 32)
 *
 * One loopback TCP connection (TCP_NODELAY), a reader thread draining it on
 * the same core, 3 rounds of 100,000 writes per variant. Bounded: it ends
 * by itself after 600,000 writes. Loopback only.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static void *drain(void *arg) {
  static char buf[1 << 20];
  int fd = *(int *)arg;
  while (read(fd, buf, sizeof buf) > 0) {
  }
  return NULL;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  size_t len = argc > 1 ? (size_t)atoi(argv[1]) : 32;
  int one = 1;
  struct sockaddr_in addr = {0};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int lst = socket(AF_INET, SOCK_STREAM, 0);
  if (lst < 0 || bind(lst, (void *)&addr, sizeof addr) || listen(lst, 1)) {
    perror("listen");
    return 1;
  }
  socklen_t alen = sizeof addr;
  getsockname(lst, (void *)&addr, &alen);
  int out = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(out, (void *)&addr, sizeof addr)) {
    perror("connect");
    return 1;
  }
  int in = accept(lst, NULL, NULL);
  setsockopt(out, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  pthread_t reader;
  pthread_create(&reader, NULL, drain, &in);

  unsigned char header[4] = {0x81, len < 126 ? (unsigned char)len : 126, 0, 0};
  size_t hlen = len < 126 ? 2 : 4;
  char *payload = malloc(len), *joined = malloc(len + 4);
  memset(payload, 'a', len);
  const int n = 100000;
  for (int round = 0; round < 3; round++) {
    double t0 = now();
    for (int i = 0; i < n; i++) {
      struct iovec v[2] = {{header, hlen}, {payload, len}};
      if (writev(out, v, 2) < 0) return 1;
    }
    double t1 = now();
    for (int i = 0; i < n; i++) {
      memcpy(joined, header, hlen);
      memcpy(joined + hlen, payload, len);
      if (send(out, joined, hlen + len, MSG_NOSIGNAL) < 0) return 1;
    }
    double t2 = now();
    printf("payload %zu B: writev(header, payload) %.0f ns, copy + send %.0f ns\n", len,
           (t1 - t0) / n * 1e9, (t2 - t1) / n * 1e9);
  }
  shutdown(out, SHUT_WR);
  pthread_join(reader, NULL);
  return 0;
}
