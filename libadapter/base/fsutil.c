/* fsutil.c - atomic file writes, whole-file reads, directories, SHA-256. */
#define _GNU_SOURCE
#include "libadapter/base/fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

char *lora_path_join(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	int slash = la > 0 && a[la - 1] != '/';
	char *p = malloc(la + lb + 2);

	if (!p)
		return NULL;
	memcpy(p, a, la);
	if (slash)
		p[la++] = '/';
	memcpy(p + la, b, lb + 1);
	return p;
}

char *lora_dirname(const char *path)
{
	char *copy = strdup(path), *d;

	if (!copy)
		return NULL;
	d = strdup(dirname(copy));
	free(copy);
	return d;
}

int lora_is_dir(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int lora_is_file(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int io_error(struct lora_err *err, const char *op, const char *what)
{
	if (errno == ENOSPC || errno == EDQUOT)
		return lora_errf(err, "cannot %s '%s': no space left on device", op, what);
	return lora_errf(err, "cannot %s '%s': %s", op, what, strerror(errno));
}

int lora_write_all(int fd, const void *buf, size_t len, const char *what, struct lora_err *err)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return io_error(err, "write", what);
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int lora_pwrite_all(int fd, const void *buf, size_t len, uint64_t off, const char *what, struct lora_err *err)
{
	const char *p = buf;

	while (len) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return io_error(err, "write", what);
		}
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

int lora_pread_all(int fd, void *buf, size_t len, uint64_t off, const char *what, struct lora_err *err)
{
	char *p = buf;

	while (len) {
		ssize_t n = pread(fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return io_error(err, "read", what);
		}
		if (n == 0)
			return lora_errf(err, "cannot read '%s': the file ended early", what);
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

int lora_copy_range(int out_fd, int in_fd, uint64_t in_off, uint64_t len, const char *what, struct lora_err *err)
{
	loff_t off = (loff_t)in_off;
	char *tmp = NULL;

	while (len) {
		ssize_t n = copy_file_range(in_fd, &off, out_fd, NULL, len, 0);
		if (n > 0) {
			len -= (uint64_t)n;
			continue;
		}
		if (n == 0)
			return lora_errf(err, "cannot copy into '%s': source ended early", what);
		if (errno == EINTR)
			continue;
		if (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP && errno != EBADF)
			return io_error(err, "write", what);
		break;  /* fall back to read/write */
	}
	if (!len)
		return 0;
	tmp = malloc(1 << 20);
	if (!tmp)
		return lora_errf(err, "out of memory");
	while (len) {
		size_t want = len < (1u << 20) ? (size_t)len : (1u << 20);
		ssize_t n = pread(in_fd, tmp, want, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			free(tmp);
			return lora_errf(err, "cannot copy into '%s': read failed", what);
		}
		if (lora_write_all(out_fd, tmp, (size_t)n, what, err) < 0) {
			free(tmp);
			return -1;
		}
		off += n;
		len -= (uint64_t)n;
	}
	free(tmp);
	return 0;
}

int lora_fsync_dir(const char *dir, struct lora_err *err)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		return lora_errf(err, "cannot open directory '%s': %s", dir, strerror(errno));
	if (fsync(fd) < 0 && errno != EINVAL) {
		int e = errno;
		close(fd);
		errno = e;
		return io_error(err, "sync", dir);
	}
	close(fd);
	return 0;
}

int lora_tmp_open(struct lora_tmpfile *t, const char *final_path, mode_t mode, struct lora_err *err)
{
	char *dir = lora_dirname(final_path);
	const char *base = strrchr(final_path, '/');
	size_t n;

	memset(t, 0, sizeof(*t));
	t->fd = -1;
	base = base ? base + 1 : final_path;
	if (!dir)
		return lora_errf(err, "out of memory");
	n = strlen(dir) + strlen(base) + 32;
	t->tmp_path = malloc(n);
	t->final_path = strdup(final_path);
	if (!t->tmp_path || !t->final_path) {
		free(dir);
		lora_tmp_abort(t);
		return lora_errf(err, "out of memory");
	}
	snprintf(t->tmp_path, n, "%s/.%s.tmp.XXXXXX", dir, base);
	free(dir);
	t->fd = mkostemp(t->tmp_path, O_CLOEXEC);
	if (t->fd < 0) {
		int e = errno;
		free(t->tmp_path);
		t->tmp_path = NULL;
		lora_tmp_abort(t);
		errno = e;
		return io_error(err, "create", final_path);
	}
	if (fchmod(t->fd, mode) < 0) {
		lora_tmp_abort(t);
		return lora_errf(err, "cannot set mode of '%s': %s", final_path, strerror(errno));
	}
	return 0;
}

void lora_tmp_abort(struct lora_tmpfile *t)
{
	if (t->fd >= 0)
		close(t->fd);
	if (t->tmp_path)
		unlink(t->tmp_path);
	free(t->tmp_path);
	free(t->final_path);
	t->fd = -1;
	t->tmp_path = t->final_path = NULL;
}

int lora_tmp_commit(struct lora_tmpfile *t, struct lora_err *err)
{
	char *dir;
	int rc;

	if (fsync(t->fd) < 0) {
		io_error(err, "sync", t->final_path);
		lora_tmp_abort(t);
		return -1;
	}
	if (close(t->fd) < 0) {
		t->fd = -1;
		io_error(err, "close", t->final_path);
		lora_tmp_abort(t);
		return -1;
	}
	t->fd = -1;
	if (rename(t->tmp_path, t->final_path) < 0) {
		io_error(err, "rename into", t->final_path);
		lora_tmp_abort(t);
		return -1;
	}
	dir = lora_dirname(t->final_path);
	free(t->tmp_path);
	t->tmp_path = NULL;
	rc = dir ? lora_fsync_dir(dir, err) : lora_errf(err, "out of memory");
	free(dir);
	free(t->final_path);
	t->final_path = NULL;
	return rc;
}

int lora_write_file_atomic(const char *path, const void *data, size_t len, mode_t mode, struct lora_err *err)
{
	struct lora_tmpfile t;

	if (lora_tmp_open(&t, path, mode, err) < 0)
		return -1;
	if (lora_write_all(t.fd, data, len, path, err) < 0) {
		lora_tmp_abort(&t);
		return -1;
	}
	return lora_tmp_commit(&t, err);
}

int lora_read_file(const char *path, size_t max, char **out, size_t *len, struct lora_err *err)
{
	struct stat st;
	char *p;
	size_t got = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	*out = NULL;
	if (len)
		*len = 0;
	if (fd < 0)
		return lora_errf(err, "cannot open '%s': %s", path, strerror(errno));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return lora_errf(err, "cannot read '%s': not a regular file", path);
	}
	if ((uint64_t)st.st_size > max) {
		close(fd);
		return lora_errf(err, "cannot read '%s': larger than %zu bytes", path, max);
	}
	p = malloc((size_t)st.st_size + 1);
	if (!p) {
		close(fd);
		return lora_errf(err, "out of memory reading '%s'", path);
	}
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, p + got, (size_t)st.st_size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	if (got != (size_t)st.st_size) {
		free(p);
		return lora_errf(err, "cannot read '%s': short read", path);
	}
	p[got] = '\0';
	*out = p;
	if (len)
		*len = got;
	return 0;
}

int lora_mkdir_p(const char *path, mode_t mode, struct lora_err *err)
{
	char *p = strdup(path);

	if (!p)
		return lora_errf(err, "out of memory");
	for (char *s = p + 1; ; s++) {
		if (*s == '/' || *s == '\0') {
			char c = *s;
			*s = '\0';
			if (mkdir(p, mode) < 0 && errno != EEXIST) {
				lora_errf(err, "cannot create directory '%s': %s", p, strerror(errno));
				free(p);
				return -1;
			}
			*s = c;
			if (!c)
				break;
		}
	}
	free(p);
	if (!lora_is_dir(path))
		return lora_errf(err, "cannot create directory '%s': a file is in the way", path);
	return 0;
}

int lora_rm_rf(const char *path, struct lora_err *err)
{
	struct stat st;
	DIR *d;
	struct dirent *e;
	int rc = 0;

	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : lora_errf(err, "cannot remove '%s': %s", path, strerror(errno));
	if (!S_ISDIR(st.st_mode)) {
		if (unlink(path) < 0)
			return lora_errf(err, "cannot remove '%s': %s", path, strerror(errno));
		return 0;
	}
	d = opendir(path);
	if (!d)
		return lora_errf(err, "cannot open directory '%s': %s", path, strerror(errno));
	while ((e = readdir(d))) {
		char *sub;
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		sub = lora_path_join(path, e->d_name);
		if (!sub) {
			rc = lora_errf(err, "out of memory");
			break;
		}
		rc = lora_rm_rf(sub, err);
		free(sub);
		if (rc < 0)
			break;
	}
	closedir(d);
	if (rc == 0 && rmdir(path) < 0)
		return lora_errf(err, "cannot remove '%s': %s", path, strerror(errno));
	return rc;
}

void lora_sha256_hex(const void *data, size_t len, char hex[65])
{
	unsigned char md[32];
	unsigned int mdlen = 0;

	EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

int lora_sha256_file(const char *path, char hex[65], uint64_t *size, struct lora_err *err)
{
	unsigned char md[32], *tmp;
	unsigned int mdlen = 0;
	uint64_t total = 0;
	EVP_MD_CTX *ctx;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return lora_errf(err, "cannot open '%s': %s", path, strerror(errno));
	ctx = EVP_MD_CTX_new();
	tmp = malloc(1 << 20);
	if (!ctx || !tmp || !EVP_DigestInit_ex(ctx, EVP_sha256(), NULL)) {
		close(fd);
		EVP_MD_CTX_free(ctx);
		free(tmp);
		return lora_errf(err, "out of memory");
	}
	for (;;) {
		ssize_t n = read(fd, tmp, 1 << 20);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			lora_errf(err, "cannot read '%s': %s", path, strerror(errno));
			close(fd);
			EVP_MD_CTX_free(ctx);
			free(tmp);
			return -1;
		}
		if (n == 0)
			break;
		EVP_DigestUpdate(ctx, tmp, (size_t)n);
		total += (uint64_t)n;
	}
	EVP_DigestFinal_ex(ctx, md, &mdlen);
	EVP_MD_CTX_free(ctx);
	free(tmp);
	close(fd);
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	if (size)
		*size = total;
	return 0;
}
