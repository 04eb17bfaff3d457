#define _GNU_SOURCE
/*
 * test_registry.c - the registry client against a tiny registry written here:
 * an HTTP/1.1 server on 127.0.0.1 (a thread, one connection at a time,
 * "Connection: close", every read bounded by a timeout) that wants a Bearer
 * token from its own token endpoint, as Docker Hub, GHCR and Harbor do.
 * docker-registry has no token server, so this is where the Bearer flow is
 * tested: the challenge parsing, the token request (service, scope, Basic
 * credentials from a Docker config.json), the token on every later request;
 * and servers that lie: a blob longer or shorter than its descriptor, a
 * changed byte, a manifest whose bytes are not its Docker-Content-Digest.
 * The store must be unchanged after every refusal.
 */
#include "tests/t.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "libadapter/base/buf.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/store/registry.h"
#include "libadapter/store/store.h"

/* ------------------------------------------------------- the fake registry */

enum blob_mode { BLOB_OK, BLOB_LONGER, BLOB_SHORTER, BLOB_FLIP };

static struct {
	int lfd, port;
	volatile int stop;
	pthread_t th;
	/* what it serves */
	const char *store;            /* blobs come from this store */
	char *manifest;
	size_t manifest_len;
	char manifest_digest[72];
	enum blob_mode blob_mode;
	int wrong_dcd;                /* send a Docker-Content-Digest that is not the manifest's */
	const char *token_key;        /* "token" or "access_token" */
	/* what it saw */
	char token_query[1024];
	char token_auth[512];
	int n_token, n_unauth, n_blob_get, n_head, n_put;
	char put_body_digest[72];
} S;

static const char *USER = "ci-bot", *PASS = "hunter2-not-printed", *TOKEN = "tok.abc-123";

static int read_request(int fd, char *buf, size_t cap, size_t *hlen, size_t *total)
{
	size_t n = 0;
	char *end;

	for (;;) {
		struct pollfd p = { fd, POLLIN, 0 };
		ssize_t k;
		if (poll(&p, 1, 5000) <= 0)
			return -1;
		k = read(fd, buf + n, cap - 1 - n);
		if (k <= 0)
			return -1;
		n += (size_t)k;
		buf[n] = 0;
		if ((end = strstr(buf, "\r\n\r\n"))) {
			const char *cl = strcasestr(buf, "\r\ncontent-length:");
			size_t body = cl && cl < end ? (size_t)strtoul(cl + 17, NULL, 10) : 0;
			*hlen = (size_t)(end + 4 - buf);
			*total = *hlen + body;
			if (*total >= cap)
				return -1;
			while (n < *total) {
				if (poll(&p, 1, 5000) <= 0)
					return -1;
				k = read(fd, buf + n, *total - n);
				if (k <= 0)
					return -1;
				n += (size_t)k;
			}
			return 0;
		}
		if (n + 1 >= cap)
			return -1;
	}
}

static void header_value(const char *req, const char *name, char *out, size_t cap)
{
	char key[64];
	const char *p, *e;

	out[0] = 0;
	snprintf(key, sizeof(key), "\r\n%s:", name);
	p = strcasestr(req, key);
	if (!p)
		return;
	p += strlen(key);
	while (*p == ' ')
		p++;
	e = strstr(p, "\r\n");
	snprintf(out, cap, "%.*s", (int)(e ? e - p : (long)strlen(p)), p);
}

static void send_all(int fd, const void *d, size_t n)
{
	const char *p = d;
	while (n) {
		ssize_t k = write(fd, p, n);
		if (k <= 0)
			return;
		p += k;
		n -= (size_t)k;
	}
}

static void respond(int fd, int status, const char *extra_headers, const void *body, size_t len, size_t claim_len)
{
	char h[2048];
	int n = snprintf(h, sizeof(h), "HTTP/1.1 %d X\r\nConnection: close\r\nContent-Length: %zu\r\n%s\r\n", status,
			 claim_len, extra_headers ? extra_headers : "");
	send_all(fd, h, (size_t)n);
	if (body && len)
		send_all(fd, body, len);
}

