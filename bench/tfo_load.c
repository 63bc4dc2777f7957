/*
 * tfo_load: a lean DNS-over-TCP load generator for bench/serve_bench.py.
 *
 * Modes (one thread, epoll, non-blocking sockets):
 *   tfo    a fresh connection per query, CONC connections in flight; the framed query
 *          goes in the SYN with sendto(MSG_FASTOPEN) and the kernel's cached cookie,
 *          the client reads the answer and closes. A priming exchange first makes the
 *          kernel fetch the cookie.
 *   pipe   one persistent connection with CONC queries in flight (pipelined, matched
 *          by DNS ID, answers may come out of order, RFC 7766).
 *   probe  one blocking exchange; exit 0 if an answer came (readiness check).
 *
 * Input: a file of framed queries (2-byte length + message, as on the wire).
 * Output: one JSON object on stdout: answers, errors, rcodes, latency percentiles,
 * the generator's own CPU time (getrusage) over the measured window.
 *
 * Build: gcc -Wall -Wextra -O2 -o tfo_load tfo_load.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef MSG_FASTOPEN
#define MSG_FASTOPEN 0x20000000
#endif
#define TCPI_OPT_SYN_DATA 32
#define MAX_CONC 1024
#define MAX_QUERIES 4096
#define MAX_MSG 512
#define RBUF 65536
#define TIMEOUT_NS 2000000000LL /* a connection or query older than this is a timeout */

struct query {
	uint8_t wire[MAX_MSG + 2]; /* framed: length prefix, then the message */
	size_t len;                /* framed length */
};

struct slot {
	int fd;            /* tfo mode: this connection; -1 when idle */
	int connecting;    /* tfo mode: SYN sent without data (no cookie), write on EPOLLOUT */
	size_t qi;         /* index of the query sent */
	int64_t start;     /* send time, ns; 0 when no query is outstanding (pipe mode) */
	int uncounted;     /* begun before the measured window (or timed out): not recorded */
	uint8_t buf[1024]; /* tfo mode: answer bytes read so far */
	size_t got;
};

static struct query queries[MAX_QUERIES];
static size_t nqueries, next_query;
static struct slot slots[MAX_CONC];
static struct sockaddr_in server;

