/*
 * listen_shim: an LD_PRELOAD library for bench/serve_bench.py that raises a server's
 * listen backlog and TFO queue to at least SHIM_BACKLOG (default 1024).
 *
 * Why: Knot DNS 3.2 calls listen(fd, 10) and setsockopt(TCP_FASTOPEN, 10) with a
 * compiled-in constant and has no option for it; net.core.somaxconn only caps the
 * value. With 64 connections opening at once the accept queue overflows, SYNs are
 * dropped and retransmitted after 1 s, and the benchmark would measure that stall
 * instead of the server.
 *
 * Build: gcc -Wall -Wextra -O2 -shared -fPIC -o listen_shim.so listen_shim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/socket.h>

static int floor_value(void)
{
	const char *v = getenv("SHIM_BACKLOG");
	int n = v ? atoi(v) : 1024;
	return n > 0 ? n : 1024;
}

int listen(int fd, int backlog)
{
	static int (*real_listen)(int, int);
	if (!real_listen)
		real_listen = (int (*)(int, int))dlsym(RTLD_NEXT, "listen");
	int min = floor_value();
	return real_listen(fd, backlog < min ? min : backlog);
}

int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
	static int (*real_setsockopt)(int, int, int, const void *, socklen_t);
	if (!real_setsockopt)
		real_setsockopt = (int (*)(int, int, int, const void *, socklen_t))dlsym(
			RTLD_NEXT, "setsockopt");
	if (level == IPPROTO_TCP && name == TCP_FASTOPEN && len == sizeof(int)) {
		int qlen = *(const int *)val, min = floor_value();
		if (qlen > 0 && qlen < min) /* TFO queue: pending TFO children, not an on/off */
			return real_setsockopt(fd, level, name, &min, sizeof(min));
	}
	return real_setsockopt(fd, level, name, val, len);
}