static void unauthorized(int fd)
{
	char h[512];
	S.n_unauth++;
	snprintf(h, sizeof(h), "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:%d/token\",service=\"fake.registry\"\r\n"
		 "Content-Type: application/json\r\n", S.port);
	respond(fd, 401, h, "{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}", 35, 35);
}

static void serve_blob(int fd, const char *digest, int head)
{
	char *p = lora_store_blob_path(S.store, digest), *data = NULL;
	size_t len = 0;

	if (!p || lora_read_file(p, 64u << 20, &data, &len, NULL) < 0) {
		free(p);
		respond(fd, 404, NULL, NULL, 0, 0);
		return;
	}
	free(p);
	if (head) {
		S.n_head++;
		respond(fd, 200, NULL, NULL, 0, len);
	} else {
		S.n_blob_get++;
		if (S.blob_mode == BLOB_LONGER && len > 1000) {
			char *more = realloc(data, len + 64);
			if (more) {
				data = more;
				memset(data + len, 'x', 64);
				respond(fd, 200, NULL, data, len + 64, len + 64);
			}
		} else if (S.blob_mode == BLOB_SHORTER && len > 1000) {
			respond(fd, 200, NULL, data, len - 10, len - 10);
		} else {
			if (S.blob_mode == BLOB_FLIP && len > 1000)
				data[len / 2] ^= 1;
			respond(fd, 200, NULL, data, len, len);
		}
	}
	free(data);
}

static void handle(int fd)
{
	static char req[1 << 20];
	char method[16], path[1024], auth[512], bearer[128];
	size_t hlen, total;

	if (read_request(fd, req, sizeof(req), &hlen, &total) < 0 ||
	    sscanf(req, "%15s %1023s", method, path) != 2)
		return;  /* a TLS hello, or garbage: hang up */
	header_value(req, "Authorization", auth, sizeof(auth));
	snprintf(bearer, sizeof(bearer), "Bearer %s", TOKEN);
	if (!strncmp(path, "/token", 6)) {
		char want[256], *b64 = NULL;
		struct lora_buf up = LORA_BUF_INIT, body = LORA_BUF_INIT;
		S.n_token++;
		snprintf(S.token_query, sizeof(S.token_query), "%s", path);
		snprintf(S.token_auth, sizeof(S.token_auth), "%s", auth);
		lora_buf_printf(&up, "%s:%s", USER, PASS);
		b64 = calloc(1, up.len * 2 + 8);
		EVP_EncodeBlock((unsigned char *)b64, (unsigned char *)up.data, (int)up.len);
		snprintf(want, sizeof(want), "Basic %s", b64);
		if (strcmp(auth, want)) {
			respond(fd, 401, NULL, NULL, 0, 0);
		} else {
			lora_buf_printf(&body, "{\"%s\": \"%s\", \"expires_in\": 300}", S.token_key, TOKEN);
			respond(fd, 200, "Content-Type: application/json\r\n", body.data, body.len, body.len);
		}
		free(b64);
		lora_buf_free(&up);
		lora_buf_free(&body);
		return;
	}
	if (strcmp(auth, bearer)) {
		unauthorized(fd);
		return;
	}
	if (!strcmp(path, "/v2/")) {
		respond(fd, 200, "Content-Type: application/json\r\n", "{}", 2, 2);
	} else if (!strncmp(path, "/v2/team/ad/manifests/", 22) && !strcmp(method, "GET")) {
		char h[256];
		snprintf(h, sizeof(h), "Content-Type: %s\r\nDocker-Content-Digest: %s\r\n", LORA_OCI_MANIFEST_TYPE,
			 S.wrong_dcd ? "sha256:0000000000000000000000000000000000000000000000000000000000000000"
				     : S.manifest_digest);
		respond(fd, 200, h, S.manifest, S.manifest_len, S.manifest_len);
	} else if (!strncmp(path, "/v2/team/ad/manifests/", 22) && !strcmp(method, "PUT")) {
		char hex[65], h[128];
		S.n_put++;
		lora_sha256_hex(req + hlen, total - hlen, hex);
		snprintf(S.put_body_digest, sizeof(S.put_body_digest), "sha256:%s", hex);
		snprintf(h, sizeof(h), "Docker-Content-Digest: sha256:%s\r\n", hex);
		respond(fd, 201, h, NULL, 0, 0);
	} else if (!strncmp(path, "/v2/team/ad/blobs/", 18)) {
		serve_blob(fd, path + 18, !strcmp(method, "HEAD"));
	} else {
		respond(fd, 404, NULL, NULL, 0, 0);
	}
}