/* Results of the measured window. */
static uint32_t *lat_us;                   /* latency of each answer, microseconds */
static size_t nlat, caplat;
static uint64_t answers, errors, timeouts, fallbacks, bad_id;
static uint64_t opened; /* tfo mode: every connection opened, priming and warm-up included */
static uint64_t rcodes[16];

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double cpu_seconds(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
	       (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void die(const char *what)
{
	fprintf(stderr, "tfo_load: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void load_queries(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		die(path);
	uint8_t hdr[2];
	while (nqueries < MAX_QUERIES && fread(hdr, 1, 2, f) == 2) {
		size_t n = (size_t)hdr[0] << 8 | hdr[1];
		if (n < 12 || n > MAX_MSG) {
			fprintf(stderr, "tfo_load: bad query length %zu\n", n);
			exit(2);
		}
		struct query *q = &queries[nqueries++];
		memcpy(q->wire, hdr, 2);
		if (fread(q->wire + 2, 1, n, f) != n) {
			fprintf(stderr, "tfo_load: truncated query file\n");
			exit(2);
		}
		q->len = n + 2;
	}
	fclose(f);
	if (nqueries == 0) {
		fprintf(stderr, "tfo_load: no queries in %s\n", path);
		exit(2);
	}
}

/* Picks the next query round-robin and stamps DNS ID `id` into a copy in `out`. */
static size_t next_framed(uint16_t id, uint8_t *out, size_t *qi)
{
	*qi = next_query;
	const struct query *q = &queries[next_query];
	next_query = (next_query + 1) % nqueries;
	memcpy(out, q->wire, q->len);
	out[2] = id >> 8;
	out[3] = id & 0xff;
	return q->len;
}

static void record(int64_t start, const uint8_t *msg, size_t len, int measuring)
{
	if (!measuring)
		return;
	answers++;
	if (len >= 4)
		rcodes[msg[3] & 0x0f]++;
	int64_t us = (now_ns() - start) / 1000;
	if (nlat == caplat) {
		caplat = caplat ? caplat * 2 : 1 << 20;
		lat_us = realloc(lat_us, caplat * sizeof(*lat_us));
		if (!lat_us)
			die("realloc");
	}
	lat_us[nlat++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

/* ---- tfo mode ---------------------------------------------------------------- */

/* Opens a connection for slot `i` with its query in the SYN; returns 0 or -1. */
static int tfo_open(int ep, int i)
{
	struct slot *s = &slots[i];
	uint8_t wire[MAX_MSG + 2];
	size_t len = next_framed((uint16_t)i, wire, &s->qi);
	s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s->fd < 0)
		die("socket");
	s->got = 0;
	s->connecting = 0;
	s->start = now_ns();
	s->uncounted = 0;
	opened++;
	ssize_t n = sendto(s->fd, wire, len, MSG_FASTOPEN | MSG_NOSIGNAL,
			   (struct sockaddr *)&server, sizeof(server));
	uint32_t events = EPOLLIN;
	if (n < 0 && errno == EINPROGRESS) {
		/* No cookie: the SYN went without data; send once connected. */
		s->connecting = 1;
		fallbacks++;
		events |= EPOLLOUT;
	} else if (n != (ssize_t)len) {
		close(s->fd);
		s->fd = -1;
		errors++;
		return -1;
	}
	struct epoll_event ev = {.events = events, .data.u32 = (uint32_t)i};
	if (epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev) < 0)
		die("epoll_ctl");
	return 0;
}

static void tfo_close(int i)
{
	close(slots[i].fd); /* also removes it from the epoll set */
	slots[i].fd = -1;
}

/* Handles readiness of slot `i`; returns 1 when the slot's exchange ended. */
static int tfo_ready(int ep, int i, uint32_t events, int measuring)
{
	struct slot *s = &slots[i];
	if (s->connecting && (events & EPOLLOUT)) {
		uint8_t wire[MAX_MSG + 2];
		const struct query *q = &queries[s->qi];
		memcpy(wire, q->wire, q->len);
		wire[2] = (uint8_t)(i >> 8);
		wire[3] = (uint8_t)i;
		if (send(s->fd, wire, q->len, MSG_NOSIGNAL) != (ssize_t)q->len)
			goto fail;
		s->connecting = 0;
		struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
		epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
	}
	if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
		return 0;
	for (;;) {
		ssize_t n = recv(s->fd, s->buf + s->got, sizeof(s->buf) - s->got, 0);
		if (n < 0 && errno == EAGAIN)
			return 0;
		if (n <= 0)
			goto fail;
		s->got += (size_t)n;
		if (s->got >= 2) {
			size_t want = 2 + ((size_t)s->buf[0] << 8 | s->buf[1]);
			if (want > sizeof(s->buf))
				goto fail;
			if (s->got >= want) {
				if (((s->buf[2] << 8) | s->buf[3]) != i && measuring)
					bad_id++;
				record(s->start, s->buf + 2, want - 2, measuring);
				tfo_close(i);
				return 1;
			}
		}
	}
fail:
	if (measuring)
		errors++;
	tfo_close(i);
	return 1;
}

/* Reads one framed answer from a blocking socket; returns its length or -1. */
static ssize_t read_answer(int fd, uint8_t *buf, size_t cap)
{
	if (recv(fd, buf, 2, MSG_WAITALL) != 2)
		return -1;
	size_t n = (size_t)buf[0] << 8 | buf[1];
	if (n + 2 > cap || recv(fd, buf + 2, n, MSG_WAITALL) != (ssize_t)n)
		return -1;
	return (ssize_t)n;
}

/* One blocking TFO exchange; returns 1 if our SYN's data was acked (cookie used). */
static int tfo_prime(int timeout_ms)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket");
	struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = timeout_ms % 1000 * 1000};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	uint8_t wire[MAX_MSG + 2], buf[1024];
	size_t qi, len = next_framed(0, wire, &qi);
	int ok = -1;
	opened++;
	if (sendto(fd, wire, len, MSG_FASTOPEN | MSG_NOSIGNAL, (struct sockaddr *)&server,
		   sizeof(server)) == (ssize_t)len &&
	    read_answer(fd, buf, sizeof(buf)) > 0) {
		struct tcp_info ti;
		socklen_t tl = sizeof(ti);
		ok = getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) == 0 &&
		     (ti.tcpi_options & TCPI_OPT_SYN_DATA);
	}
	close(fd);
	return ok;
}

/* Priming: the first exchange fetches the cookie, the next ones should use it. */
static int prime(void)
{
	int primed = 0;
	for (int k = 0; k < 3 && primed != 1; k++) {
		primed = tfo_prime(2000);
		if (primed < 0) {
			fprintf(stderr, "tfo_load: priming exchange got no answer\n");
			exit(3);
		}
	}
	if (!primed)
		fprintf(stderr, "tfo_load: warning: no cookie after priming, SYNs carry no data\n");
	return primed == 1;
}

static void run_tfo(int conc, int64_t warm_end, int64_t end, double *cpu0, int64_t *t0)
{
	int ep = epoll_create1(EPOLL_CLOEXEC);
	if (ep < 0)
		die("epoll_create1");
	for (int i = 0; i < conc; i++)
		slots[i].fd = -1;
	int measuring = warm_end <= now_ns();
	if (measuring) {
		*cpu0 = cpu_seconds();
		*t0 = now_ns();
	}
	for (int i = 0; i < conc; i++)
		tfo_open(ep, i);
	struct epoll_event evs[MAX_CONC];
	int64_t last_scan = now_ns();
	for (;;) {
		int n = epoll_wait(ep, evs, MAX_CONC, 10);
		int64_t t = now_ns();
		if (!measuring && t >= warm_end) {
			measuring = 1; /* exchanges begun in warm-up do not count */
			*cpu0 = cpu_seconds();
			*t0 = t;
			for (int i = 0; i < conc; i++)
				slots[i].uncounted = 1; /* begun in warm-up: not counted */
		}
		if (t >= end)
			break;
		for (int k = 0; k < n; k++) {
			int i = (int)evs[k].data.u32;
			if (slots[i].fd < 0)
				continue;
			int counted = measuring && !slots[i].uncounted;
			if (tfo_ready(ep, i, evs[k].events, counted))
				tfo_open(ep, i);
		}
		if (t - last_scan > 100000000LL) { /* every 100 ms: expire stuck connections, */
			last_scan = t;            /* retry slots whose open failed */
			for (int i = 0; i < conc; i++) {
				if (slots[i].fd >= 0 && t - slots[i].start > TIMEOUT_NS) {
					if (measuring)
						timeouts++;
					tfo_close(i);
				}
				if (slots[i].fd < 0)
					tfo_open(ep, i);
			}
		}
	}
	for (int i = 0; i < conc; i++)
		if (slots[i].fd >= 0)
			tfo_close(i);
	close(ep);
}

/* ---- pipe mode --------------------------------------------------------------- */

static void run_pipe(int conc, int64_t warm_end, int64_t end, double *cpu0, int64_t *t0)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket");
	if (connect(fd, (struct sockaddr *)&server, sizeof(server)) < 0)
		die("connect");
	int one = 1; /* small pipelined writes must not wait for ACKs (Nagle) */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	fcntl(fd, F_SETFL, O_NONBLOCK);

	static uint8_t out[MAX_CONC * (MAX_MSG + 2)], in[RBUF];
	size_t outlen = 0, inlen = 0;
	int measuring = 0;
	for (int i = 0; i < conc; i++) { /* fill the window: CONC queries, IDs 0..CONC-1 */
		outlen += next_framed((uint16_t)i, out + outlen, &slots[i].qi);
		slots[i].start = now_ns();
	}
	struct pollfd pfd = {.fd = fd};
	int64_t last_scan = now_ns();
	for (;;) {
		if (outlen) { /* write eagerly; poll for POLLOUT only if the buffer is full */
			ssize_t n = send(fd, out, outlen, MSG_NOSIGNAL);
			if (n < 0 && errno != EAGAIN) {
				errors++;
				break;
			}
			if (n > 0) {
				memmove(out, out + n, outlen - (size_t)n);
				outlen -= (size_t)n;
			}
		}
		pfd.events = POLLIN | (outlen ? POLLOUT : 0);
		poll(&pfd, 1, 10);
		int64_t t = now_ns();
		if (!measuring && t >= warm_end) {
			measuring = 1;
			*cpu0 = cpu_seconds();
			*t0 = t;
			for (int i = 0; i < conc; i++)
				slots[i].uncounted = 1; /* outstanding from warm-up: not counted */
		}
		if (t >= end)
			break;
		if (!(pfd.revents & (POLLIN | POLLERR | POLLHUP)))
			continue;
		ssize_t n = recv(fd, in + inlen, sizeof(in) - inlen, 0);
		if (n == 0 || (n < 0 && errno != EAGAIN)) {
			fprintf(stderr, "tfo_load: connection closed by the server\n");
			errors++;
			break;
		}
		if (n > 0)
			inlen += (size_t)n;
		size_t off = 0; /* take every whole answer; queue a new query for each */
		while (inlen - off >= 2) {
			size_t want = 2 + ((size_t)in[off] << 8 | in[off + 1]);
			if (inlen - off < want)
				break;
			uint16_t id = (uint16_t)(in[off + 2] << 8 | in[off + 3]);
			if (id < conc && slots[id].start) {
				struct slot *s = &slots[id];
				record(s->start, in + off + 2, want - 2, measuring && !s->uncounted);
				outlen += next_framed(id, out + outlen, &s->qi);
				s->start = now_ns();
				s->uncounted = 0;
			} else if (measuring) {
				bad_id++;
			}
			off += want;
		}
		memmove(in, in + off, inlen - off);
		inlen -= off;
		if (t - last_scan > 100000000LL) { /* a query lost for good shrinks the window */
			last_scan = t;
			for (int i = 0; i < conc; i++)
				if (slots[i].start && t - slots[i].start > TIMEOUT_NS) {
					timeouts++;
					slots[i].start = 0;
				}
		}
	}
	close(fd);
}