static void *server_main(void *arg)
{
	(void)arg;
	while (!S.stop) {
		struct pollfd p = { S.lfd, POLLIN, 0 };
		int c;
		if (poll(&p, 1, 100) <= 0)
			continue;
		c = accept(S.lfd, NULL, NULL);
		if (c < 0)
			continue;
		handle(c);
		shutdown(c, SHUT_RDWR);
		close(c);
	}
	return NULL;
}

static int server_start(void)
{
	struct sockaddr_in a = { 0 };
	socklen_t al = sizeof(a);

	S.lfd = socket(AF_INET, SOCK_STREAM, 0);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (S.lfd < 0 || bind(S.lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(S.lfd, 16) < 0 ||
	    getsockname(S.lfd, (struct sockaddr *)&a, &al) < 0)
		return -1;
	S.port = ntohs(a.sin_port);
	return pthread_create(&S.th, NULL, server_main, NULL);
}

static void server_stop(void)
{
	S.stop = 1;
	pthread_join(S.th, NULL);
	close(S.lfd);
}

/* ----------------------------------------------------------------- tests */

static char store_a[64], store_b[64], work[64], cfg_path[128];

static char *index_of(const char *store)
{
	char *p = lora_path_join(store, "index.json"), *t = NULL;
	size_t n;

	if (p && lora_read_file(p, 1 << 20, &t, &n, NULL) < 0)
		t = NULL;
	free(p);
	return t ? t : strdup("");
}

static int count_entries(const char *dir)
{
	char cmd[256];
	FILE *f;
	int n = -1;

	snprintf(cmd, sizeof(cmd), "find '%s' -mindepth 1 | wc -l", dir);
	f = popen(cmd, "r");
	if (f && fscanf(f, "%d", &n) != 1)
		n = -1;
	if (f)
		pclose(f);
	return n;
}

TEST(challenge_parse)
{
	struct lora_auth_challenge c;

	CHECK(lora_auth_challenge_parse("Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\","
					"scope=\"repository:library/ubuntu:pull\"", &c) == 0);
	CHECK(!strcmp(c.scheme, "bearer") && !strcmp(c.realm, "https://auth.docker.io/token"));
	CHECK(!strcmp(c.service, "registry.docker.io") && !strcmp(c.scope, "repository:library/ubuntu:pull"));
	/* any order, spaces, unquoted values, escapes, unknown keys, case of the scheme and keys */
	CHECK(lora_auth_challenge_parse("bearer  Scope=\"repository:a/b:pull,push\", error=insufficient_scope ,"
					" x-other=\"1\", REALM=\"https://h/t?a=\\\"q\\\"\"", &c) == 0);
	CHECK(!strcmp(c.scheme, "bearer") && !strcmp(c.scope, "repository:a/b:pull,push"));
	CHECK(!strcmp(c.error, "insufficient_scope") && !strcmp(c.realm, "https://h/t?a=\"q\""));
	CHECK(lora_auth_challenge_parse("Basic realm=\"basic-realm\"", &c) == 0 && !strcmp(c.scheme, "basic") &&
	      !strcmp(c.realm, "basic-realm") && !c.service[0]);
	CHECK(lora_auth_challenge_parse("", &c) < 0);
	CHECK(lora_auth_challenge_parse("Bearer realm=\"unterminated", &c) < 0);
	CHECK(lora_auth_challenge_parse("Bearer =x", &c) < 0);
}

TEST(ref_parse)
{
	struct lora_registry_ref r;
	struct lora_err err = { 0 };
	const char *dg = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
	char s[256];

	CHECK(lora_registry_ref_parse("ghcr.io/team/adapters/sql:v1", &r, &err) == 0 && !strcmp(r.host, "ghcr.io") &&
	      !strcmp(r.repo, "team/adapters/sql") && !strcmp(r.tag, "v1") && !r.digest[0] && !r.loopback);
	CHECK(lora_registry_ref_parse("localhost:5000/sql", &r, &err) == 0 && !strcmp(r.tag, "latest") && r.loopback);
	CHECK(lora_registry_ref_parse("127.3.4.5:80/a/b", &r, &err) == 0 && r.loopback);
	CHECK(lora_registry_ref_parse("[::1]:5000/a", &r, &err) == 0 && r.loopback && !strcmp(r.host, "[::1]:5000"));
	CHECK(lora_registry_ref_parse("128.0.0.1:5000/a", &r, &err) == 0 && !r.loopback);
	snprintf(s, sizeof(s), "reg.example.com/a@%s", dg);
	CHECK(lora_registry_ref_parse(s, &r, &err) == 0 && !strcmp(r.digest, dg) && !r.tag[0]);
	CHECK(lora_registry_ref_parse("team/sql:v1", &r, &err) < 0 && err.code == LORA_EUSAGE);  /* no host */
	CHECK(lora_registry_ref_parse("sql:v1", &r, &err) < 0);
	CHECK(lora_registry_ref_parse("h.io/Team/sql", &r, &err) < 0);
	CHECK(lora_registry_ref_parse("h.io/a//b", &r, &err) < 0);
	CHECK(lora_registry_ref_parse("h.io/a-/b", &r, &err) < 0);
	CHECK(lora_registry_ref_parse("h.io/a:", &r, &err) < 0);
	CHECK(lora_registry_ref_parse("h.io/a:-x", &r, &err) < 0);
	CHECK(lora_registry_ref_parse("h.io:99999/a", &r, &err) < 0);
	CHECK(lora_registry_ref_parse("h.io/a@sha256:1234", &r, &err) < 0);
	snprintf(s, sizeof(s), "h.io/a:v1@%s", dg);
	CHECK(lora_registry_ref_parse(s, &r, &err) < 0);
}

TEST(setup)
{
	struct lora_err err = { 0 };
	char *line = NULL, *ad = t_fixture("store/roundtrip/adapter"), ref[LORA_REF_MAX], cfg[512], *b64;
	char up[128];

	CHECKF(lora_store_keygen(store_a, "ci@example.com", 0, &line, &err) == 0, "%s", err.msg);
	CHECKF(lora_store_add_peft_dir(store_a, ad, "ad:v1", NULL, NULL, &err) == 0, "%s", err.msg);
	CHECKF(lora_store_trust_add(store_b, "ci@example.com", line, &err) == 0, "%s", err.msg);
	CHECKF(lora_store_oci_read(store_a, "ad:v1", &S.manifest, &S.manifest_len, S.manifest_digest, ref, &err) == 0,
	       "%s", err.msg);
	S.store = store_a;
	S.token_key = "token";
	snprintf(up, sizeof(up), "%s:%s", USER, PASS);
	b64 = calloc(1, 256);
	EVP_EncodeBlock((unsigned char *)b64, (unsigned char *)up, (int)strlen(up));
	snprintf(cfg_path, sizeof(cfg_path), "%s/config.json", work);
	snprintf(cfg, sizeof(cfg), "{\"auths\": {\"other.io\": {\"auth\": \"eDp5\"}, \"127.0.0.1:%d\": {\"auth\": \"%s\"}}}",
		 S.port, b64);
	CHECK(lora_write_file_atomic(cfg_path, cfg, strlen(cfg), 0600, &err) == 0);
	free(b64);
	free(line);
	free(ad);
}

static int pull(const char *name, struct lora_pull_result *res, struct lora_err *err)
{
	struct lora_registry_opts o = { 0 };
	char src[128];

	o.docker_config = cfg_path;
	snprintf(src, sizeof(src), "127.0.0.1:%d/team/ad:v1", S.port);
	return lora_registry_pull(store_b, src, name, 0, &o, res, err);
}

TEST(bearer_pull)
{
	struct lora_pull_result res;
	struct lora_err err = { 0 };
	struct lora_verify_report rep;
	char want_q[256];

	CHECKF(pull(NULL, &res, &err) == 0, "%s", err.msg);
	CHECK(!strcmp(res.ref, "ad:v1") && !strcmp(res.digest, S.manifest_digest));
	CHECKF(res.n_downloaded == res.n_blobs && res.n_blobs == 5, "%zu %zu", res.n_downloaded, res.n_blobs);
	/* the token request: the challenge's service, our repository's pull scope, the credentials as Basic */
	snprintf(want_q, sizeof(want_q), "/token?service=fake.registry&scope=repository%%3Ateam%%2Fad%%3Apull");
	CHECKF(!strcmp(S.token_query, want_q), "%s", S.token_query);
	CHECK(!strncmp(S.token_auth, "Basic ", 6));
	CHECK(S.n_token == 1 && S.n_unauth == 1);  /* one challenge, then the token on every request */
	CHECK(lora_store_verify(store_b, "ad:v1", &rep, &err) == 0 && rep.valid);
	/* "access_token" is the OAuth2 spelling some token servers use */
	S.token_key = "access_token";
	CHECKF(pull("ad:v2", &res, &err) == 0, "%s", err.msg);
	CHECK(res.n_downloaded == 0 && S.n_token == 2);  /* the store had every blob */
	S.token_key = "token";
}

TEST(wrong_password_store_unchanged)
{
	struct lora_pull_result res;
	struct lora_err err = { 0 };
	struct lora_registry_opts o = { 0 };
	char *before = index_of(store_b), *after, bad[128], src[128], host[32];
	const char *cfg = "{\"auths\": {\"127.0.0.1\": {\"username\": \"ci-bot\", \"password\": \"WRONG-pw\"}}}";

	snprintf(bad, sizeof(bad), "%s/bad.json", work);
	CHECK(lora_write_file_atomic(bad, cfg, strlen(cfg), 0600, &err) == 0);
	o.docker_config = bad;
	/* the key "127.0.0.1" has no port: it does not name 127.0.0.1:PORT, so no credentials */
	snprintf(src, sizeof(src), "127.0.0.1:%d/team/ad:v1", S.port);
	CHECK(lora_registry_pull(store_b, src, "ad:v9", 0, &o, &res, &err) < 0);
	CHECKF(strstr(err.msg, "wants credentials"), "%s", err.msg);
	snprintf(host, sizeof(host), "127.0.0.1:%d", S.port);
	cfg = "{\"auths\": {\"http://127.0.0.1:%d\": {\"username\": \"ci-bot\", \"password\": \"WRONG-pw\"}}}";
	{
		char text[256];
		snprintf(text, sizeof(text), cfg, S.port);
		CHECK(lora_write_file_atomic(bad, text, strlen(text), 0600, &err) == 0);
	}
	CHECK(lora_registry_pull(store_b, src, "ad:v9", 0, &o, &res, &err) < 0 && err.code == LORA_EFAIL);
	CHECKF(strstr(err.msg, host) && strstr(err.msg, "refused the credentials of 'ci-bot'"), "%s", err.msg);
	CHECK(!strstr(err.msg, "WRONG-pw") && !strchr(err.msg, '\n'));
	after = index_of(store_b);
	CHECK(!strcmp(before, after));
	free(before);
	free(after);
}

static void lying_blob(enum blob_mode m, const char *want_msg)
{
	struct lora_pull_result res;
	struct lora_err err = { 0 };
	char *before = index_of(store_b), *after, tmp[96];

	S.blob_mode = m;
	CHECK(pull("lie:v1", &res, &err) < 0);
	CHECKF(err.code == LORA_EVERIFY && strstr(err.msg, want_msg), "%s", err.msg);
	after = index_of(store_b);
	CHECK(!strcmp(before, after));
	snprintf(tmp, sizeof(tmp), "%s/tmp", store_b);
	CHECK(count_entries(tmp) == 0);  /* the work folder is gone */
	S.blob_mode = BLOB_OK;
	free(before);
	free(after);
}

TEST(lying_registry_refused_store_unchanged)
{
	struct lora_err err = { 0 };
	char *before;

	/* a fresh store with nothing to reuse, so every blob is fetched */
	lora_rm_rf(store_b, NULL);
	{
		char *line = NULL, *pp = lora_path_join(store_a, "keys/id_ed25519.pub");
		size_t n;
		CHECK(pp && lora_read_file(pp, 4096, &line, &n, &err) == 0);
		CHECK(line && lora_store_trust_add(store_b, "ci@example.com", line, &err) == 0);
		free(line);
		free(pp);
	}
	lying_blob(BLOB_LONGER, "longer than its descriptor");
	lying_blob(BLOB_SHORTER, "ended after");
	lying_blob(BLOB_FLIP, "does not match its digest");
	S.wrong_dcd = 1;
	before = index_of(store_b);
	{
		struct lora_pull_result res;
		CHECK(pull("lie:v1", &res, &err) < 0);
		CHECKF(err.code == LORA_EVERIFY && strstr(err.msg, "Docker-Content-Digest"), "%s", err.msg);
	}
	S.wrong_dcd = 0;
	{
		char *after = index_of(store_b);
		CHECK(!strcmp(before, after));
		free(after);
	}
	free(before);
}

TEST(bearer_push_uploads_nothing_present)
{
	struct lora_push_result res;
	struct lora_err err = { 0 };
	struct lora_registry_opts o = { 0 };
	char dest[128];
	int tokens = S.n_token;

	o.docker_config = cfg_path;
	snprintf(dest, sizeof(dest), "127.0.0.1:%d/team/ad:v2", S.port);
	CHECKF(lora_registry_push(store_a, "ad:v1", dest, &o, &res, &err) == 0, "%s", err.msg);
	CHECKF(res.n_uploaded == 0 && res.n_blobs == 5 && S.n_head == 5 && S.n_put == 1, "%zu %zu %d %d", res.n_uploaded, res.n_blobs, S.n_head, S.n_put);
	CHECK(!strcmp(S.put_body_digest, S.manifest_digest) && !strcmp(res.digest, S.manifest_digest));
	CHECK(S.n_token == tokens + 1);
	CHECKF(strstr(S.token_query, "scope=repository%3Ateam%2Fad%3Apull%2Cpush"), "%s", S.token_query);
}

int main(void)
{
	snprintf(store_a, sizeof(store_a), "/tmp/lora-t-rega.XXXXXX");
	snprintf(store_b, sizeof(store_b), "/tmp/lora-t-regb.XXXXXX");
	snprintf(work, sizeof(work), "/tmp/lora-t-regw.XXXXXX");
	if (!mkdtemp(store_a) || !mkdtemp(store_b) || !mkdtemp(work) || server_start() < 0)
		return 1;
	RUN(challenge_parse);
	RUN(ref_parse);
	RUN(setup);
	RUN(bearer_pull);
	RUN(wrong_password_store_unchanged);
	RUN(lying_registry_refused_store_unchanged);
	RUN(bearer_push_uploads_nothing_present);
	server_stop();
	free(S.manifest);
	lora_rm_rf(store_a, NULL);
	lora_rm_rf(store_b, NULL);
	lora_rm_rf(work, NULL);
	return t_done();
}