/* ---- probe mode and main ----------------------------------------------------- */

static int run_probe(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct timeval tv = {.tv_sec = 0, .tv_usec = 500000};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	uint8_t wire[MAX_MSG + 2], buf[1024];
	size_t qi, len = next_framed(0x4242, wire, &qi);
	int ok = connect(fd, (struct sockaddr *)&server, sizeof(server)) == 0 &&
		 send(fd, wire, len, MSG_NOSIGNAL) == (ssize_t)len &&
		 read_answer(fd, buf, sizeof(buf)) > 2 && buf[2] == 0x42 && buf[3] == 0x42;
	close(fd);
	return ok ? 0 : 1;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

static double pct(double p)
{
	return nlat ? lat_us[(size_t)(p * (double)(nlat - 1))] / 1000.0 : 0.0;
}

static void usage(void)
{
	fprintf(stderr, "usage: tfo_load tfo|pipe|probe ADDR PORT QUERYFILE "
			"[CONC DURATION_S WARMUP_S]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc < 5)
		usage();
	const char *mode = argv[1];
	server.sin_family = AF_INET;
	server.sin_port = htons((uint16_t)atoi(argv[3]));
	if (inet_pton(AF_INET, argv[2], &server.sin_addr) != 1)
		usage();
	load_queries(argv[4]);
	if (strcmp(mode, "probe") == 0)
		return run_probe();
	if (argc < 8)
		usage();
	int conc = atoi(argv[5]);
	double duration = atof(argv[6]), warmup = atof(argv[7]);
	if (conc < 1 || conc > MAX_CONC || duration <= 0 || warmup < 0)
		usage();

	int primed = strcmp(mode, "tfo") == 0 ? prime() : 0;
	int64_t begin = now_ns();
	int64_t warm_end = begin + (int64_t)(warmup * 1e9);
	int64_t end = warm_end + (int64_t)(duration * 1e9);
	double cpu0 = 0;
	int64_t t0 = warm_end;
	printf("{\"mode\": \"%s\", \"concurrency\": %d, ", mode, conc);
	if (strcmp(mode, "tfo") == 0)
		printf("\"primed\": %s, ", primed ? "true" : "false");
	if (strcmp(mode, "tfo") == 0)
		run_tfo(conc, warm_end, end, &cpu0, &t0);
	else if (strcmp(mode, "pipe") == 0)
		run_pipe(conc, warm_end, end, &cpu0, &t0);
	else
		usage();
	int64_t stop = now_ns();
	double elapsed = stop > t0 ? (stop - t0) / 1e9 : 0.0; /* 0: ended during warm-up */
	double cpu = cpu_seconds() - cpu0;

	qsort(lat_us, nlat, sizeof(*lat_us), cmp_u32);
	printf("\"elapsed_s\": %.4f, \"answers\": %llu, \"opened\": %llu, \"errors\": %llu, "
	       "\"timeouts\": %llu, \"fallbacks\": %llu, \"bad_id\": %llu, \"qps\": %.1f, ",
	       elapsed, (unsigned long long)answers, (unsigned long long)opened,
	       (unsigned long long)errors, (unsigned long long)timeouts,
	       (unsigned long long)fallbacks, (unsigned long long)bad_id,
	       elapsed > 0 ? answers / elapsed : 0.0);
	printf("\"latency_ms\": {\"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, \"p999\": %.3f, "
	       "\"max\": %.3f}, ",
	       pct(0.5), pct(0.9), pct(0.99), pct(0.999), pct(1.0));
	printf("\"rcodes\": {\"NOERROR\": %llu, \"NXDOMAIN\": %llu, \"other\": %llu}, ",
	       (unsigned long long)rcodes[0], (unsigned long long)rcodes[3],
	       (unsigned long long)(answers - rcodes[0] - rcodes[3]));
	printf("\"cpu_s\": %.3f, \"cpu_pct\": %.1f}\n", cpu, elapsed > 0 ? 100.0 * cpu / elapsed : 0.0);
	free(lat_us);
	return 0;
}
